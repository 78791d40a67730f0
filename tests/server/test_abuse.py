"""One client cannot take a node down or away from the others (``_bridge.ConnectionLimits``).

Each test abuses HTTP/2 or the connection the way a hostile client would, with
small limits, and checks that the node refuses just that (RESOURCE_EXHAUSTED
for a call, GOAWAY ENHANCE_YOUR_CALM and a close for a flooding connection)
while other clients go on being answered.

Time is pytest-trio's ``autojump_clock``: the node's timers run on it (they are
asyncio timers on the trio-asyncio loop), so a timeout fires in virtual time the
moment everything waits for it, and ``trio.current_time()`` says when it fired.
Each wait has a guard (``GUARD_S``, virtual too), so a node that never reacts
fails the test instead of hanging it.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import grpclib.protocol
import h2.errors
import h2.events
import pytest
import trio
import trio.testing

from trio_election._bridge import ConnectionLimits, Status
from trio_election._generated.v1 import election_pb2 as pb

from ._support import (
    SERVICE,
    RawH2,
    RunningNode,
    StartNode,
    grpc_frame,
    settle,
)

GUARD_S = 60.0
GET_LEADER = f"/{SERVICE}/GetCurrentLeader"
TRY = f"/{SERVICE}/TryBecomeLeader"
CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM

SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty, no ACK flag
PING_FRAME = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"pingpong"


def get_leader_body(election: str = "e") -> bytes:
    return grpc_frame(pb.GetCurrentLeaderRequest(election=election).SerializeToString())


async def start(start_node: StartNode, **limits: Any) -> RunningNode:
    return await start_node(data_dir=None, connection_limits=ConnectionLimits(**limits))


class Raw(RawH2):
    """``RawH2`` with the moves of a hostile client: half-sent calls, resets, floods."""

    async def open_call(self, path: str) -> int:
        """Send a call's headers only."""
        stream_id = self.queue_call(path)
        await self.flush()
        return stream_id

    async def send_body(self, stream_id: int, body: bytes, *, end: bool = True) -> None:
        self.conn.send_data(stream_id, body, end_stream=end)
        await self.flush()

    def queue_reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)

    async def until_closed(self) -> h2.events.ConnectionTerminated | None:
        """Read until the server closes the connection; its GOAWAY, if it sent one."""
        goaway = None
        with trio.fail_after(GUARD_S):
            while data := await self._receive():
                if goaway is None:  # after a GOAWAY, h2 takes any frame for an error
                    for event in self.conn.receive_data(data):
                        if isinstance(event, h2.events.ConnectionTerminated):
                            goaway = event
                        else:
                            self._handle(event)
        return goaway

    async def _receive(self) -> bytes:
        try:
            return await self.stream.receive_some()
        except trio.BrokenResourceError:  # reset rather than closed
            return b""


# -- rapid reset, and what resets leave behind --------------------------------


async def test_rapid_reset_closes_that_connection_and_others_are_answered(
    start_node: StartNode,
    autojump_clock: trio.testing.MockClock,
):
    node = await start(start_node, max_resets_per_s=10, burst_s=1)
    good = node.client()
    async with Raw.connect(node.port) as raw:
        # A client cancelling a few of its calls is fine: the connection works on.
        for _ in range(5):
            raw.queue_reset(raw.queue_call(GET_LEADER))
        response = await raw.response(await raw.request(GET_LEADER, get_leader_body()))
        assert response.grpc_status == Status.OK.value
        # HEADERS + RST_STREAM in a burst, many more than the budget of 10.
        for _ in range(40):
            raw.queue_reset(raw.queue_call(GET_LEADER))
        await raw.flush()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(good.current_leader, "e")  # answered meanwhile
            goaway = await raw.until_closed()
    assert goaway is not None
    assert goaway.error_code == CALM
    assert b"reset" in goaway.additional_data
    assert not (await good.current_leader("e")).has_leader
    assert not node.stopped.is_set()


async def test_reset_calls_leave_no_streams_behind(
    start_node: StartNode, autojump_clock: trio.testing.MockClock
):
    node = await start(start_node)
    async with Raw.connect(node.port) as raw:
        for _ in range(150):  # within the default budget of 200
            raw.queue_reset(raw.queue_call(GET_LEADER))
        # One answered call after them: the node has handled every reset.
        response = await raw.response(await raw.request(GET_LEADER, get_leader_body()))
        assert response.grpc_status == Status.OK.value
        await settle()
        gc.collect()
        # grpclib never releases the stream of a call it cancelled before its
        # task ran: 150 of them would stay until the connection closes.
        alive = sum(isinstance(o, grpclib.protocol.Stream) for o in gc.get_objects())
        assert alive < 10


