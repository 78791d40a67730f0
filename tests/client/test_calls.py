"""The client's one-call methods, failover and watch."""

from __future__ import annotations

import socket

import pytest
import trio

from trio_election import EventKind, InvalidArgument, Unavailable, open_client


def _dead_endpoint() -> str:
    """An address where nothing listens (a port just freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_calls_fail_over_to_the_next_endpoint(node_port: int) -> None:
    async with open_client([_dead_endpoint(), f"127.0.0.1:{node_port}"]) as client:
        attempt = await client.try_become_leader("prod", "w1", 5)
        assert attempt.success
        assert (await client.get_leader("prod")).node_id == "w1"


async def test_no_endpoint_answering_raises_unavailable() -> None:
    async with open_client([_dead_endpoint(), _dead_endpoint()]) as client:
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
