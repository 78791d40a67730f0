"""The server never crashes or loses state on any input (docs/design.md, "Bad input"
and "Known pitfalls").

Input that no well-behaved gRPC library sends goes through ``RawH2``, an h2
client on a plain Trio socket.
"""

from __future__ import annotations

import grpclib.client
import pytest
import trio
import trio_asyncio
from grpclib.config import Configuration
from grpclib.health.v1 import health_grpc, health_pb2
from grpclib.reflection.v1 import reflection_grpc, reflection_pb2

from trio_election._bridge import MAX_REQUEST_BYTES, Channel, GRPCError, Status
from trio_election._generated.v1 import election_grpc, election_pb2 as pb

from ._support import SERVICE, Client, RawH2, RunningNode, StartNode, grpc_frame

TRY = f"/{SERVICE}/TryBecomeLeader"


async def assert_still_serving(node: RunningNode, client: Client, token: int) -> None:
    """The node runs, answers a fresh client, and "a" still holds "e" with ``token``."""
    assert not node.stopped.is_set()
    reply = await node.client().current_leader("e")
    assert reply.has_leader
    assert (reply.leader.node_id, reply.leader.fencing_token) == ("a", token)
    assert (await client.heartbeat("e", "a", token)).success


@pytest.fixture
async def token(client: Client) -> int:
    """ "a" holds "e": the state that bad input must not disturb."""
    return (await client.try_become_leader("e", "a")).leader.fencing_token


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(grpc_frame(b"\x0a\x05ab"), Status.INVALID_ARGUMENT, id="truncated_field"),
        pytest.param(grpc_frame(b"\xff\xff\xff\xff"), Status.INVALID_ARGUMENT, id="bad_tag"),
        pytest.param(grpc_frame(b"\x0a\x02\xff\xfe"), Status.INVALID_ARGUMENT, id="bad_utf8"),
        pytest.param(grpc_frame(b"abc")[:6], Status.INVALID_ARGUMENT, id="truncated_message"),
        pytest.param(grpc_frame(b"abc")[:5], Status.INVALID_ARGUMENT, id="header_only"),
        pytest.param(b"\x00\x00", Status.INVALID_ARGUMENT, id="truncated_header"),
        pytest.param(b"", Status.INVALID_ARGUMENT, id="no_message"),
        pytest.param(
            grpc_frame(b"\x0a\x01e", compressed=True), Status.UNIMPLEMENTED, id="compressed"
        ),
        pytest.param(
            b"\x00" + (MAX_REQUEST_BYTES + 1).to_bytes(4, "big"),
            Status.RESOURCE_EXHAUSTED,
            id="announces_too_much",
        ),
    ],
)
async def test_undecodable_request_bytes_get_an_error_status(
    node: RunningNode, client: Client, token: int, body: bytes, status: Status
):
    async with RawH2.connect(node.port) as raw:
        response = await raw.response(await raw.request(TRY, body))
    assert response.grpc_status == status.value
    assert response.grpc_message.startswith("request:")
    await assert_still_serving(node, client, token)


async def test_oversized_message_is_resource_exhausted_and_the_node_lives_on(
    node: RunningNode, client: Client, token: int
):
    request = pb.TryBecomeLeaderRequest(
        election="big", node_id="b", ttl_ms=1000, value=b"x" * (MAX_REQUEST_BYTES + 1)
    )
    with pytest.raises(GRPCError) as info:
        await client.call("TryBecomeLeader", request)
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    assert str(MAX_REQUEST_BYTES) in info.value.message
    assert not (await client.current_leader("big")).has_leader
    await assert_still_serving(node, client, token)


@pytest.mark.parametrize("path", [f"/{SERVICE}/NoSuchMethod", "/no.such.Service/Call", "/garbage"])
async def test_unknown_method_is_unimplemented(
    node: RunningNode, client: Client, token: int, path: str
):
    async with RawH2.connect(node.port) as raw:
        response = await raw.response(await raw.request(path, grpc_frame(b"")))
    assert response.grpc_status == Status.UNIMPLEMENTED.value
    await assert_still_serving(node, client, token)