async def test_calls_cut_short_by_a_closed_connection_are_freed_without_the_cyclic_gc(
    start_node: StartNode, autojump_clock: trio.testing.MockClock
):
    node = await start(start_node)
    gc.collect()
    gc.disable()  # only reference counting frees objects now
    try:
        async with Raw.connect(node.port) as raw:
            for _ in range(50):
                await raw.open_call(f"/{SERVICE}/KeepAlive")
            await settle()  # each call waits in its handler for a message
        await settle()  # the node has seen the connection close and ended them
        alive = sum(isinstance(o, grpclib.protocol.Stream) for o in gc.get_objects())
    finally:
        gc.enable()
    # An ended call in a reference cycle waits for the full GC, which is slow to
    # come and slow to run (it walks every object) once thousands pile up.
    assert alive < 5


# -- calls and connections over their limits ----------------------------------


async def test_calls_over_the_connection_limit_are_refused_and_the_connection_goes_on(
    start_node: StartNode,
    autojump_clock: trio.testing.MockClock,
):
    node = await start(start_node, max_streams_per_connection=2)
    async with Raw.connect(node.port) as raw:
        # Sent before the server's SETTINGS are read, so h2 lets us open three.
        first, second = await raw.open_call(TRY), await raw.open_call(TRY)
        third = await raw.open_call(GET_LEADER)
        refused = await raw.response(third)
        assert raw.conn.remote_settings.max_concurrent_streams == 2  # advertised
        assert refused.grpc_status == Status.RESOURCE_EXHAUSTED.value
        assert "max_streams_per_connection" in refused.grpc_message
        # The two calls in progress, and the connection, go on.
        for stream_id, node_id in ((first, "a"), (second, "b")):
            body = pb.TryBecomeLeaderRequest(election=node_id, node_id=node_id, ttl_ms=5000)
            await raw.send_body(stream_id, grpc_frame(body.SerializeToString()))
            assert (await raw.response(stream_id)).grpc_status == Status.OK.value
        response = await raw.response(await raw.request(GET_LEADER, get_leader_body("a")))
        assert response.grpc_status == Status.OK.value


async def test_calls_over_the_listener_limit_are_refused(
    start_node: StartNode, autojump_clock: trio.testing.MockClock
):
    node = await start(start_node, max_streams_total=2)
    async with Raw.connect(node.port) as one, Raw.connect(node.port) as two:
        held = [await one.open_call(TRY), await two.open_call(TRY)]
        await settle()
        async with Raw.connect(node.port) as three:
            refused = await three.response(await three.request(GET_LEADER, get_leader_body()))
        assert refused.grpc_status == Status.RESOURCE_EXHAUSTED.value
        assert "max_streams_total" in refused.grpc_message
        request = pb.TryBecomeLeaderRequest(election="e", node_id="a", ttl_ms=5000)
        body = grpc_frame(request.SerializeToString())
        await one.send_body(held[0], body)
        assert (await one.response(held[0])).grpc_status == Status.OK.value
        response = await two.response(await two.request(GET_LEADER, get_leader_body()))
        assert response.grpc_status == Status.OK.value


async def test_connections_over_the_limit_are_refused_and_the_others_work_on(
    start_node: StartNode,
    autojump_clock: trio.testing.MockClock,
):
    node = await start(start_node, max_connections=2)
    first, second = node.client(), node.client()
    assert not (await first.current_leader("e")).has_leader
    assert not (await second.current_leader("e")).has_leader
    async with Raw.connect(node.port) as raw:
        refused = await raw.response(await raw.request(GET_LEADER, get_leader_body()))
        assert refused.grpc_status == Status.RESOURCE_EXHAUSTED.value
        assert "max_connections" in refused.grpc_message
        goaway = await raw.until_closed()
        assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
    assert not (await first.current_leader("e")).has_leader
    assert not (await second.current_leader("e")).has_leader
    # A place that frees up is taken by the next connection.
    first.close()
    await settle()
    async with Raw.connect(node.port) as raw:
        response = await raw.response(await raw.request(GET_LEADER, get_leader_body()))
        assert response.grpc_status == Status.OK.value


