"""``trio-election``: the command line."""

from __future__ import annotations

import argparse
import secrets
import sys

from . import _client_commands, _cluster_commands, _node


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-election",
        description="Leader election and leases for microservices.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _node.add_parser(commands)
    _client_commands.add_parsers(commands)
    _cluster_commands.add_parsers(commands)
    keygen = commands.add_parser(
        "keygen",
        help="print a new random secret (a cluster key or a client token)",
        description="Print a new random secret: 43 URL-safe characters (256 bits). "
        "Use it in --cluster-key-file or as a token in --auth-token-file.",
    )
    keygen.set_defaults(run=_keygen)
    return parser


def _keygen(args: argparse.Namespace) -> int:
    print(secrets.token_urlsafe(32))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" is a command to run (campaign), never our options.
    after: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, after = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    args.argv_after_dashes = after
    return args.run(args)
