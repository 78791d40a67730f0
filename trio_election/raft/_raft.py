"""The Raft role state machine (follower / pre-candidate / candidate / leader).

Theory of operation
-------------------
This module is a pure, deterministic state machine modelled on etcd-io/raft's
``raft.go``. It never blocks, never does I/O and never reads a clock:

* Time advances only through :meth:`Raft.tick`. Followers campaign after a
  randomized election timeout (drawn from the injected ``Config.rng``);
  leaders send heartbeats every ``heartbeat_tick`` and, with CheckQuorum,
  step down if a quorum was silent for an election timeout.
* Inputs are :class:`Message` values passed to :meth:`Raft.step`. Outputs are
  appended to ``self.msgs`` and to the log's unstable part; ``RawNode`` hands
  them to the application in a ``Ready`` which must persist entries/hard
  state *before* sending the messages: a vote or an append acknowledgement
  is a promise about durable state.
* Terms: any message with a higher term makes us a follower of that term,
  except (Pre)Votes ignored under a leader lease, and PreVote traffic,
  which by design never changes terms (Raft thesis §9.6).
* Commit (Raft §5.4.2, figure 8): the leader only advances ``committed`` to
  an index replicated on a quorum *and* from its own term; older entries are
  committed indirectly. A new leader appends an empty entry to get there.
  The leader counts its own log only once it is durable (``advance``).
* Replication: per-follower :class:`Progress` does probe/replicate/snapshot
  flow control. A rejected append carries a hint (index, term) from
  ``find_conflict_by_term`` so that the leader skips a whole term's worth of
  conflicting entries per round trip instead of one entry.
* Membership: single-server changes carried by ``CONF_CHANGE`` entries, in
  effect once the application applies them (``apply_conf_change``). Only one
  may be pending (``pending_conf_index``); a new leader counts as pending
  until its first entry is applied, which avoids the single-server-change
  bug described on the raft-dev list (2015).
* Reads: ReadIndex records the commit index, then confirms leadership with
  a quorum heartbeat round carrying the request ctx (``_read_only.py``).
"""

from __future__ import annotations

import dataclasses

from ._config import Config
from ._election import CAMPAIGN_TRANSFER, ElectionMixin, _Campaign
from ._errors import ProposalDropped, RaftError
from ._leader import LeaderMixin
from ._log import RaftLog
from ._progress import Progress, ProgressTracker
from ._read_only import ReadOnly
from ._storage import Storage
from ._types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)

MT = MessageType


