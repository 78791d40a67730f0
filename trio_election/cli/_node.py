"""``trio-election node``: run one node until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

import trio

from ..core import DEFAULT_MAX_TTL_MS, MAX_MAX_TTL_MS, MIN_TTL_MS
from ..server import NodeConfig, serve
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
    return NodeConfig(
        host=host,
        port=port,
        data_dir=None if args.in_memory else args.data_dir,
        max_ttl_ms=max_ttl_ms,
        start_grace=not args.unsafe_no_start_grace,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = config_from(args)
    trio.run(_main, config)
    return 0


async def _main(config: NodeConfig) -> None:
    # Signals through Trio, not KeyboardInterrupt: under load that hung the
    # process (trio-asyncio issue #118).
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, config)
            async for signum in signals:
                logging.getLogger("trio_election.server").info(
                    "%s: shutting down", signal.Signals(signum).name
                )
                nursery.cancel_scope.cancel()
                break
