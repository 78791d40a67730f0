"""What the Trio and asyncio clients share: everything about a call but the I/O.

Both clients are thin shells around this module (and :mod:`._belief`, the
"do I still hold it" rule): they open channels and sleep in their own event
loop, and ask this module what to send, what a reply or a failure means, which
endpoint to try next, how long to wait before trying again and when to renew.
Nothing here imports trio, asyncio or grpclib's transport, or reads a clock:
time comes in as ``now`` or ``sent`` arguments on the caller's monotonic clock.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from .._errors import (
    WIRE_ERRORS,
    DeadlineExceeded,
    ElectionError,
    InvalidArgument,
    LeadershipLost,
    OutOfRange,
    Unavailable,
)
from .._generated.v1 import election_pb2 as pb
from ._belief import Belief
from ._types import Attempt, EventKind, Leader, LeaderEvent, leader_or_none

#: What a broken connection looks like from grpclib.
CONNECTION_ERRORS = (OSError, StreamTerminatedError, EOFError)

# -- endpoints and failover ----------------------------------------------------


class BadEndpoint(InvalidArgument, ValueError):
    """Raised for an endpoint that is not ``HOST:PORT``."""


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``, with an optional ``https://`` or
    ``http://`` in front) to ``(host, port)``.

    Raises:
        InvalidArgument: not of that form (an InvalidArgument is a ValueError too).
    """
    address = endpoint.removeprefix("https://").removeprefix("http://").rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) <= 65535:
        raise BadEndpoint("endpoints", f"{endpoint!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def split_endpoints(endpoints: Sequence[str] | str) -> list[str]:
    """``open_client``'s endpoints: a list, or one string with commas between."""
    if isinstance(endpoints, str):
        return [e for e in endpoints.split(",") if e]
    return list(endpoints)


class Endpoints:
    """The endpoints of a client, one current at a time.

    A call goes to :attr:`current`; when that endpoint fails, :meth:`failed`
    moves on to the next, round the list.
    """

    def __init__(self, endpoints: Sequence[str]) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.addresses = [parse_endpoint(e) for e in endpoints]
        self.current = 0

    def __len__(self) -> int:
        return len(self.addresses)

    def failed(self, index: int) -> bool:
        """Endpoint ``index`` failed: move on if it is still the current one.

        Returns whether it was (so the caller logs one failover, not many).
        """
        if index != self.current:
            return False
        self.current = (self.current + 1) % len(self.addresses)
        return True


class Step(enum.Enum):
    """What to do after a call failed."""

    RAISE = 1  #: give the caller the error
    NEXT = 2  #: try the next endpoint; the connection is fine
    RECONNECT = 3  #: try the next endpoint; drop this connection (it broke)


def explain(exc: BaseException) -> str:
    """A failure as words for a person (not a tuple of a status and a message).

    Groups of one (a nursery's) are looked through to what they hold.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(explain(e) for e in exc.exceptions)
    if isinstance(exc, GRPCError):
        return f"{exc.status.name}: {exc.message}" if exc.message else exc.status.name
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    if isinstance(exc, StreamTerminatedError):
        return f"the connection broke ({exc})" if str(exc) else "the connection broke"
    return str(exc) or type(exc).__name__


#: The domain error of each status a server sends on purpose.
_ERRORS: dict[Status, type[ElectionError]] = {
    Status[kind.grpc_status]: kind for kind in WIRE_ERRORS if kind.grpc_status
}


def from_status(exc: GRPCError) -> ElectionError:
    """The domain error for a status a server sent."""
    message = exc.message or exc.status.name
    if exc.status is Status.INVALID_ARGUMENT:  # with the field it names
        field, _, rest = message.partition(": ")
        error = InvalidArgument(field, rest or message)
        error.args = (message,)
        return error
    kind = _ERRORS.get(exc.status)
    if kind is None:
        return ElectionError(f"{exc.status.name}: {message}")
    return kind(message)


def unary_failed(name: str, exc: Exception, timeout: float | None) -> tuple[Step, ElectionError]:
    """What a unary call's failure means: the next step, and the error to raise
    (now, for :attr:`Step.RAISE`; or once every endpoint failed)."""
    if isinstance(exc, GRPCError):
        if exc.status is Status.UNAVAILABLE:
            return Step.NEXT, no_endpoint_answered(name, exc)
        return Step.RAISE, from_status(exc)
    if isinstance(exc, TimeoutError):
        return Step.RAISE, DeadlineExceeded(f"{name} took longer than {timeout} s")
    # A broken connection, however grpclib reports it.
    return Step.RECONNECT, no_endpoint_answered(name, exc)


def no_endpoint_answered(name: str, last: BaseException | None) -> Unavailable:
    return Unavailable(f"no endpoint answered {name} ({explain(last) if last else 'no endpoints'})")


def stream_failed(name: str, exc: Exception) -> tuple[Step, ElectionError]:
    """What a stream's failure means: the next step, and the error to raise.

    A group of one (from the nursery of the tasks using the stream) means what
    it holds.
    """
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, ElectionError):
        return Step.RAISE, exc
    if isinstance(exc, GRPCError):
        step = Step.NEXT if exc.status is Status.UNAVAILABLE else Step.RAISE
        return step, from_status(exc)
    # OSError, StreamTerminatedError, ProtocolError...: grpclib reports a dead
    # connection in several ways, some of them only on the next stream opened on it.
    return Step.RECONNECT, Unavailable(f"{name} stream broke: {explain(exc)}")


# -- retrying ------------------------------------------------------------------


def backoff_delay(attempt: int) -> float:
    """How long to wait before retry number ``attempt``: 50 ms, doubling up to 1 s."""
    return min(1.0, 0.05 * 2**attempt)


#: Campaign's wait between calls while no endpoint answers.
CAMPAIGN_RETRY_DELAY = backoff_delay(3)


# -- requests and replies ------------------------------------------------------


def ms(seconds: float) -> int:
    return round(seconds * 1000)


def try_become_leader_request(
    election: str, node_id: str, ttl: float, value: bytes = b""
) -> pb.TryBecomeLeaderRequest:
    return pb.TryBecomeLeaderRequest(
        election=election, node_id=node_id, ttl_ms=ms(ttl), value=value
    )


def heartbeat_request(election: str, node_id: str, fencing_token: int = 0) -> pb.HeartbeatRequest:
    return pb.HeartbeatRequest(election=election, node_id=node_id, fencing_token=fencing_token)


def release_request(
    election: str, node_id: str, fencing_token: int = 0
) -> pb.ReleaseLeadershipRequest:
    return pb.ReleaseLeadershipRequest(
        election=election, node_id=node_id, fencing_token=fencing_token
    )


def is_leader_request(election: str, node_id: str) -> pb.IsLeaderRequest:
    return pb.IsLeaderRequest(election=election, node_id=node_id)


def get_leader_request(election: str) -> pb.GetCurrentLeaderRequest:
    return pb.GetCurrentLeaderRequest(election=election)


def campaign_request(
    election: str, node_id: str, ttl: float, value: bytes = b""
) -> pb.CampaignRequest:
    return pb.CampaignRequest(election=election, node_id=node_id, ttl_ms=ms(ttl), value=value)


def attempt_from(reply: Any) -> Attempt:
    """TryBecomeLeader's or Heartbeat's reply."""
    return Attempt(reply.success, leader_or_none(reply))


def released_from(reply: Any) -> bool:
    return reply.released


def is_leader_from(reply: Any) -> bool:
    return reply.is_leader


def get_leader_from(reply: Any) -> Leader | None:
    return leader_or_none(reply, reply.has_leader)


def campaign_from(reply: Any) -> Leader:
    return Leader.from_pb(reply.leader)


# -- watching ------------------------------------------------------------------


class WatchCursor:
    """Where a watch is: the request to (re)open it with, and what a failure means.

    If the stream breaks, it is opened again from the revision after the last
    one seen, so no change is missed; if that node no longer has the history
    (OUT_OF_RANGE), the watch starts again from the current state.
    """

    def __init__(self, election: str, start_revision: int = 0) -> None:
        self.election = election
        self.resume = start_revision
        self.failures = 0

    def request(self) -> pb.WatchRequest:
        return pb.WatchRequest(election=self.election, start_revision=self.resume)

    def event(self, message: Any) -> LeaderEvent:
        """A message arrived: the event it carries."""
        self.failures = 0
        self.resume = message.revision + 1
        return LeaderEvent(EventKind(message.kind), leader_or_none(message), message.revision)

    def failed(self, error: ElectionError) -> float | None:
        """The stream failed with ``error``: how long to wait before watching
        again (None: do not wait, the watch was refused for good; re-raise)."""
        if isinstance(error, InvalidArgument):
            return None
        if isinstance(error, OutOfRange):
            self.resume = 0
            return 0.0
        self.failures += 1
        return backoff_delay(self.failures)


# -- KeepAlive batches ---------------------------------------------------------

#: Heartbeats sent in one batch message at most (the server takes 1,000), and
#: their encoded size (the server reads at most 64 KiB a message).
MAX_BATCH = 500
MAX_BATCH_BYTES = 48 * 1024


def batch_has_room(count: int, size: int) -> bool:
    """Whether a batch of ``count`` heartbeats of ``size`` bytes takes one more."""
    return count < MAX_BATCH and size < MAX_BATCH_BYTES


def batch_message(requests: Sequence[pb.HeartbeatRequest]) -> pb.HeartbeatRequest:
    """One heartbeat as itself, several as one batch message."""
    if len(requests) == 1:
        return requests[0]
    return pb.HeartbeatRequest(heartbeats=list(requests))


def batch_replies(reply: Any, count: int) -> list[Any]:
    """The replies, in order, to a message of ``count`` heartbeats.

    Raises:
        Unavailable: the server answered something else (the stream is unusable).
    """
    if reply is None:
        raise Unavailable("the server ended the KeepAlive stream")
    if count == 0:
        raise Unavailable("the server answered a heartbeat that was never sent")
    if count == 1:
        return [reply]
    if len(reply.heartbeats) != count:
        raise Unavailable(f"a batch of {count} heartbeats got {len(reply.heartbeats)} answers")
    return list(reply.heartbeats)


# -- holding an election -------------------------------------------------------

#: Why a lease was lost when heartbeats stopped getting through.
SILENT = "no heartbeat succeeded before the client-side deadline"
#: A client paused (or starved) after its first heartbeat, past the deadline
#: that heartbeat earned: the body must not start at all.
LATE = "the client-side deadline passed before the body could start"


class Renewal:
    """When a held election is renewed, and what each heartbeat's outcome means.

    Heartbeats go every ``interval`` (a third of the TTL); after a failed one,
    the next goes after ``retry`` instead. The :class:`Belief` says until when
    the holder may act; the client's body runs with that deadline.
    """

    def __init__(self, election: str, belief: Belief, interval: float, now: float) -> None:
        self.election = election
        self.belief = belief
        self.interval = interval
        self.retry = min(interval / 4, 0.25)
        self.next_try = now + interval

    def answered(self, sent: float, reply: Any | None) -> str | None:
        """The heartbeat sent at ``sent`` got ``reply`` (None: it failed).

        Returns why leadership is lost (the server refused it), or None.
        """
        if reply is None:
            self.next_try = sent + self.retry
            return None
        if reply.success:
            self.belief.confirmed(sent)
            self.next_try = sent + self.interval
            return None
        self.belief.lose()
        holder = reply.leader.node_id if reply.HasField("leader") else "nobody"
        return f"the server says {holder!r} holds {self.election!r} now"


@dataclass(eq=False)
class Held:
    """What the Trio and asyncio ``Leadership`` share: the grant, the belief
    rule it is held by, and why it was lost. Each subclass says in
    :meth:`_stop` how its body is stopped.

    Attributes:
        election: The election's name.
        node_id: Our name as its holder.
        fencing_token: Pass it to every resource the body touches.
        leader: The grant as the server reported it.
    """

    election: str
    node_id: str
    fencing_token: int
    leader: Leader
    ttl: float
    margin: float
    _lost: str | None = field(default=None, repr=False)
    _belief: Belief = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._belief = Belief(self.ttl, self.margin)

    @property
    def lost(self) -> str | None:
        """Why leadership was lost, or None while it holds."""
        return self._lost

    def _lose(self, why: str) -> None:
        if self._lost is None:
            self._lost = why
        self._belief.lose()
        self._stop()

    def _stop(self) -> None:
        raise NotImplementedError


def lost_error(election: str, why: str | None) -> LeadershipLost:
    return LeadershipLost(f"leadership of {election!r} lost: {why or SILENT}")


#: Seconds a release on leaving may take before it is given up on.
RELEASE_TIMEOUT = 1.0


class Unconfirmed(dict[tuple[str, str], set[int]]):
    """Grants released with no answer, per (election, node_id): the release may
    still land.

    If the same node_id re-acquires the election meanwhile, the server refreshes
    that same token, and the late release would end it under us; so such a
    grant is released (with an answer) and taken afresh before it is trusted.
    """

    def add(self, leader: Leader) -> None:
        self.setdefault((leader.election, leader.node_id), set()).add(leader.fencing_token)

    def stale(self, leader: Leader) -> bool:
        """Whether ``leader`` is such a grant (release it, then :meth:`settled`)."""
        return leader.fencing_token in self.get((leader.election, leader.node_id), ())

    def settled(self, leader: Leader) -> None:
        """``leader`` was released, this time with an answer."""
        key = (leader.election, leader.node_id)
        tokens = self.get(key, set())
        tokens.discard(leader.fencing_token)
        if not tokens:
            self.pop(key, None)
