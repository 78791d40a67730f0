"""The Trio client library: calls, watches, and leadership that cancels your work."""

from ._client import Client as Client, open_client as open_client
from ._leadership import Leadership as Leadership
from ._types import (
    Attempt as Attempt,
    EventKind as EventKind,
    Leader as Leader,
    LeaderEvent as LeaderEvent,
)

__all__ = ["Attempt", "Client", "EventKind", "Leader", "LeaderEvent", "Leadership", "open_client"]
