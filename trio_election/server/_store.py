"""The single node's durable state: holders and the fencing-token high-water mark.

SQLite (standard library) with a rollback journal and ``synchronous=FULL``: a
transaction is in ``leases.db`` itself, on disk, when ``commit`` returns. (In
WAL mode a committed batch can live only in ``leases.db-wal`` until a
checkpoint, and losing that file, or its tail, brought back old holders and
old fencing tokens without a word. With a rollback journal, losing the
journal can only touch a batch that was never acknowledged.) The node writes
in batches (group commit): one transaction for every change since the last
batch. The calls block, so the node runs them in a worker thread; one thread
at a time (the node's flusher is the only writer).

Every row carries a CRC-32 of its fields, and the token high-water mark one of
its value: a changed byte is refused at start (``CorruptData``), as is a file
SQLite cannot read, rather than served as a wrong holder or a reused token.
A write that fails (a full disk, an I/O error) raises ``StorageFailure`` and
leaves the file as it was before the batch.
"""

from __future__ import annotations

import sqlite3
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from .._errors import CorruptData, StartupError
from ..core import Holder

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    election TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    token INTEGER NOT NULL,
    ttl_ms INTEGER NOT NULL,
    value BLOB NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    crc INTEGER
);
"""
_PUT = "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?, ?)"
Row = tuple[str, str, int, int, bytes, str]


class StorageFailure(Exception):
    """A batch could not be written; the file holds what it held before it."""


def _crc(*fields: object) -> int:
    """CRC-32 of a row's fields (text, integers and bytes), each one delimited."""
    crc = 0
    for field in fields:
        data = field if isinstance(field, bytes) else str(field).encode("utf-8", "surrogatepass")
        crc = zlib.crc32(data, zlib.crc32(f"{len(data)}:".encode(), crc))
    return crc


class LeaseStore:
    """The SQLite file ``leases.db`` in a data dir.

    Args:
        data_dir: Created if missing.
        on_write: Told how long each batch written took, in seconds (metrics).

    Raises:
        CorruptData: the file is not a lease store SQLite can read, or a row or
            the token mark fails its checksum.
        StartupError: the file cannot be opened or prepared (a full disk, no
            permission).
    """

    def __init__(self, data_dir: Path, on_write: Callable[[float], None] | None = None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "leases.db"
        self._on_write = on_write
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._open()
        except sqlite3.DatabaseError as exc:
            raise self._refusal(exc) from None

    def _open(self) -> None:
        db = self._db
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise CorruptData(f"{self.path} is damaged (SQLite: {check}); {_RESTORE}")
        # A data dir written in WAL mode is checkpointed into the file here.
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(leases)")}
        if "owner" not in columns:  # a data dir from before client auth
            db.execute("ALTER TABLE leases ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        if "crc" not in columns:  # from before checksums: its rows have none
            db.execute("ALTER TABLE leases ADD COLUMN crc INTEGER")

    def _refusal(self, exc: sqlite3.DatabaseError) -> StartupError:
        if isinstance(exc, sqlite3.OperationalError):
            return StartupError(
                f"cannot open {self.path} ({exc}): free space or fix its permissions"
            )
        return CorruptData(f"{self.path} is not a readable lease store ({exc}); {_RESTORE}")

    def load(self) -> tuple[int, list[Row]]:
        """Return the token high-water mark and every stored holder, checked.

        Raises:
            CorruptData: a row or the mark fails its checksum, or a holder's
                token is above the mark.
        """
        try:
            return self._load()
        except sqlite3.DatabaseError as exc:
            raise self._refusal(exc) from None

    def _load(self) -> tuple[int, list[Row]]:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        last_token = meta.get("last_token", 0)
        if "last_token_crc" in meta and meta["last_token_crc"] != _crc(last_token):
            raise CorruptData(
                f"{self.path}: the token high-water mark fails its checksum; {_RESTORE}"
            )
        holders = []
        for *row, crc in self._db.execute(
            "SELECT election, node_id, token, ttl_ms, value, owner, crc FROM leases"
        ):
            election, token = row[0], row[2]
            if crc is not None and crc != _crc(*row):
                raise CorruptData(
                    f"{self.path}: the row of election {election!r} fails its checksum; {_RESTORE}"
                )
            if token > last_token:
                raise CorruptData(
                    f"{self.path}: election {election!r} holds token {token}, above the "
                    f"high-water mark {last_token}; {_RESTORE}"
                )
            holders.append(tuple(row))
        return last_token, holders  # type: ignore[return-value]

    def write(self, last_token: int, changes: Iterable[tuple[str, Holder | None]]) -> None:
        """Store a batch atomically: a holder to keep, or None to forget the election.

        Raises:
            StorageFailure: nothing of the batch was written.
        """
        db = self._db
        started = time.perf_counter()
        try:
            db.execute("BEGIN IMMEDIATE")
            for election, holder in changes:
                if holder is None:
                    db.execute("DELETE FROM leases WHERE election = ?", (election,))
                else:
                    row = (
                        election,
                        holder.node_id,
                        holder.fencing_token,
                        holder.ttl_ms,
                        holder.value,
                        holder.owner,
                    )
                    db.execute(_PUT, (*row, _crc(*row)))
            db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("last_token", last_token), ("last_token_crc", _crc(last_token))],
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            # SQLite may have rolled back by itself (a full disk does).
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise StorageFailure(f"cannot write {self.path}: {exc}") from exc
        if self._on_write is not None:
            self._on_write(time.perf_counter() - started)

    def close(self) -> None:
        self._db.close()


_RESTORE = (
    "refusing to start: restore the data dir from a backup (moving it away starts the node "
    "empty, with fencing tokens from 1 again: do that only with every holder stopped)"
)
