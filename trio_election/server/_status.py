"""Domain errors to gRPC statuses: the one place where they are mapped."""

from __future__ import annotations

from .._bridge import GRPCError, Status
from .._errors import (
    ElectionError,
    InvalidArgument,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Superseded,
    Unauthenticated,
    Unavailable,
)

_STATUS: list[tuple[type[ElectionError], Status]] = [
    (InvalidArgument, Status.INVALID_ARGUMENT),
    (PermissionDenied, Status.PERMISSION_DENIED),
    (ResourceExhausted, Status.RESOURCE_EXHAUSTED),
    (Unauthenticated, Status.UNAUTHENTICATED),
    (Unavailable, Status.UNAVAILABLE),
    (Superseded, Status.ABORTED),
    (OutOfRange, Status.OUT_OF_RANGE),
]


def to_grpc_error(exc: ElectionError) -> GRPCError:
    """The GRPCError a handler raises for ``exc``; its message is ``str(exc)``."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return GRPCError(status, str(exc))
    return GRPCError(Status.INTERNAL, str(exc))
