"""Elections: PreVote/Vote campaigns, granting votes, counting them.

Mixed into :class:`~._raft.Raft`. A campaign is started by ``MsgHup``
(election timeout or ``RawNode.campaign``) or ``MsgTimeoutNow`` (leadership
transfer). With PreVote, a node first asks whether it *could* win at
``term + 1`` without changing any durable state; only a won pre-vote round
bumps the term (Raft thesis §9.6). Votes are granted to at most one
candidate per term, and only to candidates whose log is at least as
up-to-date as ours (Raft §5.2, §5.4.1).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from ._errors import ProposalDropped
from ._types import EntryType, Message, MessageType, Role

if TYPE_CHECKING:
    from ._raft import Raft

MT = MessageType

#: Vote context marking a campaign started by a leadership transfer; such
#: votes are granted even under a leader lease.
CAMPAIGN_TRANSFER = b"transfer"


class _Campaign(enum.Enum):
    PRE_ELECTION = 0
    ELECTION = 1
    TRANSFER = 2


class ElectionMixin:
    """Election-related methods of :class:`~._raft.Raft`."""

    def _hup(self: Raft, kind: _Campaign) -> None:
        if self.role == Role.LEADER or not self.promotable():
            return
        # A committed but unapplied conf change could change who may vote;
        # campaigning under the old configuration could be unsafe.
        if self.log.applied < self.log.committed:
            pending = self.log.slice(self.log.applied + 1, self.log.committed + 1)
            if any(e.type == EntryType.CONF_CHANGE for e in pending):
                return
        self._campaign(kind)

    def _campaign(self: Raft, kind: _Campaign) -> None:
        if kind == _Campaign.PRE_ELECTION:
            self.become_pre_candidate()
            vote_type = MT.PRE_VOTE
            term = self.term + 1  # the term we would campaign in
        else:
            self.become_candidate()
            vote_type = MT.VOTE
            term = self.term
        self.trk.record_vote(self.id, True)
        if self.trk.tally()[2] == "won":
            # Single-voter cluster: we won immediately.
            if kind == _Campaign.PRE_ELECTION:
                self._campaign(_Campaign.ELECTION)
            else:
                self.become_leader()
            return
        ctx = CAMPAIGN_TRANSFER if kind == _Campaign.TRANSFER else b""
        last = self.log.last_index()
        for v in self.trk.sorted_voters():
            if v == self.id:
                continue
            self._send(
                Message(
                    type=vote_type,
                    to=v,
                    term=term,
                    index=last,
                    log_term=self.log.last_term(),
                    context=ctx,
                )
            )

    def _handle_vote_request(self: Raft, m: Message) -> None:
        can_vote = (
            self.vote == m.from_  # a repeat of the vote we already cast
            or (self.vote is None and self.lead is None)  # free to vote this term
            or (m.type == MT.PRE_VOTE and m.term > self.term)  # pre-vote for a future term
        )
        resp = MT.VOTE_RESP if m.type == MT.VOTE else MT.PRE_VOTE_RESP
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # Reply with the request's term: for a pre-vote it is in our
            # future, and the pre-candidate ignores replies from older terms.
            self._send(Message(type=resp, to=m.from_, term=m.term))
            if m.type == MT.VOTE:
                self.election_elapsed = 0
                self.vote = m.from_
        else:
            self._send(Message(type=resp, to=m.from_, term=self.term, reject=True))

    def _step_candidate(self: Raft, m: Message) -> None:
        t = m.type
        my_resp = MT.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MT.VOTE_RESP
        if t == MT.PROP:
            raise ProposalDropped(f"{self.id}: no leader at term {self.term}")
        if t == MT.READ_INDEX:
            if m.from_ == self.id:
                raise ProposalDropped(f"{self.id}: no leader at term {self.term}")
        elif t == MT.TRANSFER_LEADER:
            if m.from_ == self.id or m.term == 0:
                raise ProposalDropped(f"{self.id}: no leader at term {self.term}")
        elif t in (MT.APP, MT.HEARTBEAT, MT.SNAP):
            # Same term (higher terms were handled in step): a leader won.
            self.become_follower(m.term, m.from_)
            self._step_follower(m)
        elif t == my_resp:
            self.trk.record_vote(m.from_, not m.reject)
            result = self.trk.tally()[2]
            if result == "won":
                if self.role == Role.PRE_CANDIDATE:
                    self._campaign(_Campaign.ELECTION)
                else:
                    self.become_leader()
                    self.bcast_append()
            elif result == "lost":
                # A rejected pre-vote response carries its sender's (higher)
                # term only if it was above ours; stay in our own term.
                self.become_follower(self.term, None)