class Raft(ElectionMixin, LeaderMixin):
    """One node's Raft state. Use it through :class:`RawNode`.

    Campaigns and votes live in :class:`~._election.ElectionMixin`, leader-only
    behaviour (replication, commit, ReadIndex, transfer) in
    :class:`~._leader.LeaderMixin`.
    """

    def __init__(self, config: Config, storage: Storage) -> None:
        config.validate()
        self.id = config.id
        self.log = RaftLog(storage)
        self.trk = ProgressTracker(config.max_inflight_msgs)
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.rng = config.rng
        self.election_timeout = config.election_tick
        self.heartbeat_timeout = config.heartbeat_tick
        self.check_quorum = config.check_quorum
        self.pre_vote = config.pre_vote
        self.max_entries_per_msg = config.max_entries_per_msg

        self.term = 0
        self.vote: str | None = None
        self.lead: str | None = None
        self.role = Role.FOLLOWER
        self.lead_transferee: str | None = None
        self.pending_conf_index = 0
        self.read_only = ReadOnly()
        self.pending_read_index_messages: list[Message] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout
        self.ticks = 0  # monotonic count of tick() calls, for health reporting

        hs, cs = storage.initial_state()
        self.trk.set_voters(cs.voters, self.log.last_index() + 1)
        if hs != HardState():
            self._load_state(hs)
        if config.applied:
            self.log.applied_to(config.applied)
        self.become_follower(self.term, None)

    # -- state -------------------------------------------------------------

    def _load_state(self, hs: HardState) -> None:
        if hs.commit < self.log.committed or hs.commit > self.log.last_index():
            raise RaftError(
                f"{self.id} hard state commit {hs.commit} out of range "
                f"[{self.log.committed}, {self.log.last_index()}]"
            )
        self.log.committed = hs.commit
        self.term = hs.term
        self.vote = hs.vote

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(leader=self.lead, role=self.role)

    def conf_state(self) -> ConfState:
        return ConfState(voters=tuple(self.trk.sorted_voters()))

    def promotable(self) -> bool:
        """Whether this node may campaign: it is a voter with no pending snapshot."""
        return self.id in self.trk.voters and not self.log.has_pending_snapshot()

    # -- sending -----------------------------------------------------------

    def _send(self, m: Message) -> None:
        changes: dict[str, object] = {}
        if not m.from_:
            changes["from_"] = self.id
        if m.type in (MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE, MT.PRE_VOTE_RESP):
            # Vote traffic carries an explicit term (PreVote uses term + 1).
            if m.term == 0:
                raise RaftError(f"term must be set when sending {m.type}")
        elif m.term != 0:
            raise RaftError(f"term must not be set when sending {m.type}")
        elif m.type not in (MT.PROP, MT.READ_INDEX):
            # Forwarded proposals/reads are treated as local by the leader.
            changes["term"] = self.term
        self.msgs.append(dataclasses.replace(m, **changes) if changes else m)

    # -- role transitions --------------------------------------------------

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = None
        self.lead = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(
            self.election_timeout
        )
        self.lead_transferee = None
        self.trk.reset_votes()
        last = self.log.last_index()
        # Our own log only counts once durable: the unstable tail is acked in
        # ``on_persisted`` (called from RawNode.advance).
        stable_last = min(last, self.log.unstable.offset - 1)
        for pid in list(self.trk.progress):
            pr = Progress(match=0, next=last + 1, max_inflight=self.trk.max_inflight)
            if pid == self.id:
                pr.match = stable_last
            self.trk.progress[pid] = pr
        self.pending_conf_index = 0
        self.read_only = ReadOnly()
        self.pending_read_index_messages = []

    def become_follower(self, term: int, lead: str | None) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def become_pre_candidate(self) -> None:
        if self.role == Role.LEADER:
            raise RaftError("invalid transition [leader -> pre-candidate]")
        # Deliberately keeps term and vote: a pre-vote changes nothing durable.
        self.trk.reset_votes()
        self.lead = None
        self.role = Role.PRE_CANDIDATE

    def become_candidate(self) -> None:
        if self.role == Role.LEADER:
            raise RaftError("invalid transition [leader -> candidate]")
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def become_leader(self) -> None:
        if self.role == Role.FOLLOWER:
            raise RaftError("invalid transition [follower -> leader]")
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        me = self.trk.progress[self.id]
        me.become_replicate()
        me.recent_active = True
        # Conservatively treat everything up to our last index as a possibly
        # pending conf change: no new one until we committed in our term.
        self.pending_conf_index = self.log.last_index()
        # The empty entry lets us commit (and learn the commit index of)
        # entries from earlier terms (Raft §5.4.2, §8).
        self._append_entries([Entry(term=0, index=0)])

    def _append_entries(self, ents: list[Entry]) -> None:
        li = self.log.last_index()
        stamped = [
            dataclasses.replace(e, term=self.term, index=li + 1 + i) for i, e in enumerate(ents)
        ]
        self.log.append(stamped)

    # -- time --------------------------------------------------------------

    def tick(self) -> None:
        self.ticks += 1
        if self.role == Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(type=MT.HUP, from_=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(type=MT.CHECK_QUORUM, from_=self.id))
            # A transfer that did not finish within an election timeout is
            # abandoned so that proposals are accepted again.
            if self.role == Role.LEADER and self.lead_transferee is not None:
                self.lead_transferee = None
        if self.role != Role.LEADER:
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(type=MT.BEAT, from_=self.id))

    # -- the big switch ----------------------------------------------------

    def step(self, m: Message) -> None:
        """Process one message. Raises ``ProposalDropped`` for refused local requests."""
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.check_quorum
                    and self.lead is not None
                    and self.election_elapsed < self.election_timeout
                )
                if not force and in_lease:
                    # Leader lease (Raft §6 / thesis §4.2.3): we heard from a
                    # leader recently, so this candidate is likely disruptive
                    # (e.g. a removed or partitioned node). Don't even reply.
                    return
            if m.type == MT.PRE_VOTE:
                pass  # never change our term because of a pre-vote
            elif m.type == MT.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-votes carry the future term; see _campaign
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self.become_follower(m.term, m.from_)
            else:
                self.become_follower(m.term, None)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and m.type in (MT.HEARTBEAT, MT.APP):
                # A stale leader (or one that lost a partition) would not
                # otherwise learn our higher term: with PreVote/CheckQuorum we
                # may never send it a vote request. Tell it, so it steps down.
                self._send(Message(type=MT.APP_RESP, to=m.from_))
            elif m.type == MT.PRE_VOTE:
                # Reject explicitly so a lower-term pre-candidate can't deadlock.
                self._send(Message(type=MT.PRE_VOTE_RESP, to=m.from_, term=self.term, reject=True))
            return

        t = m.type
        if t == MT.HUP:
            self._hup(_Campaign.PRE_ELECTION if self.pre_vote else _Campaign.ELECTION)
        elif t in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.PROP:
            # Our own proposal goes to the leader; one forwarded to us by a
            # node that took us for the leader is dropped (its sender retries).
            if self.lead is None or m.from_ != self.id:
                raise ProposalDropped(
                    f"{self.id} is not the leader (leader: {self.lead}, term {self.term})"
                )
            self._send(dataclasses.replace(m, to=self.lead))
            return
        if t in (MT.APP, MT.HEARTBEAT, MT.SNAP):
            self.election_elapsed = 0
            self.lead = m.from_
            if t == MT.APP:
                self._handle_append_entries(m)
            elif t == MT.HEARTBEAT:
                self.log.commit_to(m.commit)
                self._send(Message(type=MT.HEARTBEAT_RESP, to=m.from_, context=m.context))
            else:
                self._handle_snapshot(m)
        elif t == MT.TRANSFER_LEADER:
            if self.lead is None:
                if m.term == 0:
                    raise ProposalDropped(f"{self.id}: no leader to transfer leadership from")
                return
            self._send(dataclasses.replace(m, to=self.lead, term=0))
        elif t == MT.TIMEOUT_NOW:
            # Leadership transfer: skip PreVote, we know the leader is alive
            # and wants us to take over.
            self._hup(_Campaign.TRANSFER)
        elif t == MT.READ_INDEX:
            if self.lead is None:
                if m.from_ == self.id:
                    raise ProposalDropped(f"{self.id}: no leader for read_index")
                return
            self._send(dataclasses.replace(m, to=self.lead))
        elif t == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(index=m.index, ctx=m.context))

    def _handle_append_entries(self, m: Message) -> None:
        if m.index < self.log.committed:
            # Everything up to our commit index matches by definition.
            self._send(Message(type=MT.APP_RESP, to=m.from_, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, list(m.entries))
        if last_new is not None:
            self._send(Message(type=MT.APP_RESP, to=m.from_, index=last_new))
            return
        # Consistency check failed. Hint the largest (index, term) that could
        # still match: entries with a term above m.log_term cannot.
        hint_index = min(m.index, self.log.last_index())
        hint_index, hint_term = self.log.find_conflict_by_term(hint_index, m.log_term)
        self._send(
            Message(
                type=MT.APP_RESP,
                to=m.from_,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot if m.snapshot is not None else Snapshot()
        if self._restore(snap):
            self._send(Message(type=MT.APP_RESP, to=m.from_, index=self.log.last_index()))
        else:
            self._send(Message(type=MT.APP_RESP, to=m.from_, index=self.log.committed))

    def _restore(self, snap: Snapshot) -> bool:
        md = snap.metadata
        if md.index <= self.log.committed:
            return False
        if self.role != Role.FOLLOWER:
            # Defense in depth: only followers install snapshots.
            self.become_follower(self.term + 1, None)
            return False
        if self.log.match_term(md.index, md.term):
            # We already have the entry: just fast-forward the commit index.
            self.log.commit_to(md.index)
            return False
        self.log.restore(snap)
        self.trk.set_voters(md.conf_state.voters, self.log.last_index() + 1)
        return True

    # -- hooks used by RawNode -----------------------------------------------

    def on_persisted(self, index: int, term: int) -> None:
        """The log up to ``index`` (with ``term``) is durable: count our own ack."""
        self.log.stable_to(index, term)
        if self.role != Role.LEADER or self.id not in self.trk.progress:
            return
        if not self.log.match_term(index, term):
            return
        self._handle_append_success(
            Message(type=MT.APP_RESP, from_=self.id, to=self.id, index=index, term=self.term),
            self.trk.progress[self.id],
        )

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        voters = set(self.trk.voters)
        if cc.type == ConfChangeType.ADD_NODE:
            voters.add(cc.node_id)
        elif cc.type == ConfChangeType.REMOVE_NODE:
            voters.discard(cc.node_id)
        else:  # pragma: no cover - enum is closed
            raise RaftError(f"unknown conf change type {cc.type!r}")
        self.trk.set_voters(voters, self.log.last_index() + 1)
        if self.role == Role.LEADER:
            if self.id not in voters:
                # We were removed: stop leading so the rest can elect a leader
                # among themselves (they would otherwise wait for our lease).
                self.become_follower(self.term, None)
            else:
                if self.lead_transferee is not None and self.lead_transferee not in voters:
                    self.lead_transferee = None
                # The quorum changed: maybe something is committed now.
                if self._maybe_commit():
                    self._release_pending_reads()
                    self.bcast_append()
                else:
                    for p in self._peers():
                        self._maybe_send_append(p, send_if_empty=False)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE) and self.id not in voters:
            self.become_follower(self.term, None)
        return self.conf_state()
