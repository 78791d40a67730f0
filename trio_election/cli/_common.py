"""Helpers shared by the CLI commands: endpoints, output, errors."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..client import Leader
from ..client._credentials import Credentials


class UsageError(Exception):
    """Raised for a command line that cannot mean anything: exit status 2."""


def _bounded(flag: str, convert: type, noun: str, low: float, high: float, unit: str = ""):
    """An argparse type: ``convert(text)`` within ``low .. high``, else a sentence."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}{unit}")
        return value

    parse.__name__ = flag
    return parse


def seconds(flag: str, low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number of seconds within ``low .. high``."""
    return _bounded(flag, float, "a number of seconds", low, high, " seconds")


def whole(flag: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number within ``low .. high``."""
    return _bounded(flag, int, "a whole number", low, high)


def parse_listen(value: str, flag: str = "--listen") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise SystemExit(f"{flag}: {value!r} is not HOST:PORT (a port from 0 to 65535)")
    return host.strip("[]") or "127.0.0.1", int(port)


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoints",
        default="127.0.0.1:50051",
        metavar="HOST:PORT,...",
        help="nodes to talk to, comma-separated; https://HOST:PORT for TLS (default %(default)s)",
    )
    security = parser.add_argument_group("security")
    security.add_argument(
        "--ca", type=Path, metavar="PEM", help="the CA of the nodes' certificates (turns TLS on)"
    )
    security.add_argument("--cert", type=Path, metavar="PEM", help="client certificate (TLS)")
    security.add_argument("--key", type=Path, metavar="PEM", help="its private key")
    security.add_argument(
        "--token-file", type=Path, metavar="FILE", help="send the token in FILE with every call"
    )
    parser.add_argument("--json", action="store_true", help="print JSON, one object a line")
    parser.add_argument(
        "--timeout",
        type=seconds("--timeout", 0.01, 3600),
        default=5.0,
        metavar="SECONDS",
        help="deadline of each call (default %(default)g)",
    )


def endpoint_list(args: argparse.Namespace) -> list[str]:
    return [e.strip() for e in args.endpoints.split(",") if e.strip()]


def credentials(args: argparse.Namespace) -> Credentials:
    """The TLS and token options of a client command."""
    token_file = args.token_file or getattr(args, "cluster_key_file", None)
    return Credentials.create(
        endpoint_list(args), ca=args.ca, cert=args.cert, key=args.key, token_file=token_file
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
