"""Property tests of the election state machine against docs/design.md, "The promise".

A :class:`Harness` drives an :class:`ElectionMachine` the way a node does (commands
at the current time, ``due(now)`` whenever time passes) and checks every outcome
two ways:

* against :class:`Model`, a small independent re-implementation of the rules
  (the whole :class:`Outcome` must be equal, deadlines and revisions included);
* against the promise itself, from the outside: the event stream is replayed
  per election (an ELECTED never comes while the previous holder has not
  ended), fencing tokens strictly increase, an EXPIRED never comes before the
  TTL has run out since the last successful grant/renewal/refresh, no lease
  outlives its deadline by more than one ``due`` pass, granted waiters are the
  head of a FIFO queue tracked from the replies, revisions go up by one per
  event, and ``persist`` is set whenever a lease is granted or ended.

The same harness runs under a list-of-actions ``@given`` test and a
``RuleBasedStateMachine``; the latter also delays proposals (as a Raft leader
whose Expire commits later, after a renewal) and restarts the expiry driver
(``refresh_all``, as a new Raft leader).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event as hypothesis_event, given, settings, strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from trio_election._errors import Unavailable
from trio_election.core import (
    Acquire,
    CancelWait,
    Command,
    ElectionMachine,
    Event,
    EventKind,
    Expire,
    Holder,
    Outcome,
    Promote,
    Release,
    Renew,
)
from trio_election.core._machine import EXPIRE_RETRY_S

ELECTIONS = ("a", "b", "c")
NODES = ("n1", "n2", "n3", "n4")
TTLS_MS = (100, 250, 1000, 3000)
VALUES = (b"", b"x", b"yy")

# --------------------------------------------------------------------------------------
# The model: the rules written out again, plainly.


@dataclass
class _ModelLease:
    node_id: str
    token: int
    ttl_ms: int
    value: bytes
    renewals: int
    deadline: float


class _Unavailable:
    """The model expects the machine to raise Unavailable."""


UNAVAILABLE = _Unavailable()


class Model:
    def __init__(self, grace_until: float) -> None:
        self.leases: dict[str, _ModelLease] = {}
        self.queues: dict[str, list[Acquire]] = {}
        self.last_token = 0
        self.revision = 0
        self.grace_until = grace_until
        self.grace_announced = False

    def in_grace(self, now: float) -> bool:
        return now < self.grace_until

    def view(self, election: str) -> Holder | None:
        lease = self.leases.get(election)
        if lease is None:
            return None
        return Holder(
            election, lease.node_id, lease.token, lease.ttl_ms, lease.value, lease.deadline
        )

    def _event(self, kind: EventKind, election: str, holder: Holder | None) -> Event:
        self.revision += 1
        return Event(kind, election, holder, self.revision)

    def _grant(self, cmd: Acquire, now: float, index: int) -> tuple[Event, tuple]:
        token = max(self.last_token + 1, index)
        self.last_token = token
        self.leases[cmd.election] = _ModelLease(
            cmd.node_id, token, cmd.ttl_ms, cmd.value, 0, now + cmd.ttl_ms / 1000
        )
        holder = self.view(cmd.election)
        granted = ((cmd.waiter, holder),) if cmd.wait else ()
        return self._event(EventKind.ELECTED, cmd.election, holder), granted

    def _pop_head(self, election: str) -> Acquire:
        queue = self.queues[election]
        head = queue.pop(0)
        if not queue:
            del self.queues[election]
        return head

    @staticmethod
    def _extend(lease: _ModelLease, now: float) -> None:
        lease.renewals += 1
        lease.deadline = max(lease.deadline, now + lease.ttl_ms / 1000)

    def _end(self, election: str, kind: EventKind, now: float, index: int) -> Outcome:
        former = self.view(election)
        del self.leases[election]
        events = [self._event(kind, election, former)]
        granted: tuple = ()
        if self.queues.get(election) and not self.in_grace(now):
            event, granted = self._grant(self._pop_head(election), now, index)
            events.append(event)
        return Outcome(True, self.view(election), tuple(events), granted, persist=True)

    def apply(self, cmd: Command, now: float, index: int) -> Outcome | _Unavailable:
        e = cmd.election
        lease = self.leases.get(e)
        if isinstance(cmd, Acquire):
            events: list[Event] = []
            granted: tuple = ()
            if lease is None and self.queues.get(e) and not self.in_grace(now):
                event, granted = self._grant(self._pop_head(e), now, index)
                events.append(event)
                lease = self.leases[e]
            if lease is not None and lease.node_id == cmd.node_id:
                changed = (lease.ttl_ms, lease.value) != (cmd.ttl_ms, cmd.value)
                lease.ttl_ms, lease.value = cmd.ttl_ms, cmd.value
                self._extend(lease, now)
                return Outcome(
                    True, self.view(e), tuple(events), granted, (), changed or bool(events)
                )
            if lease is None and not self.in_grace(now):
                event, granted = self._grant(cmd, now, index)
                return Outcome(True, self.view(e), (event,), granted, (), True)
            if not cmd.wait:
                if lease is None:
                    return UNAVAILABLE
                return Outcome(False, self.view(e), tuple(events), granted, (), bool(events))
            queue = self.queues.setdefault(e, [])
            superseded: tuple[str, ...] = ()
            for i, waiting in enumerate(queue):
                if waiting.node_id == cmd.node_id:
                    superseded = (waiting.waiter,)
                    queue[i] = cmd
                    break
            else:
                queue.append(cmd)
            return Outcome(False, self.view(e), tuple(events), granted, superseded, bool(events))
        if isinstance(cmd, Renew):
            if (
                lease is not None
                and lease.node_id == cmd.node_id
                and cmd.fencing_token in (0, lease.token)
            ):
                self._extend(lease, now)
                return Outcome(True, self.view(e))
            return Outcome(False, self.view(e))
        if isinstance(cmd, Release):
            if (
                lease is not None
                and lease.node_id == cmd.node_id
                and cmd.fencing_token in (0, lease.token)
                and cmd.renewals in (-1, lease.renewals)
            ):
                return self._end(e, EventKind.RELEASED, now, index)
            return Outcome(False, self.view(e))
        if isinstance(cmd, Expire):
            if lease is not None and (lease.token, lease.renewals) == (
                cmd.fencing_token,
                cmd.renewals,
            ):
                return self._end(e, EventKind.EXPIRED, now, index)
            return Outcome(False, self.view(e))
        if isinstance(cmd, CancelWait):
            queue = self.queues.get(e, [])
            found = [w for w in queue if w.waiter == cmd.waiter]
            if found:
                queue.remove(found[0])
                if not queue:
                    del self.queues[e]
            return Outcome(bool(found), self.view(e), cancelled=(cmd.waiter,) if found else ())
        if isinstance(cmd, Promote):
            if lease is not None or not self.queues.get(e):
                return Outcome(False, self.view(e))
            event, granted = self._grant(self._pop_head(e), now, index)
            return Outcome(True, self.view(e), (event,), granted, persist=True)
        raise AssertionError(cmd)

    def eligible_expiries(self, now: float) -> set[tuple[str, int, int]]:
        return {
            (e, lease.token, lease.renewals)
            for e, lease in self.leases.items()
            if lease.deadline <= now
        }

    def promotions(self, now: float) -> set[str]:
        """Promotes the first due() at or after the end of the grace announces."""
        if self.grace_announced or self.grace_until == -math.inf or now < self.grace_until:
            return set()
        self.grace_announced = True
        return {e for e, queue in self.queues.items() if queue and e not in self.leases}

    def refresh_all(self, now: float) -> None:
        for lease in self.leases.values():
            lease.deadline = max(lease.deadline, now + lease.ttl_ms / 1000)


# --------------------------------------------------------------------------------------
# The harness: drive the machine, compare with the model, check the promise.


@dataclass
class _Seen:
    """What the checks know about one election, from the machine's outputs only."""

    holder: Holder | None = None  # replayed from the events
    last_token: int = 0
    earliest_expiry: float = -math.inf  # max(t + ttl) over grant/renew/refresh
    queue: list[tuple[str, str]] = field(default_factory=list)  # (node_id, waiter)
    tokens_by_node: dict[str, list[int]] = field(default_factory=dict)
    proposed_at: tuple[int, float] | None = None  # (token, time) of the last Expire proposal


