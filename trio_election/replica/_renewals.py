"""Renewals answered by the Raft leader off the log, after a batched quorum round.

A renewal (Heartbeat, KeepAlive) changes no replicated state: it only moves
the deadline by which the Raft leader may propose an expiry. So, as etcd's
LeaseKeepAlive does, the leader answers it from its own lease table instead
of logging it. Grants, releases and expiries stay in the log. The first
renewal of a grant is logged too (``ElectionMachine.renews_off_log``): a
Campaign's grant that nobody waited for is given back by a Release
conditional on "no renewal since", and that condition sees logged renewals
only.

How one renewal is answered (``Replica.renew``):

1. It arrives at the leader at time ``a`` (the leader's monotonic clock).
2. It waits for the next quorum round: a ReadIndex request started after
   ``a`` (all renewals that arrived since the last round share one; its
   heartbeats carry the round's context). One round is out at a time: the
   next starts once the last is confirmed.
3. A quorum of the leader's term acknowledges the round; the leader then
   waits until it has applied its commit index as of the round.
4. It checks the lease in its applied state: held by the caller under that
   token, and no expiry proposed by this node for it (``expiring``). If so,
   the deadline becomes ``max(deadline, a + ttl)``; either way it answers.

A leader that loses its leadership answers none of the renewals it holds
(they fail, and the client retries elsewhere).

Why this keeps docs/design.md's promises
----------------------------------------
Promise 4 (clients stop first). The client believes it holds the election
until ``s + ttl - margin`` on its clock, where ``s`` is when it sent the
renewal; ``s < a``, and with clocks whose rates agree within the margin,
every deadline below is later than the client's.

Promise 3 (no early expiry), with the leader that answered still leading:
it sets the deadline to at least ``a + ttl`` before answering, deadlines
only move later, and an expiry is proposed only once the deadline has
passed (``due``). A renewal racing an expiry this node proposed is refused
(step 4), so no acknowledged renewal is followed by an expiry it should
have prevented: the Expire names the lease's renewal count, and the
``expiring`` flag is cleared only when the count changes (a logged renewal
or refresh, which makes every Expire proposed so far stale) or a new term's
refresh replaced every deadline; not when a stale Expire is applied, since a
newer one may be pending behind it.

Promise 3 across a leader change (why a deposed leader's acknowledgement
never outlives the new leader's refreshed deadline): let leader L1 of term
T answer a renewal after a round R started at ``r >= a``. A quorum Q1
acknowledged R's heartbeats in term T. A later leader L2 (term T' > T) was
elected by a quorum Q2; Q1 and Q2 share a member m. Had m voted in T' before
acknowledging R, it would have been in term T' and refused R's heartbeat
(no acknowledgement in T). So m acknowledged R, sent at or after ``r``,
before it voted for L2, and L2 became leader after ``r >= a``. On becoming
leader L2 gives every lease a deadline of at least its own ``now + ttl``
(``Elections.lead`` -> ``refresh_all``) before it may propose any expiry.
So L2's deadline is after ``a + ttl``, the deadline L1 promised. L2 also
holds the lease itself: L1 checked it in a state that includes every entry
committed before R, and L2's log holds every committed entry (Raft's leader
completeness); an entry that ended the lease after that state was proposed
later, by a leader that had refreshed it. If L1 was deposed and answered
nothing, nothing was promised.

Promise 1 (at most one holder) follows: no other candidate is granted the
election before the expiry, and the expiry comes after every deadline a
client was given. Promise 6 is unchanged for grants and releases; for a
renewal it is the argument above (no acknowledged renewal is outlived by an
earlier expiry). The simulation runs this code with its renewals, and a
mutation that answers without the round (``Replica.renew`` mutated in
tests/cluster/test_election_simulation.py) must be caught there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

#: Quorum rounds' ReadIndex contexts start with this (clients' reads never do).
ROUND_PREFIX = b"\x00renew/"


@dataclass(slots=True)
class Renewal:
    key: str  # the runtime's name for the caller
    request: object  # what the machine's renew() takes
    arrived: float  # on the leader's clock


@dataclass(slots=True)
class _Round:
    renewals: list[Renewal]
    started: int  # tick
    index: int | None = None  # confirmed at this commit index


@dataclass(slots=True)
class Renewals:
    """The renewals a Raft leader holds until a quorum round confirms it."""

    _waiting: list[Renewal] = field(default_factory=list)  # for the next round
    _rounds: dict[bytes, _Round] = field(default_factory=dict)
    _ids: count = field(default_factory=lambda: count(1))

    def __len__(self) -> int:
        return len(self._waiting) + sum(len(r.renewals) for r in self._rounds.values())

    def add(self, renewal: Renewal) -> None:
        self._waiting.append(renewal)

    @property
    def waiting(self) -> bool:
        return bool(self._waiting)

    @property
    def round_open(self) -> bool:
        """A round is out and not confirmed yet: what arrives waits for the
        next, which starts when this one is confirmed (so under load one
        round confirms many renewals, at the cost of at most one round trip)."""
        return any(r.index is None for r in self._rounds.values())

    def start_round(self, tick: int) -> bytes:
        """The context of a new round, for everything waiting."""
        ctx = ROUND_PREFIX + str(next(self._ids)).encode()
        self._rounds[ctx] = _Round(self._waiting, tick)
        self._waiting = []
        return ctx

    def confirmed(self, ctx: bytes, index: int) -> bool:
        """A round's ReadState arrived; False if ``ctx`` is not a round's."""
        if not ctx.startswith(ROUND_PREFIX):
            return False
        r = self._rounds.get(ctx)
        if r is not None and r.index is None:
            r.index = index
        return True

    def answerable(self, applied: int) -> list[Renewal]:
        """The renewals of confirmed rounds whose index is applied."""
        out: list[Renewal] = []
        for ctx, r in list(self._rounds.items()):
            if r.index is not None and r.index <= applied:
                out += r.renewals
                del self._rounds[ctx]
        return out

    def retry_stale(self, tick: int, after: int) -> None:
        """Rounds unconfirmed for ``after`` ticks (lost heartbeats): their
        renewals wait for the next round, which starts later still."""
        for ctx, r in list(self._rounds.items()):
            if r.index is None and tick - r.started >= after:
                self._waiting += r.renewals
                del self._rounds[ctx]

    def drop_all(self) -> list[Renewal]:
        """Leadership is lost: every renewal held, unanswered."""
        out = self._waiting + [x for r in self._rounds.values() for x in r.renewals]
        self._waiting, self._rounds = [], {}
        return out