# -- timeouts -------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"", id="nothing"),
        pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="preface"),
    ],
)
async def test_a_connection_without_http2_handshake_is_closed_after_the_timeout(
    start_node: StartNode, autojump_clock: trio.testing.MockClock, sent: bytes
):
    node = await start(start_node, handshake_timeout_s=5)
    stream = await trio.open_tcp_stream("127.0.0.1", node.port)
    async with stream:
        started = trio.current_time()
        await stream.send_all(sent)
        with trio.fail_after(GUARD_S):
            while await stream.receive_some():
                pass
    assert trio.current_time() - started == pytest.approx(5, abs=0.1)


async def test_a_connection_after_its_handshake_is_not_held_to_the_handshake_timeout(
    start_node: StartNode,
    autojump_clock: trio.testing.MockClock,
):
    node = await start(start_node, handshake_timeout_s=5)
    async with Raw.connect(node.port) as raw:
        assert (
            await raw.response(await raw.request(GET_LEADER, get_leader_body()))
        ).grpc_status == 0
        await trio.sleep(20)
        response = await raw.response(await raw.request(GET_LEADER, get_leader_body()))
        assert response.grpc_status == Status.OK.value


async def test_an_idle_connection_gets_goaway_after_the_idle_timeout(
    start_node: StartNode, autojump_clock: trio.testing.MockClock
):
    node = await start(start_node, idle_timeout_s=30)
    async with Raw.connect(node.port) as raw:
        response = await raw.response(await raw.request(GET_LEADER, get_leader_body()))
        assert response.grpc_status == Status.OK.value
        idle_from = trio.current_time()
        goaway = await raw.until_closed()
    assert trio.current_time() - idle_from == pytest.approx(30, abs=0.1)
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.NO_ERROR


async def test_a_connection_with_a_call_in_progress_is_not_idle(
    start_node: StartNode, autojump_clock: trio.testing.MockClock
):
    node = await start(start_node, idle_timeout_s=30)
    watcher, actor = node.client(), node.client()
    async with watcher.watch("e") as watch:
        assert (await watch.recv()).kind == pb.LeaderEvent.NO_LEADER
        await trio.sleep(100)
        assert (await actor.try_become_leader("e", "a")).success
        assert (await watch.recv()).leader.node_id == "a"


async def test_a_unary_call_whose_request_never_comes_ends_after_the_request_timeout(
    start_node: StartNode,
    autojump_clock: trio.testing.MockClock,
):
    node = await start(start_node, request_timeout_s=3)
    async with Raw.connect(node.port) as raw:
        stream_id = await raw.open_call(TRY)
        started = trio.current_time()
        response = await raw.response(stream_id)
        assert trio.current_time() - started == pytest.approx(3, abs=0.1)
        assert response.grpc_status == Status.RESOURCE_EXHAUSTED.value
        assert "request_timeout_s" in response.grpc_message
        # A client stream may stay quiet past it: KeepAlive sends when it must.
        keep_alive = await raw.open_call(f"/{SERVICE}/KeepAlive")
        await trio.sleep(10)
        heartbeat = pb.HeartbeatRequest(election="e", node_id="a")
        await raw.send_body(keep_alive, grpc_frame(heartbeat.SerializeToString()))
        assert (await raw.response(keep_alive)).grpc_status == Status.OK.value


# -- floods ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "what"),
    [
        pytest.param(SETTINGS_FRAME, b"SETTINGS", id="settings"),
        pytest.param(PING_FRAME, b"PING", id="ping"),
    ],
)
async def test_a_control_frame_flood_closes_the_flooding_connection(
    start_node: StartNode, autojump_clock: trio.testing.MockClock, frame: bytes, what: bytes
):
    node = await start(start_node, max_settings_per_s=5, max_pings_per_s=5, burst_s=1)
    good = node.client()
    async with Raw.connect(node.port) as raw:
        await raw.send_raw(frame * 50)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(good.current_leader, "e")
            goaway = await raw.until_closed()
    assert goaway is not None and goaway.error_code == CALM
    assert what in goaway.additional_data
    assert not (await good.current_leader("e")).has_leader


async def test_pings_that_follow_data_from_the_server_are_free(
    start_node: StartNode, autojump_clock: trio.testing.MockClock
):
    # What grpc-go's bandwidth probe does: a PING after each burst of data it gets.
    node = await start(start_node, max_pings_per_s=5, burst_s=1)
    async with Raw.connect(node.port) as raw:
        for _ in range(20):
            response = await raw.response(await raw.request(GET_LEADER, get_leader_body()))
            assert response.grpc_status == Status.OK.value
            await raw.send_raw(PING_FRAME)


