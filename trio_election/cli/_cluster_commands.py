"""Operator commands for a cluster: status, member add|remove|list."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio
from grpclib.health.v1 import health_grpc, health_pb2

from .._bridge import Channel, GRPCError, Status, asyncio_loop
from .._errors import ElectionError, Unavailable
from .._generated.v1 import cluster_grpc, cluster_pb2 as pb
from ..client._credentials import Credentials
from ..client._transport import CONNECTION_ERRORS, explain, from_status, parse_endpoint
from ._common import (
    UsageError,
    add_client_options,
    credentials,
    emit,
    endpoint_list,
    fail,
    seconds,
    whole,
)
from ._watch import refresh_until_stopped

T = TypeVar("T")


def _add_options(parser: argparse.ArgumentParser) -> None:
    add_client_options(parser)
    parser.add_argument(
        "--cluster-key-file",
        type=Path,
        metavar="FILE",
        help="present the cluster key in FILE (calls to a member's peer port)",
    )


def add_parsers(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser("status", help="show the cluster: members, leader, lag")
    _add_options(status)
    watching = status.add_argument_group("watching")
    watching.add_argument(
        "--watch",
        action="store_true",
        help="refresh the table until Ctrl-C (in place on a terminal; with --json a line "
        "per refresh)",
    )
    watching.add_argument(
        "--interval",
        type=seconds("--interval", 0.1, 3600),
        default=None,
        metavar="SECONDS",
        help="with --watch: pause between refreshes (default 2)",
    )
    watching.add_argument(
        "--count",
        type=whole("--count", 1, 10**9),
        default=None,
        metavar="N",
        help="with --watch: stop after N refreshes, exiting with the last one's status",
    )
    status.set_defaults(run=_run_status)

    member = commands.add_parser("member", help="list, add or remove cluster members")
    actions = member.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list the members")
    _add_options(listing)
    listing.set_defaults(run=_runner(_list))
    add = actions.add_parser("add", help="add a member (then start it with --join)")
    add.add_argument("id")
    add.add_argument("address", metavar="HOST:PORT", help="its peer address")
    _add_options(add)
    add.set_defaults(run=_runner(_add))
    remove = actions.add_parser("remove", help="remove a member")
    remove.add_argument("id")
    _add_options(remove)
    remove.set_defaults(run=_runner(_remove))


def _runner(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return trio.run(_call_any, command, args)
        except ElectionError as exc:
            return fail(str(exc))

    return run


async def _call_any(command: Any, args: argparse.Namespace) -> int:
    """Run ``command`` against the first endpoint that answers."""
    creds = credentials(args)
    async with asyncio_loop():
        try:
            result, _ = await _ask_any(args, creds, lambda channel, _: command(channel, args))
        except GRPCError as exc:
            return fail(str(from_status(exc)))
    return result


async def _ask_any(
    args: argparse.Namespace,
    creds: Credentials,
    ask: Callable[[Channel, str], Awaitable[T]],
) -> tuple[T, list[str]]:
    """``ask(channel, endpoint)`` of the first endpoint that answers; its answer,
    and why each endpoint before it did not answer.

    Raises:
        Unavailable: no endpoint answered.
        GRPCError: an endpoint answered with an error other than UNAVAILABLE.
    """
    failures: list[str] = []
    for endpoint in endpoint_list(args):
        host, port = parse_endpoint(endpoint)
        channel = Channel(
            host, port, cluster_grpc.ClusterStub, ssl=creds.ssl, metadata=creds.metadata
        )
        try:
            return await ask(channel, endpoint), failures
        except GRPCError as exc:
            if exc.status is not Status.UNAVAILABLE:
                raise
            failures.append(f"{endpoint}: {explain(exc)}")
        except BrokenPipeError:
            raise  # our own output, not the endpoint
        except (TimeoutError, *CONNECTION_ERRORS) as exc:
            failures.append(f"{endpoint}: {explain(exc) if str(exc) else 'no answer in time'}")
        finally:
            channel.close()
    raise Unavailable(f"no endpoint answered ({'; '.join(failures) or 'no endpoints given'})")


@dataclass
class _Report:
    """One answer of ``status``: for people, for --json, the exit status, and
    a sentence for stderr when the news is bad."""

    text: str
    data: dict[str, Any] = field(default_factory=dict)
    code: int = 0
    warning: str = ""


def _run_status(args: argparse.Namespace) -> int:
    if not args.watch and (args.interval is not None or args.count is not None):
        raise UsageError("status: --interval and --count go with --watch")
    try:
        return trio.run(_watch_status if args.watch else _status_once, args)
    except ElectionError as exc:
        return fail(str(exc))


async def _status_report(args: argparse.Namespace, creds: Credentials) -> tuple[_Report, list[str]]:
    """The status of the first endpoint that answers (see :func:`_ask_any`)."""

    async def ask(channel: Channel, endpoint: str) -> _Report:
        try:
            return await _status(channel, args)
        except GRPCError as exc:
            if exc.status is Status.UNIMPLEMENTED:
                return await _single_status(endpoint, creds, args)
            raise

    return await _ask_any(args, creds, ask)


async def _status_once(args: argparse.Namespace) -> int:
    creds = credentials(args)
    async with asyncio_loop():
        try:
            report, _ = await _status_report(args, creds)
        except GRPCError as exc:
            return fail(str(from_status(exc)))
    emit(args, report.text, report.data)
    if report.warning:
        fail(report.warning)
    return report.code


async def _watch_status(args: argparse.Namespace) -> int:
    """``status --watch``: a refresh every ``--interval``, whatever answers."""
    creds = credentials(args)

    async def refresh() -> _Report:
        try:
            report, failures = await _status_report(args, creds)
        except GRPCError as exc:
            failures, error = [], str(from_status(exc))
        except ElectionError as exc:  # no endpoint answered: say so, and go on
            failures, error = [], str(exc)
        else:
            if report.warning:
                report.text += f"\n{report.warning}"
            if failures:
                report.text += f"\n(not answering: {'; '.join(failures)})"
                report.data["not_answering"] = failures
            return report
        return _Report(error, {"error": error}, 1)

    async with asyncio_loop():
        return await refresh_until_stopped(
            args, refresh, interval=args.interval or 2.0, count=args.count
        )


#: Why a single node says NOT_SERVING; its health check cannot say which.
NOT_SERVING_HINT = (
    "it grants nothing now: an --in-memory node waits --max-ttl after it starts (its"
    " start-up grace), and a node whose data dir cannot be written refuses grants; its log"
    " says which"
)


async def _single_status(endpoint: str, creds: Any, args: argparse.Namespace) -> _Report:
    """``status`` of a single node, which has no cluster: its health."""
    host, port = parse_endpoint(endpoint)
    channel = Channel(host, port, health_grpc.HealthStub, ssl=creds.ssl, metadata=creds.metadata)
    try:
        reply = await channel.unary(
            channel.stub.Check, health_pb2.HealthCheckRequest(), args.timeout
        )
    finally:
        channel.close()
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    text = f"{endpoint}: a single node (not a cluster member), {state}"
    if not serving:
        text += f"\n{NOT_SERVING_HINT}"
    return _Report(
        text,
        {"endpoint": endpoint, "cluster": False, "health": state},
        0 if serving else 1,
    )


def _members_table(members: Any, leader: str) -> list[str]:
    rows = [("ID", "PEER", "ROLE", "MATCH", "LAG", "HEALTH")]
    for m in members:
        role = "leader" if m.id == leader else "follower"
        health = "ok" if m.healthy else ("?" if not m.match_index else "unreachable")
        rows.append(
            (
                m.id,
                m.address,
                role,
                str(m.match_index or "-"),
                str(m.lag) if m.match_index else "-",
                health,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _member_dicts(members: Any, from_leader: bool = True) -> list[dict[str, Any]]:
    """Members as JSON; lag and health are null where only the leader knows them."""
    return [
        {
            "id": m.id,
            "address": m.address,
            "is_leader": m.is_leader,
            "match_index": m.match_index if from_leader else None,
            "lag": m.lag if from_leader else None,
            "healthy": m.healthy if from_leader else None,
        }
        for m in members
    ]


async def _status(channel: Channel, args: argparse.Namespace) -> _Report:
    reply = await channel.unary(channel.stub.Status, pb.StatusRequest(), args.timeout)
    lines = [
        f"node {reply.id} ({reply.role}), Raft leader {reply.leader or 'unknown'}, "
        f"term {reply.term}, commit {reply.commit_index}, applied {reply.applied_index}",
        *_members_table(reply.members, reply.leader),
    ]
    if not reply.from_leader:
        lines.append("(lag and health are known only to the leader: ask it for them)")
    quorum = bool(reply.leader)
    report = _Report(
        "\n".join(lines),
        {
            "id": reply.id,
            "role": reply.role,
            "leader": reply.leader,
            "term": reply.term,
            "commit_index": reply.commit_index,
            "applied_index": reply.applied_index,
            "from_leader": reply.from_leader,
            "quorum": quorum,
            "cluster_id": reply.cluster_id,
            "members": _member_dicts(reply.members, reply.from_leader),
        },
    )
    if not quorum:
        report.code = 1
        report.warning = (
            f"no quorum: node {reply.id} knows no Raft leader (term {reply.term}); writes "
            "are refused until a majority of the members is up and reachable"
        )
    return report


async def _list(channel: Channel, args: argparse.Namespace) -> int:
    reply = await channel.unary(channel.stub.MemberList, pb.MemberListRequest(), args.timeout)
    return _print_members(args, reply)


async def _add(channel: Channel, args: argparse.Namespace) -> int:
    request = pb.MemberAddRequest(id=args.id, address=args.address)
    reply = await channel.unary(channel.stub.MemberAdd, request, args.timeout)
    print(f"added {args.id} at {args.address}; start it with --id {args.id} --join <a member>")
    return _print_members(args, reply)


async def _remove(channel: Channel, args: argparse.Namespace) -> int:
    reply = await channel.unary(
        channel.stub.MemberRemove, pb.MemberRemoveRequest(id=args.id), args.timeout
    )
    print(f"removed {args.id}")
    return _print_members(args, reply)


def _print_members(args: argparse.Namespace, reply: Any) -> int:
    table = "\n".join(
        f"{m.id}  {m.address}{'  (leader)' if m.id == reply.leader else ''}" for m in reply.members
    )
    emit(args, table, {"leader": reply.leader, "members": _member_dicts(reply.members)})
    return 0
