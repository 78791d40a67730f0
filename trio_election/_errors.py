"""The errors of trio-election, one small tree under :class:`ElectionError`.

The server maps each of them to a gRPC status in exactly one place
(``server/_status.py``); the client maps statuses back to them.
"""

from __future__ import annotations


class ElectionError(Exception):
    """Base class of every error trio-election raises on purpose.

    ``grpc_status`` names the gRPC status the error travels as (None: it
    never crosses the wire as itself, and a server reports it as INTERNAL).
    It is the one table of that mapping: the server reads it one way
    (``server/_status.py``), the client the other (``client/_transport.py``).
    """

    grpc_status: str | None = None


class InvalidArgument(ElectionError):
    """Raised when a request field breaks a documented limit.

    Attributes:
        field: The name of the offending field, as in the proto.
    """

    grpc_status = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Unavailable(ElectionError):
    """Raised when a node cannot answer safely now but may later.

    Examples: an in-memory node in its start-up grace, a cluster without quorum,
    or (in the client) no endpoint answering.
    """

    grpc_status = "UNAVAILABLE"


class PermissionDenied(ElectionError):
    """Raised when the caller is known but may not do what it asked: an
    election outside its token's prefix, a membership change without the admin
    role, or a command only the Raft leader may originate."""

    grpc_status = "PERMISSION_DENIED"


class ResourceExhausted(ElectionError):
    """Raised when a request would take the node past one of its limits
    (elections held, campaigners waiting, watchers); the message names it."""

    grpc_status = "RESOURCE_EXHAUSTED"


class Unauthenticated(ElectionError):
    """Raised by the client library when the server needs credentials the
    call did not carry (no token, an unknown token)."""

    grpc_status = "UNAUTHENTICATED"


class OutOfRange(ElectionError):
    """Raised when a watch asks to resume from a revision the node no longer
    remembers (or has not reached); watch from the current state instead."""

    grpc_status = "OUT_OF_RANGE"


class Superseded(ElectionError):
    """Raised to a waiting Campaign when a newer Campaign for the same
    election and node_id took its place in the queue."""

    grpc_status = "ABORTED"


class StartupError(ElectionError):
    """Raised when a node cannot start as asked: its flags, data dir, files or
    cluster say no. The message is one sentence for the operator, saying what
    to do; the command line prints it and exits with status 1."""


class CorruptData(StartupError):
    """Raised at start-up when a data dir's state is damaged (a checksum or a
    format that does not match); the node refuses to serve from it."""


class LeadershipLost(ElectionError):
    """Raised by the client library when leadership ends for any reason other
    than the body finishing: heartbeats stopped succeeding in time, or the
    server answered that someone else holds the election."""


class DeadlineExceeded(ElectionError):
    """Raised by the client library when a call did not finish within its timeout."""

    grpc_status = "DEADLINE_EXCEEDED"


class NotElected(ElectionError):
    """Raised by ``try_leadership`` when someone else holds the election.

    Attributes:
        leader: The current holder, if the server named one.
    """

    def __init__(self, election: str, leader: object = None) -> None:
        holder = getattr(leader, "node_id", None)
        super().__init__(
            f"{election!r} is held by {holder!r}" if holder else f"{election!r} is held"
        )
        self.leader = leader


#: The errors that travel as a gRPC status of their own.
WIRE_ERRORS: tuple[type[ElectionError], ...] = (
    InvalidArgument,
    Unavailable,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    OutOfRange,
    Superseded,
    DeadlineExceeded,
)
