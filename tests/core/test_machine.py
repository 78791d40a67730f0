"""Unit tests of the sans-IO election state machine (docs/design.md, "The promise")."""

from __future__ import annotations

import math

import pytest

from trio_election._errors import Unavailable
from trio_election.core import (
    Acquire,
    CancelWait,
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
from trio_election.core._codec import dump_machine
from trio_election.core._machine import EXPIRE_RETRY_S

E = "election"


def acquire(node: str, ttl_ms: int = 1000, value: bytes = b"", election: str = E) -> Acquire:
    return Acquire(election, node, ttl_ms, value)


def campaign(
    node: str, waiter: str, ttl_ms: int = 1000, value: bytes = b"", election: str = E
) -> Acquire:
    return Acquire(election, node, ttl_ms, value, wait=True, waiter=waiter)


def drive(m: ElectionMachine, now: float) -> list[Outcome]:
    """What a single node's expiry driver does: apply whatever ``due`` asks for."""
    return [m.apply(command, now) for command in m.due(now)]


# -- Acquire (TryBecomeLeader) ------------------------------------------------


def test_try_acquire_free_election_grants_token():
    m = ElectionMachine()
    out = m.apply(acquire("n1", 1000, b"v"), now=10.0)
    holder = Holder(E, "n1", 1, 1000, b"v", 11.0)
    assert out == Outcome(True, holder, (Event(EventKind.ELECTED, E, holder, 1),), persist=True)
    assert m.holder(E) == holder
    assert m.last_token == 1
    assert m.revision == 1
    assert len(m) == 1
    assert list(m.holders()) == [holder]


def test_try_acquire_held_election_is_refused_with_current_holder():
    m = ElectionMachine()
    m.apply(acquire("n1"), 0.0)
    out = m.apply(acquire("n2"), 0.5)
    assert not out.success
    assert out.holder is not None and out.holder.node_id == "n1"
    assert out.events == ()
    assert out.granted == ()
    assert not out.persist
    assert m.waiting(E) == 0  # a TryBecomeLeader does not queue


def test_holder_refresh_keeps_token():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    out = m.apply(acquire("n1", 1000), 0.5)
    assert out.success
    assert out.holder is not None
    assert out.holder.fencing_token == 1
    assert out.holder.deadline == 1.5
    assert out.events == ()  # no new grant
    assert not out.persist  # nothing durable changed
    assert m.last_token == 1
    assert m.revision == 1


def test_holder_refresh_with_new_ttl_or_value_is_persisted():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000, b"a"), 0.0)
    out = m.apply(acquire("n1", 5000, b"a"), 0.5)
    assert out.persist
    assert out.holder == Holder(E, "n1", 1, 5000, b"a", 5.5)
    out = m.apply(acquire("n1", 5000, b"b"), 0.6)
    assert out.persist
    assert out.holder is not None and out.holder.value == b"b"


def test_holder_refresh_with_shorter_ttl_never_moves_the_deadline_earlier():
    m = ElectionMachine()
    m.apply(acquire("n1", 10_000), 0.0)
    out = m.apply(acquire("n1", 100), 1.0)
    assert out.holder is not None
    assert out.holder.ttl_ms == 100
    assert out.holder.deadline == 10.0
    assert drive(m, 9.9) == []
    assert m.holder(E) is not None


def test_campaign_of_holder_is_a_refresh_not_a_queue_entry():
    m = ElectionMachine()
    m.apply(acquire("n1"), 0.0)
    out = m.apply(campaign("n1", "w1"), 0.5)
    assert out.success
    assert out.holder is not None and out.holder.fencing_token == 1
    assert out.granted == ()
    assert m.waiting(E) == 0


def test_elections_are_independent():
    m = ElectionMachine()
    a = m.apply(acquire("n1", election="a"), 0.0)
    b = m.apply(acquire("n2", election="b"), 0.0)
    assert a.success and b.success
    assert a.holder is not None and b.holder is not None
    assert (a.holder.fencing_token, b.holder.fencing_token) == (1, 2)
    assert len(m) == 2


# -- Renew (heartbeat) --------------------------------------------------------


def test_heartbeat_extends_deadline_and_keeps_token():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    out = m.apply(Renew(E, "n1", 1), 0.7)
    assert out == Outcome(True, Holder(E, "n1", 1, 1000, b"", 1.7))
    assert not out.persist  # renewals need not wait for the disk


