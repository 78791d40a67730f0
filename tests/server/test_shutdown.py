"""Cancelling ``serve`` shuts the node down gracefully (docs/design.md, "Known pitfalls").

Streams and waiting calls end with UNAVAILABLE (so clients fail over at once
instead of waiting for their deadline) and the port is free again afterwards.

These tests use in-memory nodes and ``autojump_clock``: with no worker threads,
the clock jumps only when every task waits, so the shutdown grace periods pass
at once when something hangs, and the virtual time shows whether they had to.
"""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from trio_election._bridge import GRPCError, Status
from trio_election._generated.v1 import election_pb2 as pb
from trio_election.server._store import LeaseStore

from ._support import RunningNode, StartNode, settle

GRACE_S = 5.0


@pytest.fixture
async def node(start_node: StartNode) -> RunningNode:
    return await start_node(data_dir=None, shutdown_grace_s=GRACE_S)


async def test_shutdown_ends_an_open_watch_with_unavailable(
    node: RunningNode, autojump_clock: trio.testing.MockClock
):
    client = node.client()
    await client.try_become_leader("e", "a")
    async with trio.open_nursery() as nursery:
        async with client.watch("e") as watch:
            assert (await watch.recv()).kind == pb.LeaderEvent.ELECTED
            start = trio.current_time()
            nursery.start_soon(node.stop)
            with pytest.raises(GRPCError) as info:
                await watch.recv()
    assert info.value.status is Status.UNAVAILABLE
    assert node.stopped.is_set()
    assert trio.current_time() - start < GRACE_S  # no need to wait out the grace


async def test_shutdown_ends_an_open_keep_alive_with_unavailable(
    node: RunningNode, autojump_clock: trio.testing.MockClock
):
    client = node.client()
    await client.try_become_leader("e", "a")
    async with trio.open_nursery() as nursery:
        with pytest.raises(GRPCError) as info:
            async with client.keep_alive() as stream:
                await stream.send(pb.HeartbeatRequest(election="e", node_id="a"))
                assert (await stream.recv()).success
                start = trio.current_time()
                nursery.start_soon(node.stop)
                await stream.recv()
    assert info.value.status is Status.UNAVAILABLE
    await node.stopped.wait()
    assert trio.current_time() - start < GRACE_S


async def test_shutdown_fails_a_waiting_campaign_with_unavailable(
    node: RunningNode, autojump_clock: trio.testing.MockClock
):
    holder, candidate = node.client(), node.client()
    await holder.try_become_leader("e", "a", ttl_ms=60_000)
    failure = {}

    async def campaign() -> None:
        with pytest.raises(GRPCError) as info:
            await candidate.campaign("e", "b", timeout=30)
        failure["error"] = info.value

    async with trio.open_nursery() as nursery:
        nursery.start_soon(campaign)
        await settle()
        start = trio.current_time()
        await node.stop()
    assert failure["error"].status is Status.UNAVAILABLE
    assert trio.current_time() - start < GRACE_S


async def test_shutdown_releases_the_port(
    start_node: StartNode, node: RunningNode, autojump_clock: trio.testing.MockClock
):
    client = node.client()
    assert (await client.try_become_leader("e", "a")).success
    await node.stop()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", node.port)
    # The same port can be bound again at once (what a restart does).
    again = await start_node(data_dir=None, port=node.port)
    assert again.port == node.port
    assert not (await again.client().current_leader("e")).has_leader


async def test_shutdown_with_an_idle_client_connected_does_not_wait_for_the_grace(
    node: RunningNode, autojump_clock: trio.testing.MockClock
):
    client = node.client()
    await client.try_become_leader("e", "a")  # the connection stays open
    start = trio.current_time()
    await node.stop()
    assert trio.current_time() - start < GRACE_S


async def test_shutdown_lets_a_unary_call_in_progress_finish(
    start_node: StartNode, monkeypatch: pytest.MonkeyPatch
):
    # Real clock: the call is held inside the node by a disk write that the
    # test lets through once the shutdown has begun.
    gate = threading.Event()
    write = LeaseStore.write

    def held_write(store, last_token, changes):
        changes = list(changes)
        assert gate.wait(30), "the test never let the write through"
        write(store, last_token, changes)

    monkeypatch.setattr(LeaseStore, "write", held_write)
    node = await start_node(shutdown_grace_s=30)
    client = node.client()
    reply = {}

    async def grant() -> None:
        reply["grant"] = await client.try_become_leader("e", "a")

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(grant)
            await settle()  # the grant waits for the disk
            nursery.start_soon(node.stop)
            await settle()  # the node stopped accepting and waits for the call
            assert not node.stopped.is_set()
            assert "grant" not in reply
            gate.set()
    finally:
        gate.set()
    assert reply["grant"].success
    assert node.stopped.is_set()
    # The grant the caller heard of is on disk: a restart still has it.
    again = await start_node(data_dir=node.config.data_dir)
    recovered = await again.client().current_leader("e")
    assert recovered.leader.fencing_token == reply["grant"].leader.fencing_token
