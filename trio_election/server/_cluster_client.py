"""Calls one node makes to another outside Raft: joining through any member."""

from __future__ import annotations

import logging

import trio

from .._bridge import GRPCError
from .._generated.v1 import cluster_grpc, cluster_pb2 as pb
from ..client._transport import CONNECTION_ERRORS
from ._security import PeerAuth

log = logging.getLogger("trio_election.cluster")

#: How long a joining node keeps asking to be added.
JOIN_TIMEOUT_S = 60.0


async def add_member(through: str, node_id: str, address: str, auth: PeerAuth) -> dict[str, str]:
    """Ask the member whose peer listener is at ``through`` to add ``node_id``
    at ``address``, presenting this node's peer credentials.

    Returns the members once the change applied. Retries while the cluster
    elects a leader or the member is unreachable, for up to a minute.
    """
    channel = auth.channel(through, cluster_grpc.ClusterStub)
    try:
        with trio.fail_after(JOIN_TIMEOUT_S):
            attempt = 0
            while True:
                try:
                    reply = await channel.unary(
                        channel.stub.MemberAdd, pb.MemberAddRequest(id=node_id, address=address), 10
                    )
                    return {m.id: m.address for m in reply.members}
                except (GRPCError, *CONNECTION_ERRORS) as exc:
                    attempt += 1
                    if attempt == 1 or attempt % 10 == 0:
                        log.info("join through %s: %s; retrying", through, exc)
                    await trio.sleep(min(1.0, 0.1 * attempt))
    except trio.TooSlowError:
        raise SystemExit(f"could not join the cluster through {through}") from None
    finally:
        channel.close()
