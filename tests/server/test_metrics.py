"""Prometheus metrics on ``--metrics-listen``: each call counted once, by RPC and
status; the gauges show the node's state at the scrape; a cluster member shows
its Raft state; the HTTP side answers only ``GET /metrics`` and survives junk.

Each node logs ``metrics on http://HOST:PORT/metrics`` (port 0 here), and the
tests learn the port from that record. Scrapes are real HTTP requests to the
node's own listener, parsed with prometheus-client's parser.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_election._bridge import Channel, GRPCError, Status
from trio_election._generated.v1 import election_grpc, election_pb2 as pb
from trio_election.server._auth import Tokens
from trio_election.server._security import PeerAuth
from trio_election.testing import METRICS_LINE, MetricSamples, http_get, scrape_metrics

from ._support import StartNode, settle

METRICS = ("127.0.0.1", 0)
DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "trio-election.json"


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_election")


def metrics_port(caplog: pytest.LogCaptureFixture) -> int:
    """The port of the metrics listener the last node started logged."""
    ports = [int(m[2]) for r in caplog.records if (m := METRICS_LINE.search(r.getMessage()))]
    assert ports, "no node logged 'metrics on ...'"
    return ports[-1]


async def test_each_call_is_counted_once_by_rpc_and_status(
    start_node: StartNode, caplog: pytest.LogCaptureFixture
):
    node = await start_node(metrics_listen=METRICS)  # with a data dir: one fsync per grant
    port = metrics_port(caplog)
    client = node.client()
    granted = await client.try_become_leader("jobs", "a")
    assert granted.success
    assert (await client.heartbeat("jobs", "a", granted.leader.fencing_token)).success
    with pytest.raises(GRPCError) as refused:
        await client.try_become_leader("", "a")
    assert refused.value.status is Status.INVALID_ARGUMENT

    metrics = await scrape_metrics(port)
    assert metrics.by("trio_election_requests_total", "rpc", "code") == {
        ("TryBecomeLeader", "OK"): 1,
        ("TryBecomeLeader", "INVALID_ARGUMENT"): 1,
        ("Heartbeat", "OK"): 1,
    }
    assert metrics.by("trio_election_request_duration_seconds_count", "rpc") == {
        ("TryBecomeLeader",): 2,
        ("Heartbeat",): 1,
    }
    assert metrics.get("trio_election_elections_held") == 1
    assert metrics.by("trio_election_leadership_changes_total", "cause") == {
        ("elected",): 1,
        ("released",): 0,
        ("expired",): 0,
    }
    assert metrics.get("trio_election_renewals_total", result="renewed") == 1
    assert metrics.get("trio_election_renewals_total", result="refused") == 0
    assert metrics.get("trio_election_storage_fsync_seconds_count", file="leases.db") == 1
    assert metrics.get("trio_election_storage_writable") == 1
    assert metrics.get("trio_election_serving") == 1
    info = metrics.by("trio_election_node_info", "mode", "node_id")
    assert info == {("single", ""): 1}
    assert metrics.get("trio_election_raft_term") is None  # not a cluster member

    # A scrape changes nothing; the next one sees only what happened since.
    assert (await client.release("jobs", "a", granted.leader.fencing_token)) is True
    again = await scrape_metrics(port)
    assert again.get("trio_election_requests_total", rpc="ReleaseLeadership", code="OK") == 1
    assert again.get("trio_election_requests_total", rpc="TryBecomeLeader", code="OK") == 1
    assert again.get("trio_election_leadership_changes_total", cause="released") == 1
    assert again.get("trio_election_elections_held") == 0
    assert again.get("trio_election_storage_fsync_seconds_count", file="leases.db") == 2


async def test_calls_refused_for_their_token_are_counted_by_status(
    start_node: StartNode, caplog: pytest.LogCaptureFixture, tmp_path: Path
):
    token = "t" * 32
    (tmp_path / "tokens").write_text(f"{token} jobs/\n")
    node = await start_node(
        data_dir=None, metrics_listen=METRICS, tokens=Tokens(tmp_path / "tokens")
    )
    port = metrics_port(caplog)
    request = pb.TryBecomeLeaderRequest(election="jobs/a", node_id="w", ttl_ms=5_000)
    for presented, status in [(None, Status.UNAUTHENTICATED), ("w" * 32, Status.UNAUTHENTICATED)]:
        channel = token_channel(node.port, presented)
        try:
            with pytest.raises(GRPCError) as refused:
                await channel.unary(channel.stub.TryBecomeLeader, request, 5)
            assert refused.value.status is status
        finally:
            channel.close()
    channel = token_channel(node.port, token)
    try:
        assert (await channel.unary(channel.stub.TryBecomeLeader, request, 5)).success
    finally:
        channel.close()

    metrics = await scrape_metrics(port)
    assert metrics.by("trio_election_requests_total", "rpc", "code") == {
        ("TryBecomeLeader", "UNAUTHENTICATED"): 2,
        ("TryBecomeLeader", "OK"): 1,
    }
    # A refused call never ran: it has no duration.
    assert metrics.get("trio_election_request_duration_seconds_count", rpc="TryBecomeLeader") == 1


def token_channel(port: int, token: str | None) -> Channel:
    metadata = None if token is None else {"authorization": f"Bearer {token}"}
    return Channel("127.0.0.1", port, election_grpc.LeaderElectionStub, metadata=metadata)


async def test_gauges_show_campaigners_watchers_and_expiries_at_the_scrape(
    start_node: StartNode, caplog: pytest.LogCaptureFixture, mock_clock: trio.testing.MockClock
):
    node = await start_node(data_dir=None, metrics_listen=METRICS)
    port = metrics_port(caplog)
    holder, candidate, watcher = node.client(), node.client(), node.client()
    await holder.try_become_leader("jobs", "a", ttl_ms=1000)
    async with trio.open_nursery() as nursery, watcher.watch("jobs") as watch:
        await watch.recv()  # the current state: the watch is registered
        nursery.start_soon(candidate.campaign, "jobs", "b")
        await settle()
        metrics = await scrape_metrics(port)
        assert metrics.get("trio_election_campaigners_waiting") == 1
        assert metrics.get("trio_election_watchers") == 1
        assert metrics.get("trio_election_elections_held") == 1

        mock_clock.jump(1.001)  # a's lease expires; b, waiting, is elected
        await settle()
        metrics = await scrape_metrics(port)
        assert metrics.get("trio_election_campaigners_waiting") == 0
        assert metrics.by("trio_election_leadership_changes_total", "cause") == {
            ("elected",): 2,
            ("released",): 0,
            ("expired",): 1,
        }
        assert metrics.get("trio_election_requests_total", rpc="Campaign", code="OK") == 1
        nursery.cancel_scope.cancel()
    await settle()
    metrics = await scrape_metrics(port)
    assert metrics.get("trio_election_watchers") == 0
    assert metrics.get("trio_election_requests_total", rpc="Watch", code="CANCELLED") == 1


async def test_a_call_past_its_deadline_is_counted_as_deadline_exceeded(
    start_node: StartNode, caplog: pytest.LogCaptureFixture, mock_clock: trio.testing.MockClock
):
    node = await start_node(data_dir=None, metrics_listen=METRICS)
    port = metrics_port(caplog)
    holder, candidate = node.client(), node.client()
    await holder.try_become_leader("jobs", "a", ttl_ms=60_000)
    async with trio.open_nursery() as nursery:

        async def campaign() -> None:
            with pytest.raises((GRPCError, TimeoutError)):  # whichever side's timer is first
                await candidate.campaign("jobs", "b", timeout=1.0)

        nursery.start_soon(campaign)
        await settle()
        mock_clock.jump(1.5)
    await settle()
    metrics = await scrape_metrics(port)
    assert (
        metrics.get("trio_election_requests_total", rpc="Campaign", code="DEADLINE_EXCEEDED") == 1
    )


async def test_a_one_member_cluster_shows_its_raft_state(
    start_node: StartNode, caplog: pytest.LogCaptureFixture, tmp_path: Path
):
    node = await start_node(
        data_dir=tmp_path / "n1",
        node_id="n1",
        initial_cluster={"n1": "127.0.0.1:1"},  # nobody else needs to reach it
        peer_port=0,
        peer_auth=PeerAuth(insecure=True),
        metrics_listen=METRICS,
    )
    port = metrics_port(caplog)
    client = node.client()
    # Real time: the member elects itself after 10-20 ticks; a grant waits for that.
    assert (await client.try_become_leader("jobs", "a")).success
    metrics = await scrape_metrics(port)
    assert metrics.get("trio_election_raft_term") >= 1
    assert metrics.by("trio_election_raft_role", "role") == {
        ("leader",): 1,
        ("follower",): 0,
        ("candidate",): 0,
        ("pre-candidate",): 0,
    }
    assert metrics.get("trio_election_raft_has_leader") == 1
    assert metrics.get("trio_election_raft_leader_changes_total") == 1
    commit = metrics.get("trio_election_raft_commit_index")
    assert commit >= 2  # the leader's empty entry and the grant
    assert metrics.get("trio_election_raft_applied_index") == commit
    assert metrics.get("trio_election_raft_members") == 1
    assert metrics.get("trio_election_raft_proposals_pending") == 0
    assert metrics.get("trio_election_storage_fsync_seconds_count", file="raft.db") >= 1
    assert metrics.get("trio_election_elections_held") == 1
    assert metrics.by("trio_election_raft_peer_healthy", "peer") == {}  # no other member
    assert metrics.by("trio_election_node_info", "mode", "node_id") == {("cluster", "n1"): 1}


async def test_metrics_are_off_unless_asked_for(
    start_node: StartNode, caplog: pytest.LogCaptureFixture
):
    await start_node(data_dir=None)
    assert not any(METRICS_LINE.search(r.getMessage()) for r in caplog.records)


async def test_only_get_metrics_is_served_and_junk_does_not_hurt(
    start_node: StartNode, caplog: pytest.LogCaptureFixture
):
    node = await start_node(data_dir=None, metrics_listen=METRICS)
    port = metrics_port(caplog)
    assert (await http_get(port, "/"))[0] == 404
    assert (await http_get(port, "/metrics?x=1"))[0] == 200
    for junk in [b"\x00\xff garbage\r\n\r\n", b"POST /metrics HTTP/1.1\r\n\r\n", b"GET"]:
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(junk)
                if junk == b"GET":
                    await stream.send_eof()
                reply = b""
                while data := await stream.receive_some():
                    reply += data
        expected = {b"G": b"", b"P": b"HTTP/1.1 405", b"\x00": b"HTTP/1.1 400"}[junk[:1]]
        assert reply.startswith(expected), reply
    metrics = MetricSamples((await http_get(port))[1])
    assert metrics.get("trio_election_serving") == 1
    assert (await node.client().try_become_leader("jobs", "a")).success


async def test_the_grafana_dashboard_uses_only_metrics_the_nodes_export(
    start_node: StartNode, caplog: pytest.LogCaptureFixture, tmp_path: Path
):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"trio_election_\w+", expr)}
    exported: set[str] = set()
    for config in [
        {"data_dir": tmp_path / "single"},
        {
            "data_dir": tmp_path / "n1",
            "node_id": "n1",
            "initial_cluster": {"n1": "127.0.0.1:1"},
            "peer_port": 0,
            "peer_auth": PeerAuth(insecure=True),
        },
    ]:
        node = await start_node(metrics_listen=METRICS, **config)
        port = metrics_port(caplog)
        assert (await node.client().try_become_leader("jobs", "a")).success
        metrics = await scrape_metrics(port)
        exported |= {name for name, _ in metrics.samples} | metrics.families.keys()
    assert used <= exported, used - exported
    assert "trio_election_raft_peer_lag" in used and "trio_election_requests_total" in used
