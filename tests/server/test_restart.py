"""Restarts forget nothing that matters (docs/design.md, promise 5).

A node with a data dir recovers its holders, each with a full TTL, and its
token high-water mark; an in-memory node grants nothing during its start-up
grace and seeds its tokens from the wall clock.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_election._bridge import GRPCError, Status
from trio_election.server._store import LeaseStore

from ._support import RunningNode, StartNode, settle


async def restart(start_node: StartNode, node: RunningNode) -> RunningNode:
    await node.stop()
    return await start_node(data_dir=node.config.data_dir)


async def test_holder_survives_a_restart_with_the_same_token_and_a_full_ttl(
    start_node: StartNode, mock_clock: trio.testing.MockClock
):
    node = await start_node()
    granted = await node.client().try_become_leader("e", "a", ttl_ms=10_000, value=b"v")
    token = granted.leader.fencing_token
    mock_clock.jump(6)  # 4 s left before the restart...
    node = await restart(start_node, node)
    client = node.client()
    reply = await client.current_leader("e")
    assert reply.has_leader
    assert reply.leader.node_id == "a"
    assert reply.leader.fencing_token == token
    assert reply.leader.value == b"v"
    assert reply.leader.ttl_ms == 10_000
    assert reply.leader.remaining_ms in (9_999, 10_000)  # ...10 s after it
    mock_clock.jump(9.9)  # past the old deadline, within the new one
    await settle()
    assert (await client.heartbeat("e", "a", token)).success


async def test_recovered_lease_still_expires_a_full_ttl_after_the_restart(
    start_node: StartNode, mock_clock: trio.testing.MockClock
):
    node = await start_node()
    await node.client().try_become_leader("e", "a", ttl_ms=1000)
    node = await restart(start_node, node)
    client = node.client()
    async with client.watch("e") as watch:
        assert (await watch.recv()).leader.node_id == "a"
        mock_clock.jump(1.001)
        expired = await watch.recv()
    assert expired.kind == expired.EXPIRED
    assert (await client.try_become_leader("e", "b")).success


async def test_grant_after_a_restart_gets_a_larger_token_than_any_before(
    start_node: StartNode,
):
    node = await start_node()
    client = node.client()
    held = (await client.try_become_leader("kept", "a")).leader.fencing_token
    # The highest token so far belongs to an election released before the
    # restart: only the stored high-water mark remembers it.
    highest = (await client.try_become_leader("gone", "b")).leader.fencing_token
    assert highest > held
    assert await client.release("gone", "b", highest)
    node = await restart(start_node, node)
    client = node.client()
    tokens = []
    for election in ["gone", "new"]:
        tokens.append((await client.try_become_leader(election, "c")).leader.fencing_token)
    assert tokens[0] > highest
    assert tokens[1] > tokens[0]
    # And after a second restart, still higher.
    node = await restart(start_node, node)
    again = await node.client().try_become_leader("third", "d")
    assert again.leader.fencing_token > tokens[1]


async def test_released_and_expired_elections_stay_free_after_a_restart(
    start_node: StartNode, mock_clock: trio.testing.MockClock
):
    node = await start_node()
    client = node.client()
    await client.try_become_leader("released", "a")
    assert await client.release("released", "a")
    async with client.watch("expired") as watch:
        await watch.recv()
        await client.try_become_leader("expired", "b", ttl_ms=500)
        assert (await watch.recv()).kind == 1  # ELECTED
        mock_clock.jump(0.6)
        assert (await watch.recv()).kind == 3  # EXPIRED (reported after the flush)
    node = await restart(start_node, node)
    client = node.client()
    for election in ["released", "expired"]:
        assert not (await client.current_leader(election)).has_leader
        assert (await client.try_become_leader(election, "z")).success


async def test_campaign_grant_survives_a_restart(start_node: StartNode):
    node = await start_node()
    client = node.client()
    elected = await client.campaign("e", "a")
    node = await restart(start_node, node)
    reply = await node.client().current_leader("e")
    assert reply.leader.node_id == "a"
    assert reply.leader.fencing_token == elected.leader.fencing_token


def crash_copy(data_dir: Path, to: Path) -> Path:
    """What a power cut would leave now: the files of a running node, as they are."""
    to.mkdir()
    for path in data_dir.iterdir():
        if path.name.endswith(("leases.db", "leases.db-wal")):
            shutil.copy(path, to / path.name)
    return to


@pytest.mark.parametrize("rpc", ["TryBecomeLeader", "Campaign"])
async def test_grant_is_on_disk_before_its_reply(start_node: StartNode, tmp_path: Path, rpc):
    node = await start_node()
    client = node.client()
    grant = client.try_become_leader if rpc == "TryBecomeLeader" else client.campaign
    token = (await grant("e", "a", ttl_ms=5000)).leader.fencing_token
    # Copy the files the moment the reply arrived, while the node runs on.
    snapshot = crash_copy(node.config.data_dir, tmp_path / "crash")
    recovered = await start_node(data_dir=snapshot)
    client = recovered.client()
    reply = await client.current_leader("e")
    assert reply.has_leader
    assert (reply.leader.node_id, reply.leader.fencing_token) == ("a", token)
    assert (await client.try_become_leader("f", "c")).leader.fencing_token > token


@pytest.mark.parametrize("rpc", ["TryBecomeLeader", "Campaign"])
async def test_grant_reply_waits_for_the_disk_write(
    start_node: StartNode, monkeypatch: pytest.MonkeyPatch, rpc: str
):
    gate = threading.Event()
    written = []
    write = LeaseStore.write

    def held_write(store, last_token, changes):
        changes = list(changes)
        assert gate.wait(30), "the test never let the write through"
        write(store, last_token, changes)
        written.extend(holder.fencing_token for _, holder in changes if holder)

    monkeypatch.setattr(LeaseStore, "write", held_write)
    node = await start_node()
    client = node.client()
    grant = client.try_become_leader if rpc == "TryBecomeLeader" else client.campaign
    reply = {}

    async def call() -> None:
        reply["leader"] = (await grant("e", "a")).leader

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await settle()  # all but the held write has happened
            assert "leader" not in reply
            gate.set()
    finally:
        gate.set()
    assert reply["leader"].fencing_token in written


# -- in-memory nodes ------------------------------------------------------------


async def test_in_memory_node_grants_nothing_until_its_start_grace_has_passed(
    start_node: StartNode, mock_clock: trio.testing.MockClock
):
    node = await start_node(data_dir=None, start_grace=True, max_ttl_ms=1000)
    client = node.client()
    with pytest.raises(GRPCError) as info:
        await client.try_become_leader("e", "a", ttl_ms=500)
    assert info.value.status is Status.UNAVAILABLE
    mock_clock.jump(0.999)
    with pytest.raises(GRPCError) as info:
        await client.try_become_leader("e", "a", ttl_ms=500)
    assert info.value.status is Status.UNAVAILABLE
    assert not (await client.current_leader("e")).has_leader  # reads still work
    mock_clock.jump(0.002)
    assert (await client.try_become_leader("e", "a", ttl_ms=500)).success


async def test_campaign_made_during_the_start_grace_is_granted_when_it_ends(
    start_node: StartNode, mock_clock: trio.testing.MockClock
):
    node = await start_node(data_dir=None, start_grace=True, max_ttl_ms=1000)
    waiter, other = node.client(), node.client()
    result = {}

    async def campaign() -> None:
        result["reply"] = await waiter.campaign("e", "a", ttl_ms=500)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(campaign)
        await settle()
        mock_clock.jump(0.5)
        await settle()
        assert "reply" not in result
        mock_clock.jump(0.501)
    assert result["reply"].leader.node_id == "a"
    # Granted at the end of the grace: the full TTL starts then.
    assert result["reply"].leader.remaining_ms in (499, 500)
    refused = await other.try_become_leader("e", "b", ttl_ms=500)
    assert not refused.success
    assert refused.leader.node_id == "a"


async def test_in_memory_tokens_are_seeded_from_the_wall_clock_and_go_up_across_restarts(
    start_node: StartNode,
):
    before = time.time_ns() // 1000
    node = await start_node(data_dir=None)
    first = (await node.client().try_become_leader("e", "a")).leader.fencing_token
    assert first > before  # microseconds since the epoch, not a counter from 1
    await node.stop()
    node = await start_node(data_dir=None)
    second = (await node.client().try_become_leader("e", "b")).leader.fencing_token
    assert second > first
    assert second <= time.time_ns() // 1000 + 1