class Harness:
    def __init__(self, *, grace_until: float = -math.inf, raft_index: bool = False) -> None:
        self.m = ElectionMachine(grace_until=grace_until)
        self.model = Model(grace_until)
        self.grace_until = grace_until
        self.now = 0.0
        self.raft_index = raft_index
        self.index = 0
        self.revision = 0
        self.last_token = 0
        self.seen = {e: _Seen() for e in ELECTIONS}
        self.waiter_seq = 0
        self.waiters: list[tuple[str, str]] = []  # every waiter ever used: (election, waiter)
        self.pending: list[Command] = []  # proposed, not applied yet

    # -- driving -------------------------------------------------------------------

    def next_index(self, jump: int) -> int:
        if not self.raft_index:
            return 0
        self.index += 1 + jump
        return self.index

    def apply(self, cmd: Command, jump: int = 0) -> Outcome | None:
        index = self.next_index(jump)
        expected = self.model.apply(cmd, self.now, index)
        try:
            out = self.m.apply(cmd, self.now, index)
        except Unavailable:
            assert expected is UNAVAILABLE, (cmd, expected)
            assert isinstance(cmd, Acquire) and not cmd.wait
            assert self.now < self.grace_until
            if currently_in_test_context():
                hypothesis_event("Unavailable")
            self.check_state()
            return None
        assert expected is not UNAVAILABLE, cmd
        assert out == expected, (cmd, self.now, index)
        self.note(cmd, out)
        self.check_outcome(cmd, out)
        self.check_state()
        return out

    def acquire(self, e: str, node: str, ttl_ms: int, value: bytes, wait: bool, jump: int = 0):
        waiter = ""
        if wait:
            self.waiter_seq += 1
            waiter = f"{node}/{self.waiter_seq}"
            self.waiters.append((e, waiter))
        return self.apply(Acquire(e, node, ttl_ms, value, wait, waiter), jump)

    def token_for(self, e: str, node: str, kind: str) -> int:
        seen = self.seen[e]
        if kind == "zero":
            return 0
        if kind == "right":
            return seen.holder.fencing_token if seen.holder is not None else 1
        if kind == "stale":
            old = [t for ts in seen.tokens_by_node.values() for t in ts]
            current = seen.holder.fencing_token if seen.holder is not None else None
            old = [t for t in old if t != current]
            return min(old) if old else 10**9
        return self.last_token + 1000  # "wrong": never granted

    def node_for(self, e: str, node: str | None) -> str:
        if node is None:  # "whoever holds it"
            holder = self.seen[e].holder
            return holder.node_id if holder is not None else NODES[0]
        return node

    def advance(self, dt: float, *, apply_due: bool = True) -> None:
        assert dt >= 0
        self.now += dt
        self.drive(apply_due=apply_due)

    def drive(self, *, apply_due: bool = True) -> None:
        """One pass of the expiry driver at ``now``."""
        now = self.now
        commands = self.m.due(now)
        self.check_due(commands)
        if not apply_due:
            self.pending.extend(commands)
            return
        for cmd in commands:
            self.apply(cmd)
        # One pass suffices: nothing is left over at this instant ...
        again = self.m.due(now)
        assert again == [], again
        self.check_no_overdue_lease()

    def commit_pending(self, count: int) -> None:
        for cmd in self.pending[:count]:
            self.apply(cmd)
        del self.pending[:count]

    def refresh_all(self) -> None:
        self.m.refresh_all(self.now)
        self.model.refresh_all(self.now)
        for seen in self.seen.values():
            if seen.holder is not None:
                seen.earliest_expiry = max(
                    seen.earliest_expiry, self.now + seen.holder.ttl_ms / 1000
                )
                seen.proposed_at = None  # the new leader's heap starts afresh
        self.check_state()

    @staticmethod
    def note(cmd: Command, out: Outcome) -> None:
        """Statistics for ``pytest --hypothesis-show-statistics``."""
        if not currently_in_test_context():
            return
        for ev in out.events:
            hypothesis_event(f"{type(cmd).__name__}: {ev.kind.name}")
        if out.granted:
            hypothesis_event(f"{type(cmd).__name__}: granted a waiter")
        if out.superseded:
            hypothesis_event("superseded")
        if isinstance(cmd, Expire) and not out.success and out.holder is not None:
            hypothesis_event("Expire lost to a renewal")
        if isinstance(cmd, CancelWait) and out.success:
            hypothesis_event("CancelWait took effect")
        if isinstance(cmd, Renew):
            hypothesis_event(f"Renew success={out.success}")

    # -- checks ----------------------------------------------------------------------

    def check_due(self, commands: list[Expire | Promote]) -> None:
        now = self.now
        expires = [
            (c.election, c.fencing_token, c.renewals) for c in commands if isinstance(c, Expire)
        ]
        promotes = [c.election for c in commands if isinstance(c, Promote)]
        assert len(set(expires)) == len(expires), f"duplicate Expire in one due(): {commands}"
        assert len({e for e, _, _ in expires}) == len(expires), commands
        assert len(set(promotes)) == len(promotes), commands
        eligible = self.model.eligible_expiries(now)
        # No early expiry: only leases whose deadline has passed are proposed ...
        assert set(expires) <= eligible, (commands, eligible)
        # ... and each of those is, unless it was proposed less than a retry ago.
        for e, token, renewals in eligible - set(expires):
            proposed = self.seen[e].proposed_at
            assert proposed is not None and proposed[0] == token, (e, token, renewals)
            assert now < proposed[1] + EXPIRE_RETRY_S, (e, proposed, now)
        for e, token, _ in expires:
            self.seen[e].proposed_at = (token, now)
            assert now >= self.seen[e].earliest_expiry
        assert set(promotes) == self.model.promotions(now), commands
        if promotes:
            assert now >= self.grace_until

    def check_no_overdue_lease(self) -> None:
        """After a due() pass whose commands were applied, no lease has run out,
        except one whose Expire was proposed less than a retry interval ago."""
        for holder in self.m.holders():
            if holder.deadline <= self.now:
                proposed = self.seen[holder.election].proposed_at
                assert proposed is not None and proposed[0] == holder.fencing_token, holder
                assert self.now < proposed[1] + EXPIRE_RETRY_S, (holder, proposed, self.now)

    def check_outcome(self, cmd: Command, out: Outcome) -> None:
        now = self.now
        e = cmd.election
        seen = self.seen[e]
        ends = 0
        for event in out.events:
            assert event.election == e
            assert event.revision == self.revision + 1, (event, self.revision)
            self.revision = event.revision
            assert event.holder is not None
            if event.kind == EventKind.ELECTED:
                # at most one holder: the previous one has ended
                assert seen.holder is None, (seen.holder, event)
                assert not self.m.in_grace(now) and now >= self.grace_until
                token = event.holder.fencing_token
                assert token > seen.last_token, (token, seen.last_token)
                assert token > self.last_token, (token, self.last_token)
                seen.last_token = self.last_token = token
                seen.tokens_by_node.setdefault(event.holder.node_id, []).append(token)
                seen.holder = event.holder
                seen.earliest_expiry = now + event.holder.ttl_ms / 1000
                seen.proposed_at = None
            elif event.kind in (EventKind.RELEASED, EventKind.EXPIRED):
                assert seen.holder is not None, event
                assert event.holder.fencing_token == seen.holder.fencing_token
                assert event.holder.node_id == seen.holder.node_id
                if event.kind == EventKind.EXPIRED:
                    # no early expiry
                    assert isinstance(cmd, Expire)
                    assert now >= seen.earliest_expiry, (now, seen.earliest_expiry)
                else:
                    assert isinstance(cmd, Release)
                seen.holder = None
                ends += 1
            else:
                raise AssertionError(event)
        if out.events:
            assert out.persist, (cmd, out)
        assert ends <= 1
        assert len(out.granted) <= 1
        # granted waiters: the FIFO head of the queue as the replies told it
        for waiter, holder in out.granted:
            if isinstance(cmd, Acquire) and cmd.waiter == waiter and not seen.queue:
                pass  # a Campaign on a free election, granted at once
            else:
                assert seen.queue, (waiter, cmd)
                assert seen.queue[0] == (holder.node_id, waiter), (seen.queue, waiter)
                seen.queue.pop(0)
            assert holder == seen.holder
            assert out.persist
        # the queue as the replies tell it
        if isinstance(cmd, Acquire) and cmd.wait and not out.success:
            if out.superseded:
                [old] = out.superseded
                place = seen.queue.index((cmd.node_id, old))
                seen.queue[place] = (cmd.node_id, cmd.waiter)
            else:
                assert all(node != cmd.node_id for node, _ in seen.queue)
                seen.queue.append((cmd.node_id, cmd.waiter))
        else:
            assert out.superseded == ()
        if isinstance(cmd, CancelWait) and out.success:
            [entry] = [q for q in seen.queue if q[1] == cmd.waiter]
            seen.queue.remove(entry)
        # successful heartbeats and refreshes move the earliest expiry later (an
        # Acquire can do both: promote the queue head after a grace, then refresh
        # it when the head is the same node)
        if isinstance(cmd, (Renew, Acquire)) and out.success:
            assert out.holder is not None and out.holder.node_id == cmd.node_id
            assert seen.holder is not None
            assert out.holder.fencing_token == seen.holder.fencing_token  # token kept
            seen.earliest_expiry = max(seen.earliest_expiry, now + out.holder.ttl_ms / 1000)
            seen.holder = out.holder
        if out.success and isinstance(cmd, (Release, Expire)) and not out.granted:
            assert out.holder is None
        if not out.success:
            assert not out.events or isinstance(cmd, Acquire)
        # a grant or an end of a lease must reach the disk before the reply
        if isinstance(cmd, (Release, Expire, Promote)) and out.success:
            assert out.persist

    def check_state(self) -> None:
        m = self.m
        assert m.revision == self.revision == self.model.revision
        assert m.last_token == self.model.last_token
        assert len(m) == sum(1 for s in self.seen.values() if s.holder is not None)
        for e, seen in self.seen.items():
            holder = m.holder(e)
            assert holder == self.model.view(e)
            if seen.holder is None:
                assert holder is None
            else:
                assert holder is not None
                assert (holder.node_id, holder.fencing_token) == (
                    seen.holder.node_id,
                    seen.holder.fencing_token,
                )
                # the local deadline is exactly the earliest expiry: neither earlier
                # (promise 3) nor later
                assert holder.deadline == seen.earliest_expiry
            assert m.waiting(e) == len(seen.queue) == len(self.model.queues.get(e, []))
            assert [(w.node_id, w.waiter) for w in self.model.queues.get(e, [])] == seen.queue
        # the driver's timer never sleeps past a deadline
        deadlines = [h.deadline for h in m.holders()]
        for e, seen in self.seen.items():
            if seen.proposed_at is not None and m.holder(e) is not None:
                deadlines.remove(m.holder(e).deadline)
                deadlines.append(max(m.holder(e).deadline, seen.proposed_at[1] + EXPIRE_RETRY_S))
        if deadlines:
            assert m.next_deadline() <= min(deadlines)
        if m._queues and not self.model.grace_announced and self.grace_until > -math.inf:
            assert m.next_deadline() <= self.grace_until
        # the heap stays small
        assert len(m._heap) <= 2 * len(m) + 67 + len(self.pending)


