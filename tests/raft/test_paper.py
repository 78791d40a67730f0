"""Rules from the Raft paper (Ongaro & Ousterhout 2014), one test per sentence.

In the spirit of etcd-io/raft's raft_paper_test.go: each test quotes the rule
it checks and drives a single RawNode by hand.
"""

from __future__ import annotations

import random

from trio_election.raft import (
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    Role,
    Snapshot,
    SnapshotMetadata,
)

MT = MessageType
PEERS = ("n1", "n2", "n3")


def make_node(
    log_terms: list[int] | None = None,
    hs: HardState | None = None,
    peers: tuple[str, ...] = PEERS,
    seed: int = 0,
    **cfg: object,
) -> tuple[RawNode, MemoryStorage]:
    """n1 with a log whose entry i+2 has term log_terms[i] (index 1 is a snapshot)."""
    st = MemoryStorage()
    st.apply_snapshot(
        Snapshot(SnapshotMetadata(index=1, term=1, conf_state=ConfState(voters=peers)))
    )
    st.append([Entry(term=t, index=i + 2) for i, t in enumerate(log_terms or [])])
    if hs is not None:
        st.set_hard_state(hs)
    node = RawNode(Config(id="n1", rng=random.Random(seed), **cfg), st)  # type: ignore[arg-type]
    return node, st


def drain(node: RawNode, st: MemoryStorage) -> list[Message]:
    """Persist every Ready and return the messages, like an application would."""
    out: list[Message] = []
    while node.has_ready():
        rd = node.ready()
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        out.extend(rd.messages)
        out.extend(rd.messages_after_persist)
        node.advance(rd)
    return out


def elect(node: RawNode, st: MemoryStorage) -> None:
    term = node.status().term + 1
    node.campaign()
    drain(node, st)
    if node.status().role == Role.PRE_CANDIDATE:
        for peer in ("n2", "n3"):
            node.step(Message(type=MT.PRE_VOTE_RESP, from_=peer, to="n1", term=term))
        drain(node, st)
    for peer in ("n2", "n3"):
        node.step(Message(type=MT.VOTE_RESP, from_=peer, to="n1", term=term))
    drain(node, st)
    assert node.status().role == Role.LEADER


def test_update_term_from_message_and_revert_to_follower() -> None:
    """§5.1: "If one server's current term is smaller than the other's, then it
    updates its current term to the larger value. If a candidate or leader
    discovers that its term is out of date, it immediately reverts to follower
    state." """
    for make_role in ("follower", "candidate", "leader"):
        node, st = make_node(pre_vote=False)
        if make_role == "candidate":
            node.campaign()
        elif make_role == "leader":
            elect(node, st)
        node.step(Message(type=MT.APP, from_="n2", to="n1", term=9, index=1, log_term=1))
        s = node.status()
        assert (s.term, s.role, s.leader) == (9, Role.FOLLOWER, "n2"), make_role


def test_reject_stale_term_request() -> None:
    """§5.1: "If a server receives a request with a stale term number, it
    rejects the request." (The old leader is told the newer term.)"""
    node, st = make_node(hs=HardState(term=5, commit=1))
    node.step(
        Message(type=MT.APP, from_="n2", to="n1", term=3, index=1, log_term=1,
                entries=(Entry(term=3, index=2, data=b"x"),))
    )  # fmt: skip
    msgs = drain(node, st)
    assert node.status().last_index == 1
    assert [(m.type, m.term) for m in msgs] == [(MT.APP_RESP, 5)]