# -- bytes the client sends that nobody reads -----------------------------------


async def test_unread_request_data_is_bounded_by_the_windows(
    start_node: StartNode, autojump_clock: trio.testing.MockClock
):
    limits = {"connection_window_bytes": 128 * 1024, "stream_window_bytes": 64 * 1024}
    node = await start(start_node, request_timeout_s=1000, **limits)
    async with Raw.connect(node.port) as raw:
        # A first call, so the server's SETTINGS and WINDOW_UPDATE are in.
        assert (
            await raw.response(await raw.request(GET_LEADER, get_leader_body()))
        ).grpc_status == 0
        # Watches read their one request, then never read again.
        watches = [await raw.open_call(f"/{SERVICE}/Watch") for _ in range(3)]
        for stream_id in watches:
            await raw.send_body(stream_id, get_leader_body(), end=False)
        sent = dict.fromkeys(watches, 0)
        for _ in range(5):  # push all the windows allow, let the server ack, again
            for stream_id in watches:
                while size := min(
                    raw.conn.local_flow_control_window(stream_id), raw.conn.max_outbound_frame_size
                ):
                    raw.conn.send_data(stream_id, b"\0" * size)
                    sent[stream_id] += size
            await raw.flush()
            await settle()
            with trio.move_on_after(1):
                for event in raw.conn.receive_data(await raw.stream.receive_some()):
                    raw._handle(event)
    assert sum(sent.values()) <= limits["connection_window_bytes"]
    assert sum(sent.values()) > limits["connection_window_bytes"] - 1024  # all that was allowed
    assert max(sent.values()) <= limits["stream_window_bytes"]


async def test_empty_data_frames_are_ignored(
    start_node: StartNode, autojump_clock: trio.testing.MockClock
):
    node = await start(start_node)
    async with Raw.connect(node.port) as raw:
        stream_id = await raw.open_call(GET_LEADER)
        for _ in range(100):
            await raw.send_body(stream_id, b"", end=False)
        await raw.send_body(stream_id, get_leader_body())
        response = await raw.response(stream_id)
    # grpclib takes an empty DATA frame for the end of the message it reads.
    assert response.grpc_status == Status.OK.value


# -- grpclib's own services, and its log ----------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        pytest.param(
            "/grpc.health.v1.Health/Check",
            grpc_frame(b"\xff\xff\xff\xff"),
            Status.INVALID_ARGUMENT,
            id="health",
        ),
        pytest.param(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            grpc_frame(b"\xff\xff\xff\xff"),
            Status.INVALID_ARGUMENT,
            id="reflection",
        ),
        pytest.param(
            "/grpc.health.v1.Health/Check",
            b"\x00" + (100 * 1024 * 1024).to_bytes(4, "big"),
            Status.RESOURCE_EXHAUSTED,
            id="health_announces_100_MiB",
        ),
    ],
)
async def test_bad_requests_to_health_and_reflection_are_refused_without_an_error_log(
    start_node: StartNode,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    path: str,
    body: bytes,
    status: Status,
):
    caplog.set_level(logging.INFO)
    node = await start(start_node)
    async with Raw.connect(node.port) as raw:
        response = await raw.response(await raw.request(path, body))
    assert response.grpc_status == status.value
    assert response.grpc_message.startswith("request:")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_calls_cut_short_by_their_client_are_not_logged_at_info(
    start_node: StartNode, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    node = await start(start_node)
    assert (await node.client().try_become_leader("e", "holder")).success
    async with Raw.connect(node.port) as raw:
        waiting = [await raw.open_call(f"/{SERVICE}/Campaign") for _ in range(3)]
        request = pb.CampaignRequest(election="e", node_id="waiter", ttl_ms=5000)
        for stream_id in waiting:
            await raw.send_body(stream_id, grpc_frame(request.SerializeToString()))
        await settle()  # each Campaign waits in its handler
        raw.queue_reset(waiting[0])
        await raw.flush()
        await settle()
    await settle()  # the other two go with the connection
    assert [r for r in caplog.records if "cancelled" in r.getMessage()] == []
    assert (await node.client().current_leader("e")).leader.node_id == "holder"
