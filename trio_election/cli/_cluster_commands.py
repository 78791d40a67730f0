"""Operator commands for a cluster: status, member add|remove|list."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import trio

from .._bridge import Channel, GRPCError, asyncio_loop
from .._errors import ElectionError, Unavailable
from .._generated.v1 import cluster_grpc, cluster_pb2 as pb
from ..client._transport import CONNECTION_ERRORS, from_status, parse_endpoint
from ._common import add_client_options, credentials, emit, endpoint_list, fail


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
    status.set_defaults(run=_runner(_status))

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
    last: Exception | None = None
    creds = credentials(args)
    async with asyncio_loop():
        for endpoint in endpoint_list(args):
            host, port = parse_endpoint(endpoint)
            channel = Channel(
                host, port, cluster_grpc.ClusterStub, ssl=creds.ssl, metadata=creds.metadata
            )
            try:
                return await command(channel, args)
            except GRPCError as exc:
                if exc.status.name != "UNAVAILABLE":
                    return fail(str(from_status(exc)))
                last = exc
            except CONNECTION_ERRORS as exc:
                last = exc
            finally:
                channel.close()
    raise Unavailable(f"no endpoint answered: {last}")


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


def _member_dicts(members: Any) -> list[dict[str, Any]]:
    return [
        {
            "id": m.id,
            "address": m.address,
            "is_leader": m.is_leader,
            "match_index": m.match_index,
            "lag": m.lag,
            "healthy": m.healthy,
        }
        for m in members
    ]


async def _status(channel: Channel, args: argparse.Namespace) -> int:
    reply = await channel.unary(channel.stub.Status, pb.StatusRequest(), args.timeout)
    lines = [
        f"node {reply.id} ({reply.role}), Raft leader {reply.leader or 'unknown'}, "
        f"term {reply.term}, commit {reply.commit_index}, applied {reply.applied_index}",
        *_members_table(reply.members, reply.leader),
    ]
    if not reply.from_leader:
        lines.append("(lag and health are known only to the leader: ask it for them)")
    emit(
        args,
        "\n".join(lines),
        {
            "id": reply.id,
            "role": reply.role,
            "leader": reply.leader,
            "term": reply.term,
            "commit_index": reply.commit_index,
            "applied_index": reply.applied_index,
            "from_leader": reply.from_leader,
            "members": _member_dicts(reply.members),
        },
    )
    return 0


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