def test_heartbeat_with_wrong_token_is_refused():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    out = m.apply(Renew(E, "n1", 2), 0.5)
    assert not out.success
    assert out.holder is not None and out.holder.deadline == 1.0  # not extended


def test_heartbeat_with_old_token_of_same_node_is_refused():
    m = ElectionMachine()
    m.apply(acquire("n1"), 0.0)
    m.apply(Release(E, "n1", 1), 0.1)
    m.apply(acquire("n1"), 0.2)  # token 2
    assert not m.apply(Renew(E, "n1", 1), 0.3).success
    assert m.apply(Renew(E, "n1", 2), 0.3).success


def test_heartbeat_token_zero_matches_by_node_id():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    out = m.apply(Renew(E, "n1", 0), 0.5)
    assert out.success
    assert out.holder is not None and out.holder.deadline == 1.5
    assert not m.apply(Renew(E, "n2", 0), 0.5).success


def test_heartbeat_by_other_node_is_refused_even_with_right_token():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    out = m.apply(Renew(E, "n2", 1), 0.5)
    assert not out.success
    assert out.holder is not None and out.holder.deadline == 1.0


def test_heartbeat_on_free_election_is_refused():
    m = ElectionMachine()
    assert m.apply(Renew(E, "n1", 0), 0.0) == Outcome(False, None)


def test_heartbeat_after_expiry_is_refused():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    outcomes = drive(m, 1.0)
    assert [o.events[0].kind for o in outcomes] == [EventKind.EXPIRED]
    out = m.apply(Renew(E, "n1", 1), 1.0)
    assert not out.success
    assert out.holder is None


def test_heartbeat_after_expiry_and_regrant_to_same_node_with_old_token_is_refused():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    drive(m, 1.0)
    m.apply(acquire("n1", 1000), 1.5)
    assert m.holder(E) is not None and m.holder(E).fencing_token == 2
    assert not m.apply(Renew(E, "n1", 1), 1.6).success


# -- Release ------------------------------------------------------------------


def test_release_by_holder_frees_the_election():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000, b"v"), 0.0)
    out = m.apply(Release(E, "n1", 1), 0.5)
    former = Holder(E, "n1", 1, 1000, b"v", 1.0)
    assert out == Outcome(True, None, (Event(EventKind.RELEASED, E, former, 2),), persist=True)
    assert m.holder(E) is None
    assert len(m) == 0


def test_release_token_zero_matches_by_node_id():
    m = ElectionMachine()
    m.apply(acquire("n1"), 0.0)
    assert m.apply(Release(E, "n1", 0), 0.1).success


def test_release_by_non_holder_is_refused():
    m = ElectionMachine()
    m.apply(acquire("n1"), 0.0)
    out = m.apply(Release(E, "n2", 0), 0.1)
    assert not out.success
    assert not out.persist
    assert out.events == ()
    assert out.holder is not None and out.holder.node_id == "n1"
    assert m.holder(E) is not None


def test_release_with_wrong_token_is_refused():
    m = ElectionMachine()
    m.apply(acquire("n1"), 0.0)
    assert not m.apply(Release(E, "n1", 7), 0.1).success
    assert m.holder(E) is not None


def test_release_of_free_election_is_refused():
    m = ElectionMachine()
    assert m.apply(Release(E, "n1", 0), 0.0) == Outcome(False, None)


def test_new_grant_after_release_gets_new_token():
    m = ElectionMachine()
    m.apply(acquire("n1"), 0.0)
    m.apply(Release(E, "n1"), 0.1)
    out = m.apply(acquire("n1"), 0.2)
    assert out.holder is not None and out.holder.fencing_token == 2


# -- Campaign queue -------------------------------------------------------------


def test_campaign_on_free_election_is_granted_at_once():
    m = ElectionMachine()
    out = m.apply(campaign("n1", "w1"), 0.0)
    assert out.success
    assert out.holder is not None
    assert out.granted == (("w1", out.holder),)
    assert out.persist
    assert m.waiting(E) == 0


def test_campaign_on_held_election_waits():
    m = ElectionMachine()
    m.apply(acquire("n1"), 0.0)
    out = m.apply(campaign("n2", "w2"), 0.1)
    assert not out.success
    assert out.holder is not None and out.holder.node_id == "n1"
    assert out.granted == ()
    assert out.superseded == ()
    assert not out.persist
    assert m.waiting(E) == 1


