"""The ``trio_election.v1.LeaderElection`` gRPC service over a node.

Handlers run on the asyncio side of the bridge. They stay thin: read and check
the request, hand the command to the node, await only to wait (disk, commit,
campaign, watch events), convert to protobuf here and nowhere else.

The node is a single :class:`~trio_election.server._node.Node` or a
:class:`~trio_election.server._cluster.ClusterNode`; both offer ``execute``
(apply, return once durable), ``submit`` (apply, do not wait), ``read``
(a linearizable read), campaigns and watches.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .._bridge import (
    GRPCError,
    MessageQueue,
    Status,
    recv_one_request,
    recv_request,
    serve_in_order,
)
from .._errors import ElectionError, InvalidArgument, ResourceExhausted
from .._generated.v1 import election_grpc, election_pb2 as pb
from ..core import Acquire, Event, EventKind, Holder, Outcome, Release, Renew
from ._auth import Guard
from ._hub import CLOSING, OVERFLOW
from ._status import status_of, to_grpc_error

log = logging.getLogger("trio_election.service")

Handler = Callable[["LeaderElectionService", Any], Awaitable[None]]


#: Heartbeats one batch message may carry (and at most MAX_REQUEST_BYTES).
MAX_HEARTBEATS = 1_000


def _handler(method: Handler) -> Handler:
    """Count the call as active, map domain errors to gRPC statuses, and tell
    ``on_call`` (metrics) how the call ended."""
    rpc = method.__name__

    @functools.wraps(method)
    async def wrapper(self: LeaderElectionService, stream: Any) -> None:
        self.active += 1
        started = time.perf_counter()
        code = "OK"
        try:
            await method(self, stream)
        except ElectionError as exc:
            error = to_grpc_error(exc)
            code = error.status.name
            raise error from None
        except BaseException as exc:
            code = status_of(exc, stream)
            raise
        finally:
            self.active -= 1
            if self.on_call is not None:
                self.on_call(rpc, code, time.perf_counter() - started)
            if self.active == 0 and self.on_idle is not None:
                self.on_idle()

    return wrapper


class LeaderElectionService(election_grpc.LeaderElectionBase):
    """Serves the client API of one node.

    With client auth on (``guard.enabled``), every call is checked against its
    token's prefix and role before anything happens, grants are recorded with
    the token's identity (only it may refresh, renew or release them), and a
    Heartbeat or Release must name the fencing token it holds: with many
    clients on one network, a node_id is a name anyone can say.
    """

    def __init__(self, node: Any, guard: Guard | None = None) -> None:
        self.node = node
        self.guard = guard or Guard(None)
        #: Told ``(rpc, status code name, seconds)`` as each call ends (metrics).
        self.on_call: Callable[[str, str, float], None] | None = None
        self.active = 0
        self.on_idle: Callable[[], None] | None = None
        self.renewals = {True: 0, False: 0}  # heartbeats answered, by success
        self.streams: set[Any] = set()  # open KeepAlive streams, ended on shutdown
        self.watchers: dict[Any, int] = {}  # open Watch streams by client address
        self.watching = 0  # their sum

    def _leader(self, holder: Holder | None) -> pb.Leader | None:
        if holder is None:
            return None
        return pb.Leader(
            election=holder.election,
            node_id=holder.node_id,
            fencing_token=holder.fencing_token,
            ttl_ms=holder.ttl_ms,
            remaining_ms=holder.remaining_ms(self.node.clock()),
            value=holder.value,
        )

    def _election(self, stream: Any, request: Any, *, write: bool = False) -> tuple[str, str]:
        """The request's checked election, and the caller's identity for it."""
        election = self.node.limits.name("election", request.election)
        return election, self.guard.check(stream, election, write=write)

    def _names(self, stream: Any, request: Any) -> tuple[str, str, str]:
        """The request's checked election and node_id, and the caller's identity."""
        election, owner = self._election(stream, request, write=True)
        return election, self.node.limits.name("node_id", request.node_id), owner

    def _token(self, request: Any) -> int:
        if request.fencing_token == 0 and self.guard.enabled:
            raise InvalidArgument(
                "fencing_token",
                "must be the token of the grant (not 0) when the node requires client tokens",
            )
        return request.fencing_token

    def _acquire(self, stream: Any, request: Any, *, wait: bool, waiter: str = "") -> Acquire:
        limits = self.node.limits
        election, node_id, owner = self._names(stream, request)
        self._check_room(election, wait)
        return Acquire(
            election,
            node_id,
            limits.ttl("ttl_ms", request.ttl_ms),
            limits.value("value", request.value),
            wait=wait,
            waiter=waiter,
            owner=owner,
        )

    def _check_room(self, election: str, wait: bool) -> None:
        """Refuse to hold one more election, or queue one more campaigner, past the limits."""
        machine, config = self.node.machine, self.node.config
        if machine.holder(election) is None and len(machine) >= config.max_elections:
            raise ResourceExhausted(
                f"elections: this node holds {len(machine)}, the limit is "
                f"{config.max_elections} (--max-elections)"
            )
        if wait and machine.waiting(election) >= config.max_campaigners:
            raise ResourceExhausted(
                f"election: {machine.waiting(election)} campaigners wait for {election!r}, "
                f"the limit is {config.max_campaigners} (--max-campaigners)"
            )

    async def _renew(self, stream: Any, request: Any) -> pb.HeartbeatResponse:
        if request.heartbeats:
            return await self._renew_batch(stream, request)
        election, node_id, owner = self._names(stream, request)
        outcome = await self.node.renew(Renew(election, node_id, self._token(request), owner))
        return self._heartbeat_reply(request.election, outcome)

    def _heartbeat_reply(self, election: str, outcome: Outcome) -> pb.HeartbeatResponse:
        self.renewals[outcome.success] += 1
        return pb.HeartbeatResponse(
            success=outcome.success, leader=self._leader(outcome.holder), election=election
        )

    async def _renew_batch(self, stream: Any, request: Any) -> pb.HeartbeatResponse:
        """Many heartbeats in one message, answered together."""
        if request.election or request.node_id or request.fencing_token:
            raise InvalidArgument(
                "heartbeats", "a batch carries its heartbeats only, not election, node_id or token"
            )
        if len(request.heartbeats) > MAX_HEARTBEATS:
            raise InvalidArgument(
                "heartbeats", f"{len(request.heartbeats)} in one message, at most {MAX_HEARTBEATS}"
            )
        commands = []
        for one in request.heartbeats:
            if one.heartbeats:
                raise InvalidArgument("heartbeats", "a heartbeat in a batch is not a batch")
            election, node_id, owner = self._names(stream, one)
            commands.append(Renew(election, node_id, self._token(one), owner))
        outcomes = await self.node.renew_many(commands)
        return pb.HeartbeatResponse(
            heartbeats=[
                self._heartbeat_reply(one.election, outcome)
                for one, outcome in zip(request.heartbeats, outcomes, strict=True)
            ]
        )

    @_handler
    async def TryBecomeLeader(self, stream: Any) -> None:
        request = await recv_one_request(stream)
        outcome = await self.node.execute(self._acquire(stream, request, wait=False))
        await stream.send_message(
            pb.TryBecomeLeaderResponse(success=outcome.success, leader=self._leader(outcome.holder))
        )

    @_handler
    async def Heartbeat(self, stream: Any) -> None:
        await stream.send_message(await self._renew(stream, await recv_one_request(stream)))

    @_handler
    async def ReleaseLeadership(self, stream: Any) -> None:
        request = await recv_one_request(stream)
        election, node_id, owner = self._names(stream, request)
        outcome = await self.node.execute(Release(election, node_id, self._token(request), owner))
        await stream.send_message(pb.ReleaseLeadershipResponse(released=outcome.success))

    @_handler
    async def IsLeader(self, stream: Any) -> None:
        request = await recv_one_request(stream)
        election, _ = self._election(stream, request)
        node_id = self.node.limits.name("node_id", request.node_id)
        holder = await self.node.read(election)
        await stream.send_message(
            pb.IsLeaderResponse(
                is_leader=holder is not None and holder.node_id == node_id,
                leader=self._leader(holder),
            )
        )

    @_handler
    async def GetCurrentLeader(self, stream: Any) -> None:
        request = await recv_one_request(stream)
        election, _ = self._election(stream, request)
        holder = await self.node.read(election)
        await stream.send_message(
            pb.GetCurrentLeaderResponse(has_leader=holder is not None, leader=self._leader(holder))
        )

    @_handler
    async def Campaign(self, stream: Any) -> None:
        request = await recv_one_request(stream)
        node = self.node
        waiter_id, waiter = node.new_campaign()
        holder: Holder | None = None  # set when this call was granted the election
        try:
            command = self._acquire(stream, request, wait=True, waiter=waiter_id)
            outcome = await node.execute(command)
            if outcome.success:
                node.end_campaign(command.election, waiter_id)
                if not outcome.events:  # it already held the election: a refresh
                    await stream.send_message(
                        pb.CampaignResponse(leader=self._leader(outcome.holder))
                    )
                    return
                holder = outcome.holder
            else:
                holder = await waiter.wait()
            await stream.send_message(pb.CampaignResponse(leader=self._leader(holder)))
        except BaseException:
            # Deadline, cancellation or error: leave the queue, and give back
            # an election granted to a caller that will never hear of it.
            node.end_campaign(request.election, waiter_id)
            if holder is not None:
                node.submit(
                    Release(holder.election, holder.node_id, holder.fencing_token, holder.owner)
                )
            raise

    @_handler
    async def KeepAlive(self, stream: Any) -> None:
        self.streams.add(stream)
        renew = functools.partial(self._renew, stream)
        try:
            if self.node.pipelined:
                # Each renewal waits for a commit: let a window of them commit
                # together, and answer in order.
                await serve_in_order(
                    stream,
                    renew,
                    limit=self.node.config.keepalive_window,
                    stop=lambda: self.node.closing,
                )
                return
            while (request := await recv_request(stream)) is not None:
                if self.node.closing:
                    return  # already ended with UNAVAILABLE by the shutdown
                await stream.send_message(await renew(request))
        finally:
            self.streams.discard(stream)

    @_handler
    async def Watch(self, stream: Any) -> None:
        request = await recv_one_request(stream)
        election, _ = self._election(stream, request)
        client = self._count_watcher(stream)
        queue = MessageQueue(self.node.config.watch_buffer)
        holder, revision = self.node.watch(election, queue)
        try:
            if request.start_revision:
                # Everything this election saw from there on, then live. No
                # await between watch() and history(): nothing falls between.
                replay = self.node.hub.history(election, request.start_revision, revision)
                # Changes applied but not yet reported (on their way to disk)
                # come through the queue: go on from the last one sent.
                revision = request.start_revision - 1
                for event in replay:
                    await stream.send_message(self._event(event))
                    revision = event.revision
            else:
                kind = EventKind.ELECTED if holder is not None else EventKind.NO_LEADER
                await stream.send_message(self._event(Event(kind, election, holder, revision)))
            while True:
                event = await queue.get()
                if event is OVERFLOW:
                    raise GRPCError(
                        Status.RESOURCE_EXHAUSTED,
                        f"watch: fell more than {self.node.config.watch_buffer} events behind; "
                        "watch again to resume from the current state",
                    )
                if event is CLOSING:
                    raise GRPCError(Status.UNAVAILABLE, "the node is shutting down")
                if event.revision > revision:  # older ones were sent already
                    await stream.send_message(self._event(event))
                    revision = event.revision
        finally:
            self.node.unwatch(election, queue)
            self.watching -= 1
            self.watchers[client] -= 1
            if not self.watchers[client]:
                del self.watchers[client]

    def _count_watcher(self, stream: Any) -> Any:
        """Count one more Watch for the stream's connection, within the limits."""
        config = self.node.config
        client = stream.peer.addr()
        if self.watching >= config.max_watchers:
            raise ResourceExhausted(
                f"watch: this node serves {self.watching} watchers, the limit is "
                f"{config.max_watchers}"
            )
        if self.watchers.get(client, 0) >= config.max_watchers_per_connection:
            raise ResourceExhausted(
                f"watch: this connection has {self.watchers[client]} watchers open, the limit "
                f"is {config.max_watchers_per_connection}"
            )
        self.watchers[client] = self.watchers.get(client, 0) + 1
        self.watching += 1
        return client

    def _event(self, event: Event) -> pb.LeaderEvent:
        return pb.LeaderEvent(
            kind=int(event.kind), leader=self._leader(event.holder), revision=event.revision
        )
