"""Prometheus metrics of one node (``--metrics-listen``), in its own registry.

Theory of operation: most of what an operator watches is state the node keeps
anyway (elections held, campaigners and watchers, the Raft term, role,
indexes and each peer's progress) or a count it keeps as a plain integer
(leadership changes in the hub, Raft leader changes, renewals answered).
:class:`_NodeCollector` reads them when Prometheus scrapes, on the Trio
thread that owns them, so the node does no metrics work per operation for
those. Only what needs a distribution is recorded as it happens: each client
call's status and duration (the service's one handler wrapper calls
:meth:`Metrics.call_ended`; the token check calls :meth:`Metrics.call_refused`
for a call it refuses before any handler) and each fsynced storage write (the
store calls the function :meth:`Metrics.storage_writes` returns, from its
worker thread; prometheus-client's values are thread-safe).

Each node has its own ``CollectorRegistry``, never the process-wide one, so
several nodes in one process (the tests) do not collide. ``_metrics_http``
serves it.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..core import EventKind
from ..raft import Role
from ._cluster import ClusterNode, peer_health
from ._config import NodeConfig

PREFIX = "trio_election_"

#: Call durations: a unary call takes ~0.2 ms on an idle node, a grant waits
#: for a fsync (ms), a cluster's for a quorum round, a Campaign for its turn.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: One fsynced SQLite transaction: ~0.1 ms on a RAM disk, ms on an SSD, more on a busy disk.
FSYNC_BUCKETS = LATENCY_BUCKETS[:-2]

#: The Raft roles, as the role gauge's label says them.
ROLES = {role: role.name.lower().replace("_", "-") for role in Role}

#: The leadership changes by cause, as the counter's label says them.
CAUSES = {
    EventKind.ELECTED: "elected",
    EventKind.RELEASED: "released",
    EventKind.EXPIRED: "expired",
}


def instrument(config: NodeConfig, node: Any, service: Any) -> Metrics | None:
    """Metrics for ``node`` and its client ``service``, if ``config`` asks for
    them (``--metrics-listen``); call it before the node opens its store."""
    if config.metrics_listen is None:
        return None
    metrics = Metrics()
    service.on_call = metrics.call_ended
    service.guard.on_refused = metrics.call_refused
    node.on_write = metrics.storage_writes("raft.db" if config.clustered else "leases.db")
    metrics.watch(node, service)
    return metrics


class Metrics:
    """The metrics of one node and the registry they are served from.

    :func:`instrument` makes one for a node: it gives :meth:`call_ended` to
    the client service and :meth:`storage_writes` to the store, then
    :meth:`watch`-es the node.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            f"{PREFIX}requests",
            "Client calls that ended, by RPC and gRPC status code (errors: code != OK).",
            ["rpc", "code"],
            registry=self.registry,
        )
        self._latency = Histogram(
            f"{PREFIX}request_duration_seconds",
            "How long client calls took, by RPC (a stream: from its start to its end).",
            ["rpc"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._fsync = Histogram(
            f"{PREFIX}storage_fsync_seconds",
            "How long each fsynced write of a batch took, by file (leases.db, raft.db).",
            ["file"],
            buckets=FSYNC_BUCKETS,
            registry=self.registry,
        )
        # The labelled children, looked up once: labels() costs more than inc().
        self._counts: dict[tuple[str, str], Callable[[], None]] = {}
        self._durations: dict[str, Callable[[float], None]] = {}

    def call_ended(self, rpc: str, code: str, seconds: float) -> None:
        """Count one client call of ``rpc`` that ended with ``code`` after ``seconds``."""
        count = self._counts.get((rpc, code))
        if count is None:
            count = self._counts[rpc, code] = self._requests.labels(rpc, code).inc
        count()
        observe = self._durations.get(rpc)
        if observe is None:
            observe = self._durations[rpc] = self._latency.labels(rpc).observe
        observe(seconds)

    def call_refused(self, rpc: str, code: str) -> None:
        """Count one call of ``rpc`` refused with ``code`` before it was handled
        (a missing or wrong token): it has no duration worth a histogram."""
        self._requests.labels(rpc, code).inc()

    def storage_writes(self, file: str) -> Callable[[float], None]:
        """What the store of ``file`` calls with each fsynced write's duration."""
        return self._fsync.labels(file).observe

    def watch(self, node: Any, service: Any) -> None:
        """Read ``node`` (a ``Node`` or a ``ClusterNode``) and its client
        ``service`` at every scrape."""
        self.registry.register(_NodeCollector(node, service))

    def scrape(self) -> bytes:
        """The metrics now, in Prometheus' text format."""
        return generate_latest(self.registry)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}{name}", doc, value=value)


class _NodeCollector:
    """The node's state, read at scrape time (on the Trio thread)."""

    def __init__(self, node: Any, service: Any) -> None:
        self.node = node
        self.service = service
        try:
            self.version = importlib.metadata.version("trio-election")
        except importlib.metadata.PackageNotFoundError:
            self.version = "unknown"

    def collect(self) -> Iterator[Metric]:
        node, service = self.node, self.service
        clustered = isinstance(node, ClusterNode)
        info = GaugeMetricFamily(
            f"{PREFIX}node_info",
            "Always 1: the node's id, kind and version in its labels.",
            labels=["node_id", "mode", "version"],
        )
        info.add_metric(
            [node.config.node_id or "", "cluster" if clustered else "single", self.version], 1
        )
        yield info
        yield _gauge(
            "serving", "1 while the node can serve writes (its health: SERVING).", node.serving
        )
        yield _gauge("elections_held", "Elections with a holder on this node.", len(node.machine))
        yield _gauge(
            "campaigners_waiting",
            "Campaign calls queued for an election.",
            sum(1 for _ in node.machine.waiters()),
        )
        yield _gauge("watchers", "Watch streams open on this node.", service.watching)
        changes = CounterMetricFamily(
            f"{PREFIX}leadership_changes",
            "Changes of holder this node applied, by cause: elected (granted, "
            "also after an expiry), released, expired.",
            labels=["cause"],
        )
        for kind, cause in CAUSES.items():
            changes.add_metric([cause], node.hub.changes.get(kind, 0))
        yield changes
        renewals = CounterMetricFamily(
            f"{PREFIX}renewals",
            "Heartbeats answered (one RPC, a KeepAlive message or one of a batch), by result.",
            labels=["result"],
        )
        renewals.add_metric(["renewed"], service.renewals[True])
        renewals.add_metric(["refused"], service.renewals[False])
        yield renewals
        if clustered:
            yield from self._raft(node)
        else:
            yield _gauge(
                "storage_writable",
                "0 while the disk refuses writes (then grants and releases are refused).",
                node.storage_failure is None,
            )

    def _raft(self, node: ClusterNode) -> Iterator[Metric]:
        status = node.raw.status()
        yield _gauge("raft_term", "The current Raft term.", status.term)
        role = GaugeMetricFamily(
            f"{PREFIX}raft_role", "1 for the role this member plays now.", labels=["role"]
        )
        for each, name in ROLES.items():
            role.add_metric([name], status.role is each)
        yield role
        yield _gauge(
            "raft_has_leader", "1 while this member knows a Raft leader.", node.leader is not None
        )
        yield _gauge("raft_commit_index", "The highest log index known committed.", status.commit)
        yield _gauge("raft_applied_index", "The highest log index applied here.", node.applied)
        yield _gauge("raft_last_index", "The last index in this member's log.", status.last_index)
        yield _gauge(
            "raft_members", "Voting members, as this member knows them.", len(node.members)
        )
        yield CounterMetricFamily(
            f"{PREFIX}raft_leader_changes",
            "Raft leaders this member has seen elected (one per term that had one).",
            value=node.leader_changes,
        )
        yield _gauge(
            "raft_proposals_pending",
            "Commands proposed through this member that have not applied yet.",
            node.proposals_pending,
        )
        yield CounterMetricFamily(
            f"{PREFIX}raft_peer_bytes_sent",
            "Bytes of Raft messages sent to the other members.",
            value=node.peers.bytes_sent if node.peers is not None else 0,
        )
        lag = GaugeMetricFamily(
            f"{PREFIX}raft_peer_lag",
            "Entries a member's log is behind the leader's (on the Raft leader only).",
            labels=["peer"],
        )
        match = GaugeMetricFamily(
            f"{PREFIX}raft_peer_match_index",
            "The highest index known replicated on a member (on the Raft leader only).",
            labels=["peer"],
        )
        healthy = GaugeMetricFamily(
            f"{PREFIX}raft_peer_healthy",
            "1 if the leader heard from a member within an election timeout "
            "(on the Raft leader only).",
            labels=["peer"],
        )
        for peer, health in peer_health(status, node.id).items():
            lag.add_metric([peer], health.lag)
            match.add_metric([peer], health.match_index)
            healthy.add_metric([peer], health.healthy)
        yield from (lag, match, healthy)