def test_one_durable_vote_per_term_first_come_first_served() -> None:
    """§5.2: "Each server will vote for at most one candidate in a given term,
    on a first-come-first-served basis." The vote is in the same Ready as the
    response, so it is persisted before the response is sent (Figure 2:
    "update on stable storage before responding")."""
    node, st = make_node()
    node.step(Message(type=MT.VOTE, from_="n2", to="n1", term=2, index=1, log_term=1))
    rd = node.ready()
    assert rd.hard_state == HardState(term=2, vote="n2", commit=1)
    assert rd.messages == ()  # nothing may leave before the vote is on disk
    assert [(m.type, m.to, m.reject) for m in rd.messages_after_persist] == [
        (MT.VOTE_RESP, "n2", False)
    ]
    st.set_hard_state(rd.hard_state)
    node.advance(rd)
    node.step(Message(type=MT.VOTE, from_="n3", to="n1", term=2, index=1, log_term=1))
    assert [(m.to, m.reject) for m in drain(node, st)] == [("n3", True)]
    # After a restart the vote still binds.
    node2 = RawNode(Config(id="n1", rng=random.Random(1)), st)
    node2.step(Message(type=MT.VOTE, from_="n3", to="n1", term=2, index=1, log_term=1))
    assert [(m.to, m.reject) for m in drain(node2, st)] == [("n3", True)]


def test_voter_rejects_less_up_to_date_candidate() -> None:
    """§5.4.1: "the voter denies its vote if its own log is more up-to-date
    than that of the candidate": later last term wins, then longer log."""
    cases = [  # (candidate last term, candidate last index, granted)
        (1, 1, False),  # older last term
        (2, 2, False),  # same term, shorter
        (2, 3, True),  # same term, same length
        (2, 4, True),  # same term, longer
        (3, 2, True),  # newer last term, even if shorter
    ]
    for cand_term, cand_index, granted in cases:
        node, st = make_node(log_terms=[2, 2])
        node.step(
            Message(type=MT.VOTE, from_="n2", to="n1", term=5, index=cand_index,
                    log_term=cand_term)
        )  # fmt: skip
        (resp,) = drain(node, st)
        assert resp.reject is not granted, (cand_term, cand_index)


def test_candidate_steps_down_on_append_from_leader_of_same_term() -> None:
    """§5.2: "If the leader's term ... is at least as large as the candidate's
    current term, then the candidate recognizes the leader as legitimate and
    returns to follower state." """
    node, st = make_node(pre_vote=False)
    node.campaign()
    drain(node, st)
    assert node.status().role == Role.CANDIDATE
    node.step(Message(type=MT.APP, from_="n3", to="n1", term=2, index=1, log_term=1))
    assert (node.status().role, node.status().leader) == (Role.FOLLOWER, "n3")


def test_follower_refuses_entries_without_matching_prev() -> None:
    """§5.3: "If the follower does not find an entry in its log with the same
    index and term, then it refuses the new entries." The rejection carries a
    hint for the leader's fast back-off."""
    node, st = make_node(log_terms=[2, 2, 3])  # indexes 2..4
    node.step(
        Message(type=MT.APP, from_="n2", to="n1", term=5, index=4, log_term=4,
                entries=(Entry(term=5, index=5),))
    )  # fmt: skip
    (resp,) = drain(node, st)
    assert resp.reject and resp.index == 4
    # Largest index whose term is <= 4 is index 4 (term 3): probe there next.
    assert (resp.reject_hint, resp.log_term) == (4, 3)
    assert node.status().last_index == 4


def test_follower_deletes_conflicting_suffix() -> None:
    """§5.3: "If an existing entry conflicts with a new one (same index but
    different terms), delete the existing entry and all that follow it; append
    any new entries not already in the log." """
    node, st = make_node(log_terms=[2, 2, 2, 2])  # indexes 2..5
    node.step(
        Message(type=MT.APP, from_="n2", to="n1", term=3, index=3, log_term=2,
                entries=(Entry(term=3, index=4, data=b"a"),))
    )  # fmt: skip
    drain(node, st)
    assert [(e.index, e.term) for e in st.entries(2, st.last_index() + 1)] == [
        (2, 2),
        (3, 2),
        (4, 3),
    ]


