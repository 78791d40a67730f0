"""The leader's half of the protocol: replication, commit, reads, transfer.

Mixed into :class:`~._raft.Raft`; it only runs while ``role == LEADER``
(``_step_leader``) or on behalf of the leader (sending appends). Kept apart
from the role state machine because it is the part concerned with flow
control (:mod:`._progress`) and quorums.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import Compacted, ProposalDropped, RaftError, SnapshotTemporarilyUnavailable
from ._progress import Progress, ProgressState, quorum
from ._types import EntryType, Message, MessageType, ReadState

if TYPE_CHECKING:
    from ._raft import Raft

MT = MessageType


class LeaderMixin:
    """Leader-side methods of :class:`~._raft.Raft`."""

    def _send_append(self: Raft, to: str) -> None:
        self._maybe_send_append(to, send_if_empty=True)

    def _maybe_send_append(self: Raft, to: str, send_if_empty: bool) -> bool:
        pr = self.trk.progress[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        try:
            prev_term = self.log.term(prev_index)
            ents = self.log.entries(pr.next, self.max_entries_per_msg)
        except Compacted:
            return self._maybe_send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        msg = Message(
            type=MT.APP,
            to=to,
            index=prev_index,
            log_term=prev_term,
            entries=tuple(ents),
            commit=self.log.committed,
        )
        self._send(msg)
        pr.sent_entries(len(ents), ents[-1].index if ents else prev_index)
        pr.sent_commit = self.log.committed
        return True

    def _maybe_send_snapshot(self: Raft, to: str, pr: Progress) -> bool:
        # Don't ship a (large) snapshot to a peer we haven't heard from: it
        # is probably down, and the leader would waste bandwidth.
        if not pr.recent_active:
            return False
        try:
            snap = self.log.snapshot()
        except SnapshotTemporarilyUnavailable:
            return False
        if snap.is_empty:
            raise RaftError("need a non-empty snapshot to catch up a follower")
        pr.become_snapshot(snap.metadata.index)
        self._send(Message(type=MT.SNAP, to=to, snapshot=snap))
        return True

    def _send_heartbeat(self: Raft, to: str, ctx: bytes) -> None:
        # Never tell a follower to commit past what it is known to have: it
        # may not hold those entries yet.
        commit = min(self.trk.progress[to].match, self.log.committed)
        self._send(Message(type=MT.HEARTBEAT, to=to, commit=commit, context=ctx))

    def _peers(self: Raft) -> list[str]:
        return [p for p in sorted(self.trk.progress) if p != self.id]

    def bcast_append(self: Raft) -> None:
        for p in self._peers():
            self._send_append(p)

    def bcast_heartbeat(self: Raft, ctx: bytes | None = None) -> None:
        if ctx is None:
            ctx = self.read_only.last_pending_ctx()
        for p in self._peers():
            self._send_heartbeat(p, ctx)

    def _step_leader(self: Raft, m: Message) -> None:
        t = m.type
        if t == MT.BEAT:
            self.bcast_heartbeat()
            return
        if t == MT.CHECK_QUORUM:
            if not self.trk.quorum_active(self.id):
                self.become_follower(self.term, None)
                return
            for pid, pr in self.trk.progress.items():
                if pid != self.id:
                    pr.recent_active = False
            return
        if t == MT.PROP:
            self._propose(m)
            return
        if t == MT.READ_INDEX:
            self._leader_read_index(m)
            return

        pr = self.trk.progress.get(m.from_)
        if pr is None:
            return
        if t == MT.APP_RESP:
            self._mark_active(pr)
            if m.reject:
                self._handle_append_rejection(m, pr)
            else:
                self._handle_append_success(m, pr)
        elif t == MT.HEARTBEAT_RESP:
            self._mark_active(pr)
            pr.paused = False
            # Also revives a follower whose in-flight appends were all lost.
            if pr.match < self.log.last_index() or pr.state == ProgressState.PROBE:
                self._send_append(m.from_)
            if m.context:
                acks = self.read_only.recv_ack(m.from_, m.context)
                if acks is not None and len(acks & self.trk.voters) >= quorum(len(self.trk.voters)):
                    for rs in self.read_only.advance(m.context):
                        self._respond_read_index(rs.req, rs.index)
        elif t == MT.SNAP_STATUS:
            if pr.state != ProgressState.SNAPSHOT:
                return
            if m.reject:
                # Order matters: forget the snapshot before probing from match.
                pr.pending_snapshot = 0
            pr.become_probe()
            # Wait for the follower's append response (or a heartbeat) first.
            pr.paused = True
        elif t == MT.UNREACHABLE:
            # An optimistic append was probably lost: fall back to probing.
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
        elif t == MT.TRANSFER_LEADER:
            self._handle_transfer_leader(m, pr)

    def _mark_active(self: Raft, pr: Progress) -> None:
        pr.recent_active = True
        pr.last_active_tick = self.ticks

    def _propose(self: Raft, m: Message) -> None:
        if self.id not in self.trk.progress:
            raise ProposalDropped(f"{self.id} was removed from the configuration")
        if self.lead_transferee is not None:
            raise ProposalDropped(
                f"{self.id}: leadership transfer to {self.lead_transferee} in progress"
            )
        for i, e in enumerate(m.entries):
            if e.type == EntryType.CONF_CHANGE:
                if self.pending_conf_index > self.log.applied:
                    raise ProposalDropped(
                        f"{self.id}: conf change pending at index {self.pending_conf_index} "
                        f"(applied {self.log.applied})"
                    )
                self.pending_conf_index = self.log.last_index() + i + 1
        self._append_entries(list(m.entries))
        self.bcast_append()

    def _leader_read_index(self: Raft, m: Message) -> None:
        if self.trk.voters == {self.id}:
            self._respond_read_index(m, self.log.committed)
            return
        # Until we committed an entry in our term we don't know the real
        # commit index (Raft §8): postpone.
        if not self._committed_entry_in_current_term():
            self.pending_read_index_messages.append(m)
            return
        self._start_read_index(m)

    def _start_read_index(self: Raft, m: Message) -> None:
        self.read_only.add_request(self.log.committed, m)
        self.read_only.recv_ack(self.id, m.context)
        self.bcast_heartbeat(m.context)

    def _committed_entry_in_current_term(self: Raft) -> bool:
        return self.log.term_or_zero(self.log.committed) == self.term

    def _release_pending_reads(self: Raft) -> None:
        if not self.pending_read_index_messages or not self._committed_entry_in_current_term():
            return
        pending, self.pending_read_index_messages = self.pending_read_index_messages, []
        for m in pending:
            self._start_read_index(m)

    def _respond_read_index(self: Raft, req: Message, index: int) -> None:
        if req.from_ == self.id or not req.from_:
            self.read_states.append(ReadState(index=index, ctx=req.context))
        else:
            self._send(
                Message(type=MT.READ_INDEX_RESP, to=req.from_, index=index, context=req.context)
            )

    def _handle_append_rejection(self: Raft, m: Message, pr: Progress) -> None:
        next_probe = m.reject_hint
        if m.log_term > 0:
            # Leader-side half of the fast back-off: skip every index whose
            # term in our log is above the follower's term at the hint.
            next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
        if pr.maybe_decrease_to(m.index, next_probe):
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
            self._send_append(m.from_)

    def _handle_append_success(self: Raft, m: Message, pr: Progress) -> None:
        if not (
            pr.maybe_update(m.index) or (pr.match == m.index and pr.state == ProgressState.PROBE)
        ):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
            # The follower caught up (via the snapshot or otherwise): resume
            # normal replication, going through probe to honour the snapshot.
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._release_pending_reads()
            self.bcast_append()
        elif m.from_ != self.id and pr.can_bump_commit(self.log.committed):
            self._send_append(m.from_)
        if m.from_ != self.id:
            while self._maybe_send_append(m.from_, send_if_empty=False):
                pass
            if m.from_ == self.lead_transferee and pr.match == self.log.last_index():
                self._send(Message(type=MT.TIMEOUT_NOW, to=m.from_))

    def _maybe_commit(self: Raft) -> bool:
        return self.log.maybe_commit(self.trk.committed(), self.term)

    def _handle_transfer_leader(self: Raft, m: Message, pr: Progress) -> None:
        transferee = m.from_
        if self.lead_transferee is not None:
            if self.lead_transferee == transferee:
                return  # already in progress
            self.lead_transferee = None
        if transferee == self.id:
            return
        # The transfer must complete within an election timeout.
        self.election_elapsed = 0
        self.lead_transferee = transferee
        if pr.match == self.log.last_index():
            self._send(Message(type=MT.TIMEOUT_NOW, to=transferee))
        else:
            self._send_append(transferee)
