"""Domain errors to gRPC statuses: each error class names its status."""

from __future__ import annotations

from typing import Any

from .._bridge import GRPCError, Status, StreamTerminatedError, deadline_passed
from .._errors import ElectionError


def to_grpc_error(exc: ElectionError) -> GRPCError:
    """The GRPCError a handler raises for ``exc``; its message is ``str(exc)``."""
    status = type(exc).grpc_status
    return GRPCError(Status.INTERNAL if status is None else Status[status], str(exc))


def status_of(exc: BaseException, stream: Any) -> str:
    """The name of the gRPC status a call ends with when its handler raises
    ``exc`` (``to_grpc_error`` has mapped domain errors already)."""
    if isinstance(exc, GRPCError):
        return exc.status.name
    if isinstance(exc, StreamTerminatedError):
        return "CANCELLED"  # the client reset the call
    if isinstance(exc, Exception):
        return "UNKNOWN"  # what grpclib answers for an unexpected error
    # Cancelled: by grpclib at the call's deadline, or as the client went away.
    return "DEADLINE_EXCEEDED" if deadline_passed(stream) else "CANCELLED"
