"""The client's rule for "do I still hold it", without I/O (docs/design.md, promise 4).

The server expires a lease no earlier than ``ttl`` after it *received* the
last successful heartbeat (or grant). The client cannot know when that was,
but it knows when it *sent* it, which was earlier; so it stops believing at

    send time of the last successful heartbeat + ttl - margin

on its own monotonic clock, never comparing clocks across machines. A
success only ever moves that deadline later; a refusal ends the belief.

The client library keeps its body's cancel scope at :attr:`Belief.deadline`,
and the election simulation's clients use this same class, so the rule the
simulation checks is the one that ships.
"""

from __future__ import annotations

import math


def default_margin(ttl: float) -> float:
    """A tenth of the TTL, at least 20 ms: clock-rate drift and time to stop."""
    return max(0.02, ttl / 10)


class Belief:
    """One client's belief that it holds one election.

    Args:
        ttl: The lease's TTL in seconds.
        margin: How long before the server's earliest expiry the client stops.
    """

    __slots__ = ("deadline", "margin", "ttl")

    def __init__(self, ttl: float, margin: float | None = None) -> None:
        self.ttl = ttl
        self.margin = default_margin(ttl) if margin is None else margin
        #: When the client stops believing (-inf: it does not).
        self.deadline = -math.inf

    def confirmed(self, send_time: float) -> float:
        """A grant or heartbeat sent at ``send_time`` succeeded; the new deadline."""
        self.deadline = max(self.deadline, send_time + self.ttl - self.margin)
        return self.deadline

    def holds(self, now: float) -> bool:
        """Whether the client may still act as the holder at ``now``."""
        return now < self.deadline

    def lose(self) -> None:
        """A refusal, or a release: believe nothing any more."""
        self.deadline = -math.inf