async def test_unknown_http2_frame_type_is_ignored_and_the_node_keeps_serving(
    node: RunningNode, client: Client, token: int
):
    # 9-byte frame header (length 2, type 0xFA, no flags, stream 0) + 2 bytes.
    unknown_frame = (2).to_bytes(3, "big") + b"\xfa\x00" + (0).to_bytes(4, "big") + b"hi"
    assert len(unknown_frame) == 11
    async with RawH2.connect(node.port) as raw:
        await raw.send_raw(unknown_frame)
        # RFC 9113 section 4.1: ignored, so even this connection goes on working.
        body = grpc_frame(pb.GetCurrentLeaderRequest(election="e").SerializeToString())
        response = await raw.response(await raw.request(f"/{SERVICE}/GetCurrentLeader", body))
    assert response.grpc_status == Status.OK.value
    reply = pb.GetCurrentLeaderResponse.FromString(response.data[5:])
    assert reply.leader.fencing_token == token
    await assert_still_serving(node, client, token)


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http1"),
        pytest.param(b"\x00" * 64, id="zeros"),
        pytest.param(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # the preface, then a SETTINGS
            + b"\x00\x00\x05\x04\x00\x00\x00\x00\x00"  # frame whose length
            + b"\x00" * 5,  # is not a multiple of 6
            id="bad_settings_frame",
        ),
    ],
)
async def test_garbage_instead_of_http2_does_not_bring_the_node_down(
    node: RunningNode, client: Client, token: int, garbage: bytes
):
    stream = await trio.open_tcp_stream("127.0.0.1", node.port)
    async with stream:
        await stream.send_all(garbage)
        # The node answers with GOAWAY or just closes; either way it ends this
        # connection, and only this one.
        while await stream.receive_some():
            pass
    await assert_still_serving(node, client, token)


async def test_slow_watcher_is_dropped_with_resource_exhausted_while_the_node_serves(
    start_node: StartNode,
):
    node = await start_node(data_dir=None, watch_buffer=4)
    actor, good = node.client(), node.client()
    # The slow watcher's client grants the server the smallest HTTP/2 windows and
    # never reads, so the server's sends block as soon as 64 KiB are in flight.
    small = Configuration(http2_connection_window_size=65535, http2_stream_window_size=65535)
    slow_channel = grpclib.client.Channel("127.0.0.1", node.port, config=small)
    slow_stub = election_grpc.LeaderElectionStub(slow_channel)
    cycles = 40  # 80 events of ~4 KiB each: far past the window and the buffer
    good_events: list[pb.LeaderEvent] = []
    try:
        slow_cm = slow_stub.Watch.open()
        slow = await trio_asyncio.aio_as_trio(slow_cm.__aenter__)()
        await trio_asyncio.aio_as_trio(slow.send_message)(pb.WatchRequest(election="e"), end=True)
        first = await trio_asyncio.aio_as_trio(slow.recv_message)()
        assert first.kind == pb.LeaderEvent.NO_LEADER

        async with good.watch("e") as good_watch, trio.open_nursery() as nursery:
            assert (await good_watch.recv()).kind == pb.LeaderEvent.NO_LEADER

            async def read_good() -> None:
                while len(good_events) < 2 * cycles:
                    good_events.append(await good_watch.recv())

            nursery.start_soon(read_good)
            for i in range(cycles):
                granted = await actor.try_become_leader("e", f"n{i}", value=b"v" * 4096)
                assert granted.success
                assert await actor.release("e", f"n{i}")

        # The well-behaved watcher saw everything, in order.
        assert len(good_events) == 2 * cycles
        assert [e.leader.node_id for e in good_events[::2]] == [f"n{i}" for i in range(cycles)]

        # The slow one, reading at last, gets what was sent or queued, in
        # revision order, then RESOURCE_EXHAUSTED.
        received = [first]
        with trio.fail_after(10):  # real clock: a guard against a hang, not a wait
            while (event := await trio_asyncio.aio_as_trio(slow.recv_message)()) is not None:
                received.append(event)
            with pytest.raises(GRPCError) as info:
                await trio_asyncio.aio_as_trio(slow.recv_trailing_metadata)()
        assert info.value.status is Status.RESOURCE_EXHAUSTED
        assert 1 < len(received) < 2 * cycles
        revisions = [e.revision for e in received]
        assert revisions == sorted(set(revisions))
    finally:
        slow_channel.close()

    # The node serves on, and a new watch starts from the current state.
    assert not node.stopped.is_set()
    async with actor.watch("e") as watch:
        assert (await watch.recv()).kind == pb.LeaderEvent.NO_LEADER
        assert (await actor.try_become_leader("e", "last")).success
        assert (await watch.recv()).leader.node_id == "last"


async def test_health_service_answers_serving(node: RunningNode):
    channel = Channel("127.0.0.1", node.port, health_grpc.HealthStub)
    try:
        reply = await channel.unary(
            channel.stub.Check, health_pb2.HealthCheckRequest(service=""), 5
        )
    finally:
        channel.close()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_leader_election_service(node: RunningNode):
    channel = Channel("127.0.0.1", node.port, reflection_grpc.ServerReflectionStub)
    try:
        async with channel.stream(channel.stub.ServerReflectionInfo) as stream:
            await stream.send(reflection_pb2.ServerReflectionRequest(list_services=""))
            listed = await stream.recv()
            await stream.send(
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE), end=True
            )
            described = await stream.recv()
            assert await stream.recv() is None
    finally:
        channel.close()
    names = {service.name for service in listed.list_services_response.service}
    assert SERVICE in names
    assert "grpc.health.v1.Health" in names
    files = described.file_descriptor_response.file_descriptor_proto
    assert any(b"LeaderElection" in data for data in files)