# --------------------------------------------------------------------------------------
# Random action lists.

election_st = st.sampled_from(ELECTIONS)
node_st = st.one_of(st.none(), st.sampled_from(NODES))  # None: the current holder's node
token_kind_st = st.sampled_from(("right", "zero", "wrong", "stale"))

acquire_st = st.tuples(
    st.just("acquire"),
    election_st,
    st.sampled_from(NODES),
    st.sampled_from(TTLS_MS),
    st.sampled_from(VALUES),
    st.booleans(),
    st.integers(0, 3),
)
renew_st = st.tuples(st.just("renew"), election_st, node_st, token_kind_st)
actions_st = st.lists(
    st.one_of(
        acquire_st,
        acquire_st,
        renew_st,
        renew_st,
        st.tuples(st.just("renew"), election_st, st.none(), st.just("right")),
        st.tuples(st.just("release"), election_st, node_st, token_kind_st),
        # A node giving back a grant nobody waits for: only if not renewed since.
        st.tuples(st.just("give_back"), election_st, node_st, token_kind_st),
        st.tuples(st.just("cancel"), st.integers(0, 1000)),
        st.tuples(st.just("advance"), st.integers(0, 150)),
        st.tuples(st.just("advance"), st.integers(0, 1500)),
        st.tuples(st.just("advance"), st.sampled_from((0, 99, 100, 101, 250, 1000, 3000))),
        st.tuples(st.just("refresh_all")),
    ),
    min_size=10,
    max_size=80,
)


