"""Campaigns whose caller is gone leave the queue, in a cluster too.

A Campaign's waiter belongs to the node that carries its call. When that node
dies, the Raft leader takes it for gone once it has not heard from it for a
bound (four election timeouts) and takes its waiters out of the queue through
the log; when the call ends, its node proposes the CancelWait until it is
applied; and a grant to a waiter whose call is gone is released at once by
its node. Three real node processes; the waits are bounded polls of the
nodes' Status (which counts the queued Campaigns as of each node's applied
state).
"""

from __future__ import annotations

import random

import pytest
import trio

from trio_election import open_client
from trio_election.testing.processes import Cluster

pytestmark = pytest.mark.cluster

#: Longer than any bound in play (the leader's 2 s "gone" bound, a commit),
#: and far shorter than the campaigners' TTL, so that a waiter left in the
#: queue and then granted would show as a holder for the whole wait.
BOUND = 10.0
CAMPAIGN_TTL = 60.0


async def waiting(cluster: Cluster, node_id: str) -> int:
    status = await cluster.status(node_id)
    assert status is not None
    return status.campaigns_waiting


async def until_waiting(cluster: Cluster, node_id: str, count: int) -> None:
    """Poll ``node_id`` (bounded) until ``count`` Campaigns are queued there."""
    with trio.fail_after(BOUND):
        while await waiting(cluster, node_id) != count:
            await trio.sleep(0.05)


async def test_a_campaign_carried_by_a_killed_follower_leaves_the_queue(cluster: Cluster):
    leader, _ = await cluster.start(3)
    follower = next(i for i in cluster.nodes if i != leader)
    async with (
        open_client(cluster.endpoints([leader])) as holder,
        open_client(cluster.endpoints([follower]), timeout=2) as candidate,
        open_client(cluster.endpoints([leader])) as other,
        trio.open_nursery() as nursery,
    ):
        held = await holder.try_become_leader("e", "holder", ttl=30)
        assert held.success
        nursery.start_soon(candidate.campaign, "e", "carried-by-follower", CAMPAIGN_TTL)
        await until_waiting(cluster, leader, 1)
        await cluster.kill(follower)
        # The leader stops hearing from the follower and, past its bound,
        # takes the follower's waiter out of the queue through the log.
        await until_waiting(cluster, leader, 0)
        nursery.cancel_scope.cancel()
        assert await holder.release("e", "holder", held.leader.fencing_token)
        # Nobody was granted in the holder's place: the waiter left before.
        assert await other.get_leader("e") is None
        with trio.fail_after(BOUND):
            granted = await other.campaign("e", "next", ttl=5)
        assert granted.node_id == "next"
        assert granted.fencing_token > held.leader.fencing_token


async def test_campaigns_cancelled_at_once_are_not_elected_later(cluster: Cluster):
    """Of many Campaigns through a follower for a free election, each cancelled
    0-20 ms after it began, none holds the election for its TTL: each either
    leaves the queue, or is given back when granted (by its call, or, once the
    call is gone, by its node)."""
    leader, _ = await cluster.start(3)
    follower = next(i for i in cluster.nodes if i != leader)
    rng = random.Random(7)
    async with (
        open_client(cluster.endpoints([follower]), timeout=2) as candidates,
        open_client(cluster.endpoints([leader])) as probe,
    ):

        async def campaign_briefly(n: int) -> None:
            # The cancellation after 0-20 ms is the behaviour under test.
            with trio.move_on_after(rng.uniform(0, 0.02)):
                await candidates.campaign("e", f"c{n}", CAMPAIGN_TTL)

        async with trio.open_nursery() as nursery:
            for n in range(100):
                nursery.start_soon(campaign_briefly, n)
        with trio.fail_after(BOUND):
            while await waiting(cluster, leader) or await probe.get_leader("e") is not None:
                await trio.sleep(0.05)
        # And it stays free: nothing was left queued to be promoted later.
        await until_waiting(cluster, follower, 0)
        assert await probe.get_leader("e") is None
