"""``trio-election node``: run one node until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

import trio

from .._bridge import ConnectionLimits
from .._tls import server_context
from .._util import unwrap_single_exception
from ..core import DEFAULT_MAX_TTL_MS, MAX_MAX_TTL_MS, MIN_TTL_MS
from ..server import NodeConfig, serve
from ..server._auth import Tokens
from ..server._logs import configure_logging
from ..server._security import PeerAuth
from ._common import UsageError, parse_listen, seconds, whole

#: The data dir when none is given.
DATA_DIR = Path("default.trio-election")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "node",
        help="run a node",
        description="Run one trio-election node until SIGINT or SIGTERM.",
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:50051",
        metavar="HOST:PORT",
        help="address to serve on (default %(default)s; port 0 picks one)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"where holders and the fencing-token high-water mark are kept (default {DATA_DIR})",
    )
    parser.add_argument(
        "--in-memory",
        action="store_true",
        help="keep nothing on disk; after a restart grant nothing for --max-ttl",
    )
    parser.add_argument(
        "--max-ttl",
        type=seconds("--max-ttl", MIN_TTL_MS / 1000, MAX_MAX_TTL_MS / 1000),
        default=DEFAULT_MAX_TTL_MS / 1000,
        metavar="SECONDS",
        help="longest TTL a client may ask for, and the start-up grace of an in-memory "
        "node (default %(default)g, at most 86400)",
    )
    parser.add_argument(
        "--unsafe-no-start-grace",
        action="store_true",
        help="UNSAFE, for tests and demos: let an in-memory node grant at once after a "
        "start. A client that held an election before the restart may still be working, "
        "so two clients could both act as leader.",
    )
    cluster = parser.add_argument_group(
        "cluster", "run as a member of a Raft cluster of three or five nodes"
    )
    cluster.add_argument("--id", help="this node's name in the cluster, e.g. n1")
    cluster.add_argument(
        "--initial-cluster",
        metavar="ID=HOST:PORT,...",
        help="bootstrap a new cluster of these members (the same on every one of them)",
    )
    cluster.add_argument(
        "--join", metavar="HOST:PORT", help="join an existing cluster through any member"
    )
    cluster.add_argument(
        "--peer-listen",
        metavar="HOST:PORT",
        help="address to serve peers on: Raft, joins, membership (default: --advertise, else "
        "this node's --initial-cluster entry, else what this data dir used last)",
    )
    cluster.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="the peer address other nodes reach this one at (default: --peer-listen)",
    )
    cluster.add_argument(
        "--request-timeout",
        type=seconds("--request-timeout", 0.1, 3600),
        default=5.0,
        metavar="SECONDS",
        help="how long a command may wait for a leader and its commit before the client is "
        "told UNAVAILABLE (default %(default)g)",
    )
    cluster.add_argument(
        "--snapshot-entries",
        type=whole("--snapshot-entries", 10, 10**9),
        default=10_000,
        metavar="N",
        help="snapshot the state and compact the log every N applied entries (default %(default)s)",
    )
    cluster.add_argument(
        "--tick",
        type=seconds("--tick", 0.001, 10),
        default=0.05,
        metavar="SECONDS",
        help="Raft tick: heartbeats every tick, elections after 10-20 ticks (default %(default)g)",
    )
    peers = parser.add_argument_group(
        "peer authentication",
        "a cluster member needs mutual TLS, a cluster key, or both; see README, Security",
    )
    peers.add_argument("--peer-cert", type=Path, metavar="PEM", help="this member's certificate")
    peers.add_argument("--peer-key", type=Path, metavar="PEM", help="its private key")
    peers.add_argument(
        "--peer-ca", type=Path, metavar="PEM", help="the cluster's CA: peers must present its certs"
    )
    peers.add_argument(
        "--cluster-key-file",
        type=Path,
        metavar="FILE",
        help="a secret every member (and every --join) presents on the peer port",
    )
    peers.add_argument(
        "--unsafe-insecure-peers",
        action="store_true",
        help="UNSAFE, for a throw-away local experiment only: accept any process that reaches "
        "the peer port as a member. It can then vote, append, propose and change membership, "
        "so two clients could both be made leader.",
    )
    clients = parser.add_argument_group("clients", "TLS and tokens on the client port")
    clients.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve clients over TLS")
    clients.add_argument("--tls-key", type=Path, metavar="PEM", help="the key of --tls-cert")
    clients.add_argument(
        "--client-ca",
        type=Path,
        metavar="PEM",
        help="require client certificates signed by this CA (with --tls-cert)",
    )
    clients.add_argument(
        "--auth-token-file",
        type=Path,
        metavar="FILE",
        help="require a token: one a line, TOKEN [ELECTION-PREFIX [read|write|admin]]; "
        "reloaded on SIGHUP",
    )
    limits = parser.add_argument_group(
        "limits", "what one client can take from the others (over a limit: RESOURCE_EXHAUSTED)"
    )
    defaults = NodeConfig()
    for flag, field, what in [
        ("--max-elections", "max_elections", "elections this node holds"),
        ("--max-campaigners", "max_campaigners", "Campaign calls waiting for one election"),
        ("--max-watchers", "max_watchers", "Watch streams this node serves"),
        (
            "--max-watchers-per-connection",
            "max_watchers_per_connection",
            "Watch streams one client connection opens",
        ),
        ("--keepalive-window", "keepalive_window", "renewals in flight on one KeepAlive stream"),
    ]:
        limits.add_argument(
            flag,
            type=whole(flag, 1, 10**9),
            default=getattr(defaults, field),
            metavar="N",
            help=f"{what}, at most (default %(default)s)",
        )
    connection = parser.add_argument_group(
        "connections",
        "what one client connection can cost the node, on the client port "
        "(the peer port has its own, larger windows); over a limit a call gets "
        "RESOURCE_EXHAUSTED, a flood GOAWAY and the connection is closed",
    )
    conn_defaults = ConnectionLimits()
    for flag, field, kind, what in _CONNECTION_FLAGS:
        parse = whole(flag, 1, 2**31 - 1) if kind == "N" else seconds(flag, 0.01, 86400)
        connection.add_argument(
            flag,
            dest=field,
            type=parse,
            default=getattr(conn_defaults, field),
            metavar=kind,
            help=f"{what} (default %(default)s)",
        )
    observe = parser.add_argument_group("observability", "logs and Prometheus metrics")
    observe.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    observe.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text lines, or one JSON object a line with ts, level, logger, message and, "
        "where known, node_id, term and election (default %(default)s)",
    )
    observe.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off; port 0 "
        "picks one, logged as 'metrics on ...')",
    )
    parser.set_defaults(run=run)


#: Flags for the fields of ConnectionLimits: (flag, field, N or S, what).
_CONNECTION_FLAGS = [
    ("--max-connections", "max_connections", "N", "client connections open at once"),
    (
        "--max-calls-per-connection",
        "max_streams_per_connection",
        "N",
        "calls in progress on one connection (HTTP/2 MAX_CONCURRENT_STREAMS)",
    ),
    ("--max-calls", "max_streams_total", "N", "calls in progress on all connections"),
    (
        "--connection-window",
        "connection_window_bytes",
        "N",
        "request bytes one connection may have buffered, unread",
    ),
    ("--call-window", "stream_window_bytes", "N", "request bytes one call may have buffered"),
    (
        "--handshake-timeout",
        "handshake_timeout_s",
        "S",
        "seconds a client may take over its TLS and HTTP/2 handshakes",
    ),
    (
        "--idle-timeout",
        "idle_timeout_s",
        "S",
        "seconds a connection without calls (or not reading) stays open",
    ),
    (
        "--request-read-timeout",
        "request_timeout_s",
        "S",
        "seconds a unary or Watch call may take to send its request",
    ),
    ("--max-resets-per-s", "max_resets_per_s", "N", "calls one connection may reset a second"),
    (
        "--max-settings-per-s",
        "max_settings_per_s",
        "N",
        "SETTINGS frames a connection may send a second",
    ),
    ("--max-pings-per-s", "max_pings_per_s", "N", "PING frames a connection may send a second"),
]


def config_from(args: argparse.Namespace) -> NodeConfig:
    """The one place where node flags become a :class:`NodeConfig`."""
    host, port = parse_listen(args.listen)
    max_ttl_ms = round(args.max_ttl * 1000)
    if not MIN_TTL_MS <= max_ttl_ms <= MAX_MAX_TTL_MS:
        raise SystemExit(f"--max-ttl must be between {MIN_TTL_MS / 1000} and 86400 seconds")
    initial = parse_initial_cluster(args.initial_cluster) if args.initial_cluster else None
    if (initial or args.join) and not args.id:
        raise SystemExit("--initial-cluster and --join need --id")
    if initial and args.join:
        raise SystemExit("give --initial-cluster or --join, not both")
    if args.id and args.in_memory:
        raise SystemExit("a cluster member needs a data dir (it votes): drop --in-memory")
    if args.in_memory and args.data_dir is not None:
        raise SystemExit("--in-memory keeps nothing on disk: drop --data-dir, or --in-memory")
    advertise = args.advertise
    if advertise is None and initial is not None and args.id in initial:
        advertise = initial[args.id]
    peer = args.peer_listen or advertise
    peer_host, peer_port = parse_listen(peer, "--peer-listen") if peer else (host, None)
    peer_flags = [args.peer_cert, args.peer_key, args.peer_ca, args.cluster_key_file]
    peer_auth = None
    if args.id:
        peer_auth = PeerAuth.from_files(
            cert=args.peer_cert,
            key=args.peer_key,
            ca=args.peer_ca,
            cluster_key_file=args.cluster_key_file,
            insecure=args.unsafe_insecure_peers,
        )
    elif any(f is not None for f in peer_flags) or args.unsafe_insecure_peers or args.peer_listen:
        raise SystemExit("peer flags are for cluster members: give --id (and a cluster) too")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("--tls-cert and --tls-key go together")
    if args.client_ca is not None and args.tls_cert is None:
        raise SystemExit(
            "--client-ca needs --tls-cert and --tls-key (client certificates need TLS)"
        )
    tls = None
    if args.tls_cert is not None:
        tls = server_context(args.tls_cert, args.tls_key, args.client_ca)
    tokens = Tokens(args.auth_token_file) if args.auth_token_file is not None else None
    return NodeConfig(
        host=host,
        port=port,
        data_dir=None if args.in_memory else (args.data_dir or DATA_DIR),
        max_ttl_ms=max_ttl_ms,
        start_grace=not args.unsafe_no_start_grace,
        node_id=args.id,
        initial_cluster=initial,
        join=args.join,
        advertise=advertise,
        peer_host=peer_host,
        peer_port=peer_port,
        peer_auth=peer_auth,
        tls=tls,
        tokens=tokens,
        max_elections=args.max_elections,
        max_campaigners=args.max_campaigners,
        max_watchers=args.max_watchers,
        max_watchers_per_connection=args.max_watchers_per_connection,
        keepalive_window=args.keepalive_window,
        connection_limits=ConnectionLimits(
            **{field: getattr(args, field) for _, field, _, _ in _CONNECTION_FLAGS}
        ),
        tick_s=args.tick,
        snapshot_entries=args.snapshot_entries,
        request_timeout_s=args.request_timeout,
        metrics_listen=(
            parse_listen(args.metrics_listen, "--metrics-listen") if args.metrics_listen else None
        ),
    )


def parse_initial_cluster(value: str) -> dict[str, str]:
    """``n1=h:p,n2=h:p`` to ``{"n1": "h:p", ...}``."""
    members: dict[str, str] = {}
    for item in value.split(","):
        member_id, sep, address = item.strip().partition("=")
        if not sep or not member_id or ":" not in address:
            raise SystemExit(f"--initial-cluster: {item!r} is not ID=HOST:PORT")
        members[member_id] = address
    return members


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format, args.id)
    try:
        config = config_from(args)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            raise UsageError(exc.code) from None  # contradictory or malformed flags
        raise
    # A refusal to start (StartupError) is a sentence for the operator: main prints it.
    with unwrap_single_exception():
        trio.run(_main, config)
    return 0


async def _main(config: NodeConfig) -> None:
    # Signals through Trio, not KeyboardInterrupt: under load that hung the
    # process (trio-asyncio issue #118).
    log = logging.getLogger("trio_election.server")
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        if config.tokens is not None:
                            config.tokens.reload()
                        else:
                            log.info("SIGHUP: no --auth-token-file to reload")
                        continue
                    log.info("%s: shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            # serve returns by itself when this node is removed from its cluster.
            await serve(config)
            nursery.cancel_scope.cancel()
