"""A node of a Raft cluster: the election machine, replicated through the log.

Theory of operation
-------------------
Every command a client sends (grant, renewal, release, campaign, expiry) is
an entry in the Raft log; every node applies the committed entries, in order,
to its own :class:`~trio_election.core.ElectionMachine`, so all machines agree.

* The ticker ticks the Raft core every ``tick_s``. On the Raft leader it also
  asks the machine which leases have run out (``due``) and proposes an
  Expire for each, naming the token and renewal count it saw: a renewal that
  commits first wins. Only the leader expires, and a node that becomes leader
  first gives every lease its full TTL again (``refresh_all``), since it
  cannot know when the old leader last renewed them (docs/design.md, promise 3).
* The ready loop handles each Ready in the order the core requires: persist
  (hard state, entries, snapshot: one SQLite transaction, in a worker
  thread) BEFORE sending the messages that depend on them; then apply the
  committed entries, answer reads, and ``advance``.
* ``execute`` proposes a command under a request id and waits until this node
  applies the entry with that id; a follower hands the command to the leader
  (``RaftTransport.Propose``) and still waits for its own apply, so the
  reply reflects this node's state. No commit within ``request_timeout_s``
  (no leader, no quorum): UNAVAILABLE.
* ``read`` is linearizable: a ReadIndex round confirms leadership with a
  quorum, then the read waits until this node has applied that index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import secrets
from itertools import count

import trio

from .._bridge import Waiter
from .._errors import ElectionError, InvalidArgument, Unavailable
from .._generated.v1 import cluster_pb2
from ..client._transport import parse_endpoint
from ..core import Command, ElectionMachine, Holder, Limits, Outcome
from ..core._codec import CodecError, decode_command, dump_machine, encode_command, load_machine
from ..raft import (
    CodecError as RaftCodecError,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    ProposalDropped,
    RaftError,
    RawNode,
    Ready,
    Role,
    Snapshot,
    decode_conf_change,
    encode_conf_change,
)
from ._cluster_client import add_member
from ._config import NodeConfig
from ._hub import Hub, HubClient
from ._peers import Peers
from ._raft_store import RaftStore

log = logging.getLogger("trio_election.cluster")


def cluster_id_of(initial_cluster: dict[str, str]) -> str:
    """The id of a cluster bootstrapped with these members (the same on each)."""
    text = ",".join(f"{member}={address}" for member, address in sorted(initial_cluster.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
        self.machine = ElectionMachine()
        self.members: dict[str, str] = {}
        # Ids removed from the cluster; never reused, and told so if they call.
        self.removed_members: set[str] = set()
        self.closing = False
        self.leader: str | None = None
        self.role = Role.FOLLOWER
        self.applied = 0
        self.removed = trio.Event()
        self._boot = secrets.token_hex(3)
        self.hub = Hub(prefix=f"{self.id}/{self._boot}/")
        self._seq = count(1)
        self._pending: dict[str, Waiter] = {}
        self._conf_waiters: dict[tuple[ConfChangeType, str], Waiter] = {}
        self._reads: dict[bytes, Waiter] = {}
        self._read_queue: list[tuple[int, Waiter]] = []
        self._wake = trio.Event()
        self._conf_state = ConfState()
        self._snapshot_index = 0
        self._store: RaftStore | None = None
        self._nursery: trio.Nursery | None = None
        self.raw: RawNode | None = None
        self.peers: Peers | None = None
        self.advertise = ""
        self.cluster_id = ""
        self.peer_listen: tuple[str, int] = (config.peer_host, config.peer_port or 0)
        assert config.peer_auth is not None
        self.peer_auth = config.peer_auth

    # -- lifetime -----------------------------------------------------------

    async def open(self) -> None:
        """Load the data dir and create the Raft core (before serving).

        Set ``advertise`` (the address peers reach us at) before ``run``.
        """
        config = self.config
        self._store = store = await trio.to_thread.run_sync(RaftStore, config.data_dir)
        snapshot = store.snapshot()
        if not snapshot.is_empty:
            self._restore(snapshot)
        self.raw = RawNode(
            Config(
                id=self.id,
                election_tick=10,
                heartbeat_tick=1,
                applied=snapshot.metadata.index,
                rng=random.Random(),
            ),
            store,
        )
        fresh = store.last_index() == 0 and store.initial_state()[0].term == 0
        if fresh and config.initial_cluster:
            if self.id not in config.initial_cluster:
                raise SystemExit(f"--initial-cluster does not name this node ({self.id})")
            self.members = dict(config.initial_cluster)
            store.set_meta("cluster_id", cluster_id_of(config.initial_cluster))
            self.raw.bootstrap(
                list(config.initial_cluster),
                {peer: address.encode() for peer, address in config.initial_cluster.items()},
            )
        elif fresh and not config.join:
            raise SystemExit(
                f"{config.data_dir} holds no cluster state: give --initial-cluster or --join"
            )
        store.set_meta("node_id", self.id)
        self.cluster_id = store.meta("cluster_id") or ""
        if config.peer_port is None:
            remembered = store.meta("peer_listen")
            if remembered is None:
                raise SystemExit(
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
        """Drive the Raft core until cancelled (or this node is removed)."""
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
        for waiter in [*self._pending.values(), *self._reads.values()]:
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
        self.members = members
        self.cluster_id = cluster_id
        self._store.set_meta("cluster_id", cluster_id)
        self.peers.update(self.members)

    # -- the client interface ------------------------------------------------

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
            self._propose(encode_command(command, request_id), request_id)
            try:
                return await waiter.wait(self.config.request_timeout_s)
            except TimeoutError:
                raise Unavailable(self._why_no_commit()) from None
        finally:
            self._pending.pop(request_id, None)

    def submit(self, command: Command) -> None:
        """Propose ``command`` and do not wait (clean-up paths)."""
        if self.closing:
            return
        try:
            self._propose(encode_command(command, ""), "")
        except Unavailable:
            pass  # a stale waiter expires with its TTL anyway

    async def read(self, election: str) -> Holder | None:
        """The holder of ``election``, linearizably (ReadIndex)."""
        if self.closing:
            raise Unavailable("the node is shutting down")
        ctx = f"{self._boot}/{next(self._seq)}".encode()
        waiter = Waiter()
        self._reads[ctx] = waiter
        deadline = trio.current_time() + self.config.request_timeout_s
        # A read forwarded to a leader that then died is never answered: ask
        # again after an election timeout's worth of ticks.
        retry = 20 * self.config.tick_s
        try:
            while True:
                try:
                    self.raw.read_index(ctx)
                except ProposalDropped:  # no Raft leader known: nobody to confirm with
                    raise Unavailable(self._why_no_commit()) from None
                self._wake.set()
                left = deadline - trio.current_time()
                try:
                    await waiter.wait(min(retry, left))
                    break
                except TimeoutError:
                    if left <= retry:
                        raise Unavailable(self._why_no_commit()) from None
        finally:
            self._reads.pop(ctx, None)
        return self.machine.holder(election)

    # -- membership -----------------------------------------------------------

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

    def propose_conf_change(self, change: ConfChange) -> None:
        if self.role is Role.LEADER:
            try:
                self.raw.propose_conf_change(change)
            except (ProposalDropped, RaftError) as exc:
                raise Unavailable(f"membership change refused: {exc}") from None
            self._wake.set()
        else:
            self._forward(encode_conf_change(change), conf_change=True, request_id="")

    # -- proposals ------------------------------------------------------------

    def propose_forwarded(self, data: bytes, conf_change: bool) -> bool:
        """A follower's proposal arrived; False if this node does not lead.

        The leader checks it again, as if a client had sent it: nothing
        reaches the log without the limits of a client call, and no command
        only the leader originates (an Expire) is taken from outside.

        Raises:
            InvalidArgument: the proposal does not decode, or breaks a limit.
            PermissionDenied: it is not a command a client may cause.
        """
        if self.role is not Role.LEADER:
            return False
        if conf_change:
            try:
                change = decode_conf_change(data)
            except RaftCodecError as exc:
                raise InvalidArgument("data", f"not a membership change: {exc}") from None
            self.limits.name("id", change.node_id)
        else:
            try:
                command, request_id = decode_command(data)
            except CodecError as exc:
                raise InvalidArgument("data", str(exc)) from None
            if len(request_id) > 256:
                raise InvalidArgument("data", "the request id is over 256 characters")
            self.limits.command(command)
        try:
            if conf_change:
                self.raw.propose_conf_change(change)
            else:
                self.raw.propose(data)
        except (ProposalDropped, RaftError):
            return False
        self._wake.set()
        return True

    def is_member(self, node_id: str) -> bool:
        """Whether ``node_id`` is a member as of this node's applied state."""
        return node_id in self.members

    def _propose(self, data: bytes, request_id: str) -> None:
        if self.role is Role.LEADER:
            try:
                self.raw.propose(data)
            except ProposalDropped as exc:
                raise Unavailable(f"the Raft leader refused the proposal: {exc}") from None
            self._wake.set()
        else:
            self._forward(data, conf_change=False, request_id=request_id)

    def _forward(self, data: bytes, *, conf_change: bool, request_id: str) -> None:
        deadline = trio.current_time() + self.config.request_timeout_s
        self._nursery.start_soon(self._send_forward, data, conf_change, request_id, deadline)

    async def _send_forward(
        self, data: bytes, conf_change: bool, request_id: str, deadline: float
    ) -> None:
        """Hand a proposal to the Raft leader, again after a leader change.

        Sending one twice is harmless: every command is idempotent for its
        requester (a second Renew renews, a second Acquire refreshes, a
        second Release finds nothing to release, a Campaign replaces its own
        queue entry), and the requester hears the outcome of the first.
        """
        request = cluster_pb2.ProposeRequest(data=data, conf_change=conf_change)
        with trio.move_on_at(deadline):
            while not request_id or request_id in self._pending:
                leader = self.leader
                if leader == self.id and self.propose_forwarded(data, conf_change):
                    return
                channel = None if leader is None else self.peers.channel(leader)
                if channel is not None:
                    try:
                        reply = await channel.unary(
                            channel.stub.Propose, request, max(0.1, deadline - trio.current_time())
                        )
                        if reply.accepted:
                            return
                    except Exception as exc:  # noqa: BLE001 - the leader could not be reached
                        log.debug("forwarding to %s failed: %r", leader, exc)
                # Wait for the cluster to settle on a (new) leader.
                await trio.sleep(2 * self.config.tick_s)

    def _why_no_commit(self) -> str:
        if self.leader is None:
            return "no Raft leader: the cluster has no quorum or is electing one; retry"
        return f"the command did not commit within {self.config.request_timeout_s:g} s; retry"

    # -- the Raft loop ----------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.config.tick_s)
            self.raw.tick()
            if self.role is Role.LEADER:
                for command in self.machine.due(self.clock()):
                    try:
                        self.raw.propose(encode_command(command, ""))
                    except ProposalDropped:
                        break  # due() proposes again after its retry interval
            self._wake.set()

    async def _ready_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self.raw.has_ready():
                await self._handle(self.raw.ready())

    async def _handle(self, rd: Ready) -> None:
        # A leader that stays leader may send its appends while it writes its
        # own copy (as etcd's server does): the core counts the leader's own
        # entries toward a commit only once advance() says they are on disk.
        # Everyone else (votes, acknowledgements) persists BEFORE sending.
        early = self.role is Role.LEADER and (
            rd.soft_state is None or rd.soft_state.role is Role.LEADER
        )
        if early:
            self.peers.send(rd.messages)
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.leader, rd.soft_state.role)
        if rd.must_sync:
            await trio.to_thread.run_sync(
                self._store.write, rd.hard_state, rd.entries, rd.snapshot, True
            )
            self._store.remember(rd.hard_state, rd.entries, rd.snapshot)
        elif rd.hard_state is not None:
            # Only the commit index moved: no fsync, so no worker thread either
            # (the hop would cost more than the write).
            self._store.write(rd.hard_state, (), None, False)
            self._store.remember(rd.hard_state, (), None)
        if rd.snapshot is not None and not rd.snapshot.is_empty:
            self._restore(rd.snapshot)
            self.peers.update(self.members)
            log.info("installed a snapshot at index %d from the leader", self.applied)
        if not early:
            self.peers.send(rd.messages)
        for entry in rd.committed_entries:
            self._apply(entry)
        for state in rd.read_states:
            waiter = self._reads.get(state.ctx)
            if waiter is not None:
                self._read_queue.append((state.index, waiter))
        self._release_reads()
        self.raw.advance(rd)
        if self.applied - self._snapshot_index >= self.config.snapshot_entries:
            await self._take_snapshot()

    def _on_soft_state(self, leader: str | None, role: Role) -> None:
        was_leader = self.role is Role.LEADER
        if leader != self.leader:
            log.info("Raft leader is now %s", leader or "unknown")
        self.leader, self.role = leader, role
        # Writes need a Raft leader; with CheckQuorum a leader that lost its
        # quorum steps down, and with PreVote a follower that lost its
        # leader forgets it, so a known leader means a quorum was there lately.
        self.report_serving(leader is not None and not self.closing)
        if role is Role.LEADER and not was_leader:
            # We cannot know when the old leader last renewed each lease.
            self.machine.refresh_all(self.clock())
            log.info("this node leads; every lease gets its full TTL from now")

    def _apply(self, entry: Entry) -> None:
        # A committed entry is applied the same way on every replica, whatever
        # it holds: one that does not decode, or that the machine refuses, is
        # the same no-op everywhere (logged), never a crash that every restart
        # would repeat.
        self.applied = entry.index
        if entry.type is EntryType.CONF_CHANGE:
            try:
                change = decode_conf_change(entry.data)
            except RaftCodecError as exc:
                log.error(
                    "entry %d: not a membership change, applied as a no-op: %s", entry.index, exc
                )
                return
            self._apply_conf_change(change)
            return
        if not entry.data:
            return  # a new leader's empty entry
        try:
            command, request_id = decode_command(entry.data)
        except CodecError as exc:
            log.error("entry %d applied as a no-op: %s", entry.index, exc)
            return
        try:
            outcome = self.machine.apply(command, self.clock(), entry.index)
        except Exception as exc:  # noqa: BLE001 - see above; no command fails in a cluster
            log.error("entry %d (%r) applied as a no-op: %r", entry.index, command, exc)
            waiter = self._pending.pop(request_id, None)
            if waiter is not None:
                waiter.fail(exc if isinstance(exc, ElectionError) else Unavailable(str(exc)))
            return
        self.hub.report(outcome)
        waiter = self._pending.pop(request_id, None)
        if waiter is not None:
            waiter.set(outcome)

    def _apply_conf_change(self, change: ConfChange) -> None:
        self._conf_state = self.raw.apply_conf_change(change)
        if change.type is ConfChangeType.ADD_NODE:
            self.members[change.node_id] = change.context.decode()
            log.info("member %s added at %s", change.node_id, self.members[change.node_id])
        else:
            self.members.pop(change.node_id, None)
            self.removed_members.add(change.node_id)
            log.info("member %s removed", change.node_id)
            if change.node_id == self.id:
                self.removed.set()
        if self.peers is not None:
            self.peers.update(self.members)
        waiter = self._conf_waiters.pop((change.type, change.node_id), None)
        if waiter is not None:
            waiter.set()

    def _told_removed(self, by: str) -> None:
        # A peer that applied our removal refuses our messages: the leader
        # stopped replicating to us, so we would never apply it ourselves.
        log.warning("%s says this node was removed from the cluster", by)
        self.removed.set()

    def _release_reads(self) -> None:
        keep = []
        for index, waiter in self._read_queue:
            if index <= self.applied:
                waiter.set(index)
            else:
                keep.append((index, waiter))
        self._read_queue = keep

    # -- snapshots --------------------------------------------------------------

    def _snapshot_data(self) -> bytes:
        return json.dumps(
            {
                "machine": dump_machine(self.machine).decode(),
                "members": self.members,
                "removed": sorted(self.removed_members),
            }
        ).encode()

    def _restore(self, snapshot: Snapshot) -> None:
        state = json.loads(snapshot.data)
        self.machine = load_machine(state["machine"].encode(), self.clock())
        self.members = dict(state["members"])
        self.removed_members = set(state["removed"])
        self.applied = self._snapshot_index = snapshot.metadata.index
        self._conf_state = snapshot.metadata.conf_state

    async def _take_snapshot(self) -> None:
        index, data = self.applied, self._snapshot_data()
        store = self._store
        snapshot = store.create_snapshot(index, self._conf_state, data)
        keep = self.config.snapshot_entries // 10
        compact_to = max(index - keep, store.first_index() - 1)
        await trio.to_thread.run_sync(store.write_snapshot, snapshot, compact_to)
        if compact_to > store.first_index() - 1:
            store.compact(compact_to)
        self._snapshot_index = index
        log.info("snapshot at %d; log compacted up to %d", index, compact_to)
