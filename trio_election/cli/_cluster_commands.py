"""Operator commands for a cluster: status, member add|remove|list."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import trio
from grpclib.health.v1 import health_grpc, health_pb2

from .._bridge import Channel, GRPCError, Status, asyncio_loop
from .._errors import ElectionError, Unavailable
from .._generated.v1 import cluster_grpc, cluster_pb2 as pb
from ..client._transport import CONNECTION_ERRORS, explain, from_status, parse_endpoint
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
    failures: list[str] = []
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
                if exc.status is Status.UNIMPLEMENTED and command is _status:
                    return await _single_status(endpoint, creds, args)
                if exc.status is not Status.UNAVAILABLE:
                    return fail(str(from_status(exc)))
                failures.append(f"{endpoint}: {explain(exc)}")
            except BrokenPipeError:
                raise  # our own output, not the endpoint
            except (TimeoutError, *CONNECTION_ERRORS) as exc:
                failures.append(f"{endpoint}: {explain(exc) if str(exc) else 'no answer in time'}")
            finally:
                channel.close()
    raise Unavailable(f"no endpoint answered ({'; '.join(failures) or 'no endpoints given'})")


async def _single_status(endpoint: str, creds: Any, args: argparse.Namespace) -> int:
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
    emit(
        args,
        f"{endpoint}: a single node (not a cluster member), {state}",
        {"endpoint": endpoint, "cluster": False, "health": state},
    )
    return 0 if serving else 1


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


async def _status(channel: Channel, args: argparse.Namespace) -> int:
    reply = await channel.unary(channel.stub.Status, pb.StatusRequest(), args.timeout)
    lines = [
        f"node {reply.id} ({reply.role}), Raft leader {reply.leader or 'unknown'}, "
        f"term {reply.term}, commit {reply.commit_index}, applied {reply.applied_index}",
        *_members_table(reply.members, reply.leader),
    ]
    if not reply.from_leader:
        lines.append("(lag and health are known only to the leader: ask it for them)")
    quorum = bool(reply.leader)
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
            "quorum": quorum,
            "cluster_id": reply.cluster_id,
            "members": _member_dicts(reply.members, reply.from_leader),
        },
    )
    if not quorum:
        return fail(
            f"no quorum: node {reply.id} knows no Raft leader (term {reply.term}); writes "
            "are refused until a majority of the members is up and reachable"
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
