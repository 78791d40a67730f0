"""The Trio client library: calls, watches, and leadership that cancels your work."""

from ._client import Client as Client
from ._client import open_client as open_client
from ._leadership import Leadership as Leadership
from ._types import (
    Attempt as Attempt,
)
from ._types import (
    EventKind as EventKind,
)
from ._types import (
    Leader as Leader,
)
from ._types import (
    LeaderEvent as LeaderEvent,
)

__all__ = ["Attempt", "Client", "EventKind", "Leader", "LeaderEvent", "Leadership", "open_client"]
