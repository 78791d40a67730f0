"""The Cluster service (status, membership, elections) and the RaftTransport between nodes."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from h2.exceptions import StreamClosedError

from .._bridge import GRPCError, Status, StreamTerminatedError, recv_one_request, recv_request
from .._errors import ElectionError, InvalidArgument
from .._generated.v1 import cluster_grpc, cluster_pb2 as pb
from ..core import Renew
from ..raft import (
    CodecError,
    ConfChange,
    ConfChangeType,
    Role,
    Status as RaftStatus,
    decode_message,
)
from ._auth import Guard
from ._cluster import MAX_FORWARDED_RENEWALS, ClusterNode, peer_health, renew_result
from ._listing import serve_list
from ._status import to_grpc_error

log = logging.getLogger("trio_election.cluster")

#: Largest Raft batch a node reads (snapshots travel in these).
MAX_PEER_MESSAGE_BYTES = 256 * 1024 * 1024


class ClusterService(cluster_grpc.ClusterBase):
    """Status, membership and the elections held, for operators and joining nodes.

    ``guard`` narrows ListElections to the caller's token on the client port
    (None on the peer port, where only members call).
    """

    def __init__(self, node: ClusterNode, guard: Guard | None = None) -> None:
        self.node = node
        self.guard = guard

    def _members(self, status: RaftStatus | None = None) -> list[pb.Member]:
        """The members; with the leader's ``status``, their match index, lag, health."""
        node = self.node
        peers = peer_health(status, node.id) if status is not None else {}
        members = []
        for member_id, address in sorted(node.members.items()):
            member = pb.Member(id=member_id, address=address, is_leader=member_id == node.leader)
            if status is not None:
                if member_id == node.id:
                    member.match_index, member.healthy = status.last_index, True
                elif (health := peers.get(member_id)) is not None:
                    member.match_index, member.lag = health.match_index, health.lag
                    member.healthy = health.healthy
            members.append(member)
        return members

    async def Status(self, stream: Any) -> None:
        await recv_one_request(stream)
        node = self.node
        status = node.raw.status()
        leading = status.role is Role.LEADER
        await stream.send_message(
            pb.StatusResponse(
                id=node.id,
                leader=node.leader or "",
                term=status.term,
                commit_index=status.commit,
                applied_index=node.applied,
                role=status.role.name.lower().replace("_", "-"),
                members=self._members(status if leading else None),
                from_leader=leading,
                peer_bytes_sent=node.peers.bytes_sent if node.peers else 0,
                cluster_id=node.cluster_id,
                elections=len(node.machine),
                campaigns_waiting=sum(1 for _ in node.machine.waiters()),
            )
        )

    async def MemberAdd(self, stream: Any) -> None:
        request = await recv_one_request(stream)
        try:
            member_id = self.node.limits.name("id", request.id)
            if not request.address:
                raise InvalidArgument("address", "must not be empty")
            if member_id in self.node.removed_members:
                raise InvalidArgument(
                    "id", f"{member_id} was removed from this cluster; give the node a new id"
                )
            if member_id in self.node.members:
                if self.node.members[member_id] != request.address:
                    raise InvalidArgument(
                        "id", f"{member_id} is a member at {self.node.members[member_id]} already"
                    )
            else:
                await self.node.change_membership(
                    ConfChange(ConfChangeType.ADD_NODE, member_id, request.address.encode())
                )
        except ElectionError as exc:
            raise to_grpc_error(exc) from None
        await self._send_members(stream)

    async def MemberRemove(self, stream: Any) -> None:
        request = await recv_one_request(stream)
        try:
            member_id = self.node.limits.name("id", request.id)
            if member_id not in self.node.members:
                raise GRPCError(Status.NOT_FOUND, f"id: {member_id} is not a member")
            await self.node.change_membership(ConfChange(ConfChangeType.REMOVE_NODE, member_id))
        except ElectionError as exc:
            raise to_grpc_error(exc) from None
        await self._send_members(stream)

    async def MemberList(self, stream: Any) -> None:
        await recv_one_request(stream)
        try:
            await self.node.read("")  # linearizable: as of a quorum-confirmed index
        except ElectionError as exc:
            raise to_grpc_error(exc) from None
        await self._send_members(stream)

    async def ListElections(self, stream: Any) -> None:
        await serve_list(stream, self.node, self.guard, cluster=True)

    async def _send_members(self, stream: Any) -> None:
        await stream.send_message(
            pb.MemberListResponse(
                members=self._members(),
                leader=self.node.leader or "",
                cluster_id=self.node.cluster_id,
            )
        )