def test_leader_commits_only_current_term_entries_by_counting() -> None:
    """§5.4.2: "Raft never commits log entries from previous terms by counting
    replicas. Only log entries from the leader's current term are committed by
    counting replicas." """
    node, st = make_node(log_terms=[2], hs=HardState(term=2, commit=1))
    elect(node, st)  # term 3; appends an empty entry at index 3
    term = node.status().term
    # n2 acknowledges index 2 (the term-2 entry) only: it is on a majority...
    node.step(Message(type=MT.APP_RESP, from_="n2", to="n1", term=term, index=2))
    drain(node, st)
    assert node.status().commit == 1
    # ...but only the current-term entry at 3 commits it (and, indirectly, 2).
    node.step(Message(type=MT.APP_RESP, from_="n2", to="n1", term=term, index=3))
    drain(node, st)
    assert node.status().commit == 3


def test_leader_appends_empty_entry_and_sends_heartbeats() -> None:
    """§8: "each leader commit a blank no-op entry into the log at the start of
    its term"; §5.2: "leaders send periodic heartbeats ... to all followers"."""
    node, st = make_node()
    elect(node, st)
    assert st.entries(2, 3)[0].data == b"" and st.term(2) == node.status().term
    node.tick()  # heartbeat_tick=1
    msgs = drain(node, st)
    assert sorted((m.type, m.to) for m in msgs) == [(MT.HEARTBEAT, "n2"), (MT.HEARTBEAT, "n3")]


def test_election_timeouts_are_randomized() -> None:
    """§5.2: "Raft uses randomized election timeouts ... chosen randomly from a
    fixed interval" (here [election_tick, 2 * election_tick))."""
    seen = set()
    for seed in range(40):
        node, _ = make_node(seed=seed, pre_vote=False)
        ticks = 0
        while node.status().role == Role.FOLLOWER:
            node.tick()
            ticks += 1
        assert 10 <= ticks < 20
        seen.add(ticks)
    assert len(seen) >= 5


def test_messages_wait_for_persistence_of_their_ready() -> None:
    """Figure 2: respond only after updating stable storage. Acks for appended
    entries are returned in the same Ready as the entries, so applications that
    persist before sending (the Ready contract) never ack what they could lose."""
    node, st = make_node()
    node.step(
        Message(type=MT.APP, from_="n2", to="n1", term=2, index=1, log_term=1,
                entries=(Entry(term=2, index=2, data=b"x"),))
    )  # fmt: skip
    rd = node.ready()
    assert [e.index for e in rd.entries] == [2]
    assert rd.messages == ()
    assert [(m.type, m.index) for m in rd.messages_after_persist] == [(MT.APP_RESP, 2)]
    assert st.last_index() == 1  # nothing was written behind our back


def test_a_leader_may_send_its_appends_before_its_own_write() -> None:
    """The core, not the runtime, says what may leave before the write
    (etcd-io/raft's msgsAfterAppend): a leader's appends promise nothing about
    its disk, and its own copy counts toward a commit only once persisted."""
    node, st = make_node()
    elect(node, st)
    term = node.status().term
    for peer in ("n2", "n3"):  # both have the new leader's empty entry: replicating
        node.step(Message(type=MT.APP_RESP, from_=peer, to="n1", term=term, index=2))
    drain(node, st)
    node.propose(b"x")
    rd = node.ready()
    assert [e.data for e in rd.entries] == [b"x"]
    assert sorted((m.type, m.to) for m in rd.messages) == [(MT.APP, "n2"), (MT.APP, "n3")]
    assert rd.messages_after_persist == ()
    st.append(rd.entries)
    node.advance(rd)
    assert node.status().commit < 3  # its own durable copy alone is no quorum
    node.step(Message(type=MT.APP_RESP, from_="n2", to="n1", term=term, index=3))
    drain(node, st)
    assert node.status().commit == 3


def test_a_candidate_sends_nothing_before_its_term_and_vote_are_on_disk() -> None:
    """This core counts a candidate's own vote at once, so its vote requests wait
    for the write of the term and vote: a crash before it cannot leave a
    leader whose term a restarted self could vote in again."""
    node, _ = make_node(pre_vote=False)
    node.campaign()
    rd = node.ready()
    assert rd.hard_state is not None and rd.hard_state.vote == "n1"
    assert rd.messages == ()
    assert sorted(m.type for m in rd.messages_after_persist) == [MT.VOTE, MT.VOTE]
