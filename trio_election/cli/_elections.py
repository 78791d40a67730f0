"""``trio-election elections``: the elections a node holds (Cluster.ListElections)."""

from __future__ import annotations

import argparse
from typing import Any

from .._bridge import Channel
from .._generated.v1 import cluster_pb2 as pb
from ._cluster_commands import _add_options, _runner
from ._common import emit, whole

#: Entries asked for in one call (the server's most).
PAGE = 10_000


def add_parser(commands: argparse._SubParsersAction) -> None:
    elections = commands.add_parser(
        "elections",
        help="list the elections a node holds: holder, fencing token, owner, time left",
        description="List the elections the first endpoint that answers holds, in name "
        "order. A cluster member lists its applied state (not linearizable: members "
        "that applied the same index list the same holders); its time left is its own "
        "estimate. With client tokens, only the elections under the token's prefix.",
    )
    elections.add_argument(
        "--prefix", default="", metavar="P", help="only elections whose name starts with P"
    )
    elections.add_argument(
        "--limit",
        type=whole("--limit", 1, 10**7),
        default=1000,
        metavar="N",
        help="list at most N, and say when more match (default %(default)s)",
    )
    _add_options(elections)
    elections.set_defaults(run=_runner(_elections))


async def _elections(channel: Channel, args: argparse.Namespace) -> int:
    entries: list[Any] = []
    page = pb.ListElectionsResponse(truncated=True)
    first: pb.ListElectionsResponse | None = None
    while page.truncated and len(entries) < args.limit:
        request = pb.ListElectionsRequest(
            prefix=args.prefix,
            limit=min(PAGE, args.limit - len(entries)),
            start_after=page.next_start_after,
        )
        page = await channel.unary(channel.stub.ListElections, request, args.timeout)
        first = first or page
        entries += page.elections
    assert first is not None
    truncated = page.truncated
    emit(
        args,
        _table(entries, first, truncated, args),
        {
            "node": first.id or None,
            "applied_index": first.applied_index,
            "elections": [
                {
                    "election": e.election,
                    "node_id": e.node_id,
                    "fencing_token": e.fencing_token,
                    "owner": e.owner or None,
                    "ttl_s": e.ttl_ms / 1000,
                    "remaining_s": e.remaining_ms / 1000,
                }
                for e in entries
            ],
            "truncated": truncated,
        },
    )
    return 0


def _table(entries: list[Any], first: Any, truncated: bool, args: argparse.Namespace) -> str:
    under = f" under {args.prefix!r}" if args.prefix else ""
    # A cluster member says which of its states it listed.
    where = f", as of node {first.id}'s applied index {first.applied_index}" if first.id else ""
    if not entries:
        return f"no elections held{under}{where}"
    rows = [("ELECTION", "HOLDER", "TOKEN", "TTL", "LEFT", "OWNER")]
    rows += [
        (
            e.election,
            e.node_id,
            str(e.fencing_token),
            f"{e.ttl_ms / 1000:g}s",
            f"{e.remaining_ms / 1000:.1f}s",
            e.owner or "-",
        )
        for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    count = f"{len(entries)} election{'s' if len(entries) != 1 else ''}{under}"
    if truncated:
        lines.append(f"the first {count}{where}; more match: raise --limit or narrow --prefix")
    else:
        lines.append(f"{count}{where}")
    return "\n".join(lines)