def test_release_hands_over_to_first_campaigner():
    m = ElectionMachine()
    m.apply(acquire("n1"), 0.0)
    m.apply(campaign("n2", "w2", value=b"two"), 0.1)
    m.apply(campaign("n3", "w3"), 0.2)
    m.apply(campaign("n4", "w4"), 0.3)
    out = m.apply(Release(E, "n1"), 0.5)
    assert out.success  # the reply to the Release
    assert out.holder is not None and out.holder.node_id == "n2"
    assert [e.kind for e in out.events] == [EventKind.RELEASED, EventKind.ELECTED]
    assert [e.revision for e in out.events] == [2, 3]
    new = Holder(E, "n2", 2, 1000, b"two", 1.5)
    assert out.granted == (("w2", new),)
    assert out.persist
    # and then the next in line, in order
    out = m.apply(Release(E, "n2"), 0.6)
    assert [w for w, _ in out.granted] == ["w3"]
    out = m.apply(Release(E, "n3"), 0.7)
    assert [w for w, _ in out.granted] == ["w4"]
    assert m.waiting(E) == 0


def test_expiry_hands_over_to_first_campaigner():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    m.apply(campaign("n2", "w2", ttl_ms=2000), 0.1)
    m.apply(campaign("n3", "w3"), 0.2)
    [out] = drive(m, 1.0)
    assert [e.kind for e in out.events] == [EventKind.EXPIRED, EventKind.ELECTED]
    assert out.granted == (("w2", Holder(E, "n2", 2, 2000, b"", 3.0)),)
    assert m.waiting(E) == 1


def test_cancel_wait_leaves_queue():
    m = ElectionMachine()
    m.apply(acquire("n1"), 0.0)
    m.apply(campaign("n2", "w2"), 0.1)
    m.apply(campaign("n3", "w3"), 0.2)
    out = m.apply(CancelWait(E, "w2"), 0.3)
    assert out.success
    assert out.holder is not None and out.holder.node_id == "n1"
    assert not out.persist
    assert m.waiting(E) == 1
    out = m.apply(Release(E, "n1"), 0.4)
    assert [w for w, _ in out.granted] == ["w3"]


def test_cancel_wait_of_unknown_waiter_is_a_noop():
    m = ElectionMachine()
    m.apply(acquire("n1"), 0.0)
    m.apply(campaign("n2", "w2"), 0.1)
    assert not m.apply(CancelWait(E, "nobody"), 0.2).success
    assert not m.apply(CancelWait("other", "w2"), 0.2).success
    assert m.waiting(E) == 1


def test_cancel_wait_of_last_waiter_forgets_the_queue():
    m = ElectionMachine()
    m.apply(acquire("n1"), 0.0)
    m.apply(campaign("n2", "w2"), 0.1)
    assert m.apply(CancelWait(E, "w2"), 0.2).success
    assert m.waiting(E) == 0
    assert m._queues == {}
    assert not m.apply(CancelWait(E, "w2"), 0.3).success


def test_cancel_wait_of_granted_waiter_is_a_noop():
    m = ElectionMachine()
    m.apply(acquire("n1"), 0.0)
    m.apply(campaign("n2", "w2"), 0.1)
    m.apply(Release(E, "n1"), 0.2)
    out = m.apply(CancelWait(E, "w2"), 0.3)
    assert not out.success
    assert out.holder is not None and out.holder.node_id == "n2"  # still holds


def test_second_campaign_of_same_node_supersedes_first_and_keeps_place():
    m = ElectionMachine()
    m.apply(acquire("n1"), 0.0)
    m.apply(campaign("n2", "w2a", value=b"old"), 0.1)
    m.apply(campaign("n3", "w3"), 0.2)
    out = m.apply(campaign("n2", "w2b", value=b"new"), 0.3)
    assert not out.success
    assert out.superseded == ("w2a",)
    assert m.waiting(E) == 2
    assert not m.apply(CancelWait(E, "w2a"), 0.4).success  # gone already
    out = m.apply(Release(E, "n1"), 0.5)
    assert [(w, h.node_id, h.value) for w, h in out.granted] == [("w2b", "n2", b"new")]


def test_waiters_of_different_elections_do_not_mix():
    m = ElectionMachine()
    m.apply(acquire("n1", election="a"), 0.0)
    m.apply(acquire("n1", election="b"), 0.0)
    m.apply(campaign("n2", "wa", election="a"), 0.1)
    out = m.apply(campaign("n2", "wb", election="b"), 0.1)
    assert out.superseded == ()
    out = m.apply(Release("b", "n1"), 0.2)
    assert [w for w, _ in out.granted] == ["wb"]
    assert m.waiting("a") == 1


