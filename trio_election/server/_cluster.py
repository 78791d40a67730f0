"""A node of a Raft cluster: Trio tasks around a sans-IO :class:`~trio_election.replica.Replica`.

Every decision (what a tick proposes, what a new leader does, the order of a
Ready's sends and writes, how committed entries and forwarded proposals are
checked and applied) is the replica's, and the simulation runs the same
replica. This module only keeps time and moves bytes:

* the ticker calls ``replica.tick(now)`` every ``tick_s``;
* the ready loop carries out each :class:`~trio_election.replica.Work`: send
  ``messages``, persist (one SQLite transaction, in a worker thread when it
  must be fsynced), send ``messages_after_persist``, ``advance``, then wakes
  the waiters the :class:`~trio_election.replica.Done` names;
* ``execute`` submits a command under a request id and waits until this node
  applies the entry with that id; on a follower the replica forwards it to
  the leader in Raft's own messages, and proposes it again if it is lost, so
  the reply reflects this node's state. No commit within
  ``request_timeout_s`` (no leader, no quorum): UNAVAILABLE.
* ``read`` is linearizable: a ReadIndex round, then this node's apply.

Trio code and asyncio code meet only in :class:`~trio_election._bridge.Waiter`:
the gRPC handlers (asyncio) await it, everything here (Trio) sets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import secrets
from dataclasses import dataclass
from itertools import count

import trio

from .._bridge import GRPCError, Waiter
from .._errors import StartupError, Unavailable
from .._generated.v1 import cluster_pb2
from ..client._transport import CONNECTION_ERRORS, parse_endpoint
from ..core import Command, ElectionMachine, Holder, Limits, Outcome, Renew
from ..core._codec import encode_command
from ..raft import (
    ConfChange,
    ConfChangeType,
    Config,
    Message,
    ProposalDropped,
    RaftError,
    RawNode,
    Role,
    Status,
)
from ..replica import Done, Elections, Replica, Work
from ._cluster_client import add_member
from ._config import NodeConfig
from ._hub import Hub, HubClient
from ._peers import Peers
from ._raft_store import RaftStore

log = logging.getLogger("trio_election.cluster")

#: Most renewals a follower forwards to the leader in one call (and the
#: leader takes in one).
MAX_FORWARDED_RENEWALS = 10_000
#: A member the Raft leader heard from within this many ticks (an election
#: timeout) is healthy.
HEALTHY_TICKS = 10


@dataclass(frozen=True, slots=True)
class PeerHealth:
    """What the Raft leader knows of one other member's replication."""

    match_index: int
    lag: int  # entries behind the leader's last index
    healthy: bool


def peer_health(status: Status, self_id: str) -> dict[str, PeerHealth]:
    """Each other member's progress, from the Raft leader's ``status`` (a
    follower knows none: empty)."""
    health = {}
    for peer, progress in status.progress.items():
        if peer != self_id:
            since = progress.ticks_since_active
            health[peer] = PeerHealth(
                progress.match,
                max(0, status.last_index - progress.match),
                since is not None and since <= HEALTHY_TICKS,
            )
    return health


