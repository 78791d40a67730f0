"""The Raft log: a durable prefix (in :class:`Storage`) plus an unstable tail.

Entries and snapshots the core accepts go to :class:`Unstable` first; a
``Ready`` hands them to the application, which persists them, and
``advance`` moves the boundary (``stable_to``/``stable_snap_to``). Reads
consult the unstable part first, then storage.

Invariant: ``applied <= committed <= last_index()``. Committed entries are
only handed out for applying once they are durable (``next_committed_entries``
stops at the stable boundary), so a crash can never make the application
have applied something the log no longer holds.
"""

from __future__ import annotations

from ._errors import Compacted, RaftError, StorageError, Unavailable
from ._storage import Storage
from ._types import Entry, Snapshot


class Unstable:
    """Entries/snapshot accepted by the core but not yet persisted.

    ``entries[i]`` has index ``offset + i``. When ``snapshot`` is set it
    precedes ``entries`` (``offset == snapshot index + 1``).
    """

    __slots__ = ("snapshot", "entries", "offset")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, i: int) -> int | None:
        if i < self.offset:
            if self.snapshot is not None and self.snapshot.metadata.index == i:
                return self.snapshot.metadata.term
            return None
        last = self.maybe_last_index()
        if last is None or i > last:
            return None
        return self.entries[i - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        # Only drop entries that are still the ones that were persisted: if
        # the entry at ``index`` has since been overwritten (other term), the
        # newer one still needs persisting.
        t = self.maybe_term(index)
        if t is None or index < self.offset or t != term:
            return
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == index:
            self.snapshot = None

    def restore(self, snap: Snapshot) -> None:
        self.offset = snap.metadata.index + 1
        self.entries = []
        self.snapshot = snap

    def truncate_and_append(self, ents: list[Entry]) -> None:
        after = ents[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif after <= self.offset:
            # Replaces all unstable entries (and possibly some stable ones:
            # the storage truncates those when the new entries are persisted).
            self.offset = after
            self.entries = list(ents)
        else:
            self.entries = self.entries[: after - self.offset] + list(ents)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    """The log as the core sees it. Indexes are 1-based; 0 means "nothing"."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        # Everything up to the snapshot is committed and applied by definition.
        self.committed = first - 1
        self.applied = first - 1

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed}, applied={self.applied}, "
            f"unstable.offset={self.unstable.offset}, len(unstable)={len(self.unstable.entries)})"
        )

    # -- bounds -----------------------------------------------------------

    def first_index(self) -> int:
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        i = self.unstable.maybe_last_index()
        return i if i is not None else self.storage.last_index()

    def term(self, i: int) -> int:
        """Term at ``i``; raises ``Compacted``/``Unavailable`` if unknown."""
        t = self.unstable.maybe_term(i)
        if t is not None:
            return t
        if i < self.first_index() - 1:
            raise Compacted(f"index {i} is compacted")
        if i > self.last_index():
            raise Unavailable(f"index {i} is beyond last index {self.last_index()}")
        return self.storage.term(i)

    def term_or_zero(self, i: int) -> int:
        try:
            return self.term(i)
        except StorageError:
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, i: int, term: int) -> bool:
        try:
            return self.term(i) == term
        except StorageError:
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Raft §5.4.1: is a candidate's log at least as up-to-date as ours?"""
        last_term = self.last_term()
        return term > last_term or (term == last_term and last_index >= self.last_index())

    # -- reads ------------------------------------------------------------

    def slice(self, lo: int, hi: int, max_entries: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``, at most ``max_entries`` of them."""
        if lo > hi:
            raise RaftError(f"invalid slice {lo} > {hi}")
        if lo < self.first_index():
            raise Compacted(f"slice from {lo} is compacted (first index {self.first_index()})")
        if hi > self.last_index() + 1:
            raise Unavailable(f"slice [{lo},{hi}) out of bound last index {self.last_index()}")
        if lo == hi:
            return []
        if max_entries is not None:
            hi = min(hi, lo + max(1, max_entries))
        ents: list[Entry] = []
        off = self.unstable.offset
        if lo < off:
            ents = self.storage.entries(lo, min(hi, off))
            if len(ents) < min(hi, off) - lo:
                return ents  # storage limited the size; don't skip a gap
        if hi > off:
            ents = ents + self.unstable.slice(max(lo, off), hi)
        return ents

    def entries(self, i: int, max_entries: int | None = None) -> list[Entry]:
        """Entries from ``i`` to the end of the log."""
        if i > self.last_index():
            return []
        return self.slice(i, self.last_index() + 1, max_entries)

    def all_entries(self) -> list[Entry]:
        """Every entry still held (for tests and debugging)."""
        return self.entries(self.first_index())

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def has_pending_snapshot(self) -> bool:
        return self.unstable.snapshot is not None

    def next_committed_entries(self) -> list[Entry]:
        """Committed, unapplied entries that are already durable."""
        if self.unstable.snapshot is not None:
            return []  # the snapshot must be applied first
        lo = max(self.applied + 1, self.first_index())
        hi = min(self.committed, self.unstable.offset - 1) + 1
        if lo >= hi:
            return []
        return self.slice(lo, hi)

    def has_next_committed_entries(self) -> bool:
        if self.unstable.snapshot is not None:
            return False
        lo = max(self.applied + 1, self.first_index())
        return min(self.committed, self.unstable.offset - 1) + 1 > lo

    # -- writes -----------------------------------------------------------

    def find_conflict(self, ents: list[Entry]) -> int:
        """Index of the first entry of ``ents`` not already in our log, or 0."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest ``(i, t)`` with ``i <= index`` and our term ``t <= term``.

        Used for the fast back-off over conflicting tails: no entry in our
        log with a term above ``term`` can match the other side's log below
        the point where that side has ``term``. ``t`` is 0 if unknown.
        """
        while index > 0:
            try:
                ours = self.term(index)
            except StorageError:
                return index, 0
            if ours <= term:
                return index, ours
            index -= 1
        return 0, 0

    def maybe_append(
        self, index: int, log_term: int, committed: int, ents: list[Entry]
    ) -> int | None:
        """Handle an AppendEntries body; returns the last new index or None.

        None means the consistency check failed: we have no entry at
        ``index`` with ``log_term``.
        """
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        ci = self.find_conflict(ents)
        if ci:
            if ci <= self.committed:
                raise RaftError(f"entry {ci} conflicts with committed entry {self.committed}")
            self.append(ents[ci - (index + 1) :])
        # Only commit up to what the leader has shown us matches: entries
        # beyond last_new in our log may still be a stale tail.
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, ents: list[Entry]) -> int:
        if not ents:
            return self.last_index()
        if ents[0].index - 1 < self.committed:
            raise RaftError(f"append at {ents[0].index} would overwrite committed {self.committed}")
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    def commit_to(self, to: int) -> None:
        # Never decrease the commit index (stale heartbeats carry older ones).
        if to > self.committed:
            if to > self.last_index():
                raise RaftError(f"commit {to} beyond last index {self.last_index()}")
            self.committed = to

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Commit ``max_index`` if it is from ``term`` (Raft §5.4.2, figure 8)."""
        if max_index > self.committed and self.term_or_zero(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def applied_to(self, i: int) -> None:
        if i == 0:
            return
        if i > self.committed or i < self.applied:
            raise RaftError(f"applied({i}) out of range [{self.applied}, {self.committed}]")
        self.applied = i

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    def restore(self, snap: Snapshot) -> None:
        self.committed = snap.metadata.index
        self.unstable.restore(snap)