# -- Expire and due() ----------------------------------------------------------


def test_due_returns_nothing_before_deadline():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    assert m.due(0.999) == []
    assert m.next_deadline() == 1.0


def test_due_at_deadline_proposes_expire_with_token_and_renewals():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    m.apply(Renew(E, "n1"), 0.5)
    m.apply(Renew(E, "n1"), 0.6)
    assert m.due(1.6) == [Expire(E, 1, 2)]


def test_expire_ends_the_lease_with_an_event():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000, b"v"), 0.0)
    [command] = m.due(1.0)
    out = m.apply(command, 1.0)
    former = Holder(E, "n1", 1, 1000, b"v", 1.0)
    assert out == Outcome(True, None, (Event(EventKind.EXPIRED, E, former, 2),), persist=True)
    assert m.holder(E) is None
    assert m.next_deadline() >= 1.0


def test_due_after_a_renewal_waits_for_the_new_deadline():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    m.apply(Renew(E, "n1", 1), 0.8)
    assert m.due(1.0) == []
    assert m.due(1.79) == []
    assert m.next_deadline() == 1.8
    assert m.due(1.8) == [Expire(E, 1, 1)]


def test_expire_with_stale_renewal_count_is_noop():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    [expire] = m.due(1.0)  # proposed ...
    m.apply(Renew(E, "n1"), 1.0)  # ... but a renewal is applied first
    out = m.apply(expire, 1.0)
    assert not out.success
    assert not out.persist
    assert out.events == ()
    assert out.holder is not None and out.holder.deadline == 2.0
    assert m.revision == 1


def test_expire_with_wrong_token_is_noop():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    assert not m.apply(Expire(E, 2, 0), 5.0).success
    assert not m.apply(Expire("other", 1, 0), 5.0).success
    assert m.holder(E) is not None


def test_expire_for_previous_grant_does_not_end_the_next_one():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    [expire] = m.due(1.0)
    m.apply(Release(E, "n1"), 1.0)
    m.apply(acquire("n1", 1000), 1.0)  # same node, new token, renewals 0 again
    out = m.apply(expire, 1.0)
    assert not out.success
    assert m.holder(E) is not None and m.holder(E).fencing_token == 2


def test_repeated_expire_is_a_noop():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    [expire] = m.due(1.0)
    assert m.apply(expire, 1.0).success
    assert not m.apply(expire, 1.0).success
    assert m.revision == 2


def test_unapplied_expire_is_proposed_again_after_the_retry_interval():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    assert m.due(1.0) == [Expire(E, 1, 0)]  # proposal lost
    assert m.due(1.0 + EXPIRE_RETRY_S / 2) == []
    assert m.due(1.0 + EXPIRE_RETRY_S) == [Expire(E, 1, 0)]


def test_due_after_release_proposes_nothing():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    m.apply(Release(E, "n1"), 0.5)
    assert m.due(10.0) == []
    assert m._heap == []


def test_due_proposes_each_expired_lease_once_in_deadline_order():
    m = ElectionMachine()
    m.apply(acquire("n1", 3000, election="c"), 0.0)
    m.apply(acquire("n1", 1000, election="a"), 0.0)
    m.apply(acquire("n1", 2000, election="b"), 0.0)
    assert m.due(5.0) == [Expire("a", 2, 0), Expire("b", 3, 0), Expire("c", 1, 0)]


def test_refresh_all_gives_full_ttl():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000, election="a"), 0.0)
    m.apply(acquire("n1", 5000, election="b"), 0.0)
    m.refresh_all(3.0)
    # "a" had already run out on this clock, "b" had 2 s left: both get a full TTL
    assert m.holder("a") is not None and m.holder("a").deadline == 4.0
    assert m.holder("b") is not None and m.holder("b").deadline == 8.0
    assert m.due(3.999) == []
    assert m.due(4.0) == [Expire("a", 1, 0)]


def test_refresh_all_never_moves_a_deadline_earlier():
    m = ElectionMachine()
    m.apply(acquire("n1", 10_000), 0.0)
    m.refresh_all(-5.0)
    assert m.holder(E) is not None and m.holder(E).deadline == 10.0


