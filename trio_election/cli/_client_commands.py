"""Client commands in the style of etcdctl: leader, campaign, watch, release."""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

import trio

from .._errors import ElectionError, LeadershipLost
from .._util import unwrap_single_exception
from ..client import open_client
from ._common import add_client_options, describe, emit, endpoint_list, leader_dict


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
    campaign.add_argument("--ttl", type=float, default=10.0, help="seconds (default %(default)g)")
    campaign.add_argument("--value", default="", help="data to attach to the leadership")
    add_client_options(campaign)
    campaign.set_defaults(run=_runner(_campaign))

    watch = commands.add_parser("watch", help="print every change of an election's holder")
    watch.add_argument("election")
    watch.add_argument(
        "--from-revision",
        type=int,
        default=0,
        metavar="N",
        help="replay the changes since revision N first (default: start with the current state)",
    )
    add_client_options(watch)
    watch.set_defaults(run=_runner(_watch))

    release = commands.add_parser("release", help="give up an election held by NODE_ID")
    release.add_argument("election")
    release.add_argument("--node-id", required=True)
    release.add_argument("--token", type=int, default=0, help="fencing token (0: any)")
    add_client_options(release)
    release.set_defaults(run=_runner(_release))


def _runner(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return trio.run(_with_signals, command, args)
        except ElectionError as exc:
            from ._common import fail

            return fail(str(exc))

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
    async for event in client.watch(args.election, start_revision=args.from_revision):
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
        raise SystemExit("campaign: give the command to run after --")
    emit(args, f"campaigning for {args.election} as {args.node_id}...", {"event": "campaigning"})
    try:
        async with client.leadership(
            args.election, node_id=args.node_id, ttl=args.ttl, value=args.value.encode()
        ) as lead:
            emit(
                args,
                f"elected: {args.election} with fencing token {lead.fencing_token}; running "
                f"{' '.join(command)}",
                {"event": "elected", "fencing_token": lead.fencing_token},
            )
            env = {**os.environ, "TRIO_ELECTION_FENCING_TOKEN": str(lead.fencing_token)}
            process = await trio.run_process(command, check=False, env=env)
            emit(
                args,
                f"command exited with status {process.returncode}; releasing {args.election}",
                {"event": "exited", "returncode": process.returncode},
            )
            return process.returncode
    except LeadershipLost as exc:
        emit(args, f"{exc}; the command was stopped", {"event": "lost", "reason": str(exc)})
        return 3