def run_actions(h: Harness, actions: list[tuple]) -> None:
    for action in actions:
        kind = action[0]
        if kind == "acquire":
            _, e, node, ttl_ms, value, wait, jump = action
            h.acquire(e, node, ttl_ms, value, wait, jump)
        elif kind in ("renew", "release"):
            _, e, node, token_kind = action
            node = h.node_for(e, node)
            token = h.token_for(e, node, token_kind)
            h.apply((Renew if kind == "renew" else Release)(e, node, token))
        elif kind == "give_back":
            _, e, node, token_kind = action
            node = h.node_for(e, node)
            h.apply(Release(e, node, h.token_for(e, node, token_kind), renewals=0))
        elif kind == "cancel":
            if h.waiters:
                e, waiter = h.waiters[action[1] % len(h.waiters)]
                h.apply(CancelWait(e, waiter))
        elif kind == "advance":
            h.advance(action[1] / 1000)
        elif kind == "refresh_all":
            h.refresh_all()
    for _ in range(len(h.waiters) + 2):  # everything runs out in the end
        h.advance(10.0)
    assert len(h.m) == 0
    assert all(h.m.waiting(e) == 0 for e in ELECTIONS)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=actions_st, raft_index=st.booleans())
def test_random_commands_keep_the_promise(actions, raft_index):
    run_actions(Harness(raft_index=raft_index), actions)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=actions_st, grace_ms=st.integers(0, 4000))