def test_remaining_ms_is_never_negative():
    holder = Holder(E, "n1", 1, 1000, b"", 1.0)
    assert holder.remaining_ms(0.5) == 500
    assert holder.remaining_ms(1.0) == 0
    assert holder.remaining_ms(2.0) == 0


# -- restore ----------------------------------------------------------------------


def test_restore_treats_leases_as_freshly_renewed_and_keeps_token_high_water():
    m = ElectionMachine(last_token=50)
    m.restore([("a", "n1", 7, 1000, b"x"), ("b", "n2", 9, 2000, b"")], now=100.0)
    assert m.holder("a") == Holder("a", "n1", 7, 1000, b"x", 101.0)
    assert m.holder("b") == Holder("b", "n2", 9, 2000, b"", 102.0)
    assert m.last_token == 50  # the high-water mark never goes down
    assert m.due(100.999) == []
    assert m.due(101.0) == [Expire("a", 7, 0)]
    out = m.apply(acquire("n3", election="c"), 101.0)
    assert out.holder is not None and out.holder.fencing_token == 51


def test_restore_raises_token_high_water_to_the_highest_restored_token():
    m = ElectionMachine()
    m.restore([("a", "n1", 7, 1000, b""), ("b", "n2", 3, 1000, b"")], now=0.0)
    assert m.last_token == 7
    m.apply(Release("a", "n1"), 0.1)
    out = m.apply(acquire("n1", election="a"), 0.2)
    assert out.holder is not None and out.holder.fencing_token == 8


def test_restored_lease_can_be_renewed_released_and_expired():
    m = ElectionMachine()
    m.restore([("a", "n1", 7, 1000, b"")], now=0.0)
    assert m.apply(Renew("a", "n1", 7), 0.5).success
    assert m.due(1.4) == []
    assert m.due(1.5) == [Expire("a", 7, 1)]
    m.restore([("b", "n2", 8, 1000, b"")], now=2.0)
    assert m.apply(Release("b", "n2", 8), 2.1).success


# -- start-up grace ----------------------------------------------------------------


def test_start_up_grace_refuses_try_acquire_with_unavailable():
    m = ElectionMachine(last_token=1_000_000, grace_until=60.0)
    assert m.in_grace(0.0)
    with pytest.raises(Unavailable):
        m.apply(acquire("n1"), 0.0)
    with pytest.raises(Unavailable):
        m.apply(acquire("n1"), 59.999)
    assert m.holder(E) is None
    assert m.revision == 0
    assert not m.in_grace(60.0)
    out = m.apply(acquire("n1"), 60.0)
    assert out.success
    assert out.holder is not None and out.holder.fencing_token == 1_000_001


def test_campaign_during_grace_is_granted_by_promote_after_grace():
    m = ElectionMachine(grace_until=60.0)
    out = m.apply(campaign("n1", "w1"), 1.0)
    assert out == Outcome(False, None)
    m.apply(campaign("n2", "w2"), 2.0)
    assert m.waiting(E) == 2
    assert m.next_deadline() == 60.0
    assert m.due(59.9) == []
    commands = m.due(60.0)
    assert commands == [Promote(E)]
    out = m.apply(Promote(E), 60.0)
    assert out.success
    assert out.holder is not None and out.holder.node_id == "n1"
    assert [w for w, _ in out.granted] == ["w1"]
    assert [e.kind for e in out.events] == [EventKind.ELECTED]
    assert out.persist
    assert out.holder.deadline == 61.0  # the TTL runs from the grant
    # the grace is over: no more Promotes, and a second Promote is a no-op
    assert m.due(60.5) == []
    assert not m.apply(Promote(E), 60.5).success


def test_try_acquire_after_grace_before_promote_lets_the_queue_go_first():
    m = ElectionMachine(grace_until=60.0)
    m.apply(campaign("n1", "w1"), 1.0)
    out = m.apply(acquire("n2"), 60.0)  # due() not called yet
    assert not out.success
    assert out.holder is not None and out.holder.node_id == "n1"
    assert [w for w, _ in out.granted] == ["w1"]
    assert [e.kind for e in out.events] == [EventKind.ELECTED]
    assert out.persist
    assert m.due(60.0) == []  # the Promote is no longer needed ...
    assert not m.apply(Promote(E), 60.0).success  # ... and a late one is a no-op


