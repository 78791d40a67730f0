"""``trio-election``: the command line."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import secrets
import sys

from .._errors import ElectionError
from ..client._transport import explain
from . import _client_commands, _cluster_commands, _elections, _node, _settings
from ._common import UsageError, fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-election",
        description="Leader election and leases for microservices.",
        epilog="Every long option can also come from the environment "
        "(TRIO_ELECTION_DATA_DIR for --data-dir) or a TOML file (--config FILE, anywhere "
        "before --): the command line wins, then the environment, then the file.",
    )
    parser.add_argument("--version", action="version", version=f"trio-election {_version()}")
    parser.add_argument(
        "--config", metavar="FILE", help="read settings from this TOML file (see below)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _node.add_parser(commands)
    _client_commands.add_parsers(commands)
    _cluster_commands.add_parsers(commands)
    _elections.add_parser(commands)
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


def _version() -> str:
    try:
        return importlib.metadata.version("trio-election")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    This is the one place where a failure becomes ``trio-election: <message>``
    on stderr: exit status 1, or 2 for a command line that cannot mean
    anything. No traceback reaches a user (``TRIO_ELECTION_DEBUG=1`` shows
    one for an unexpected error).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" is a command to run (campaign), never our options.
    after: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, after = argv[:cut], argv[cut + 1 :]
    try:
        parser = build_parser()
        config, argv = _settings.take_config(argv)
        _settings.apply(parser, _settings.load_file(config), str(config or ""))
        args = parser.parse_args(argv)
        args.argv_after_dashes = after
        return args.run(args)
    except UsageError as exc:
        print(f"trio-election: {exc}", file=sys.stderr)
        return 2
    except ElectionError as exc:
        return fail(str(exc))
    except BrokenPipeError:
        # The reader went away (``status | head``): nothing more to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:  # argparse (usage: 2; --help, --version: 0), or a sentence
        if isinstance(exc.code, str):
            return fail(exc.code)
        return exc.code or 0
    except OSError as exc:
        return fail(explain(exc))
    except Exception as exc:  # noqa: BLE001 - the last line of defence for the user
        if os.environ.get("TRIO_ELECTION_DEBUG"):
            raise
        return fail(f"unexpected error: {exc!r} (TRIO_ELECTION_DEBUG=1 shows where)")
