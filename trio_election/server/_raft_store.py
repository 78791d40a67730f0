"""Durable Raft storage: SQLite with a rollback journal, read through an in-memory cache.

The Raft core reads the log through the :class:`~trio_election.raft.Storage`
protocol; :class:`RaftStore` serves those reads from a ``MemoryStorage`` kept
in step with the database, and writes each ``Ready`` (snapshot, entries, hard
state) in ONE transaction with ``synchronous=FULL``: one fsync per Ready,
whatever it holds. That is the ordering duty of the Ready contract: the node
calls :meth:`write` (in a worker thread), then :meth:`remember` (on the Trio
thread, so the core never reads a half-updated cache), and only then sends the
Ready's messages.

Journal. Each commit lands in ``raft.db`` itself (``journal_mode=DELETE``,
as ``leases.db``), not in a ``-wal`` file beside it: a WAL that is lost or
cut short (a careless copy or restore of the data dir, a disk that drops the
file) silently takes the last acknowledged entries and the hard state with
it, and a member that forgets its vote can vote twice in one term, which
Raft cannot survive. A rollback journal costs one more fsync per Ready; a
lost journal can only leave a torn transaction, which the checksums find.

Corruption: every entry carries a CRC32 of its fields, and so do the snapshot
and the hard state, checked at start-up together with SQLite's own
``quick_check`` and the log's contiguity. A node refuses to start on damage
it cannot repair rather than vote with a damaged log.

A write that fails (a full disk, an I/O error) raises :class:`StorageFailure`
with a sentence: the node stops (``cli`` prints it), since a member that
cannot persist its votes and entries must not send a message that counts on
them; started again when the disk has room, it goes on from what it stored.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .._errors import CorruptData, StartupError
from ..raft import ConfState, Entry, EntryType, HardState, MemoryStorage, Snapshot, SnapshotMetadata

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, type INTEGER NOT NULL,
    data BLOB NOT NULL, crc INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 0), idx INTEGER NOT NULL, term INTEGER NOT NULL,
    voters TEXT NOT NULL, data BLOB NOT NULL, crc INTEGER NOT NULL
);
"""


class CorruptLog(CorruptData):
    """Raised at start-up when the data dir's Raft state is damaged."""


class StorageFailure(StartupError):
    """A write to ``raft.db`` failed: the member must stop (see the module docstring)."""


def _crc(index: int, term: int, kind: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(f"{index}:{term}:{kind}".encode()))


def _hard_crc(term: int, vote: object, commit: int) -> int:
    return zlib.crc32(json.dumps([term, vote, commit]).encode())


