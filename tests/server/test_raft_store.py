"""RaftStore: the Raft log, hard state and snapshot of a node on disk (SQLite).

The node drives the store in two steps per Ready: ``write`` (one transaction,
in a worker thread) then ``remember`` (the read cache). These tests drive it
the same way, reopen the file to see what really reached the disk, and damage
the file behind its back to check that a node refuses to start on it.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
import trio

from tests.raft.test_storage import check_storage_contract, ents
from trio_election.raft import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMetadata,
)
from trio_election.server._datadir import member_identity
from trio_election.server._raft_store import CorruptLog, RaftStore, StorageFailure, _hard_crc
from trio_election.testing import write_secret

VOTERS = ConfState(voters=("n1", "n2", "n3"))


def assert_same_state(store: RaftStore, other: RaftStore) -> None:
    """``other`` (a fresh open of the same file) holds what ``store`` serves."""
    assert other.initial_state() == store.initial_state()
    assert other.snapshot() == store.snapshot()
    assert other.last_index() == store.last_index()
    snapshot_index = store.snapshot().metadata.index
    assert other.term(snapshot_index) == store.term(snapshot_index)
    # The node's own compaction may leave entries before the snapshot in the
    # cache; a reopened store starts right after the snapshot (see
    # test_write_snapshot_and_compact_survive_a_reopen). Compare from there on.
    lo = max(store.first_index(), other.first_index())
    hi = store.last_index() + 1
    assert other.entries(lo, hi) == store.entries(lo, hi)


def reopened(store: RaftStore) -> RaftStore:
    """Open the same file again, as a restarted node would, and check it."""
    other = RaftStore(store.path.parent)
    try:
        assert_same_state(store, other)
    finally:
        other.close()
    return other


class DurableStorage:
    """The Storage protocol and its writes, as ``ClusterNode`` performs them.

    Each write goes to the read cache (``remember``), which refuses what the
    contract says to refuse (a gap, an older snapshot) without touching the
    disk; then to the disk (``write`` or ``write_snapshot``). After every
    write the file is opened again and must hold exactly what the cache
    serves.
    """

    def __init__(self, data_dir: Path) -> None:
        self.store = RaftStore(data_dir)

    # -- reads: straight from the store ---------------------------------------

    def initial_state(self):
        return self.store.initial_state()

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        return self.store.entries(lo, hi, max_size)

    def term(self, index: int) -> int:
        return self.store.term(index)

    def first_index(self) -> int:
        return self.store.first_index()

    def last_index(self) -> int:
        return self.store.last_index()

    def snapshot(self) -> Snapshot:
        return self.store.snapshot()

    # -- writes: cache, then disk, then compare with a fresh open ---------------

    def append(self, entries: Iterable[Entry]) -> None:
        entries = list(entries)
        self.store.remember(None, entries, None)
        self.store.write(None, entries, None)
        reopened(self.store)

    def set_hard_state(self, hard_state: HardState) -> None:
        self.store.remember(hard_state, [], None)
        self.store.write(hard_state, [], None)
        reopened(self.store)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        self.store.remember(None, [], snapshot)
        self.store.write(None, [], snapshot)
        reopened(self.store)

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        return self.store.create_snapshot(index, conf_state, data)

    def compact(self, index: int) -> None:
        # As ClusterNode._take_snapshot: the snapshot and the compaction in
        # one transaction, then the cache.
        snapshot = self.store.snapshot()
        self.store.compact(index)
        self.store.write_snapshot(snapshot, index)
        reopened(self.store)


def test_raft_store_meets_the_storage_contract_on_disk(tmp_path: Path) -> None:
    storages: list[DurableStorage] = []

    def factory() -> DurableStorage:
        storages.append(DurableStorage(tmp_path / f"s{len(storages)}"))
        return storages[-1]

    check_storage_contract(factory)
    assert storages
    for storage in storages:
        storage.store.close()


def write(store: RaftStore, hard_state=None, entries=(), snapshot=None) -> None:
    """One Ready, persisted the way the node does it."""
    store.write(hard_state, list(entries), snapshot)
    store.remember(hard_state, list(entries), snapshot)


def test_hard_state_entries_and_snapshot_survive_close_and_reopen(tmp_path: Path) -> None:
    store = RaftStore(tmp_path)
    snapshot = Snapshot(SnapshotMetadata(index=3, term=1, conf_state=VOTERS), b"state@3")
    write(store, HardState(term=1, vote="n1", commit=0), [], snapshot)
    entries = [
        Entry(term=1, index=4, type=EntryType.CONF_CHANGE, data=b"conf"),
        Entry(term=2, index=5, data=b"grant"),
        Entry(term=2, index=6, data=b""),
    ]
    write(store, HardState(term=2, vote="n2", commit=5), entries)
    store.set_meta("node_id", "n2")
    store.close()

    again = RaftStore(tmp_path)
    assert again.initial_state() == (HardState(term=2, vote="n2", commit=5), VOTERS)
    assert again.snapshot() == snapshot
    assert (again.first_index(), again.last_index()) == (4, 6)
    assert again.term(3) == 1
    assert again.entries(4, 7) == entries
    assert again.meta("node_id") == "n2"
    again.close()


def test_overwritten_suffix_is_replaced_on_disk_too(tmp_path: Path) -> None:
    store = RaftStore(tmp_path)
    write(store, HardState(term=2, vote="n1", commit=2), ents((1, 1), (2, 1), (3, 2), (4, 2)))
    # A new leader of term 3 overwrites from index 3 on, with a shorter log.
    write(store, HardState(term=3, vote="n2", commit=2), ents((3, 3)))
    assert [(e.index, e.term) for e in store.entries(1, store.last_index() + 1)] == [
        (1, 1),
        (2, 1),
        (3, 3),
    ]
    store.close()

    again = RaftStore(tmp_path)
    assert again.last_index() == 3  # entry 4 of term 2 is gone from the file
    assert [(e.index, e.term) for e in again.entries(1, 4)] == [(1, 1), (2, 1), (3, 3)]
    again.close()
    rows = sqlite3.connect(tmp_path / "raft.db").execute("SELECT idx, term FROM entries").fetchall()
    assert sorted(rows) == [(1, 1), (2, 1), (3, 3)]


def test_received_snapshot_replaces_the_whole_log_on_disk_too(tmp_path: Path) -> None:
    # A follower with a stale suffix (5..8 of an old term) is sent a snapshot
    # at 6: the cache drops its whole log, and so must the file, or a restart
    # would bring the stale entries back after the snapshot.
    store = RaftStore(tmp_path)
    write(store, HardState(term=2, vote="n1", commit=4), [Entry(2, i) for i in range(1, 9)])
    snapshot = Snapshot(SnapshotMetadata(index=6, term=3, conf_state=VOTERS), b"state@6")
    write(store, HardState(term=3, vote="n1", commit=6), [], snapshot)
    assert (store.first_index(), store.last_index()) == (7, 6)
    reopened(store)
    # The next entries come from the leader and land after the snapshot.
    write(store, None, [Entry(3, 7, data=b"x")])
    again = reopened(store)
    assert again.last_index() == 7
    store.close()


def test_write_snapshot_and_compact_survive_a_reopen(tmp_path: Path) -> None:
    store = RaftStore(tmp_path)
    entries = [Entry(term=1 + i // 10, index=i, data=f"e{i}".encode()) for i in range(1, 31)]
    write(store, HardState(term=3, vote="n1", commit=30), entries)
    # As ClusterNode._take_snapshot: snapshot at the applied index, keep some
    # entries behind it for lagging followers.
    snapshot = store.create_snapshot(25, VOTERS, b"state@25")
    store.write_snapshot(snapshot, 20)
    store.compact(20)
    assert (store.first_index(), store.last_index()) == (21, 30)
    store.close()

    again = RaftStore(tmp_path)
    assert again.snapshot() == snapshot
    assert again.initial_state() == (HardState(term=3, vote="n1", commit=30), VOTERS)
    assert again.last_index() == 30
    assert again.term(25) == 3
    assert again.entries(26, 31) == entries[25:]
    # The entries kept behind the snapshot (21..25) stay in the file, but a
    # reopened store serves the log from the snapshot on (serving them too,
    # from 21, would spare a lagging follower a snapshot; never from later).
    assert again.first_index() <= 26
    rows = sqlite3.connect(tmp_path / "raft.db").execute("SELECT min(idx) FROM entries").fetchone()
    assert rows == (21,)  # entries 1..20 really left the file
    again.close()

    # A second snapshot and compaction on top of the reopened store.
    more = [Entry(term=4, index=i, data=f"e{i}".encode()) for i in range(31, 41)]
    again = RaftStore(tmp_path)
    write(again, HardState(term=4, vote="n1", commit=40), more)
    later = again.create_snapshot(38, VOTERS, b"state@38")
    again.write_snapshot(later, 35)
    again.compact(35)
    last = reopened(again)
    assert last.snapshot() == later
    again.close()


# -- corruption: a node refuses to start on damage ---------------------------------


def make_log(data_dir: Path, commit: int = 5) -> None:
    store = RaftStore(data_dir)
    write(
        store,
        HardState(term=2, vote="n1", commit=commit),
        [Entry(term=2, index=i, data=f"command {i}".encode()) for i in range(1, 6)],
    )
    store.set_meta("node_id", "n1")
    store.close()


def tamper(data_dir: Path, sql: str, *params: object) -> None:
    db = sqlite3.connect(data_dir / "raft.db")
    with db:
        changed = db.execute(sql, params).rowcount
    db.close()
    assert changed == 1


def test_flipped_bytes_in_an_entry_are_refused(tmp_path: Path) -> None:
    make_log(tmp_path)
    tamper(tmp_path, "UPDATE entries SET data = ? WHERE idx = 3", b"command 9")
    with pytest.raises(CorruptLog, match="log entry 3 fails its checksum"):
        RaftStore(tmp_path)


def test_a_changed_term_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path)
    tamper(tmp_path, "UPDATE entries SET term = 7 WHERE idx = 4")
    with pytest.raises(CorruptLog, match="log entry 4 fails its checksum"):
        RaftStore(tmp_path)


def test_a_damaged_snapshot_is_refused(tmp_path: Path) -> None:
    store = RaftStore(tmp_path)
    snapshot = Snapshot(SnapshotMetadata(index=3, term=1, conf_state=VOTERS), b"state@3")
    write(store, HardState(term=1, vote="n1", commit=3), [], snapshot)
    store.close()
    tamper(tmp_path, "UPDATE snapshot SET data = ?", b"state@4")
    with pytest.raises(CorruptLog, match="snapshot at 3 fails its checksum"):
        RaftStore(tmp_path)


def test_a_gap_in_the_log_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path, commit=2)
    tamper(tmp_path, "DELETE FROM entries WHERE idx = 3")
    with pytest.raises(CorruptLog, match="the log jumps from 2 to 4"):
        RaftStore(tmp_path)


def test_commit_index_past_the_last_entry_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path, commit=5)
    tamper(tmp_path, "DELETE FROM entries WHERE idx = 5")  # a committed entry lost
    with pytest.raises(CorruptLog, match="commit index 5 is past the last entry 4"):
        RaftStore(tmp_path)


def test_commit_index_past_the_last_entry_in_the_hard_state_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path, commit=5)
    tamper(
        tmp_path,
        "UPDATE meta SET value = ? WHERE key = 'hard_state'",
        json.dumps([2, "n1", 9, _hard_crc(2, "n1", 9)]),
    )
    with pytest.raises(CorruptLog, match="commit index 9 is past the last entry 5"):
        RaftStore(tmp_path)


def test_a_changed_vote_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path)
    hard = json.loads(RaftStore(tmp_path).meta("hard_state"))
    hard[1] = "n2"  # a member that forgot its vote could vote twice in one term
    tamper(tmp_path, "UPDATE meta SET value = ? WHERE key = 'hard_state'", json.dumps(hard))
    with pytest.raises(CorruptLog, match="hard state .* fails its checksum"):
        RaftStore(tmp_path)


def test_a_hard_state_from_before_its_checksum_is_read(tmp_path: Path) -> None:
    make_log(tmp_path)
    tamper(tmp_path, "UPDATE meta SET value = ? WHERE key = 'hard_state'", '[2, "n1", 5]')
    assert RaftStore(tmp_path).hard_state == HardState(term=2, vote="n1", commit=5)


def test_raft_db_alone_holds_every_acknowledged_write(tmp_path: Path) -> None:
    """No write-ahead file beside it: losing one cannot take votes or entries back."""
    store = RaftStore(tmp_path / "live")
    entries = [Entry(term=3, index=i, data=f"e{i}".encode()) for i in range(1, 51)]
    for entry in entries:
        write(store, HardState(term=3, vote="n2", commit=entry.index), [entry])
    # What a careless copy or a disk that drops the sidecar files leaves: raft.db only.
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "raft.db").write_bytes((tmp_path / "live" / "raft.db").read_bytes())
    store.close()
    assert sorted(p.name for p in (tmp_path / "live").iterdir()) == ["raft.db"]
    copy = RaftStore(tmp_path / "copy")
    assert copy.hard_state == HardState(term=3, vote="n2", commit=50)
    assert copy.entries(1, 51) == entries
    copy.close()


def test_a_full_disk_is_a_sentence_and_loses_nothing_stored(tmp_path: Path) -> None:
    store = RaftStore(tmp_path)
    write(store, HardState(term=1, vote="n1", commit=1), [Entry(term=1, index=1, data=b"x")])
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages}")  # the disk is full now
    big = [Entry(term=1, index=i, data=b"y" * 4096) for i in range(2, 12)]
    with pytest.raises(StorageFailure, match="cannot write .*raft.db.*full.*start it again"):
        store.write(HardState(term=1, vote="n1", commit=11), big, None)
    store.close()
    again = RaftStore(tmp_path)  # room again: it goes on from what it had stored
    assert again.last_index() == 1 and again.hard_state.commit == 1
    again.close()


async def test_a_node_started_on_a_corrupt_data_dir_exits_with_the_reason(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "n1"
    make_log(data_dir)
    tamper(data_dir, "UPDATE entries SET data = ? WHERE idx = 2", b"\xff\x00")
    command = [sys.executable, "-m", "trio_election", "node", "--id", "n1"]
    command += ["--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
    command += ["--peer-listen", "127.0.0.1:0"]
    command += ["--cluster-key-file", str(write_secret(tmp_path / "cluster.key"))]
    with trio.fail_after(30):
        result = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode != 0, stderr
    assert "log entry 2 fails its checksum" in stderr
    assert "Traceback" not in stderr  # a sentence for the operator
    assert "serving on" not in stderr  # it never started serving


def test_a_crash_in_the_middle_of_a_write_leaves_a_journal_that_start_up_rolls_back(
    tmp_path: Path,
) -> None:
    """What SIGKILL during a Ready leaves: raft.db-journal beside raft.db."""
    make_log(tmp_path)
    crash = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA journal_mode=DELETE')\n"
        "db.execute('PRAGMA cache_size=1')\n"  # so the changes reach raft.db at once
        "db.execute('BEGIN IMMEDIATE')\n"
        "db.execute('DELETE FROM entries')\n"
        "db.execute(\"UPDATE meta SET value = 'x' WHERE key = 'hard_state'\")\n"
        "db.execute(\"INSERT INTO meta VALUES ('pad', zeroblob(400000))\")\n"
        "os._exit(9)\n"
    )
    subprocess.run([sys.executable, "-c", crash, str(tmp_path / "raft.db")], check=False)
    assert (tmp_path / "raft.db-journal").stat().st_size > 0  # a hot journal
    assert member_identity(tmp_path) == ("n1", None)
    store = RaftStore(tmp_path)
    assert store.last_index() == 5 and store.hard_state.commit == 5
    store.close()
