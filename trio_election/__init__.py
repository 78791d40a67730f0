"""trio-election: leader election and leases for microservices, on Trio and gRPC.

The public API is the client library; the server runs as ``trio-election node``.
The Trio client's names are imported when first used (see ``client/__init__.py``),
so ``trio_election.aio`` and ``trio_election.sync`` need neither Trio nor trio-asyncio.
"""

import typing

from ._errors import (
    DeadlineExceeded as DeadlineExceeded,
    ElectionError as ElectionError,
    InvalidArgument as InvalidArgument,
    LeadershipLost as LeadershipLost,
    NotElected as NotElected,
    OutOfRange as OutOfRange,
    PermissionDenied as PermissionDenied,
    ResourceExhausted as ResourceExhausted,
    Superseded as Superseded,
    Unauthenticated as Unauthenticated,
    Unavailable as Unavailable,
)
from .client import (
    Attempt as Attempt,
    EventKind as EventKind,
    Leader as Leader,
    LeaderEvent as LeaderEvent,
)

if typing.TYPE_CHECKING:
    from .client import (
        Client as Client,
        Leadership as Leadership,
        open_client as open_client,
    )

__all__ = [
    "Attempt",
    "Client",
    "DeadlineExceeded",
    "ElectionError",
    "EventKind",
    "InvalidArgument",
    "Leader",
    "LeaderEvent",
    "Leadership",
    "LeadershipLost",
    "NotElected",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Superseded",
    "Unauthenticated",
    "Unavailable",
    "open_client",
]


def __getattr__(name: str) -> typing.Any:
    if name in ("Client", "Leadership", "open_client"):
        from . import client

        value = getattr(client, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
