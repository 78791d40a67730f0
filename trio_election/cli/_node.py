"""``trio-election node``: run one node until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

import trio

from .._util import unwrap_single_exception
from ..core import DEFAULT_MAX_TTL_MS, MAX_MAX_TTL_MS, MIN_TTL_MS
from ..server import NodeConfig, serve
from ..server._raft_store import CorruptLog
from ._common import parse_listen


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
        default=Path("default.trio-election"),
        help="where holders and the fencing-token high-water mark are kept (default %(default)s)",
    )
    parser.add_argument(
        "--in-memory",
        action="store_true",
        help="keep nothing on disk; after a restart grant nothing for --max-ttl",
    )
    parser.add_argument(
        "--max-ttl",
        type=float,
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
        "--advertise",
        metavar="HOST:PORT",
        help="the address other nodes reach this one at (default: --listen)",
    )
    cluster.add_argument(
        "--request-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long a command may wait for a leader and its commit before the client is "
        "told UNAVAILABLE (default %(default)g)",
    )
    cluster.add_argument(
        "--snapshot-entries",
        type=int,
        default=10_000,
        metavar="N",
        help="snapshot the state and compact the log every N applied entries (default %(default)s)",
    )
    cluster.add_argument(
        "--tick",
        type=float,
        default=0.05,
        metavar="SECONDS",
        help="Raft tick: heartbeats every tick, elections after 10-20 ticks (default %(default)g)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.set_defaults(run=run)


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
    advertise = args.advertise
    if advertise is None and initial is not None and args.id in initial:
        advertise = initial[args.id]
    return NodeConfig(
        host=host,
        port=port,
        data_dir=None if args.in_memory else args.data_dir,
        max_ttl_ms=max_ttl_ms,
        start_grace=not args.unsafe_no_start_grace,
        node_id=args.id,
        initial_cluster=initial,
        join=args.join,
        advertise=advertise,
        tick_s=args.tick,
        snapshot_entries=args.snapshot_entries,
        request_timeout_s=args.request_timeout,
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
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = config_from(args)
    try:
        with unwrap_single_exception():
            trio.run(_main, config)
    except (SystemExit, CorruptLog, OSError) as exc:
        # A refusal to start (damaged log, wrong data dir, port in use) is a
        # sentence for the operator, not a traceback.
        if isinstance(exc, SystemExit) and not isinstance(exc.code, str):
            raise
        logging.getLogger("trio_election.server").error(
            "%s", exc.code if isinstance(exc, SystemExit) else exc
        )
        return 1
    return 0


async def _main(config: NodeConfig) -> None:
    # Signals through Trio, not KeyboardInterrupt: under load that hung the
    # process (trio-asyncio issue #118).
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    logging.getLogger("trio_election.server").info(
                        "%s: shutting down", signal.Signals(signum).name
                    )
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            # serve returns by itself when this node is removed from its cluster.
            await serve(config)
            nursery.cancel_scope.cancel()
