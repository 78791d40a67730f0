"""The storage interface the Raft core reads its durable log from.

The core never *writes* storage: the application persists what a ``Ready``
hands it (snapshot, then entries, then hard state, fsynced) and only then
calls ``advance``. The core reads back through :class:`Storage`.

Contract for implementers (e.g. a SQLite-backed storage):

* The log is the contiguous range ``first_index() .. last_index()``. The entry
  just before it (``first_index() - 1``) is the last one covered by the
  latest snapshot; its term must still be answerable by :meth:`term`.
* Indexes below that raise :class:`Compacted`; above ``last_index()`` raise
  :class:`Unavailable`.
* Appending entries that start at or below ``last_index()`` replaces the
  existing suffix from that index on (a leader overwrote it).
* ``initial_state`` returns the last persisted :class:`HardState` and the
  :class:`ConfState` stored with the latest snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from ._errors import Compacted, SnapshotOutOfDate, Unavailable
from ._types import ConfState, Entry, HardState, Snapshot, SnapshotMetadata


class Storage(Protocol):
    """Read access to the durable Raft log, as required by the core."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """Return the persisted hard state and the latest snapshot's membership."""
        ...

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Return entries ``[lo, hi)``.

        Args:
            lo: first index wanted; ``Compacted`` if below ``first_index()``.
            hi: one past the last index wanted; ``Unavailable`` if above
                ``last_index() + 1``.
            max_size: if given, stop once the total data size would exceed it,
                but always return at least one entry.
        """
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index`` (``first_index() - 1`` allowed)."""
        ...

    def first_index(self) -> int:
        """Index of the first entry still available (snapshot index + 1)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry (the snapshot index if the log is empty)."""
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (may raise ``SnapshotTemporarilyUnavailable``)."""
        ...


def limit_size(ents: Sequence[Entry], max_size: int | None) -> list[Entry]:
    """Trim ``ents`` to ``max_size`` total data bytes, keeping at least one."""
    if max_size is None or not ents:
        return list(ents)
    total = len(ents[0].data)
    n = 1
    while n < len(ents):
        total += len(ents[n].data)
        if total > max_size:
            break
        n += 1
    return list(ents[:n])


class MemoryStorage:
    """An in-memory :class:`Storage`, also usable as the "disk" of simulations.

    ``_ents[0]`` is a dummy entry holding the snapshot's index and term, so
    that ``term(first_index() - 1)`` works (the log-matching check of the
    first append after a snapshot needs it).
    """

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot = Snapshot()
        self._ents: list[Entry] = [Entry(term=0, index=0)]

    # -- Storage protocol -------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        """See :meth:`Storage.initial_state`."""
        return self._hard_state, self._snapshot.metadata.conf_state

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """See :meth:`Storage.entries`."""
        offset = self._ents[0].index
        if lo <= offset:
            raise Compacted(f"index {lo} is compacted (first index {offset + 1})")
        if hi > self.last_index() + 1:
            raise Unavailable(f"entries up to {hi - 1} requested, last index {self.last_index()}")
        if lo >= hi:
            return []
        return limit_size(self._ents[lo - offset : hi - offset], max_size)

    def term(self, index: int) -> int:
        """See :meth:`Storage.term`."""
        offset = self._ents[0].index
        if index < offset:
            raise Compacted(f"term of {index} is compacted (snapshot at {offset})")
        if index - offset >= len(self._ents):
            raise Unavailable(f"index {index} beyond last index {self.last_index()}")
        return self._ents[index - offset].term

    def first_index(self) -> int:
        """See :meth:`Storage.first_index`."""
        return self._ents[0].index + 1

    def last_index(self) -> int:
        """See :meth:`Storage.last_index`."""
        return self._ents[0].index + len(self._ents) - 1

    def snapshot(self) -> Snapshot:
        """See :meth:`Storage.snapshot`."""
        return self._snapshot

    # -- writes (done by the application while handling a Ready) ----------

    @property
    def hard_state(self) -> HardState:
        """The last hard state saved with :meth:`set_hard_state`."""
        return self._hard_state

    def set_hard_state(self, hs: HardState) -> None:
        """Persist the hard state from a ``Ready``."""
        self._hard_state = hs

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log by ``snap`` (from a ``Ready``).

        Raises:
            SnapshotOutOfDate: ``snap`` is not newer than the current snapshot.
        """
        if snap.metadata.index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDate(
                f"snapshot at {snap.metadata.index} is not newer than "
                f"{self._snapshot.metadata.index}"
            )
        self._snapshot = snap
        self._ents = [Entry(term=snap.metadata.term, index=snap.metadata.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot of the applied state at ``index`` (does not compact).

        Args:
            index: an index ``<= last_index()`` whose effects ``data`` contains.
            conf_state: the membership as of ``index``.
            data: the state machine image.

        Raises:
            SnapshotOutOfDate: ``index`` is not newer than the current snapshot.
        """
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDate(f"snapshot at {index} is not newer")
        if index > self.last_index():
            raise Unavailable(f"snapshot index {index} beyond last index {self.last_index()}")
        offset = self._ents[0].index
        term = self._ents[index - offset].term
        md = SnapshotMetadata(index=index, term=term, conf_state=conf_state)
        self._snapshot = Snapshot(metadata=md, data=data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Discard entries up to and including ``index`` (keep its term).

        The application must only compact up to an index covered by a
        snapshot, or lagging followers can no longer be caught up.
        """
        offset = self._ents[0].index
        if index <= offset:
            raise Compacted(f"index {index} already compacted (offset {offset})")
        if index > self.last_index():
            raise Unavailable(f"compact {index} beyond last index {self.last_index()}")
        i = index - offset
        self._ents = [Entry(term=self._ents[i].term, index=index), *self._ents[i + 1 :]]

    def append(self, entries: Iterable[Entry]) -> None:
        """Append entries from a ``Ready``, truncating any conflicting suffix."""
        ents = list(entries)
        if not ents:
            return
        first = self.first_index()
        last = ents[-1].index
        if last < first:
            return  # entirely covered by the snapshot already
        if first > ents[0].index:
            ents = ents[first - ents[0].index :]
        offset = ents[0].index - self._ents[0].index
        if offset > len(self._ents):
            raise Unavailable(
                f"missing log entry [last: {self.last_index()}, append at: {ents[0].index}]"
            )
        self._ents = self._ents[:offset] + ents
