"""What ``RawNode.step`` refuses from the network, whatever a peer sends."""

from __future__ import annotations

import pytest

from trio_election.raft import (
    ConfState,
    Entry,
    Message,
    MessageType,
    Role,
    Snapshot,
    SnapshotMetadata,
    StepError,
)
from trio_election.raft._rawnode import MAX_NETWORK_NUMBER, MAX_TERM_STEP

from .test_paper import drain, elect, make_node

MT = MessageType
HUGE = 2**63 - 1  # the largest term SQLite stores; a node at it can never campaign again

# Each a message from a member with one number no cluster reaches, by the field named.
OVER_THE_LIMIT = {
    "term": Message(MT.HEARTBEAT_RESP, to="n1", from_="n2", term=HUGE),
    "log_term": Message(MT.VOTE, to="n1", from_="n2", term=3, log_term=HUGE, index=1),
    "index": Message(MT.APP_RESP, to="n1", from_="n2", term=2, index=HUGE),
    "commit": Message(MT.HEARTBEAT, to="n1", from_="n2", term=2, commit=HUGE),
    "reject_hint": Message(
        MT.APP_RESP, to="n1", from_="n2", term=2, index=1, reject=True, reject_hint=HUGE
    ),
    "entries": Message(
        MT.APP, to="n1", from_="n2", term=3, index=1, log_term=1, entries=(Entry(HUGE, 2),)
    ),
    "snapshot": Message(
        MT.SNAP,
        to="n1",
        from_="n2",
        term=3,
        snapshot=Snapshot(SnapshotMetadata(HUGE, 1, ConfState(("n1", "n2", "n3")))),
    ),
}


@pytest.mark.parametrize("field", sorted(OVER_THE_LIMIT))
def test_a_term_or_index_no_cluster_reaches_is_refused_and_changes_nothing(field: str):
    node, st = make_node()
    elect(node, st)
    before = node.status()
    with pytest.raises(StepError, match=f"{field} is over"):
        node.step(OVER_THE_LIMIT[field])
    after = node.status()
    assert (after.term, after.role, after.commit, after.last_index) == (
        before.term,
        before.role,
        before.commit,
        before.last_index,
    )
    assert drain(node, st) == []


def test_a_term_far_above_this_nodes_is_refused():
    """A forged term of 2**62 would leave the cluster no election to hold."""
    node, st = make_node()
    elect(node, st)
    term = node.status().term
    with pytest.raises(StepError, match="more than 2\\*\\*32 above"):
        node.step(Message(MT.HEARTBEAT_RESP, to="n1", from_="n2", term=MAX_NETWORK_NUMBER))
    assert node.status().term == term
    assert drain(node, st) == []


def test_a_term_up_to_2_to_the_32_above_this_nodes_is_taken_up():
    node, st = make_node()
    elect(node, st)
    term = node.status().term + MAX_TERM_STEP
    node.step(Message(MT.HEARTBEAT_RESP, to="n1", from_="n2", term=term))
    assert (node.status().term, node.status().role) == (term, Role.FOLLOWER)
