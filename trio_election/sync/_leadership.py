"""Holding an election from a thread: told, not cancelled.

A thread cannot be cancelled from outside, so the blocking client's
``leadership()`` renews in the background (the asyncio client's leadership,
in the client's loop thread) and *tells* the body: :attr:`Leadership.lost`
is set, the ``on_lost`` callback runs, and :meth:`Leadership.check` raises
:class:`LeadershipLost`. This is weaker than the Trio and asyncio clients: a
body that does not check keeps running after the client stopped believing.

``check`` applies the shared rule (:class:`~trio_election.client._belief.Belief`)
itself on ``time.monotonic()``, the asyncio loop's clock, so it refuses at the
client-side deadline even before the background thread has noticed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .._errors import LeadershipLost
from ..aio._leadership import Leadership as AsyncLeadership
from ..client import _core as core
from ..client._types import Leader

log = logging.getLogger("trio_election.sync")

#: Called (in the client's background thread) with the LeadershipLost.
OnLost = Callable[[LeadershipLost], None]


@dataclass(eq=False)
class Leadership:
    """A held election, as yielded by the blocking ``Client.leadership``.

    Attributes:
        election: The election's name.
        node_id: Our name as its holder.
        fencing_token: Pass it to every resource the body touches.
        leader: The grant as the server reported it.
        lost: Set when leadership is lost; wait on it, or poll it.
    """

    election: str
    node_id: str
    fencing_token: int
    leader: Leader
    lost: threading.Event = field(default_factory=threading.Event)
    _held: AsyncLeadership | None = field(default=None, repr=False)
    _error: LeadershipLost | None = field(default=None, repr=False)

    @property
    def deadline(self) -> float:
        """When the client stops trusting its leadership, on ``time.monotonic()``."""
        assert self._held is not None
        return self._held.deadline

    def holds(self) -> bool:
        """Whether the body may still act as the holder now."""
        assert self._held is not None
        return not self.lost.is_set() and self._held._belief.holds(time.monotonic())

    def check(self) -> None:
        """Raise :class:`LeadershipLost` unless leadership is still certain.

        Call it before each step of leader work (and pass :attr:`fencing_token`
        to what the step touches).
        """
        if self.holds():
            return
        raise self._error or core.lost_error(self.election, None)

    def _lose(self, error: LeadershipLost, on_lost: OnLost | None) -> None:
        if self._error is None:
            self._error = error
        self.lost.set()
        if on_lost is not None:
            try:
                on_lost(error)
            except Exception:  # a callback's bug must not stop the release
                log.exception("on_lost callback for %r failed", self.election)
