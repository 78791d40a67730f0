"""Three real members with ``--metrics-listen`` and ``--log-format json``: each
shows its Raft state on ``/metrics``, the Raft leader each peer's lag and
health, and every line each one logs is a JSON object naming it.

Real processes and real time: waits poll a scrape under ``trio.fail_after``.
"""

from __future__ import annotations

import json

import pytest
import trio

from trio_election import open_client
from trio_election.testing import METRICS_LINE, MetricSamples, scrape_metrics
from trio_election.testing.processes import POLL_INTERVAL, Cluster

pytestmark = pytest.mark.cluster


def metrics_port(cluster: Cluster, node_id: str) -> int:
    match = METRICS_LINE.search(cluster.nodes[node_id].log_path.read_text())
    assert match, f"{node_id} logged no 'metrics on ...' line"
    return int(match[2])


async def scrape_until(port: int, done, timeout: float = 15.0) -> MetricSamples:
    """Scrape until ``done(samples)``; the last scrape."""
    metrics = None
    try:
        with trio.fail_after(timeout):
            while not done(metrics := await scrape_metrics(port)):
                await trio.sleep(POLL_INTERVAL)
    except trio.TooSlowError:
        raise AssertionError(f"not so within {timeout:g} s:\n{metrics and metrics.text}") from None
    return metrics


async def test_members_show_their_raft_state_and_the_leader_its_peers(cluster: Cluster):
    cluster.flags = ("--metrics-listen", "127.0.0.1:0", "--log-format", "json")
    leader, term = await cluster.start(3)
    followers = sorted(i for i in cluster.nodes if i != leader)
    async with open_client(cluster.endpoints([leader])) as client:
        assert (await client.try_become_leader("jobs", "a", ttl=10)).success

    # Both peers heard from lately and caught up with the grant.
    metrics = await scrape_until(
        metrics_port(cluster, leader),
        lambda m: (
            m.by("trio_election_raft_peer_healthy", "peer") == {(p,): 1 for p in followers}
            and m.by("trio_election_raft_peer_lag", "peer") == {(p,): 0 for p in followers}
        ),
    )
    assert metrics.get("trio_election_raft_term") == term > 0
    assert metrics.get("trio_election_raft_role", role="leader") == 1
    assert metrics.get("trio_election_raft_role", role="follower") == 0
    commit = metrics.get("trio_election_raft_commit_index")
    assert commit >= 2  # the leader's empty entry and the grant
    for (peer,), match in metrics.by("trio_election_raft_peer_match_index", "peer").items():
        assert peer in followers and match == metrics.get("trio_election_raft_last_index")
    assert metrics.get("trio_election_raft_members") == 3
    assert metrics.get("trio_election_raft_leader_changes_total") >= 1
    assert metrics.get("trio_election_leadership_changes_total", cause="elected") == 1
    assert metrics.get("trio_election_requests_total", rpc="TryBecomeLeader", code="OK") == 1
    assert metrics.get("trio_election_storage_fsync_seconds_count", file="raft.db") >= 1
    assert metrics.get("trio_election_raft_peer_bytes_sent_total") > 0

    for follower in followers:
        seen = await scrape_until(
            metrics_port(cluster, follower),
            lambda m: m.get("trio_election_raft_applied_index") >= commit,
        )
        assert seen.get("trio_election_raft_role", role="follower") == 1
        assert seen.get("trio_election_raft_term") == term
        assert seen.get("trio_election_raft_has_leader") == 1
        assert seen.get("trio_election_elections_held") == 1
        assert seen.by("trio_election_raft_peer_lag", "peer") == {}  # only the leader knows
        assert seen.by("trio_election_node_info", "node_id") == {(follower,): 1}

    for node_id, node in cluster.nodes.items():
        lines = [
            line
            for line in node.log_path.read_text().splitlines()
            if not line.startswith("==== ")  # the harness's own line: the command
        ]
        assert lines
        for line in lines:
            record = json.loads(line)
            assert record["node_id"] == node_id, record
            assert {"ts", "level", "logger", "message"} <= record.keys()
        assert any(json.loads(line).get("term") == term for line in lines)
