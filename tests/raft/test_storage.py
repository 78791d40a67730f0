"""MemoryStorage against the Storage contract (reusable for other storages).

``check_storage_contract`` only uses the Storage protocol plus the writes the
application performs while handling a Ready, so a durable storage can run the
same checks by passing its own factory.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from trio_election.raft import (
    Compacted,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Snapshot,
    SnapshotMetadata,
    SnapshotOutOfDate,
    Unavailable,
)


def ents(*pairs: tuple[int, int]) -> list[Entry]:
    return [Entry(term=t, index=i, data=f"{i}".encode()) for i, t in pairs]


def check_storage_contract(factory: Callable[[], MemoryStorage]) -> None:
    s = factory()
    assert (s.first_index(), s.last_index()) == (1, 0)
    assert s.initial_state() == (HardState(), ConfState())
    assert s.term(0) == 0
    with pytest.raises(Unavailable):
        s.term(1)

    s.append(ents((1, 1), (2, 1), (3, 2), (4, 2), (5, 3)))
    assert (s.first_index(), s.last_index()) == (1, 5)
    assert [e.index for e in s.entries(2, 5)] == [2, 3, 4]
    assert [e.index for e in s.entries(2, 6, max_size=1)] == [2]  # at least one
    assert [e.index for e in s.entries(2, 6, max_size=2)] == [2, 3]
    with pytest.raises(Unavailable):
        s.entries(2, 7)

    # Appending below the last index replaces the conflicting suffix.
    s.append(ents((4, 4)))
    assert [(e.index, e.term) for e in s.entries(1, s.last_index() + 1)] == [
        (1, 1),
        (2, 1),
        (3, 2),
        (4, 4),
    ]
    with pytest.raises(Unavailable):
        s.append(ents((9, 4)))  # a gap

    s.set_hard_state(HardState(term=4, vote="n2", commit=3))
    voters = ConfState(voters=("n1", "n2", "n3"))
    snap = s.create_snapshot(3, voters, b"state@3")
    assert snap.metadata == SnapshotMetadata(index=3, term=2, conf_state=voters)
    with pytest.raises(SnapshotOutOfDate):
        s.create_snapshot(3, voters, b"again")
    s.compact(3)
    assert (s.first_index(), s.last_index()) == (4, 4)
    assert s.term(3) == 2  # the entry just before the log stays answerable
    with pytest.raises(Compacted):
        s.term(2)
    with pytest.raises(Compacted):
        s.entries(3, 5)
    with pytest.raises(Compacted):
        s.compact(2)
    assert s.initial_state() == (HardState(term=4, vote="n2", commit=3), voters)
    assert s.snapshot().data == b"state@3"

    # Installing a newer snapshot replaces the whole log.
    newer = Snapshot(SnapshotMetadata(index=10, term=5, conf_state=voters), b"state@10")
    s.apply_snapshot(newer)
    assert (s.first_index(), s.last_index(), s.term(10)) == (11, 10, 5)
    with pytest.raises(SnapshotOutOfDate):
        s.apply_snapshot(snap)
    s.append(ents((8, 4), (9, 4), (10, 5), (11, 5)))  # overlap with the snapshot is skipped
    assert [(e.index, e.term) for e in s.entries(11, 12)] == [(11, 5)]


def test_memory_storage_contract() -> None:
    check_storage_contract(MemoryStorage)
