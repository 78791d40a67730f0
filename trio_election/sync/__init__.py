"""The blocking client library, for threaded programs.

Leadership here is weaker than in :mod:`trio_election.client` and
:mod:`trio_election.aio`: the body is told that leadership ended
(``lead.lost``, ``lead.check()``, an ``on_lost`` callback), not cancelled.
"""

from ..client._types import (
    Attempt as Attempt,
    EventKind as EventKind,
    Leader as Leader,
    LeaderEvent as LeaderEvent,
)
from ._client import Client as Client, open_client as open_client
from ._leadership import Leadership as Leadership

__all__ = ["Attempt", "Client", "EventKind", "Leader", "LeaderEvent", "Leadership", "open_client"]
