"""The single node's durable state: holders and the fencing-token high-water mark.

SQLite (standard library) in WAL mode with ``synchronous=FULL``: a transaction
is on disk when ``commit`` returns. The node writes in batches (group commit):
one transaction, hence one fsync, for every change since the last batch. The
calls block, so the node runs them in a worker thread; one thread at a time
(the node's flusher is the only writer).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from ..core import Holder

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    election TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    token INTEGER NOT NULL,
    ttl_ms INTEGER NOT NULL,
    value BLOB NOT NULL,
    owner TEXT NOT NULL DEFAULT ''
);
"""


class LeaseStore:
    """The SQLite file ``leases.db`` in a data dir.

    Args:
        data_dir: Created if missing.
    """

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "leases.db"
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(leases)")}
        if "owner" not in columns:  # a data dir from before client auth
            self._db.execute("ALTER TABLE leases ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        check = self._db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise RuntimeError(f"{self.path} is damaged ({check}); refusing to start")

    def load(self) -> tuple[int, list[tuple[str, str, int, int, bytes, str]]]:
        """Return the token high-water mark and every stored holder."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'last_token'").fetchone()
        holders = self._db.execute(
            "SELECT election, node_id, token, ttl_ms, value, owner FROM leases"
        ).fetchall()
        return (row[0] if row else 0), holders

    def write(self, last_token: int, changes: Iterable[tuple[str, Holder | None]]) -> None:
        """Store a batch atomically: a holder to keep, or None to forget the election."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for election, holder in changes:
                if holder is None:
                    db.execute("DELETE FROM leases WHERE election = ?", (election,))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            election,
                            holder.node_id,
                            holder.fencing_token,
                            holder.ttl_ms,
                            holder.value,
                            holder.owner,
                        ),
                    )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('last_token', ?)", (last_token,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()