def test_campaign_after_grace_before_promote_queues_behind_earlier_campaigns():
    m = ElectionMachine(grace_until=60.0)
    m.apply(campaign("n1", "w1"), 1.0)
    out = m.apply(campaign("n2", "w2"), 60.0)
    assert not out.success
    assert [w for w, _ in out.granted] == ["w1"]
    assert m.waiting(E) == 1


def test_cancelled_campaign_during_grace_is_not_promoted():
    m = ElectionMachine(grace_until=60.0)
    m.apply(campaign("n1", "w1"), 1.0)
    assert m.apply(CancelWait(E, "w1"), 2.0).success
    assert m.next_deadline() == math.inf
    assert m.due(60.0) == []


def test_no_grace_by_default():
    m = ElectionMachine()
    assert not m.in_grace(-1e18)
    assert m.next_deadline() == math.inf


# -- tokens, revisions, events ---------------------------------------------------------


def test_tokens_use_raft_index_when_given():
    m = ElectionMachine()
    out = m.apply(acquire("n1", election="a"), 0.0, index=100)
    assert out.holder is not None and out.holder.fencing_token == 100
    # an index below the high-water mark cannot lower a token
    out = m.apply(acquire("n1", election="b"), 0.0, index=50)
    assert out.holder is not None and out.holder.fencing_token == 101
    out = m.apply(acquire("n1", election="c"), 0.0, index=500)
    assert out.holder is not None and out.holder.fencing_token == 500
    assert m.last_token == 500


def test_token_continues_from_last_token():
    m = ElectionMachine(last_token=41)
    out = m.apply(acquire("n1"), 0.0)
    assert out.holder is not None and out.holder.fencing_token == 42


def test_tokens_strictly_increase_across_grants_of_one_election():
    m = ElectionMachine()
    tokens = []
    now = 0.0
    for i in range(20):
        node = f"n{i % 3}"
        out = m.apply(acquire(node, 1000), now)
        tokens.append(out.holder.fencing_token)
        if i % 2:
            m.apply(Release(E, node), now)
        else:
            now += 1.0
            drive(m, now)
    assert tokens == sorted(set(tokens))
    assert len(tokens) == 20


def test_events_and_revisions_strictly_increase_by_one():
    m = ElectionMachine()
    events: list[Event] = []
    events += m.apply(acquire("n1", 1000), 0.0).events
    events += m.apply(campaign("n2", "w2"), 0.1).events
    events += m.apply(Release(E, "n1"), 0.2).events
    for out in drive(m, 1.2):
        events += out.events
    events += m.apply(acquire("n3", election="x"), 1.3).events
    assert [e.revision for e in events] == list(range(1, len(events) + 1))
    assert m.revision == len(events)
    assert [e.kind for e in events] == [
        EventKind.ELECTED,
        EventKind.RELEASED,
        EventKind.ELECTED,
        EventKind.EXPIRED,
        EventKind.ELECTED,
    ]


def test_refused_commands_emit_no_events_and_no_revision():
    m = ElectionMachine()
    m.apply(acquire("n1"), 0.0)
    for command in (
        acquire("n2"),
        campaign("n2", "w2"),
        Renew(E, "n2"),
        Release(E, "n2"),
        CancelWait(E, "zz"),
        Expire(E, 99, 0),
        Promote(E),
    ):
        out = m.apply(command, 0.1)
        assert out.events == ()
        assert not out.persist
    assert m.revision == 1


def test_event_kinds_match_the_proto_values():
    assert [int(k) for k in EventKind] == [1, 2, 3, 4]


# -- the expiry heap -------------------------------------------------------------------


def test_heap_stays_bounded_without_due_calls():
    # A Raft follower applies grants and releases but never calls due().
    m = ElectionMachine()
    for i in range(10_000):
        m.apply(acquire(f"n{i % 5}", 1000), float(i))
        m.apply(Release(E, f"n{i % 5}"), float(i))
        assert len(m._heap) <= 2 * len(m) + 67
    assert len(m._heap) <= 67


def test_heap_stays_bounded_with_many_elections_and_no_due_calls():
    m = ElectionMachine()
    for i in range(2_000):
        m.apply(acquire("n1", 1000, election=f"e{i % 100}"), float(i))
        m.apply(acquire("n1", 1000, election=f"f{i % 7}"), float(i))
        m.apply(Release(f"e{i % 100}", "n1"), float(i))
    assert len(m._heap) <= 2 * len(m) + 67