def cluster_id_of(initial_cluster: dict[str, str]) -> str:
    """The id of a cluster bootstrapped with these members (the same on each)."""
    text = ",".join(f"{member}={address}" for member, address in sorted(initial_cluster.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def renew_result(outcome: Outcome, now: float) -> cluster_pb2.RenewResult:
    """A forwarded renewal's outcome, as the Raft leader sends it back."""
    holder = outcome.holder
    if holder is None:
        return cluster_pb2.RenewResult(success=outcome.success)
    return cluster_pb2.RenewResult(
        success=outcome.success,
        held=True,
        node_id=holder.node_id,
        fencing_token=holder.fencing_token,
        ttl_ms=holder.ttl_ms,
        remaining_ms=holder.remaining_ms(now),
        value=holder.value,
        owner=holder.owner,
    )


def outcome_of(result: cluster_pb2.RenewResult, election: str, now: float) -> Outcome:
    """The outcome a :func:`renew_result` describes, with the deadline on this
    node's clock (``now``)."""
    holder = None
    if result.held:
        deadline = now + result.remaining_ms / 1000
        holder = Holder(
            election,
            result.node_id,
            result.fencing_token,
            result.ttl_ms,
            result.value,
            deadline,
            result.owner,
        )
    return Outcome(result.success, holder)


class _Replies:
    """The answers to a batch of requests, awaited as one :class:`Waiter`."""

    __slots__ = ("left", "results", "waiter")

    def __init__(self, n: int) -> None:
        self.results: list[Outcome | None] = [None] * n
        self.left = n
        self.waiter = Waiter()
        if not n:
            self.waiter.set([])

    def set(self, i: int, outcome: Outcome) -> None:
        if self.results[i] is None:
            self.results[i] = outcome
            self.left -= 1
            if not self.left:
                self.waiter.set(self.results)

    def fail(self, exc: Exception) -> None:
        self.waiter.fail(exc)


class ClusterNode(HubClient):
    """One member of a Raft cluster; same interface as the single ``Node``."""

    #: Each renewal waits for its commit: a stream's may wait together.
    pipelined = True

    def __init__(self, config: NodeConfig, clock=trio.current_time) -> None:
        assert config.node_id and config.data_dir is not None
        self.config = config
        self.id = config.node_id
        self.limits = Limits(config.max_ttl_ms)
        self.clock = clock
        self.elections = Elections(self.limits)
        self.closing = False
        self.removed = trio.Event()
        self._boot = secrets.token_hex(3)
        self.hub = Hub(prefix=f"{self.id}/{self._boot}/")
        self._seq = count(1)
        self._pending: dict[str, Waiter] = {}
        self._conf_waiters: dict[tuple[ConfChangeType, str], Waiter] = {}
        self._reads: dict[bytes, Waiter] = {}
        self._renewals: dict[str, tuple[_Replies, int]] = {}
        self._to_forward: list[tuple[Renew, _Replies, int]] = []
        self._forward_wake = trio.Event()
        self._wake = trio.Event()
        self._store: RaftStore | None = None
        self._nursery: trio.Nursery | None = None
        #: Raft leaders seen elected: one per term that had one (metrics).
        self.leader_changes = 0
        self._leader_term = 0
        self.replica: Replica | None = None
        self.peers: Peers | None = None
        self.advertise = ""
        self.cluster_id = ""
        self.peer_listen: tuple[str, int] = (config.peer_host, config.peer_port or 0)
        assert config.peer_auth is not None
        self.peer_auth = config.peer_auth

    # -- what the services read -------------------------------------------------

    @property
    def machine(self) -> ElectionMachine:
        return self.elections.machine

    @property
    def raw(self) -> RawNode:
        return self.replica.raw

    @property
    def members(self) -> dict[str, str]:
        return self.replica.members if self.replica is not None else {}

    @property
    def removed_members(self) -> set[str]:
        return self.replica.removed_members if self.replica is not None else set()

    @property
    def leader(self) -> str | None:
        return self.replica.leader if self.replica is not None else None

    @property
    def role(self) -> Role:
        return self.replica.role if self.replica is not None else Role.FOLLOWER

    @property
    def applied(self) -> int:
        return self.replica.applied if self.replica is not None else 0

    @property
    def term(self) -> int:
        """The current Raft term (0 before ``open``)."""
        return self.replica.raw.term if self.replica is not None else 0

    @property
    def proposals_pending(self) -> int:
        """Commands proposed through this node that have not applied yet."""
        return len(self._pending)

    # -- lifetime -----------------------------------------------------------

    async def open(self) -> None:
        """Load the data dir and create the replica (before serving).

        Set ``advertise`` (the address peers reach us at) before ``run``.
        """
        config = self.config
        self._store = store = await trio.to_thread.run_sync(
            RaftStore, config.data_dir, self.on_write
        )
        self.replica = replica = Replica(
            store,
            self.elections,
            self.clock(),
            Config(id=self.id, election_tick=10, heartbeat_tick=1, rng=random.Random()),
            snapshot_entries=config.snapshot_entries,
        )
        fresh = store.last_index() == 0 and store.initial_state()[0].term == 0
        if fresh and config.initial_cluster:
            if self.id not in config.initial_cluster:
                raise StartupError(f"--initial-cluster does not name this node ({self.id})")
            store.set_meta("cluster_id", cluster_id_of(config.initial_cluster))
            replica.bootstrap(config.initial_cluster)
        elif fresh and not config.join:
            raise StartupError(
                f"{config.data_dir} holds no cluster state: give --initial-cluster or --join"
            )
        store.set_meta("node_id", self.id)
        self.cluster_id = store.meta("cluster_id") or ""
        if config.peer_port is None:
            remembered = store.meta("peer_listen")
            if remembered is None:
                raise StartupError(
                    f"give --peer-listen HOST:PORT: {config.data_dir} does not say where "
                    "this member listens for its peers"
                )
            self.peer_listen = parse_endpoint(remembered)
        log.info(
            "node %s: %s",
            self.id,
            "bootstrapping"
            if fresh and config.initial_cluster
            else "joining"
            if fresh
            else f"restarting from {config.data_dir}",
        )

    def listening(self, address: str) -> None:
        """The peer listener is bound at ``address``: advertise it, remember it."""
        config = self.config
        self.advertise = config.advertise or (config.initial_cluster or {}).get(self.id) or address
        self._store.set_meta("peer_listen", address)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drive the replica until cancelled (or this node is removed)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.peers = Peers(
                    self.id,
                    self.peer_auth,
                    nursery,
                    self.raw.report_unreachable,
                    self.raw.report_snapshot,
                    self._told_removed,
                )
                self.peers.update(self.members)
                nursery.start_soon(self._ready_loop)
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._forwarder)
                if self.config.join and self._store.last_index() == 0:
                    await self._join()
                task_status.started()
        finally:
            if self.peers is not None:
                self.peers.close()
            if self._store is not None:
                self._store.close()

    def begin_close(self) -> None:
        self.closing = True
        self.report_serving(False)
        self.hub.close()
        waiters = [*self._pending.values(), *self._reads.values()]
        waiters += [replies.waiter for replies, _ in self._renewals.values()]
        waiters += [replies.waiter for _, replies, _ in self._to_forward]
        for waiter in waiters:
            waiter.fail(Unavailable("the node is shutting down"))

    async def _join(self) -> None:
        members, cluster_id = await add_member(
            self.config.join, self.id, self.advertise, self.peer_auth
        )
        log.info(
            "joined cluster %s through %s: members %s",
            cluster_id,
            self.config.join,
            ", ".join(sorted(members)),
        )
        self.replica.members = members
        self.cluster_id = cluster_id
        self._store.set_meta("cluster_id", cluster_id)
        self.peers.update(self.members)

    # -- the asyncio side --------------------------------------------------------
    #
    # The coroutines below are awaited by the gRPC handlers, which run on the
    # asyncio loop (``_bridge``). They await nothing but a ``Waiter`` and call
    # only this class's synchronous methods; everything else here is Trio code
    # (the tasks under ``run``), which sets the Waiters.

    async def execute(self, command: Command) -> Outcome:
        """Propose ``command``; return its outcome once this node applied it.

        Raises:
            Unavailable: no Raft leader, or no commit within the request timeout.
        """
        if self.closing:
            raise Unavailable("the node is shutting down")
        request_id = f"{self.id}/{self._boot}/{next(self._seq)}"
        waiter = Waiter()
        self._pending[request_id] = waiter
        try:
            with contextlib.suppress(ProposalDropped):  # proposed again once a leader is known
                self.replica.submit(encode_command(command, request_id), request_id)
            self._wake.set()
            try:
                return await waiter.wait(self.config.request_timeout_s)
            except TimeoutError:
                raise Unavailable(self._why_no_commit()) from None
        finally:
            self._pending.pop(request_id, None)
            self.replica.forget(request_id)

    async def renew(self, command: Renew) -> Outcome:
        """One renewal; see :meth:`renew_many`."""
        return (await self.renew_many([command]))[0]

    async def renew_many(self, commands: list[Renew]) -> list[Outcome]:
        """Renewals, answered together: by the Raft leader off the log after
        a batched quorum round (``replica/_renewals.py``). A follower forwards
        them to the leader (``RaftTransport.Renew``, with the others that
        arrive meanwhile); the first renewal of a grant is proposed like any
        command.

        Raises:
            Unavailable: this node stopped leading first, or no quorum
                answered within the request timeout.
        """
        if self.closing:
            raise Unavailable("the node is shutting down")
        replies = _Replies(len(commands))
        logged = []
        now = self.clock()
        forward = self.role is not Role.LEADER and self.leader is not None
        keys = []
        for i, command in enumerate(commands):
            key = f"{next(self._seq)}"
            if self.replica.renew(key, command, now):
                self._renewals[key] = (replies, i)
                keys.append(key)
            elif forward:
                self._to_forward.append((command, replies, i))
            else:
                logged.append(i)
        if keys:
            self._wake.set()
        if self._to_forward:
            self._forward_wake.set()
        try:
            if logged:
                outcomes = await asyncio.gather(*(self.execute(commands[i]) for i in logged))
                for i, outcome in zip(logged, outcomes, strict=True):
                    replies.set(i, outcome)
            return await replies.waiter.wait(self.config.request_timeout_s)
        except TimeoutError:
            raise Unavailable(self._why_no_commit()) from None
        finally:
            for key in keys:
                self._renewals.pop(key, None)

    async def read(self, election: str) -> Holder | None:
        """The holder of ``election``, linearizably (ReadIndex)."""
        if self.closing:
            raise Unavailable("the node is shutting down")
        ctx = f"{self._boot}/{next(self._seq)}".encode()
        waiter = Waiter()
        self._reads[ctx] = waiter
        try:
            try:
                self.replica.read(ctx)  # asked again if its leader is lost
            except ProposalDropped:  # no Raft leader known: nobody to confirm with
                raise Unavailable(self._why_no_commit()) from None
            self._wake.set()
            try:
                await waiter.wait(self.config.request_timeout_s)
            except TimeoutError:
                raise Unavailable(self._why_no_commit()) from None
        finally:
            self._reads.pop(ctx, None)
            self.replica.forget_read(ctx)
        return self.machine.holder(election)

    async def change_membership(self, change: ConfChange) -> dict[str, str]:
        """Propose a membership change; return the members once it applied."""
        if self.closing:
            raise Unavailable("the node is shutting down")
        key = (change.type, change.node_id)
        waiter = Waiter()
        self._conf_waiters[key] = waiter
        try:
            self.propose_conf_change(change)
            try:
                await waiter.wait(self.config.request_timeout_s)
            except TimeoutError:
                raise Unavailable(self._why_no_commit()) from None
        finally:
            self._conf_waiters.pop(key, None)
        return dict(self.members)

    # -- synchronous, called from either side ----------------------------------------

    def submit(self, command: Command) -> None:
        """Propose ``command`` and do not wait (clean-up paths: a Campaign that
        leaves the queue, a grant given back); proposed again until applied,
        for at most the request timeout."""
        if self.closing:
            return
        request_id = f"{self.id}/{self._boot}/{next(self._seq)}"
        ticks = round(self.config.request_timeout_s / self.config.tick_s)
        with contextlib.suppress(ProposalDropped):  # proposed again once a leader is known
            self.replica.submit(encode_command(command, request_id), request_id, ticks)
        self._wake.set()

    def _why_no_commit(self) -> str:
        if self.leader is None:
            return "no Raft leader: the cluster has no quorum or is electing one; retry"
        return f"the command did not commit within {self.config.request_timeout_s:g} s; retry"

    def propose_conf_change(self, change: ConfChange) -> None:
        try:
            self.replica.propose_conf_change(change)
        except (ProposalDropped, RaftError) as exc:
            raise Unavailable(f"membership change refused: {exc}") from None
        self._wake.set()

    # -- from peers --------------------------------------------------------------

    def step(self, message: Message) -> None:
        """A Raft message from a member (``RaftTransport.Send`` checked its sender).

        Raises:
            InvalidArgument, PermissionDenied: a forwarded proposal that may
                not be logged (``Replica.step``).
        """
        self.replica.step(message)
        self._wake.set()

    def is_member(self, node_id: str) -> bool:
        """Whether ``node_id`` is a member as of this node's applied state."""
        return self.replica.is_member(node_id)

    # -- the Trio side: the tasks that drive the replica --------------------------

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.config.tick_s)
            self.replica.tick(self.clock())
            self._wake.set()

    async def _forwarder(self) -> None:
        """Carry followers' renewals to the Raft leader, one batch at a time:
        what arrives while a batch is out goes in the next."""
        while True:
            await self._forward_wake.wait()
            self._forward_wake = trio.Event()
            while self._to_forward:
                batch = self._to_forward[:MAX_FORWARDED_RENEWALS]
                del self._to_forward[: len(batch)]
                await self._forward(batch)

    async def _forward(self, batch: list[tuple[Renew, _Replies, int]]) -> None:
        leader = self.leader
        channel = self.peers.channel(leader) if leader is not None else None
        if channel is None:
            for _, replies, _ in batch:
                replies.fail(Unavailable(self._why_no_commit()))
            return
        request = cluster_pb2.RenewBatch(
            renewals=[
                cluster_pb2.Renewal(
                    election=c.election,
                    node_id=c.node_id,
                    fencing_token=c.fencing_token,
                    owner=c.owner,
                )
                for c, _, _ in batch
            ],
            **{"from": self.id},
        )
        try:
            reply = await channel.unary(
                channel.stub.Renew, request, timeout=self.config.request_timeout_s
            )
        except (GRPCError, TimeoutError, trio.TooSlowError, *CONNECTION_ERRORS) as exc:
            # The leader went away mid-call (killed, partitioned): the renewals
            # fail and their clients retry; this node goes on serving.
            why = getattr(exc, "message", None) or repr(exc)
            for _, replies, _ in batch:
                replies.fail(Unavailable(f"the Raft leader {leader} did not renew: {why}; retry"))
            return
        now = self.clock()
        for (command, replies, i), r in zip(batch, reply.results, strict=False):
            if r.error:
                replies.fail(Unavailable(r.error))
                continue
            replies.set(i, outcome_of(r, command.election, now))
        for _, replies, _ in batch[len(reply.results) :]:
            replies.fail(Unavailable(f"the Raft leader {leader} did not answer; retry"))

    async def _ready_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self.replica.has_ready():
                await self._carry_out(self.replica.ready(self.clock()))

    async def _carry_out(self, work: Work) -> None:
        self.peers.send(work.messages)
        if work.leader_changed:
            self._leader_changed()
        store = self._store
        if work.must_sync:
            await trio.to_thread.run_sync(
                store.write, work.hard_state, work.entries, work.snapshot, True
            )
            store.remember(work.hard_state, work.entries, work.snapshot)
        elif work.hard_state is not None:
            # Only the commit index moved: no fsync, so no worker thread either
            # (the hop would cost more than the write).
            store.write(work.hard_state, (), None, False)
            store.remember(work.hard_state, (), None)
        self.peers.send(work.messages_after_persist)
        done = self.replica.advance(work, self.clock())
        self._done(done)
        if done.snapshot_due:
            await self._take_snapshot()

    def _leader_changed(self) -> None:
        leader = self.leader
        log.info("Raft leader is now %s", leader or "unknown")
        if leader is not None and (term := self.term) != self._leader_term:
            self._leader_term = term
            self.leader_changes += 1
        # Writes need a Raft leader; with CheckQuorum a leader that lost its
        # quorum steps down, and with PreVote a follower that lost its
        # leader forgets it, so a known leader means a quorum was there lately.
        self.report_serving(leader is not None and not self.closing)

    def _done(self, done: Done) -> None:
        if done.installed_snapshot is not None:
            log.info("installed a snapshot at index %d from the leader", done.installed_snapshot)
        if done.members_changed and self.peers is not None:
            self.peers.update(self.members)
        for change_key in list(self._conf_waiters):
            if self._conf_applied(change_key):
                self._conf_waiters.pop(change_key).set()
        for applied in done.applied:
            waiter = self._pending.pop(applied.request_id, None) if applied.request_id else None
            if applied.outcome is None:
                if waiter is not None and applied.error is not None:
                    waiter.fail(applied.error)
                continue
            self.report(applied.outcome)
            if waiter is not None:
                waiter.set(applied.outcome)
        for ctx in done.reads:
            waiter = self._reads.get(ctx)
            if waiter is not None:
                waiter.set()
        for key, renewed in done.renewed:
            entry = self._renewals.pop(key, None)
            if entry is not None:
                entry[0].set(entry[1], renewed.outcome)
        for key in done.renewals_lost:
            entry = self._renewals.pop(key, None)
            if entry is not None:
                entry[0].fail(Unavailable("this node stopped being the Raft leader; retry"))
        if done.removed:
            self.removed.set()

    def _conf_applied(self, key: tuple[ConfChangeType, str]) -> bool:
        kind, node_id = key
        if kind is ConfChangeType.ADD_NODE:
            return node_id in self.members
        return node_id in self.removed_members

    def _told_removed(self, by: str) -> None:
        # A peer that applied our removal refuses our messages: the leader
        # stopped replicating to us, so we would never apply it ourselves.
        log.warning("%s says this node was removed from the cluster", by)
        self.removed.set()

    # -- snapshots --------------------------------------------------------------

    async def _take_snapshot(self) -> None:
        index, conf_state, data = self.replica.snapshot_image()
        store = self._store
        snapshot = store.create_snapshot(index, conf_state, data)
        keep = self.config.snapshot_entries // 10
        compact_to = max(index - keep, store.first_index() - 1)
        await trio.to_thread.run_sync(store.write_snapshot, snapshot, compact_to)
        if compact_to > store.first_index() - 1:
            store.compact(compact_to)
        self.replica.snapshotted(index)
        log.info("snapshot at %d; log compacted up to %d", index, compact_to)
