"""Per-node limits: one client cannot take every election, queue place or watcher.

Over a limit the call gets RESOURCE_EXHAUSTED with a message naming the limit,
and nothing else changes: what is held is still renewed and released.
"""

from __future__ import annotations

import pytest
import trio

from trio_election._bridge import GRPCError, Status

from ._support import StartNode, settle


async def exhausted(call, *words: str) -> None:
    with pytest.raises(GRPCError) as raised:
        await call
    assert raised.value.status is Status.RESOURCE_EXHAUSTED, raised.value
    for word in words:
        assert word in raised.value.message


async def test_a_grant_past_max_elections_is_refused_and_held_ones_still_renew(
    start_node: StartNode,
):
    node = await start_node(data_dir=None, max_elections=2)
    client = node.client()
    first = (await client.try_become_leader("e1", "w1")).leader
    assert (await client.try_become_leader("e2", "w1")).success
    await exhausted(client.try_become_leader("e3", "w1"), "elections", "limit is 2")
    await exhausted(client.campaign("e3", "w1", timeout=5), "elections")
    assert not (await client.current_leader("e3")).has_leader
    # What is held is untouched: a refresh, a renewal and a release all go through.
    assert (await client.try_become_leader("e1", "w1")).success
    assert (await client.heartbeat("e1", "w1", first.fencing_token)).success
    assert await client.release("e1", "w1", first.fencing_token)
    assert (await client.try_become_leader("e3", "w1")).success


async def test_a_campaigner_past_max_campaigners_is_refused(start_node: StartNode):
    node = await start_node(data_dir=None, max_campaigners=1)
    client = node.client()
    assert (await client.try_become_leader("e", "holder")).success
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.campaign, "e", "waiter-1")
        await settle()
        await exhausted(client.campaign("e", "waiter-2", timeout=5), "campaigners", "limit is 1")
        nursery.cancel_scope.cancel()


async def test_watchers_past_the_per_connection_limit_are_refused_and_others_go_on(
    start_node: StartNode,
):
    node = await start_node(data_dir=None, max_watchers_per_connection=2, max_watchers=3)
    greedy, other = node.client(), node.client()
    async with greedy.watch("a") as first, greedy.watch("b") as second:
        assert (await first.recv()).revision == 0
        assert (await second.recv()).revision == 0
        with pytest.raises(GRPCError) as raised:
            async with greedy.watch("c") as third:
                await third.recv()
        assert raised.value.status is Status.RESOURCE_EXHAUSTED
        assert "this connection has 2 watchers" in raised.value.message
        async with other.watch("a") as fine:
            assert (await fine.recv()).revision == 0
            with pytest.raises(GRPCError) as raised:
                async with other.watch("d") as over:
                    await over.recv()
            assert "this node serves 3 watchers" in raised.value.message
        # Watchers still get every change.
        await other.try_become_leader("a", "w1")
        assert (await first.recv()).leader.node_id == "w1"
