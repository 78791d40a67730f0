"""Cluster.ListElections: the elections a node holds, one page at a time.

Both kinds of node answer it from their own state, without a quorum round:
the single node from its machine once what it applied is on disk, a cluster
member from the machine its Raft log is applied to (``applied_index`` names
that state). Everything but ``remaining_ms`` is replicated, so two members
that applied the same index list the same page: a fault-injection run
compares them that way.

The page is chosen in one synchronous pass (no await between reading the
machine and building the reply), so it is one consistent state even while
commands apply. A page is the ``limit`` smallest matching names (a heap
selection, O(n log limit), with no sorted copy of every name), and it ends
early before about ``MAX_PAGE_BYTES`` so a reply stays well under the 4 MiB
that gRPC clients accept by default.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable
from typing import Any

from .._bridge import GRPCError, Status, recv_one_request
from .._errors import ElectionError, InvalidArgument
from .._generated.v1 import cluster_grpc, cluster_pb2 as pb
from ..core import ElectionMachine, Limits
from ._auth import Guard
from ._status import to_grpc_error

#: Entries of a page when the request says 0, and the most it may ask for.
DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 10_000
#: A page ends before its entries' names pass this many bytes, roughly.
MAX_PAGE_BYTES = 1 << 20
#: What an entry costs besides its names (numbers, framing), roughly.
_ENTRY_BYTES = 40


def list_request(limits: Limits, request: Any) -> tuple[str, int, str]:
    """The checked ``(prefix, limit, start_after)`` of a ListElectionsRequest.

    Raises:
        InvalidArgument: naming the field: a prefix or start_after that no
            election name could have, or a limit over ``MAX_LIST_LIMIT``.
    """
    for field in ("prefix", "start_after"):
        if value := getattr(request, field):
            limits.name(field, value)
    if request.limit > MAX_LIST_LIMIT:
        raise InvalidArgument(
            "limit", f"{request.limit} is over {MAX_LIST_LIMIT} (0 means {DEFAULT_LIST_LIMIT})"
        )
    return request.prefix, request.limit or DEFAULT_LIST_LIMIT, request.start_after


def list_page(
    machine: ElectionMachine, now: float, prefix: str, limit: int, start_after: str
) -> pb.ListElectionsResponse:
    """The first ``limit`` elections under ``prefix`` named after ``start_after``."""
    names = heapq.nsmallest(
        limit + 1,
        (e for e in machine.elections() if e > start_after and e.startswith(prefix)),
    )
    page = pb.ListElectionsResponse()
    size = 0
    for name in names[:limit]:
        holder = machine.holder(name)
        assert holder is not None, name  # nothing applied since nsmallest
        size += _ENTRY_BYTES + sum(
            len(text.encode("utf-8", "surrogatepass"))
            for text in (name, holder.node_id, holder.owner)
        )
        if size > MAX_PAGE_BYTES and page.elections:
            break
        page.elections.add(
            election=name,
            node_id=holder.node_id,
            fencing_token=holder.fencing_token,
            remaining_ms=holder.remaining_ms(now),
            ttl_ms=holder.ttl_ms,
            owner=holder.owner,
        )
    if len(page.elections) < len(names):
        page.truncated = True
        page.next_start_after = page.elections[-1].election
    return page


async def serve_list(
    stream: Any,
    node: Any,
    guard: Guard | None,
    *,
    synced: Callable[[], Awaitable[None]] | None = None,
    cluster: bool = False,
) -> None:
    """Answer one ListElections call on ``stream`` from ``node.machine``.

    Args:
        guard: Narrows the listing to the caller's token (None: the peer port).
        synced: Awaited once the request is checked, before the listing.
        cluster: ``node`` is a cluster member: the reply names its id and
            applied index.
    """
    request = await recv_one_request(stream)
    try:
        prefix, limit, start_after = list_request(node.limits, request)
        if guard is not None:
            prefix = guard.readable(stream, prefix)
        if synced is not None:
            await synced()
    except ElectionError as exc:
        raise to_grpc_error(exc) from None
    # From here to the reply's creation: no await, so one state.
    page = list_page(node.machine, node.clock(), prefix, limit, start_after)
    if cluster:
        page.applied_index, page.id = node.applied, node.id
    await stream.send_message(page)


class SingleNodeClusterService(cluster_grpc.ClusterBase):
    """The Cluster service of a single node: ListElections, and UNIMPLEMENTED
    for the rest (it has no members; ``trio-election status`` then asks its
    health instead)."""

    def __init__(self, node: Any, guard: Guard) -> None:
        self.node = node
        self.guard = guard

    async def ListElections(self, stream: Any) -> None:
        # Never list a grant that a crash could make the node forget.
        await serve_list(stream, self.node, self.guard, synced=self.node.synced)

    @staticmethod
    def _no_cluster() -> GRPCError:
        return GRPCError(Status.UNIMPLEMENTED, "this is a single node, not a cluster member")

    async def Status(self, stream: Any) -> None:
        raise self._no_cluster()

    async def MemberAdd(self, stream: Any) -> None:
        raise self._no_cluster()

    async def MemberRemove(self, stream: Any) -> None:
        raise self._no_cluster()

    async def MemberList(self, stream: Any) -> None:
        raise self._no_cluster()
