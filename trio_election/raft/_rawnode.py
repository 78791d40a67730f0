"""``RawNode``: the application-facing API (Ready / advance loop).

The application drives a node with a single loop, never concurrently::

    node.tick()                      # every tick interval
    node.step(msg)                   # for each message from the network
    node.propose(b"...")             # on the leader
    while node.has_ready():
        rd = node.ready()
        send(rd.messages)                        # 1. may go at once (even
                                                 #    while the write runs)
        storage.apply_snapshot(rd.snapshot)      # 2. persist (if any) ...
        storage.append(rd.entries)               #    ...
        storage.set_hard_state(rd.hard_state)    #    ... and fsync
        send(rd.messages_after_persist)          # 3. only then send these
        apply(rd.snapshot, rd.committed_entries) # 4. apply to the state machine
        node.advance(rd)                         # 5. acknowledge

Which message may go before the write is decided here, as etcd-io/raft's
``msgsAfterAppend`` does, so that every runtime (and the simulation) orders
them the same way.

No ``tick``/``step``/``propose`` may happen between ``ready()`` and
``advance()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ._codec import encode_conf_change
from ._config import Config
from ._errors import ProposalDropped, RaftError, StepError
from ._progress import ProgressState
from ._raft import Raft
from ._storage import Storage
from ._types import (
    LOCAL_MESSAGE_TYPES,
    RESPONSE_MESSAGE_TYPES,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)

#: Messages that promise this node's durable state: sent only after the
#: Ready that made them is persisted (etcd-io/raft's ``msgsAfterAppend``).
_AFTER_PERSIST = frozenset({MessageType.APP_RESP, MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP})

#: The largest term or index a message from the network may carry. No cluster
#: gets near it (a new term every nanosecond for a century stays below), but a
#: node that took up a term near 2**63 could neither write it down (storage
#: such as SQLite keeps signed 64-bit integers) nor, near 2**64, hold another
#: election (the wire format's integers stop there): one forged message would
#: stop every member it reached, for good.
MAX_NETWORK_NUMBER = 2**62
#: How far above this node's term a message's term may be: more elections than
#: any partition outlasts (one a second for 136 years), while a forged term
#: takes a cluster near MAX_NETWORK_NUMBER, where no election could follow,
#: only by a billion forged messages, not by one.
MAX_TERM_STEP = 2**32


def _over_the_limit(msg: Message) -> str | None:
    """The first term or index of ``msg`` above MAX_NETWORK_NUMBER, by name."""
    for name in ("term", "log_term", "index", "commit", "reject_hint"):
        if getattr(msg, name) > MAX_NETWORK_NUMBER:
            return name
    if any(e.term > MAX_NETWORK_NUMBER or e.index > MAX_NETWORK_NUMBER for e in msg.entries):
        return "entries"
    if msg.snapshot is not None:
        meta = msg.snapshot.metadata
        if meta.term > MAX_NETWORK_NUMBER or meta.index > MAX_NETWORK_NUMBER:
            return "snapshot"
    return None


@dataclass(frozen=True, slots=True)
class Ready:
    """Work the application must do, in this order.

    Attributes:
        soft_state: new leader/role, or None if unchanged (informational).
        hard_state: term/vote/commit to persist, or None if unchanged.
        entries: entries to append to durable storage (may overwrite a
            suffix). Persist them **before** sending ``messages``.
        snapshot: a snapshot to persist (and to restore the state machine
            from), or None. Persist it before ``entries``.
        committed_entries: durable, committed entries to apply, in order.
        messages: outbound messages that may be sent at once, before (or
            while) this Ready is persisted: they promise nothing about this
            node's disk. A leader's appends are among them; its own copy of
            the entries counts toward a commit only once ``advance`` says they
            are durable.
        messages_after_persist: outbound messages to send only **after**
            ``snapshot``, ``entries`` and ``hard_state`` are durably written
            (fsynced): acknowledgements of appends and votes promise durable
            state. When this Ready changes the term or the vote, every message
            is here (this core counts a candidate's vote for itself at once,
            so nothing it sends in a term may leave before that term and vote
            are on disk).
        read_states: answers to ``read_index`` calls; serve a read once the
            applied index reaches ``ReadState.index``.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    messages_after_persist: tuple[Message, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    #: Whether the write must be fsynced: entries, a snapshot, or a new term
    #: or vote. A hard state whose only change is the commit index need not
    #: be (as in etcd's MustSync): a lost commit index is learnt again from
    #: the leader.
    must_sync: bool = False


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """The leader's view of one voter.

    ``ticks_since_active`` counts ticks since the leader last heard from the
    peer (None if never): a health/lag signal alongside ``match``.
    """

    match: int
    next: int
    state: ProgressState
    recent_active: bool
    paused: bool
    inflight: int
    ticks_since_active: int | None


@dataclass(frozen=True, slots=True)
class Status:
    """A snapshot of a node's state, for monitoring and tests."""

    id: str
    term: int
    vote: str | None
    role: Role
    leader: str | None
    commit: int
    applied: int
    last_index: int
    voters: tuple[str, ...]
    lead_transferee: str | None = None
    progress: dict[str, PeerStatus] = field(default_factory=dict)


class RawNode:
    """A Raft node without I/O: feed it ticks/messages, drain ``Ready``\\ s."""

    def __init__(self, config: Config, storage: Storage) -> None:
        """Create a node from ``storage`` (empty for a brand-new node).

        A brand-new node either calls :meth:`bootstrap` (initial cluster
        members) or waits, with an empty configuration, to be contacted by
        the leader of a cluster that added it.
        """
        self._storage = storage
        self._raft = Raft(config, storage)
        self._prev_soft = self._raft.soft_state()
        self._prev_hard = storage.initial_state()[0]

    # -- inputs ------------------------------------------------------------

    def bootstrap(self, peers: Iterable[str], contexts: Mapping[str, bytes] | None = None) -> None:
        """Initialise a brand-new member of the initial cluster.

        Every initial member must call this with the same ``peers`` (and
        ``contexts``, the ``ConfChange.context`` of each peer's entry, e.g.
        its address). It
        appends one committed ``ADD_NODE`` entry per peer at term 1 (delivered
        through ``Ready`` for persisting and applying like any other entry).
        Until that first Ready is persisted nothing is durable: an initial
        member that restarts with an empty storage must bootstrap again.

        Raises:
            RaftError: the storage is not empty, or ``peers`` is empty.
        """
        peers = sorted(set(peers))
        if not peers:
            raise RaftError("bootstrap needs at least one peer")
        hs, _ = self._storage.initial_state()
        if self._storage.last_index() != 0 or hs != HardState():
            raise RaftError("can only bootstrap an empty storage")
        r = self._raft
        r.become_follower(1, None)
        ents = [
            Entry(
                term=1,
                index=i + 1,
                type=EntryType.CONF_CHANGE,
                data=encode_conf_change(
                    ConfChange(ConfChangeType.ADD_NODE, p, (contexts or {}).get(p, b""))
                ),
            )
            for i, p in enumerate(peers)
        ]
        r.log.append(ents)
        # The entries are committed by fiat: everyone starts from the same log.
        r.log.committed = len(ents)
        for p in peers:
            r.apply_conf_change(ConfChange(ConfChangeType.ADD_NODE, p))

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._raft.tick()

    def campaign(self) -> None:
        """Start an election now (with PreVote first if configured)."""
        self._raft.step(Message(type=MessageType.HUP, from_=self._raft.id))

    def step(self, msg: Message) -> None:
        """Process a message received from a peer.

        Raises:
            StepError: ``msg`` is a local-only type, a response from an
                unknown peer, has a term or index over MAX_NETWORK_NUMBER, or
                a term over MAX_TERM_STEP above this node's.
        """
        if msg.type in LOCAL_MESSAGE_TYPES:
            raise StepError(f"cannot step local message type {msg.type} from the network")
        if (name := _over_the_limit(msg)) is not None:
            raise StepError(f"{msg.type}: {name} is over {MAX_NETWORK_NUMBER} (2**62)")
        if msg.term > (term := self._raft.term) + MAX_TERM_STEP:
            raise StepError(
                f"{msg.type}: term {msg.term} is more than 2**32 above this node's {term}"
            )
        if msg.type in RESPONSE_MESSAGE_TYPES and msg.from_ not in self._raft.trk.progress:
            raise StepError(f"response {msg.type} from unknown peer {msg.from_!r}")
        try:
            self._raft.step(msg)
        except ProposalDropped:
            pass  # a remote request we cannot serve; the sender will retry

    def propose(self, data: bytes, *, forward: bool = False) -> None:
        """Propose ``data`` for appending to the log.

        On a follower with ``forward``, the proposal goes to the leader it
        knows, as a PROP message in ``Ready.messages`` (etcd-io/raft forwards
        ``MsgProp`` the same way); it may be lost on the way, so the caller
        retries until it sees the entry applied.

        Raises:
            ProposalDropped: not the leader (and not forwarding), no leader,
                transfer in progress, or this node was removed.
        """
        self._propose(Entry(term=0, index=0, type=EntryType.NORMAL, data=bytes(data)), forward)

    def propose_conf_change(self, cc: ConfChange, *, forward: bool = False) -> None:
        """Propose a single-server membership change (as :meth:`propose`).

        Raises:
            ProposalDropped: as :meth:`propose`, or another conf change is
                still pending (not yet applied).
        """
        entry = Entry(term=0, index=0, type=EntryType.CONF_CHANGE, data=encode_conf_change(cc))
        self._propose(entry, forward)

    def _propose(self, e: Entry, forward: bool) -> None:
        r = self._raft
        if r.role != Role.LEADER and not (forward and r.role == Role.FOLLOWER):
            raise ProposalDropped(f"{r.id} is not the leader (leader: {r.lead}, term {r.term})")
        r.step(Message(type=MessageType.PROP, from_=r.id, entries=(e,)))

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read; the answer comes as a ``ReadState``.

        ``ctx`` must be unique per pending request. Followers forward the
        request to the leader.

        Raises:
            ProposalDropped: no leader is known.
        """
        self._raft.step(Message(type=MessageType.READ_INDEX, from_=self._raft.id, context=ctx))

    def transfer_leadership(self, to: str) -> None:
        """Ask the leader to hand leadership to ``to`` (a voter).

        The transfer aborts if it has not completed within an election
        timeout; proposals are refused meanwhile.

        Raises:
            ProposalDropped: ``to`` is not a voter, or no leader is known.
        """
        if to not in self._raft.trk.voters:
            raise ProposalDropped(f"cannot transfer leadership to non-voter {to!r}")
        self._raft.step(Message(type=MessageType.TRANSFER_LEADER, from_=to))

    def report_unreachable(self, peer: str) -> None:
        """Tell the leader that sending to ``peer`` failed (falls back to probing)."""
        self._raft.step(Message(type=MessageType.UNREACHABLE, from_=peer))

    def report_snapshot(self, peer: str, success: bool) -> None:
        """Tell the leader whether sending a snapshot to ``peer`` succeeded.

        The transport must call this for every ``MsgSnap`` it fails to deliver:
        the leader sends nothing else to a peer in snapshot state until it
        hears back (from this call or from the peer's append response).
        """
        self._raft.step(Message(type=MessageType.SNAP_STATUS, from_=peer, reject=not success))

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed conf change entry's change; returns the new membership.

        Call it while applying the ``CONF_CHANGE`` entry, in log order.
        """
        return self._raft.apply_conf_change(cc)

    # -- outputs -----------------------------------------------------------

    def has_ready(self) -> bool:
        """Whether :meth:`ready` would return something to do."""
        r = self._raft
        if r.soft_state() != self._prev_soft:
            return True
        hs = r.hard_state()
        if hs != HardState() and hs != self._prev_hard:
            return True
        return bool(
            r.log.has_pending_snapshot()
            or r.log.unstable.entries
            or r.msgs
            or r.read_states
            or r.log.has_next_committed_entries()
        )

    def ready(self) -> Ready:
        """Collect the pending work; follow with :meth:`advance` once done."""
        r = self._raft
        soft = r.soft_state()
        hard = r.hard_state()
        prev = self._prev_hard
        entries = tuple(r.log.unstable.entries)
        snapshot = r.log.unstable.snapshot
        vote_changed = (hard.term, hard.vote) != (prev.term, prev.vote)
        if vote_changed:
            now, after = (), tuple(r.msgs)
        else:
            now = tuple(m for m in r.msgs if m.type not in _AFTER_PERSIST)
            after = tuple(m for m in r.msgs if m.type in _AFTER_PERSIST)
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != prev and hard != HardState() else None,
            entries=entries,
            snapshot=snapshot,
            committed_entries=tuple(r.log.next_committed_entries()),
            messages=now,
            messages_after_persist=after,
            read_states=tuple(r.read_states),
            must_sync=bool(entries) or snapshot is not None or vote_changed,
        )
        # Messages and read states are handed over now; durable state is only
        # acknowledged in advance().
        r.msgs = []
        r.read_states = []
        self._prev_soft = soft
        return rd

    def advance(self, rd: Ready) -> None:
        """Acknowledge that ``rd`` was persisted, sent and applied."""
        r = self._raft
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None:
            r.log.stable_snap_to(rd.snapshot.metadata.index)
            r.log.applied_to(rd.snapshot.metadata.index)
        if rd.entries:
            last = rd.entries[-1]
            r.on_persisted(last.index, last.term)
        if rd.committed_entries:
            r.log.applied_to(rd.committed_entries[-1].index)

    # -- introspection -----------------------------------------------------

    @property
    def id(self) -> str:
        """This node's id."""
        return self._raft.id

    @property
    def term(self) -> int:
        """The current term (cheaper than :meth:`status`)."""
        return self._raft.term

    def status(self) -> Status:
        """Current state, including (on the leader) every voter's progress."""
        r = self._raft
        progress: dict[str, PeerStatus] = {}
        if r.role == Role.LEADER:
            for pid in sorted(r.trk.progress):
                pr = r.trk.progress[pid]
                progress[pid] = PeerStatus(
                    match=pr.match,
                    next=pr.next,
                    state=pr.state,
                    recent_active=pr.recent_active,
                    paused=pr.is_paused(),
                    inflight=pr.inflights.count(),
                    ticks_since_active=(
                        0
                        if pid == r.id
                        else (
                            None if pr.last_active_tick is None else r.ticks - pr.last_active_tick
                        )
                    ),
                )
        return Status(
            id=r.id,
            term=r.term,
            vote=r.vote,
            role=r.role,
            leader=r.lead,
            commit=r.log.committed,
            applied=r.log.applied,
            last_index=r.log.last_index(),
            voters=tuple(r.trk.sorted_voters()),
            lead_transferee=r.lead_transferee,
            progress=progress,
        )
