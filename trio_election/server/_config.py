"""One node's settings, read from flags in one place (``cli/_node.py``)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from .._bridge import ConnectionLimits
from ..core import DEFAULT_MAX_TTL_MS
from ._auth import Tokens
from ._security import PeerAuth

#: The peer listener's limits. Peers send Raft batches and snapshots (up to
#: 256 MiB) over long-lived streams, so their windows are grpclib's 4 MiB; a
#: cluster has a handful of members, each with a connection or two to each
#: other, so 256 connections is ample, and a stranger who cannot
#: authenticate has every call refused before its handler reads a byte.
PEER_CONNECTION_LIMITS = ConnectionLimits(
    max_connections=256,
    connection_window_bytes=4 * 1024 * 1024,
    stream_window_bytes=4 * 1024 * 1024,
    request_timeout_s=60.0,
)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """How to run one node.

    Attributes:
        host: Interface to listen on.
        port: Port to listen on; 0 picks a free one (tests).
        data_dir: Where holders and the token high-water mark are written
            through; None keeps everything in memory (``--in-memory``).
        max_ttl_ms: The longest TTL a client may ask for, and the start-up
            grace of an in-memory node.
        start_grace: Whether an in-memory node waits ``max_ttl_ms`` before its
            first grant (docs/design.md, promise 5). Turning it off is unsafe: a
            holder from before a restart may still be working.
        watch_buffer: Events a watcher may fall behind before it is dropped.
        shutdown_grace_s: How long calls in progress may finish on shutdown.
        node_id: This node's name in a cluster (``--id``).
        initial_cluster: ``{id: "host:port"}`` of a cluster to bootstrap.
        join: ``host:port`` of any member of a cluster to join.
        advertise: The peer address other nodes reach this one at; defaults
            to its entry in ``initial_cluster``, else ``peer_host:peer_port``
            (the bound port, with port 0).
        peer_host: Interface of the peer listener (Raft, joins, membership).
        peer_port: Port of the peer listener; None: the one this data dir
            used before (a restart), 0 picks a free one.
        peer_auth: How peers authenticate each other; a cluster member
            refuses to start without it.
        tls: TLS for the client listener (``_tls.server_context``), or None.
        tokens: Client tokens (``--auth-token-file``), or None for no client auth.
        max_elections: Elections one node holds at most; a grant of one more
            is RESOURCE_EXHAUSTED (renewals and releases always go through).
        max_campaigners: Campaign calls that may wait for one election.
        max_watchers: Watch streams one node serves at most.
        max_watchers_per_connection: Watch streams one client connection may open.
        keepalive_window: Renewals of one KeepAlive stream in flight at once
            (the client waits for answers beyond it).
        connection_limits: What the clients of the client listener may cost it:
            connections, calls, buffered bytes, timeouts and flood budgets
            (``_bridge.ConnectionLimits``, which gives each default and why).
        peer_connection_limits: The same for the peer listener.
        tick_s: The Raft tick. Elections time out after 10 to 20 ticks
            without a leader; the leader heartbeats every tick.
        request_timeout_s: How long a command may take to commit before the
            client is told UNAVAILABLE (no quorum, no leader).
        snapshot_entries: Applied entries between snapshots; a tenth of them
            stays in the log behind each snapshot for slightly lagging peers.
        metrics_listen: ``(host, port)`` to serve Prometheus metrics on at
            ``/metrics`` (``--metrics-listen``; port 0 picks one), or None
            for no metrics.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: Path | None = Path("default.trio-election")
    max_ttl_ms: int = DEFAULT_MAX_TTL_MS
    start_grace: bool = True
    watch_buffer: int = 1024
    shutdown_grace_s: float = 2.0
    node_id: str | None = None
    initial_cluster: dict[str, str] | None = None
    join: str | None = None
    advertise: str | None = None
    peer_host: str = "127.0.0.1"
    peer_port: int | None = None
    peer_auth: PeerAuth | None = None
    tls: ssl.SSLContext | None = None
    tokens: Tokens | None = None
    max_elections: int = 1_000_000
    max_campaigners: int = 1000
    max_watchers: int = 10_000
    max_watchers_per_connection: int = 100
    keepalive_window: int = 256
    connection_limits: ConnectionLimits = ConnectionLimits()
    peer_connection_limits: ConnectionLimits = PEER_CONNECTION_LIMITS
    tick_s: float = 0.05
    snapshot_entries: int = 10_000
    request_timeout_s: float = 5.0
    metrics_listen: tuple[str, int] | None = None

    @property
    def clustered(self) -> bool:
        """Whether this node runs Raft (or rejoins a cluster from its data dir)."""
        return bool(self.node_id and (self.initial_cluster or self.join or self._has_raft_log()))

    def _has_raft_log(self) -> bool:
        return self.data_dir is not None and (self.data_dir / "raft.db").exists()
