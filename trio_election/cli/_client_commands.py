"""Client commands in the style of etcdctl: leader, campaign, watch, release."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from typing import Any

import trio

from .._errors import ElectionError, LeadershipLost
from .._util import unwrap_single_exception
from ..client import open_client
from ..core import MAX_MAX_TTL_MS, MIN_TTL_MS
from ._common import (
    UsageError,
    add_client_options,
    describe,
    emit,
    endpoint_list,
    leader_dict,
    seconds,
    whole,
)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    leader = commands.add_parser("leader", help="show who holds an election")
    leader.add_argument("election")
    add_client_options(leader)
    leader.set_defaults(run=_runner(_leader))

    campaign = commands.add_parser(
        "campaign",
        usage="%(prog)s ELECTION --node-id ID [--ttl S] [options] -- COMMAND [ARGS...]",
        help="run a command while holding an election",
        description="Wait until elected, run COMMAND while leader, and kill it if "
        "leadership is lost (like `consul lock`). COMMAND gets the fencing token in "
        "TRIO_ELECTION_FENCING_TOKEN. Exits with COMMAND's status, or 3 if leadership "
        "was lost.",
    )
    campaign.add_argument("election")
    campaign.add_argument("--node-id", required=True, help="our name as a candidate")
    campaign.add_argument(
        "--ttl",
        type=seconds("--ttl", MIN_TTL_MS / 1000, MAX_MAX_TTL_MS / 1000),
        default=10.0,
        help="seconds, from 0.1 to the node's --max-ttl (default %(default)g)",
    )
    campaign.add_argument("--value", default="", help="data to attach to the leadership")
    add_client_options(campaign)
    campaign.set_defaults(run=_runner(_campaign))

    watch = commands.add_parser("watch", help="print every change of an election's holder")
    watch.add_argument("election")
    watch.add_argument(
        "--from-revision",
        type=whole("--from-revision", 0, 2**64 - 1),
        default=0,
        metavar="N",
        help="replay the changes since revision N first (default: start with the current state)",
    )
    add_client_options(watch)
    watch.set_defaults(run=_runner(_watch))

    release = commands.add_parser("release", help="give up an election held by NODE_ID")
    release.add_argument("election")
    release.add_argument("--node-id", required=True)
    release.add_argument(
        "--token",
        type=whole("--token", 0, 2**64 - 1),
        default=0,
        help="fencing token (0: any; nodes with client tokens require it)",
    )
    add_client_options(release)
    release.set_defaults(run=_runner(_release))


def _runner(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        return trio.run(_with_signals, command, args)

    return run


async def _with_signals(command: Any, args: argparse.Namespace) -> int:
    result = 130
    with (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        unwrap_single_exception(),
    ):
        async with trio.open_nursery() as nursery:

            async def main() -> None:
                nonlocal result
                async with open_client(
                    endpoint_list(args),
                    timeout=args.timeout,
                    ca=args.ca,
                    cert=args.cert,
                    key=args.key,
                    token_file=args.token_file,
                ) as client:
                    result = await command(client, args)
                nursery.cancel_scope.cancel()

            nursery.start_soon(main)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    return result


async def _leader(client: Any, args: argparse.Namespace) -> int:
    leader = await client.get_leader(args.election)
    text = f"{args.election}: {describe(leader)}" if leader else f"{args.election}: no leader"
    emit(args, text, {"election": args.election, "leader": leader_dict(leader)})
    return 0


async def _release(client: Any, args: argparse.Namespace) -> int:
    released = await client.release(args.election, args.node_id, args.token)
    text = (
        f"released {args.election}" if released else f"{args.node_id} does not hold {args.election}"
    )
    emit(args, text, {"election": args.election, "released": released})
    return 0 if released else 1


async def _watch(client: Any, args: argparse.Namespace) -> int:
    notes = Notes(args)
    async for event in client.watch(
        args.election, start_revision=args.from_revision, on_retry=notes.retrying
    ):
        notes.answered()
        who = describe(event.leader) if event.leader else "no leader"
        emit(
            args,
            f"[{event.revision}] {args.election}: {event.kind.name.lower().replace('_', ' ')} {who}"
            if event.leader
            else f"[{event.revision}] {args.election}: no leader",
            {
                "kind": event.kind.name,
                "revision": event.revision,
                "leader": leader_dict(event.leader),
            },
        )
    return 0


async def _campaign(client: Any, args: argparse.Namespace) -> int:
    command = args.argv_after_dashes
    if not command:
        raise UsageError("campaign: give the command to run after --, e.g. -- ./job.sh")
    if shutil.which(command[0]) is None:
        raise ElectionError(f"campaign: cannot run {command[0]!r}: no such command")
    emit(args, f"campaigning for {args.election} as {args.node_id}...", {"event": "campaigning"})
    notes = Notes(args)
    reporting = trio.CancelScope()

    async def report() -> None:
        with reporting:
            await _report_waiting(client, args, notes)

    try:
        with unwrap_single_exception():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(report)
                async with client.leadership(
                    args.election,
                    node_id=args.node_id,
                    ttl=args.ttl,
                    value=args.value.encode(),
                    on_retry=notes.retrying,
                ) as lead:
                    reporting.cancel()
                    notes.done()
                    return await _run_as_leader(args, command, lead)
    except LeadershipLost as exc:
        emit(args, f"{exc}; the command was stopped", {"event": "lost", "reason": str(exc)})
        return 3


async def _run_as_leader(args: argparse.Namespace, command: list[str], lead: Any) -> int:
    emit(
        args,
        f"elected: {args.election} with fencing token {lead.fencing_token}; running "
        f"{' '.join(command)}",
        {"event": "elected", "fencing_token": lead.fencing_token},
    )
    env = {**os.environ, "TRIO_ELECTION_FENCING_TOKEN": str(lead.fencing_token)}
    try:
        process = await trio.run_process(
            command,
            check=False,
            env=env,
            # With --json, stdout carries our JSON lines only.
            stdout=sys.stderr.fileno() if args.json else None,
        )
    except OSError as exc:
        raise ElectionError(f"campaign: cannot run {command[0]!r}: {exc.strerror}") from None
    emit(
        args,
        f"command exited with status {process.returncode}; releasing {args.election}",
        {"event": "exited", "returncode": process.returncode},
    )
    return process.returncode


async def _report_waiting(client: Any, args: argparse.Namespace, notes: Notes) -> None:
    """While campaigning: who holds the election, and how long it has left."""
    while True:
        await trio.sleep(WAIT_REPORT_S)
        try:
            leader = await client.get_leader(args.election)
        except ElectionError as exc:
            notes.retrying(exc)
            continue
        notes.answered()
        if leader is None:
            notes.status(f"waiting: {args.election} is free; being elected...", None)
        else:
            notes.status(
                f"waiting: {args.election} is held by {describe(leader)}",
                leader_dict(leader),
            )


#: How often a waiting campaign says who holds the election.
WAIT_REPORT_S = 2.0


class Notes:
    """What a waiting command tells its user: on a terminal, one line
    refreshed in place; otherwise a plain line each time it changes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tty = sys.stderr.isatty() and not args.json
        self.last = ""
        self.failing = False

    def retrying(self, exc: ElectionError) -> None:
        if not self.failing:
            self.failing = True
            self.status(f"cannot reach the cluster ({exc}); still trying", {"error": str(exc)})

    def answered(self) -> None:
        self.failing = False

    def status(self, text: str, data: dict[str, Any] | None) -> None:
        if text == self.last:
            return
        self.last = text
        if self.args.json:
            print(json.dumps({"event": "waiting", "leader": data}), flush=True)
        elif self.tty:
            print(f"\r\x1b[K{text}", end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.tty and self.last:
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)
