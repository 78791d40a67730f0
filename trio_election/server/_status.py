"""Domain errors to gRPC statuses: each error class names its status."""

from __future__ import annotations

from .._bridge import GRPCError, Status
from .._errors import ElectionError


def to_grpc_error(exc: ElectionError) -> GRPCError:
    """The GRPCError a handler raises for ``exc``; its message is ``str(exc)``."""
    status = type(exc).grpc_status
    return GRPCError(Status.INTERNAL if status is None else Status[status], str(exc))
