"""``Replica``: what one cluster member does with its Raft core, without I/O.

The runtime (``server/_cluster.py``), the simulation (``testing/``) and the
Maelstrom adapter (``tools/maelstrom_node.py``) each own a ``Replica`` and do
only what it cannot: keep time, move bytes, write the disk, wake waiters. Every
decision that keeps a promise of docs/design.md is taken here, once:

* **Ticks.** ``tick(now)`` ticks the core; on the Raft leader it then proposes
  what the machine says is due (for elections: the expiries). Only the leader
  proposes them.
* **A new leader.** ``ready(now)`` notices that this node became leader in the
  same step as the core says so, before any later tick can propose an expiry,
  and calls the machine's ``lead(now)`` (for elections: every lease gets its
  full TTL again, since a new leader cannot know when the old one last
  renewed them; promise 3).
* **The Ready cycle.** ``ready`` returns a :class:`Work`; the runtime sends
  ``messages`` at once, persists, sends ``messages_after_persist``, then
  calls ``advance(work, now)``, which applies the committed entries and
  returns a :class:`Done`: the replies to requests, the reads that may
  proceed, membership news. The core decides which message may leave before
  the write (``Ready.messages_after_persist``), so no runtime has a
  role-dependent special case.
* **Committed entries** are applied the same way on every replica, whatever
  they hold: one that does not decode, or that the machine refuses, is the
  same logged no-op everywhere, never a crash that each restart would repeat.
* **Proposals** (``submit``) go into the log on the leader; a follower's go
  to the leader inside Raft's own message flow (a PROP message, as
  etcd-io/raft forwards ``MsgProp``). One that is lost (a leader change, a
  dropped message) is proposed again at the first tick after a leader
  change and, on a follower, every ``retry_ticks`` ticks, until the entry
  is applied or the runtime gives up (``forget``). A leader that stays
  leader loses none of its entries, so it never repeats itself because a
  commit is slow. A request id is applied once: a later copy of it in the
  log is skipped on every replica (the ids applied in the last
  ``DEDUPE_ENTRIES`` entries are remembered, in the snapshot too), so it is
  never applied twice, nor answered twice.
* **Abandoned work.** Every ``abandon_check_ticks`` the leader asks the
  machine what members that are gone (removed, or not heard from for
  ``gone_ticks``) left open, and proposes its end: for elections, a Campaign
  whose carrying node died leaves the queue instead of being granted later
  and blocking the election for a TTL.
* **Forwarded proposals** are checked again by the leader as if a client had
  sent them (``step`` of a PROP): nothing reaches the log unchecked, and no
  command only the leader originates (an expiry) is taken from a peer.
* **Renewals** (``renew``) are answered by the Raft leader off the log, after
  a batched quorum round: see ``replica/_renewals.py`` for how, and why that
  keeps the promises.
* **Reads** (``read(ctx)``) are linearizable: ReadIndex, then wait until the
  applied index reaches the confirmed one. A ReadIndex request lost with its
  leader is asked again, as proposals are, until confirmed or forgotten.
* **Membership and snapshots**: the member table and the removed ids travel in
  the snapshot with the machine; ``Done.snapshot_due`` says when to take one.

The machine is generic (:class:`Machine`): the election machine
(``replica/_elections.py``), or Maelstrom's key-value map.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from .._errors import InvalidArgument
from ..raft import (
    CodecError as RaftCodecError,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ProposalDropped,
    RawNode,
    Ready,
    Role,
    Snapshot,
    Storage,
    decode_conf_change,
)
from ._renewals import Renewal, Renewals

log = logging.getLogger("trio_election.replica")

#: How many entries back a request id is remembered, so that a proposal
#: retried after a lost forward is applied once. A retry happens only while
#: its requester still waits (the request timeout, 5 s by default): this is
#: ~20 s of commits at the fastest rate measured.
DEDUPE_ENTRIES = 65_536


@dataclass(frozen=True, slots=True)
class Applied:
    """What the machine made of one committed entry.

    Attributes:
        request_id: The id the entry was proposed under ("" for none).
        outcome: The machine's result, or None for a no-op.
        error: Why the entry was a no-op, if it was one that a requester
            waits for (it is answered with this error).
    """

    request_id: str = ""
    outcome: object | None = None
    error: Exception | None = None


class Machine(Protocol):
    """The state machine a :class:`Replica` replicates."""

    def apply(self, data: bytes, index: int, now: float) -> Applied:
        """Apply the committed command ``data`` at ``index``; never raise."""
        ...

    def request_id(self, data: bytes) -> str:
        """The request id ``data`` was proposed under ("" for none); never raise."""
        ...

    def dump(self) -> bytes:
        """The replicated state, as UTF-8 text (it goes into a JSON snapshot)."""
        ...

    def load(self, image: bytes, now: float) -> None:
        """Replace the state by a :meth:`dump` image."""
        ...

    def due(self, now: float) -> list[bytes]:
        """Commands only the Raft leader proposes, due at ``now`` (expiries)."""
        ...

    def abandoned(self, alive: Callable[[str], bool]) -> list[bytes]:
        """Commands that end what members that are gone had open (their
        waiting Campaigns); ``alive(member)`` says who is not gone."""
        ...

    def lead(self, now: float) -> None:
        """This replica just became the Raft leader."""
        ...

    def check_forwarded(self, data: bytes) -> None:
        """Raise an ``ElectionError`` if a follower's proposal may not be logged."""
        ...

    # Only for runtimes that call Replica.renew (replica/_renewals.py):

    def renews_off_log(self, request: object) -> bool:
        """Whether the Raft leader may answer ``request`` without logging it."""
        ...

    def renew(self, request: object, arrived: float) -> Applied:
        """Answer ``request`` (arrived at ``arrived``) after a confirmed round."""
        ...


