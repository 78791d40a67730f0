"""Helpers shared by the CLI commands: endpoints, output, errors."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..client import Leader


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"--listen: {value!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoints",
        default="127.0.0.1:50051",
        metavar="HOST:PORT,...",
        help="nodes to talk to, comma-separated (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON, one object a line")
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="deadline of each call (default %(default)g)",
    )


def leader_dict(leader: Leader | None) -> dict[str, Any] | None:
    if leader is None:
        return None
    return {
        "election": leader.election,
        "node_id": leader.node_id,
        "fencing_token": leader.fencing_token,
        "ttl_s": leader.ttl,
        "remaining_s": leader.remaining,
        "value": leader.value.decode("utf-8", "backslashreplace"),
    }


def describe(leader: Leader) -> str:
    value = f", value {leader.value.decode('utf-8', 'backslashreplace')!r}" if leader.value else ""
    return (
        f"{leader.node_id} (fencing token {leader.fencing_token}, ttl {leader.ttl:g} s, "
        f"{leader.remaining:.1f} s left{value})"
    )


def emit(args: argparse.Namespace, human: str, data: dict[str, Any]) -> None:
    """Print one result: a sentence for people, or a JSON line with --json."""
    print(json.dumps(data) if args.json else human, flush=True)


def fail(message: str) -> int:
    print(f"trio-election: {message}", file=sys.stderr)
    return 1
