"""Cluster.ListElections on three real node processes: every member lists the
replicated state it applied, so once all have applied a grant they list the
same holders, fencing tokens, TTLs and owners (what a fault-injection run
compares at its end); and the ``elections`` and ``status --watch`` commands
on a member. Waiting polls Status under ``trio.fail_after``."""

from __future__ import annotations

import json

import pytest

from trio_election import open_client
from trio_election.testing.processes import Cluster, run_cli

pytestmark = pytest.mark.cluster


async def test_every_member_lists_the_same_holders_and_tokens_after_a_grant(cluster: Cluster):
    leader, _ = await cluster.start(3)
    async with open_client(cluster.endpoints([leader]), timeout=5) as client:
        grants = {
            name: (await client.try_become_leader(name, f"worker-{name}", ttl=60)).leader
            for name in ("jobs/b", "jobs/a", "cron")
        }
    status = await cluster.status(leader)
    assert status is not None
    committed = status.commit_index  # every grant was committed before its reply
    for node_id in cluster.nodes:
        await cluster.wait_caught_up(node_id, committed)
    listings = {node_id: await cluster.elections(node_id) for node_id in cluster.nodes}

    expected = sorted(
        (name, held.node_id, held.fencing_token, 60_000, "") for name, held in grants.items()
    )
    for node_id, (applied, entries) in listings.items():
        assert applied >= committed, node_id
        listed = [(e.election, e.node_id, e.fencing_token, e.ttl_ms, e.owner) for e in entries]
        assert listed == expected, node_id
        assert all(0 < e.remaining_ms <= 60_000 for e in entries), node_id

    # The command line says which member and which state it listed.
    follower = next(i for i in cluster.nodes if i != leader)
    address = cluster.nodes[follower].address
    result = await run_cli("elections", "--json", "--endpoints", address)
    assert result.returncode == 0, result.stderr.decode()
    listed = json.loads(result.stdout)
    assert (listed["node"], listed["applied_index"]) == (follower, listings[follower][0])
    assert [e["election"] for e in listed["elections"]] == [row[0] for row in expected]
    watch = ["status", "--watch", "--count", "2", "--interval", "0.1", "--endpoints", address]
    result = await run_cli(*watch)
    assert result.returncode == 0, result.stderr.decode()
    refreshes = result.stdout.decode().strip("\n").split("\n\n")
    tables = [refresh.splitlines()[1].split(",")[0] for refresh in refreshes]
    assert tables == [f"node {follower} (follower)"] * 2