def test_random_commands_keep_the_promise_through_a_start_up_grace(actions, grace_ms):
    run_actions(Harness(grace_until=grace_ms / 1000), actions)


def test_harness_catches_a_broken_expiry():
    """The checks are not vacuous: an early Expire is caught."""
    h = Harness()
    h.acquire("a", "n1", 1000, b"", False)
    h.now = 0.5
    with pytest.raises(AssertionError):
        h.apply(Expire("a", 1, 0))  # forged early: the EXPIRED check must object


# --------------------------------------------------------------------------------------
# The same, as a rule-based state machine, with delayed proposals.


class ElectionStateMachine(RuleBasedStateMachine):
    @initialize(
        grace_ms=st.one_of(st.none(), st.integers(0, 3000)),
        raft_index=st.booleans(),
    )
    def start(self, grace_ms, raft_index):
        grace_until = -math.inf if grace_ms is None else grace_ms / 1000
        self.h = Harness(grace_until=grace_until, raft_index=raft_index)

    @rule(
        e=election_st,
        node=st.sampled_from(NODES),
        ttl_ms=st.sampled_from(TTLS_MS),
        value=st.sampled_from(VALUES),
        wait=st.booleans(),
        jump=st.integers(0, 5),
    )
    def acquire(self, e, node, ttl_ms, value, wait, jump):
        self.h.acquire(e, node, ttl_ms, value, wait, jump)

    @rule(e=election_st, node=node_st, token_kind=token_kind_st)
    def renew(self, e, node, token_kind):
        node = self.h.node_for(e, node)
        self.h.apply(Renew(e, node, self.h.token_for(e, node, token_kind)))

    @rule(e=election_st, node=node_st, token_kind=token_kind_st)
    def release(self, e, node, token_kind):
        node = self.h.node_for(e, node)
        self.h.apply(Release(e, node, self.h.token_for(e, node, token_kind)))

    @rule(e=election_st)
    def renew_by_holder(self, e):
        self.h.apply(Renew(e, self.h.node_for(e, None), self.h.token_for(e, "", "right")))

    @rule(e=election_st)
    def release_by_holder(self, e):
        self.h.apply(Release(e, self.h.node_for(e, None), self.h.token_for(e, "", "right")))

    @precondition(lambda self: self.h.waiters)
    @rule(data=st.data())
    def cancel_wait(self, data):
        e, waiter = data.draw(st.sampled_from(self.h.waiters))
        self.h.apply(CancelWait(e, waiter))

    @rule(ms=st.integers(0, 400))
    def advance(self, ms):
        self.h.advance(ms / 1000)

    @rule()
    def advance_to_next_deadline(self):
        target = self.h.m.next_deadline()
        if target < math.inf:
            self.h.advance(max(0.0, target - self.h.now))

    @rule(ms=st.integers(0, 400))
    def advance_and_propose_for_later(self, ms):
        """A Raft leader proposes; the entries commit after other commands."""
        self.h.advance(ms / 1000, apply_due=False)

    @precondition(lambda self: self.h.pending)
    @rule(count=st.integers(1, 3))
    def commit_pending(self, count):
        self.h.commit_pending(count)

    @rule()
    def lose_pending(self):
        """A Raft-leader change loses the uncommitted proposals."""
        self.h.pending.clear()

    @rule()
    def new_raft_leader(self):
        self.h.pending.clear()
        self.h.refresh_all()

    @invariant()
    def state_agrees(self):
        if hasattr(self, "h"):
            self.h.check_state()


ElectionStateMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_election_state_machine = ElectionStateMachine.TestCase