class RaftStore(MemoryStorage):
    """The Raft log, hard state and snapshot of one node in ``data_dir/raft.db``.

    Args:
        data_dir: Created if missing.
        on_write: Told how long each fsynced :meth:`write` took, in seconds (metrics).
    """

    def __init__(self, data_dir: Path, on_write: Callable[[float], None] | None = None) -> None:
        super().__init__()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "raft.db"
        self._on_write = on_write
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=DELETE")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._load()

    # -- start-up -----------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        """Store one identity fact (node id, cluster id) durably, at once."""
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _load(self) -> None:
        check = self._db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise CorruptLog(f"{self.path}: SQLite reports damage ({check}); refusing to start")
        row = self._db.execute("SELECT idx, term, voters, data, crc FROM snapshot").fetchone()
        if row is not None:
            index, term, voters, data, crc = row
            if _crc(index, term, -1, data) != crc:
                raise CorruptLog(f"{self.path}: the snapshot at {index} fails its checksum")
            conf = ConfState(tuple(json.loads(voters)))
            snap = Snapshot(SnapshotMetadata(index, term, conf), data)
            MemoryStorage.apply_snapshot(self, snap)
        entries = []
        expected = self.last_index() + 1
        for index, term, kind, data, crc in self._db.execute(
            "SELECT idx, term, type, data, crc FROM entries WHERE idx > ? ORDER BY idx",
            (self.last_index(),),
        ):
            if _crc(index, term, kind, data) != crc:
                raise CorruptLog(f"{self.path}: log entry {index} fails its checksum")
            if index != expected:
                raise CorruptLog(f"{self.path}: the log jumps from {expected - 1} to {index}")
            entries.append(Entry(term, index, EntryType(kind), data))
            expected += 1
        MemoryStorage.append(self, entries)
        hard = self.meta("hard_state")
        if hard is not None:
            try:
                fields = json.loads(hard)
            except ValueError:
                fields = []
            if len(fields) == 3:  # written before hard states had checksums
                fields.append(_hard_crc(*fields))
            if len(fields) != 4 or _hard_crc(*fields[:3]) != fields[3]:
                raise CorruptLog(f"{self.path}: the hard state (term, vote) fails its checksum")
            term, vote, commit, _ = fields
            if commit > self.last_index():
                raise CorruptLog(
                    f"{self.path}: commit index {commit} is past the last entry "
                    f"{self.last_index()}; committed entries were lost"
                )
            self.set_hard_state(HardState(term, vote, commit))

    # -- writes -------------------------------------------------------------

    def write(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool = True,
    ) -> None:
        """Persist one Ready in one transaction (blocking: run it in a thread).

        ``sync=False`` (``Ready.must_sync`` false: only the commit index moved)
        skips the fsync.
        """
        db = self._db
        if not sync:
            db.execute("PRAGMA synchronous=OFF")
        started = time.perf_counter()
        try:
            with self._failing():
                self._write(hard_state, entries, snapshot)
        finally:
            if not sync:
                db.execute("PRAGMA synchronous=FULL")
        if sync and self._on_write is not None:
            self._on_write(time.perf_counter() - started)

    def _write(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if snapshot is not None and not snapshot.is_empty:
                # A received snapshot replaces the whole log (as in the
                # cache): a suffix past it conflicts with it, or the core
                # would not have restored it.
                self._write_snapshot(snapshot)
                db.execute("DELETE FROM entries")
            if entries:
                # A leader may have overwritten our suffix: drop it first.
                db.execute("DELETE FROM entries WHERE idx >= ?", (entries[0].index,))
                db.executemany(
                    "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
                    [
                        (
                            e.index,
                            e.term,
                            int(e.type),
                            e.data,
                            _crc(e.index, e.term, int(e.type), e.data),
                        )
                        for e in entries
                    ],
                )
            if hard_state is not None:
                fields = (hard_state.term, hard_state.vote, hard_state.commit)
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('hard_state', ?)",
                    (json.dumps([*fields, _hard_crc(*fields)]),),
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a failed COMMIT may have ended it already
                db.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StorageFailure(
                f"cannot write {self.path} ({exc}); stopping, since a cluster member must "
                "not vote or acknowledge what it could not store: free space or fix the "
                "disk, then start it again"
            ) from exc

    def remember(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> None:
        """Bring the read cache up to what :meth:`write` stored (Trio thread)."""
        if snapshot is not None and not snapshot.is_empty:
            MemoryStorage.apply_snapshot(self, snapshot)
        if entries:
            MemoryStorage.append(self, entries)
        if hard_state is not None:
            self.set_hard_state(hard_state)

    def write_snapshot(self, snapshot: Snapshot, compact_to: int) -> None:
        """Store a snapshot taken by this node and drop the log up to
        ``compact_to`` (blocking: run it in a thread, then ``compact`` the
        cache). Entries between ``compact_to`` and the snapshot stay, so a
        slightly lagging follower catches up from the log."""
        with self._failing():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._write_snapshot(snapshot)
                self._db.execute("DELETE FROM entries WHERE idx <= ?", (compact_to,))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _write_snapshot(self, snap: Snapshot) -> None:
        md = snap.metadata
        self._db.execute(
            "INSERT OR REPLACE INTO snapshot VALUES (0, ?, ?, ?, ?, ?)",
            (
                md.index,
                md.term,
                json.dumps(list(md.conf_state.voters)),
                snap.data,
                _crc(md.index, md.term, -1, snap.data),
            ),
        )

    def close(self) -> None:
        self._db.close()