class RaftTransportService(cluster_grpc.RaftTransportBase):
    """Receives other nodes' Raft messages and forwarded proposals.

    Served only on the peer listener, behind peer authentication. Even an
    authenticated caller is held to what a member may say: a batch from a
    node that is not a member (or was removed) is refused whole, a message
    must come from the batch's sender, and a forwarded proposal (a PROP message) is
    checked again as if a client had sent it (``Replica.step``).
    """

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.streams: set[Any] = set()

    async def Send(self, stream: Any) -> None:
        node = self.node
        self.streams.add(stream)
        try:
            while (batch := await recv_request(stream, MAX_PEER_MESSAGE_BYTES)) is not None:
                sender = getattr(batch, "from")
                if sender in node.removed_members:
                    raise GRPCError(
                        Status.PERMISSION_DENIED,
                        f"from: node {sender} was removed from the cluster",
                    )
                if batch.to != node.id:
                    raise GRPCError(
                        Status.FAILED_PRECONDITION,
                        f"to: this is node {node.id}, not {batch.to}",
                    )
                if not node.is_member(sender):
                    log.warning("Raft messages from %r, which is not a member, refused", sender)
                    raise GRPCError(
                        Status.FAILED_PRECONDITION,
                        f"from: {sender!r} is not a member of this cluster as node {node.id} "
                        "knows it",
                    )
                for data in batch.messages:
                    try:
                        message = decode_message(data)
                        if message.from_ != sender or message.to != node.id:
                            log.warning(
                                "%s sent a Raft message from %r to %r; dropped",
                                sender,
                                message.from_,
                                message.to,
                            )
                            continue
                        node.step(message)
                    except ElectionError as exc:  # a forwarded proposal the leader refuses
                        log.warning("proposal forwarded by %s refused: %s", sender, exc)
                    except CodecError as exc:
                        log.warning(
                            "undecodable Raft message from %s: %s", getattr(batch, "from"), exc
                        )
                    except Exception as exc:  # noqa: BLE001 - a bad message must not stop us
                        log.debug("Raft message from %s refused: %r", getattr(batch, "from"), exc)
            with contextlib.suppress(StreamTerminatedError, StreamClosedError):
                await stream.send_message(pb.SendAck())  # the peer may be gone already
        finally:
            self.streams.discard(stream)

    async def Renew(self, stream: Any) -> None:
        """Renewals a follower forwards: answered here, off the log, if this
        node is the Raft leader (``ClusterNode.renew``)."""
        node = self.node
        batch = await recv_request(stream, MAX_PEER_MESSAGE_BYTES)
        if batch is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "renewals: no request")
        sender = getattr(batch, "from")
        if sender in node.removed_members or not node.is_member(sender):
            raise GRPCError(Status.PERMISSION_DENIED, f"from: {sender!r} is not a member")
        if node.role is not Role.LEADER:
            raise GRPCError(Status.FAILED_PRECONDITION, f"node {node.id} is not the Raft leader")
        if len(batch.renewals) > MAX_FORWARDED_RENEWALS:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"renewals: {len(batch.renewals)}, at most {MAX_FORWARDED_RENEWALS} a batch",
            )
        results: list[pb.RenewResult | None] = []
        commands, where = [], []
        for r in batch.renewals:
            try:
                election = node.limits.name("election", r.election)
                node_id = node.limits.name("node_id", r.node_id)
            except ElectionError as exc:
                results.append(pb.RenewResult(error=str(exc)))
                continue
            where.append(len(results))
            results.append(None)
            commands.append(Renew(election, node_id, r.fencing_token, r.owner))
        try:
            outcomes = await node.renew_many(commands)
        except ElectionError as exc:
            outcomes = [exc] * len(commands)
        for i, outcome in zip(where, outcomes, strict=True):
            results[i] = self._result(outcome)
        await stream.send_message(pb.RenewResults(results=results))

    def _result(self, outcome: Any) -> pb.RenewResult:
        if isinstance(outcome, ElectionError):
            return pb.RenewResult(error=str(outcome))
        return renew_result(outcome, self.node.clock())