@dataclass(frozen=True, slots=True)
class Work:
    """One Ready, as the runtime must carry it out, in this order:

    1. send ``messages`` (they may go while the write runs);
    2. persist ``snapshot``, ``entries`` and ``hard_state``, fsynced if
       ``must_sync``;
    3. send ``messages_after_persist`` (only once the write is durable);
    4. :meth:`Replica.advance`.

    Attributes:
        ready: The Raft core's Ready.
        leader_changed: The Raft leader (or this node's role) changed.
    """

    ready: Ready
    leader_changed: bool

    @property
    def messages(self) -> tuple[Message, ...]:
        return self.ready.messages

    @property
    def snapshot(self) -> Snapshot | None:
        return self.ready.snapshot

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self.ready.entries

    @property
    def hard_state(self) -> HardState | None:
        return self.ready.hard_state

    @property
    def must_sync(self) -> bool:
        return self.ready.must_sync

    @property
    def messages_after_persist(self) -> tuple[Message, ...]:
        return self.ready.messages_after_persist


@dataclass(frozen=True, slots=True)
class Done:
    """What applying one Ready produced.

    Attributes:
        applied: Each committed command's :class:`Applied`, in log order.
        reads: The contexts of ``read`` calls that may now proceed.
        renewed: ``(key, Applied)`` of each ``renew`` answered, in order.
        renewals_lost: The keys of ``renew`` calls this node, no longer the
            Raft leader, will not answer.
        members_changed: The member table may have changed (a membership
            entry was applied, or a snapshot installed).
        removed: This node was removed from the cluster.
        installed_snapshot: The index of a snapshot restored from the leader.
        snapshot_due: Enough entries were applied since the last snapshot.
    """

    applied: tuple[Applied, ...] = ()
    reads: tuple[bytes, ...] = ()
    renewed: tuple[tuple[str, Applied], ...] = ()
    renewals_lost: tuple[str, ...] = ()
    members_changed: bool = False
    removed: bool = False
    installed_snapshot: int | None = None
    snapshot_due: bool = False


@dataclass(slots=True)
class _Read:
    retry_at: int  # in ticks
    index: int | None = None  # confirmed: may proceed once applied this far


@dataclass(slots=True)
class _Proposal:
    data: bytes
    retry_at: int  # in ticks
    until: int | None = None  # given up at this tick (None: when forgotten)