def test_heap_has_one_entry_per_lease_under_renewals():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000), 0.0)
    for i in range(1_000):
        m.apply(Renew(E, "n1"), i * 0.5)
        drive(m, i * 0.5)
    assert len(m._heap) == 1


def test_due_proposes_one_expire_per_lease_after_heap_rebuild():
    m = ElectionMachine()
    while True:  # grant and release until a grant rebuilds the heap
        before = len(m._heap)
        out = m.apply(acquire("n1", 1000), 0.0)
        if len(m._heap) <= before:
            break
        m.apply(Release(E, "n1"), 0.0)
    token = out.holder.fencing_token
    assert m.due(5.0) == [Expire(E, token, 0)]


def test_lease_is_expired_by_the_first_due_at_or_after_deadline_after_rebuild():
    m = ElectionMachine()
    m.apply(acquire("n1", 1000, election="keep"), 0.0)
    for _ in range(100):
        m.apply(acquire("n2", 5000), 0.0)
        m.apply(Release(E, "n2"), 0.0)
    outcomes = drive(m, 1.0)
    assert [o.events[0].holder.election for o in outcomes] == ["keep"]
    assert m.holder("keep") is None


def test_no_handover_during_grace_even_when_a_lease_ends():
    # Only a restored lease can exist during a grace; if it ends, the queue still
    # waits for the grace to pass (promise 5: grant nothing before it).
    m = ElectionMachine(grace_until=60.0)
    m.restore([(E, "n1", 7, 1000, b"")], now=0.0)
    m.apply(campaign("n2", "w2"), 0.1)
    out = m.apply(Release(E, "n1"), 0.2)
    assert out.success
    assert out.granted == ()
    assert [e.kind for e in out.events] == [EventKind.RELEASED]
    assert m.holder(E) is None
    assert m.due(60.0) == [Promote(E)]
    out = m.apply(Promote(E), 60.0)
    assert [w for w, _ in out.granted] == ["w2"]
    assert out.holder is not None and out.holder.fencing_token == 8


def test_holder_refresh_during_grace_keeps_a_restored_lease():
    m = ElectionMachine(grace_until=60.0)
    m.restore([(E, "n1", 7, 1000, b"")], now=0.0)
    out = m.apply(acquire("n1", 1000), 0.5)
    assert out.success
    assert out.holder is not None and out.holder.fencing_token == 7
    out = m.apply(acquire("n2", 1000), 0.5)  # held: refused, not Unavailable
    assert not out.success


def test_expiry_after_an_expire_lost_to_a_renewal_is_on_time():
    # In a cluster the Expire can commit after a renewal: it is then a no-op, and
    # the lease is tracked by its new deadline again, neither early (promise 3)
    # nor a retry interval late.
    m = ElectionMachine()
    m.apply(acquire("n1", 100), 0.0)
    [expire] = m.due(0.1)
    assert m.apply(Renew(E, "n1"), 0.1).success  # new deadline 0.2
    assert not m.apply(expire, 0.1).success
    assert m.due(0.19) == []  # never early
    assert m.due(0.2) == [Expire(E, 1, 1)]  # and on time
    assert m.due(0.2 + EXPIRE_RETRY_S / 2) == []  # the stale retry entry says nothing
    assert len(m._heap) <= 2


def test_try_acquire_after_grace_by_the_node_at_the_head_of_the_queue():
    # The waiting Campaign is granted first, then the TryBecomeLeader of the same
    # node refreshes that lease (same token, its TTL and value, full TTL from now).
    m = ElectionMachine(grace_until=1.0)
    m.apply(campaign("n1", "w1", ttl_ms=100), 0.5)
    out = m.apply(acquire("n1", 250, b"v"), 1.0)
    assert out.success
    assert [w for w, _ in out.granted] == ["w1"]
    assert [e.kind for e in out.events] == [EventKind.ELECTED]
    assert out.holder == Holder(E, "n1", 1, 250, b"v", 1.25)
    assert out.persist


def test_the_same_campaign_applied_twice_keeps_its_place_and_is_not_superseded():
    # A follower may hand the same Campaign to the leader twice (a retried
    # forward): the second copy is no rival of the first.
    m = ElectionMachine()
    m.apply(acquire("n1"), 0.0)
    m.apply(campaign("n2", "w2"), 0.0)
    m.apply(campaign("n3", "w3"), 0.0)
    again = m.apply(campaign("n2", "w2"), 0.1)
    assert again.superseded == () and m.waiting(E) == 2
    out = m.apply(Release(E, "n1"), 0.2)
    assert [w for w, _ in out.granted] == ["w2"]


