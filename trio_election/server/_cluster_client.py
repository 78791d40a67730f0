"""Calls one node makes to another outside Raft: joining through any member."""

from __future__ import annotations

import logging

import trio

from .._bridge import GRPCError, Status
from .._errors import StartupError
from .._generated.v1 import cluster_grpc, cluster_pb2 as pb
from ..client._transport import CONNECTION_ERRORS
from ._security import PeerAuth

log = logging.getLogger("trio_election.cluster")

#: How long a joining node keeps asking to be added.
JOIN_TIMEOUT_S = 60.0
#: Refusals that asking again cannot change.
PERMANENT = frozenset(
    {
        Status.INVALID_ARGUMENT,
        Status.NOT_FOUND,
        Status.PERMISSION_DENIED,
        Status.UNAUTHENTICATED,
        Status.UNIMPLEMENTED,
        Status.FAILED_PRECONDITION,
    }
)


async def add_member(
    through: str, node_id: str, address: str, auth: PeerAuth
) -> tuple[dict[str, str], str]:
    """Ask the member whose peer listener is at ``through`` to add ``node_id``
    at ``address``, presenting this node's peer credentials.

    Returns the members once the change applied, and the cluster's id.
    Retries while the cluster elects a leader or the member is unreachable,
    saying so, for up to a minute; a refusal that retrying cannot change (the
    id is in use or was removed, the credentials are refused) ends at once.

    Raises:
        StartupError: with the sentence for the operator.
    """
    channel = auth.channel(through, cluster_grpc.ClusterStub)
    request = pb.MemberAddRequest(id=node_id, address=address)
    try:
        with trio.fail_after(JOIN_TIMEOUT_S):
            attempt = 0
            while True:
                try:
                    reply = await channel.unary(channel.stub.MemberAdd, request, 10)
                    return {m.id: m.address for m in reply.members}, reply.cluster_id
                except GRPCError as exc:
                    if exc.status in PERMANENT:
                        raise StartupError(
                            f"cannot join through {through}: {exc.message or exc.status.name}"
                        ) from None
                    problem = exc.message or exc.status.name
                except CONNECTION_ERRORS as exc:
                    problem = f"no answer ({exc!r})"
                attempt += 1
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("join through %s: %s; retrying", through, problem)
                await trio.sleep(min(1.0, 0.1 * attempt))
    except trio.TooSlowError:
        raise StartupError(
            f"could not join the cluster through {through} within {JOIN_TIMEOUT_S:g} s: "
            "is it a member's peer address (--peer-listen), and is the cluster up?"
        ) from None
    finally:
        channel.close()