def _check_conf_change(change: ConfChange) -> None:
    """Refuse a membership change that the members could not carry out once
    it is logged: each one applies it, and connects to a member added at the
    address it names (read as ``client._transport.parse_endpoint`` reads it).

    Raises:
        InvalidArgument: the id is empty or over 256 characters, or the
            address of a member added is not UTF-8 ``HOST:PORT``.
    """
    if not change.node_id or len(change.node_id) > 256:
        raise InvalidArgument("id", "must be 1 to 256 characters")
    if change.type is not ConfChangeType.ADD_NODE:
        return
    try:
        address = change.context.decode()
    except UnicodeDecodeError:
        raise InvalidArgument("address", "is not UTF-8") from None
    bare = address.removeprefix("https://").removeprefix("http://").rstrip("/")
    host, sep, port = bare.rpartition(":")
    if not (sep and host and port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
        raise InvalidArgument("address", f"{address!r} is not HOST:PORT")


class Replica:
    """One member's Raft core, machine, members and pending reads.

    Args:
        storage: The core's read view of the durable log (the runtime writes it).
        machine: What is replicated.
        now: The clock, for restoring a snapshot found in ``storage``.
        config: The Raft core's configuration; its ``id`` is this member's.
        snapshot_entries: Applied entries between snapshots.
        retry_ticks: Ticks after which a follower proposes again what it
            submitted and has not seen applied (default: two election
            timeouts); a leader proposes again only after a leader change.
        gone_ticks: Ticks without hearing from a member after which the leader
            takes it for gone, and ends what it left open (four election
            timeouts: 2 s at the default tick).
    """

    def __init__(
        self,
        storage: Storage,
        machine: Machine,
        now: float,
        config: Config,
        snapshot_entries: int = 10_000,
        retry_ticks: int | None = None,
        gone_ticks: int | None = None,
    ) -> None:
        self.id = config.id
        self.machine = machine
        self.snapshot_entries = snapshot_entries
        self.retry_ticks = 2 * config.election_tick if retry_ticks is None else retry_ticks
        self.gone_ticks = 4 * config.election_tick if gone_ticks is None else gone_ticks
        self.abandon_check_ticks = config.election_tick
        self._ticks = 0
        self._leader_since = 0
        self._resend: set[str] = set()  # request ids to propose again at the next tick
        self._reask_reads = False  # ask again for the unconfirmed reads at the next tick
        self._proposals: dict[str, _Proposal] = {}  # request id -> not applied yet
        self._seen: dict[str, int] = {}  # request id -> the index it was applied at
        self._seen_order: deque[tuple[int, str]] = deque()
        self.members: dict[str, str] = {}
        #: Ids removed from the cluster: never reused, and told so if they call.
        self.removed_members: set[str] = set()
        self.leader: str | None = None
        self.role = Role.FOLLOWER
        self.applied = 0
        self.snapshot_index = 0
        self.conf_state = ConfState()
        self._reads: dict[bytes, _Read] = {}  # ctx -> pending read
        self._renewals = Renewals()
        self._renewals_lost: list[str] = []
        snapshot = storage.snapshot()
        if not snapshot.is_empty:
            self._restore(snapshot, now)
        self.raw = RawNode(dataclasses.replace(config, applied=snapshot.metadata.index), storage)

    def bootstrap(self, members: Mapping[str, str]) -> None:
        """Start a new cluster of ``members`` (id to peer address)."""
        self.members = dict(members)
        self.raw.bootstrap(list(members), {m: a.encode() for m, a in members.items()})

    # -- inputs -------------------------------------------------------------

    def tick(self, now: float) -> None:
        """One tick; on the leader, propose what is due (expiries); retry
        proposals that were not applied in time."""
        self.raw.tick()
        self._ticks += 1
        if self.role is Role.LEADER:
            self._renewals.retry_stale(self._ticks, self.retry_ticks)
            due = self.machine.due(now)
            if self._ticks % self.abandon_check_ticks == 0:
                due += self.machine.abandoned(self._alive())
            for data in due:
                try:
                    self.raw.propose(data)
                except ProposalDropped:
                    break  # the machine proposes again after its retry interval
        # A leader that stays leader loses none of its entries: it proposes
        # again only after a leader change, never because a commit is slow
        # (which would only add to the load that made it slow).
        resend, self._resend = self._resend, set()
        timed = self.role is not Role.LEADER
        for request_id, proposal in list(self._proposals.items()):
            if proposal.until is not None and proposal.until <= self._ticks:
                del self._proposals[request_id]
            elif request_id in resend or (timed and proposal.retry_at <= self._ticks):
                self._send_proposal(proposal)
        # A ReadIndex request dies with the leader that was asked (or with a
        # lost message): ask again, after a leader change or a retry interval.
        reask, self._reask_reads = self._reask_reads, False
        for ctx, read in self._reads.items():
            if read.index is None and (reask or read.retry_at <= self._ticks):
                read.retry_at = self._ticks + self.retry_ticks
                with contextlib.suppress(ProposalDropped):
                    self.raw.read_index(ctx)

    def _alive(self) -> Callable[[str], bool]:
        """On the leader: whether a member is neither removed nor silent too long."""
        progress = self.raw.status().progress
        gone = self.gone_ticks
        # A new leader has not heard from everyone yet: silence counts from
        # when it began to lead.
        leading = self._ticks - self._leader_since

        def alive(member: str) -> bool:
            if member == self.id:
                return True
            peer = progress.get(member)
            if member not in self.members or peer is None:
                return False
            silent = leading if peer.ticks_since_active is None else peer.ticks_since_active
            return min(silent, leading) <= gone

        return alive

    def step(self, message: Message) -> None:
        """A message from a peer (the runtime checked who sent it).

        Raises:
            InvalidArgument, PermissionDenied: a forwarded proposal that may
                not be logged (the whole message is dropped).
        """
        if message.type is MessageType.PROP:
            for entry in message.entries:
                self._check_forwarded(entry)
        self.raw.step(message)

    def submit(self, data: bytes, request_id: str = "", ticks: int | None = None) -> None:
        """Propose a client's command, here or through the leader, until applied.

        With a ``request_id``, the command is proposed again until an entry
        with that id is applied (``Done.applied`` then names it), for at most
        ``ticks`` ticks if given, else until :meth:`forget` is called. Without
        one it is proposed once, and may be lost.

        Raises:
            ProposalDropped: no leader is known now. With a ``request_id`` it
                is still registered and proposed again on a later tick: a
                caller that reports the failure must :meth:`forget` it first,
                or it may yet be applied.
        """
        proposal = _Proposal(data, 0, None if ticks is None else self._ticks + ticks)
        if request_id:
            self._proposals[request_id] = proposal
        self._send_proposal(proposal, raise_dropped=True)

    def forget(self, request_id: str) -> None:
        """Stop proposing ``request_id`` again (its requester gave up)."""
        self._proposals.pop(request_id, None)

    def propose_conf_change(self, change: ConfChange) -> None:
        """Propose a membership change, here or through the leader (once).

        Raises:
            InvalidArgument: a change no member could carry out (see
                :func:`_check_conf_change`).
            ProposalDropped: no leader is known, or another change is pending.
        """
        _check_conf_change(change)
        self.raw.propose_conf_change(change, forward=True)

    def _send_proposal(self, proposal: _Proposal, raise_dropped: bool = False) -> None:
        proposal.retry_at = self._ticks + self.retry_ticks
        try:
            self.raw.propose(proposal.data, forward=True)
        except ProposalDropped:
            if raise_dropped:
                raise

    def _check_forwarded(self, entry: Entry) -> None:
        """A proposal from a peer: checked again, as if a client had sent it."""
        if entry.type is EntryType.CONF_CHANGE:
            try:
                change = decode_conf_change(entry.data)
            except RaftCodecError as exc:
                raise InvalidArgument("data", f"not a membership change: {exc}") from None
            _check_conf_change(change)
        else:
            self.machine.check_forwarded(entry.data)

    def read(self, ctx: bytes) -> None:
        """Start a linearizable read; ``Done.reads`` names ``ctx`` when it may proceed.

        Until then it is asked again after a leader change and every
        ``retry_ticks``; :meth:`forget_read` gives it up.

        Raises:
            ProposalDropped: no Raft leader is known to confirm it with.
        """
        self._reads[ctx] = _Read(self._ticks + self.retry_ticks)
        try:
            self.raw.read_index(ctx)
        except ProposalDropped:
            self._reads.pop(ctx, None)
            raise

    def forget_read(self, ctx: bytes) -> None:
        """The reader is gone (it timed out)."""
        self._reads.pop(ctx, None)

    def renew(self, key: str, request: object, now: float) -> bool:
        """Answer a renewal off the log (replica/_renewals.py), if this node
        may: it is the Raft leader, and the machine says so.

        True: ``Done.renewed`` (or ``Done.renewals_lost``) will name ``key``.
        False: propose it instead (``submit``).
        """
        if self.role is not Role.LEADER or not self.machine.renews_off_log(request):
            return False
        self._renewals.add(Renewal(key, request, now))
        return True

    # -- the Ready cycle ------------------------------------------------------

    def has_ready(self) -> bool:
        return self.raw.has_ready() or self._round_due()

    def _round_due(self) -> bool:
        r = self._renewals
        return r.waiting and not r.round_open and self.role is Role.LEADER

    def ready(self, now: float) -> Work:
        """The next piece of work; carry it out, then :meth:`advance`."""
        if self._round_due():
            # One quorum round for every renewal that arrived since the last
            # (one that fails to start is started again by tick()).
            with contextlib.suppress(ProposalDropped):
                self.raw.read_index(self._renewals.start_round(self._ticks))
        rd = self.raw.ready()
        changed = False
        if rd.soft_state is not None:
            leader, role = rd.soft_state.leader, rd.soft_state.role
            changed = (leader, role) != (self.leader, self.role)
            was_leader = self.role is Role.LEADER
            self.leader, self.role = leader, role
            if was_leader and role is not Role.LEADER:
                self._renewals_lost += [r.key for r in self._renewals.drop_all()]
            if role is Role.LEADER and not was_leader:
                # Here, not in advance(): a tick may run while the runtime
                # writes, and must not propose an expiry before this.
                self.machine.lead(now)
                self._leader_since = self._ticks
            if changed and leader is not None:
                # What the old leader held uncommitted may be lost: propose
                # it again on the next tick.
                self._resend = set(self._proposals)
                self._reask_reads = True
        return Work(rd, changed)

    def advance(self, work: Work, now: float) -> Done:
        """``work`` was carried out: apply what it committed."""
        rd = work.ready
        installed = None
        if rd.snapshot is not None and not rd.snapshot.is_empty:
            self._restore(rd.snapshot, now)
            installed = self.applied
        members_changed = installed is not None
        applied: list[Applied] = []
        removed = False
        for entry in rd.committed_entries:
            self.applied = entry.index
            if entry.type is EntryType.CONF_CHANGE:
                members_changed = True
                removed |= self._apply_conf_change(entry)
            elif entry.data:  # not a new leader's empty entry
                request_id = self.machine.request_id(entry.data)
                if request_id and request_id in self._seen:
                    log.debug("entry %d repeats request %s: skipped", entry.index, request_id)
                    continue
                result = self.machine.apply(entry.data, entry.index, now)
                if request_id:
                    self._remember(request_id, entry.index)
                applied.append(result)
        for state in rd.read_states:
            if self._renewals.confirmed(state.ctx, state.index):
                continue
            read = self._reads.get(state.ctx)
            if read is not None and read.index is None:
                read.index = state.index
        self.raw.advance(rd)
        for result in applied:
            self._proposals.pop(result.request_id, None)
        reads = tuple(
            ctx
            for ctx, read in self._reads.items()
            if read.index is not None and read.index <= self.applied
        )
        for ctx in reads:
            del self._reads[ctx]
        renewed = tuple(
            (r.key, self.machine.renew(r.request, r.arrived))
            for r in self._renewals.answerable(self.applied)
        )
        lost, self._renewals_lost = tuple(self._renewals_lost), []
        return Done(
            applied=tuple(applied),
            reads=reads,
            renewed=renewed,
            renewals_lost=lost,
            members_changed=members_changed,
            removed=removed,
            installed_snapshot=installed,
            snapshot_due=self.applied - self.snapshot_index >= self.snapshot_entries,
        )

    def _remember(self, request_id: str, index: int) -> None:
        self._seen[request_id] = index
        order = self._seen_order
        order.append((index, request_id))
        while order and order[0][0] <= index - DEDUPE_ENTRIES:
            _, old = order.popleft()
            if self._seen.get(old, index) <= index - DEDUPE_ENTRIES:
                del self._seen[old]

    def _apply_conf_change(self, entry: Entry) -> bool:
        try:
            change = decode_conf_change(entry.data)
        except RaftCodecError as exc:
            log.error("entry %d: not a membership change, applied as a no-op: %s", entry.index, exc)
            return False
        self.conf_state = self.raw.apply_conf_change(change)
        if change.type is ConfChangeType.ADD_NODE:
            # (A change logged before addresses were checked may not be UTF-8.)
            self.members[change.node_id] = change.context.decode(errors="replace")
            log.info("member %s added at %s", change.node_id, self.members[change.node_id])
            return False
        self.members.pop(change.node_id, None)
        self.removed_members.add(change.node_id)
        log.info("member %s removed", change.node_id)
        return change.node_id == self.id

    # -- snapshots --------------------------------------------------------------

    def snapshot_image(self) -> tuple[int, ConfState, bytes]:
        """The applied index, the configuration and the image to snapshot there."""
        data = json.dumps(
            {
                "machine": self.machine.dump().decode(),
                "members": self.members,
                "removed": sorted(self.removed_members),
                "requests": [[request_id, index] for index, request_id in self._seen_order],
            }
        ).encode()
        return self.applied, self.conf_state, data

    def snapshotted(self, index: int) -> None:
        """The runtime wrote a snapshot at ``index``."""
        self.snapshot_index = index

    def _restore(self, snapshot: Snapshot, now: float) -> None:
        state = json.loads(snapshot.data)
        self.machine.load(state["machine"].encode(), now)
        self.members = dict(state["members"])
        self.removed_members = set(state["removed"])
        self._seen_order = deque((index, rid) for rid, index in state.get("requests", ()))
        self._seen = {rid: index for index, rid in self._seen_order}
        self.applied = self.snapshot_index = snapshot.metadata.index
        self.conf_state = snapshot.metadata.conf_state

    # -- helpers for runtimes ------------------------------------------------------

    def is_member(self, node_id: str) -> bool:
        """Whether ``node_id`` is a member as of the applied state."""
        return node_id in self.members