def test_a_conditional_release_never_ends_a_lease_renewed_since() -> None:
    """A node gives back a grant made to a Campaign whose call is gone with
    ``renewals=0``. If the same node_id took the lease up meanwhile (a refresh
    or a heartbeat), that release must be a no-op: the client believes it
    holds the election. (Found by the election simulation, three_nodes seed
    19, when the give-back was unconditional: two holders.)"""
    m = ElectionMachine()
    granted = m.apply(campaign("w1", "n1/b/1"), 0.0, 1).holder
    assert granted is not None
    assert m.apply(acquire("w1"), 0.1, 2).success  # the node_id takes it up: a refresh
    give_back = Release(E, "w1", granted.fencing_token, renewals=0)
    assert not m.apply(give_back, 0.2, 3).success
    assert m.holder(E) is not None and m.holder(E).fencing_token == granted.fencing_token
    # Not renewed since: the same release ends it.
    other = m.apply(campaign("w2", "n1/b/2", election="f"), 0.0, 4).holder
    assert m.apply(Release("f", "w2", other.fencing_token, renewals=0), 0.3, 5).success
    assert m.holder("f") is None


# -- renewals off the log (a Raft leader, after its quorum round) -----------------


def test_only_a_renewed_grant_may_be_renewed_off_the_log():
    m = ElectionMachine()
    token = m.apply(acquire("n1"), now=0.0).holder.fencing_token
    assert not m.renews_off_log(Renew(E, "n1", token))  # the first renewal is logged
    m.apply(Renew(E, "n1", token), now=0.1)
    assert m.renews_off_log(Renew(E, "n1", token))
    assert not m.renews_off_log(Renew("other", "n1", token))


def test_a_confirmed_renewal_moves_the_deadline_from_its_arrival_and_nothing_replicated():
    m = ElectionMachine()
    token = m.apply(acquire("n1", 1000), now=0.0).holder.fencing_token
    m.apply(Renew(E, "n1", token), now=0.1)
    image = dump_machine(m)
    out = m.renew_confirmed(Renew(E, "n1", token), arrived=0.5)
    assert out.success and out.holder.deadline == 1.5
    assert dump_machine(m) == image
    # Never earlier, and never for someone else or another token.
    assert m.renew_confirmed(Renew(E, "n1", token), arrived=0.2).holder.deadline == 1.5
    assert not m.renew_confirmed(Renew(E, "n2", 0), arrived=0.6).success
    assert not m.renew_confirmed(Renew(E, "n1", token + 1), arrived=0.6).success
    assert m.holder(E).deadline == 1.5


def test_a_lease_whose_expiry_was_proposed_refuses_renewals_until_that_is_settled():
    m = ElectionMachine()
    token = m.apply(acquire("n1", 1000), now=0.0).holder.fencing_token
    m.apply(Renew(E, "n1", token), now=0.0)
    (expire,) = m.due(1.0)  # proposed, not applied yet
    assert not m.renew_confirmed(Renew(E, "n1", token), arrived=1.0).success
    # A logged renewal that lands first makes that Expire stale: renewable again.
    m.apply(Renew(E, "n1", token), now=1.05)
    assert not m.apply(expire, now=1.1).success
    assert m.renew_confirmed(Renew(E, "n1", token), arrived=1.2).success
    # A new Raft leader's refresh settles it too.
    m.due(5.0)
    m.refresh_all(5.0)
    assert m.renew_confirmed(Renew(E, "n1", token), arrived=5.1).success


def test_a_stale_expire_applied_late_does_not_reopen_renewals_while_a_newer_one_is_pending():
    m = ElectionMachine()
    token = m.apply(acquire("n1", 1000), now=0.0).holder.fencing_token
    m.apply(Renew(E, "n1", token), now=0.0)
    (first,) = m.due(1.0)  # Expire naming renewal count 1, not committed yet
    m.apply(Renew(E, "n1", token), now=1.0)  # a logged renewal lands first: count 2
    (second,) = m.due(2.5)  # the deadline passed again: Expire naming count 2
    assert not m.apply(first, now=2.6).success  # the stale one commits at last
    # The newer Expire is still pending: an off-log renewal it would outlive is refused.
    assert not m.renew_confirmed(Renew(E, "n1", token), arrived=2.6).success
    assert m.apply(second, now=2.7).success
