"""trio-election: leader election and leases for microservices, on Trio and gRPC.

The public API is the client library; the server runs as ``trio-election node``.
"""

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
    Client as Client,
    EventKind as EventKind,
    Leader as Leader,
    LeaderEvent as LeaderEvent,
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
