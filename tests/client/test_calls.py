"""The client's one-call methods, failover and watch."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack, aclosing

import pytest
import trio

from trio_election import EventKind, InvalidArgument, Unavailable, open_client


@pytest.fixture
def dead_endpoint() -> Iterator[Callable[[], str]]:
    """Make addresses where nothing listens: each port stays bound, never
    listening, until the test ends, so connections are refused and no other
    process can start to listen there meanwhile (a port merely freed could be)."""
    with ExitStack() as held:

        def endpoint() -> str:
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            return f"127.0.0.1:{sock.getsockname()[1]}"

        yield endpoint


async def test_calls_fail_over_to_the_next_endpoint(
    node_port: int, dead_endpoint: Callable[[], str]
) -> None:
    async with open_client([dead_endpoint(), f"127.0.0.1:{node_port}"]) as client:
        attempt = await client.try_become_leader("prod", "w1", 5)
        assert attempt.success
        assert (await client.get_leader("prod")).node_id == "w1"


async def test_no_endpoint_answering_raises_unavailable(dead_endpoint: Callable[[], str]) -> None:
    async with open_client([dead_endpoint(), dead_endpoint()]) as client:
        with pytest.raises(Unavailable, match="no endpoint answered"):
            await client.get_leader("prod")


async def test_bad_input_raises_invalid_argument_naming_the_field(node_port: int) -> None:
    async with open_client([f"127.0.0.1:{node_port}"]) as client:
        with pytest.raises(InvalidArgument) as raised:
            await client.try_become_leader("prod", "w1", ttl=0.01)
        assert raised.value.field == "ttl_ms"
        assert "100 ms" in str(raised.value)


async def test_heartbeat_and_release_check_the_token(node_port: int) -> None:
    async with open_client([f"127.0.0.1:{node_port}"]) as client:
        grant = await client.try_become_leader("prod", "w1", 5)
        token = grant.leader.fencing_token
        assert not (await client.heartbeat("prod", "w1", token + 1)).success
        assert (await client.heartbeat("prod", "w1", token)).success
        assert not await client.release("prod", "w1", token + 1)
        assert await client.release("prod", "w1", token)


async def test_watch_yields_the_current_state_then_each_change(node_port: int) -> None:
    async with open_client([f"127.0.0.1:{node_port}"]) as client:
        events = []
        async with trio.open_nursery() as nursery:

            async def collect(task_status=trio.TASK_STATUS_IGNORED) -> None:
                async for event in client.watch("prod"):
                    events.append(event)
                    if len(events) == 1:
                        task_status.started()
                    if len(events) == 3:
                        nursery.cancel_scope.cancel()

            await nursery.start(collect)
            await client.try_become_leader("prod", "w1", 5)
            await client.release("prod", "w1")
    assert [e.kind for e in events] == [EventKind.NO_LEADER, EventKind.ELECTED, EventKind.RELEASED]
    assert events[1].leader.node_id == "w1"
    assert [e.revision for e in events] == sorted({e.revision for e in events})


async def test_watch_from_a_revision_replays_the_changes_since(node_port: int) -> None:
    async with open_client([f"127.0.0.1:{node_port}"]) as client:
        first = await client.try_become_leader("prod", "w1", 5)
        await client.try_become_leader("other", "x", 5)  # not this election's
        await client.release("prod", "w1")
        await client.try_become_leader("prod", "w2", 5)
        events = []
        async with aclosing(client.watch("prod", start_revision=1)) as watch:
            async for event in watch:
                events.append(event)
                if len(events) == 3:
                    break
    assert [(e.kind, e.leader.node_id) for e in events] == [
        (EventKind.ELECTED, "w1"),
        (EventKind.RELEASED, "w1"),
        (EventKind.ELECTED, "w2"),
    ]
    assert events[0].leader.fencing_token == first.leader.fencing_token
    assert [e.revision for e in events] == [1, 3, 4]


async def test_watch_from_a_revision_the_node_has_not_reached_is_out_of_range(
    node_port: int,
) -> None:
    from trio_election._bridge import Channel, GRPCError, Status, asyncio_loop
    from trio_election._generated.v1 import election_grpc, election_pb2 as pb

    async with asyncio_loop():
        channel = Channel("127.0.0.1", node_port, election_grpc.LeaderElectionStub)
        try:
            with pytest.raises(GRPCError) as refused:
                async with channel.stream(channel.stub.Watch) as stream:
                    await stream.send(pb.WatchRequest(election="prod", start_revision=99), end=True)
                    await stream.recv()
            assert refused.value.status is Status.OUT_OF_RANGE
            assert "start_revision: 99" in refused.value.message
        finally:
            channel.close()


async def test_a_broken_watch_resumes_without_missing_a_change(
    node_port: int, nursery: trio.Nursery
) -> None:
    from trio_election.testing import FreezableProxy

    proxy = FreezableProxy("127.0.0.1", node_port)
    proxy_port = await nursery.start(proxy.serve)
    async with (
        open_client([f"127.0.0.1:{proxy_port}"]) as watching,
        open_client([f"127.0.0.1:{node_port}"]) as acting,
    ):
        seen = []
        with trio.fail_after(10):
            async with aclosing(watching.watch("prod")) as watch:
                async for event in watch:
                    seen.append(event)
                    if len(seen) == 1:
                        # Changes while the watch's connection is cut.
                        await proxy.drop_connections()
                        await acting.try_become_leader("prod", "w1", 5)
                        await acting.release("prod", "w1")
                        await acting.try_become_leader("prod", "w2", 5)
                    if len(seen) == 4:
                        break
    assert [e.kind for e in seen] == [
        EventKind.NO_LEADER,
        EventKind.ELECTED,
        EventKind.RELEASED,
        EventKind.ELECTED,
    ]
    assert [e.revision for e in seen[1:]] == [1, 2, 3]


async def test_a_campaign_against_a_dead_endpoint_says_why_within_seconds(
    autojump_clock, dead_endpoint: Callable[[], str]
) -> None:
    told: list[tuple[float, str]] = []
    async with open_client([dead_endpoint()]) as client:
        with trio.move_on_after(10):
            await client.campaign(
                "prod", "w1", 5, on_retry=lambda exc: told.append((trio.current_time(), str(exc)))
            )
    start = told[0][0] if told else None
    assert told, "campaign never said why it waits"
    assert start is not None and start < 2  # the first refusal is reported at once
    assert "no endpoint answered Campaign" in told[0][1]
    assert len(told) > 3  # and it keeps trying (and telling) while it waits


async def test_a_watch_against_a_dead_endpoint_says_why_and_keeps_trying(
    autojump_clock, dead_endpoint: Callable[[], str]
) -> None:
    told: list[str] = []
    async with open_client([dead_endpoint()]) as client:
        with trio.move_on_after(10):
            async with aclosing(client.watch("prod", on_retry=lambda e: told.append(str(e)))) as w:
                async for _ in w:
                    pass
    assert told and all("Watch" in t for t in told)
