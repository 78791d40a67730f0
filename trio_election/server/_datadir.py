"""A data dir belongs to one process, and is only ever used as what it is.

Two processes on one data dir would both grant the same election with the
same fencing token (each continues from the same high-water mark), and a
cluster member's data dir started as a single node would restart its tokens
below the cluster's: promises 1 and 2 broken by a typo. So, before anything
in it is read:

* the process takes an exclusive ``flock`` on ``LOCK`` in the data dir, held
  until it exits (the kernel drops it when the process dies, however it dies),
  and writes its pid there for the error message of the next one;
* the data dir says what it is: ``raft.db`` (a cluster member, whose meta
  names its id and its cluster's id) or ``leases.db`` (a single node), and a
  node refuses to open it as the other kind, saying which flags to pass.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

from .._errors import StartupError

LOCK_FILE = "LOCK"
RAFT_FILE = "raft.db"
SINGLE_FILE = "leases.db"


class DataDirError(StartupError):
    """Raised when a data dir is in use by another process, or holds the state
    of another kind of node than the flags ask for; says what to do."""


class DataDirLock:
    """The exclusive lock of one data dir, for this process's life.

    Raises:
        DataDirError: another process holds it (the message names its pid).
    """

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / LOCK_FILE
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise DataDirError(
                f"{data_dir} is in use by another trio-election node (pid {holder}); "
                "stop it, or give this one its own --data-dir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(self._fd)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


def member_identity(data_dir: Path) -> tuple[str | None, str | None] | None:
    """``(node_id, cluster_id)`` recorded in a member's data dir, or None if it
    holds no Raft log.

    Opened for writing, though nothing is written: after a crash in the middle
    of a transaction, SQLite must roll back the journal it left (as any opener
    would) before anyone may read, and a read-only connection cannot.
    """
    path = data_dir / RAFT_FILE
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
        try:
            rows = dict(
                db.execute(
                    "SELECT key, value FROM meta WHERE key IN (?, ?)", ("node_id", "cluster_id")
                ).fetchall()
            )
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise DataDirError(f"{path} is not a Raft log this version can read ({exc})") from None
    return rows.get("node_id"), rows.get("cluster_id")


def check_kind(data_dir: Path, node_id: str | None) -> None:
    """Refuse to open ``data_dir`` as another kind of node than it holds.

    ``node_id`` is the ``--id`` given (None: a single node).

    Raises:
        DataDirError: with the flags that would open it as what it is.
    """
    member = member_identity(data_dir)
    if member is not None and node_id is None:
        recorded, cluster = member
        raise DataDirError(
            f"{data_dir} holds the Raft log of cluster member {recorded or '?'}"
            f"{f' (cluster {cluster})' if cluster else ''}: start it with --id {recorded or 'ID'} "
            "and its peer credentials, or give a single node another --data-dir"
        )
    if member is not None and node_id is not None and member[0] not in (None, node_id):
        raise DataDirError(f"{data_dir} belongs to node {member[0]!r}, not {node_id!r}")
    if node_id is not None and member is None and (data_dir / SINGLE_FILE).exists():
        raise DataDirError(
            f"{data_dir} holds a single node's elections: start it without --id, or give "
            f"cluster member {node_id} another --data-dir"
        )
