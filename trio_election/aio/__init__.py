"""The asyncio client library: calls, watches, and leadership that cancels your work.

The same surface as :mod:`trio_election.client`, for asyncio programs
(FastAPI, aiohttp, grpc.aio), on grpclib directly. The rules that make
leadership safe are the Trio client's, from one shared sans-IO core.
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
