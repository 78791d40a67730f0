"""Commands into the election state machine and what comes out of it.

Commands are what a client asked for (or, for :class:`Expire` and :class:`Promote`,
what the node's expiry driver decided); in a cluster they are what the Raft log
carries, so they hold no clock readings and no references to connections.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Acquire:
    """TryBecomeLeader (``wait=False``) or Campaign (``wait=True``).

    ``waiter`` names the waiting call for Campaign; it must be unique among the
    calls waiting anywhere in the cluster (e.g. ``"n1/17"``). ``owner`` is the
    identity of the caller's credentials ("" without client auth): only the
    same owner may refresh, renew or release what it was granted.
    """

    election: str
    node_id: str
    ttl_ms: int
    value: bytes = b""
    wait: bool = False
    waiter: str = ""
    owner: str = ""


@dataclass(frozen=True, slots=True)
class Renew:
    """Heartbeat: extend the holder's TTL. ``fencing_token`` 0 matches by node_id alone."""

    election: str
    node_id: str
    fencing_token: int = 0
    owner: str = ""


@dataclass(frozen=True, slots=True)
class Release:
    """ReleaseLeadership. ``fencing_token`` 0 matches by node_id alone.

    ``renewals`` (when not -1) makes it conditional, like an Expire: a no-op if
    the lease was renewed or refreshed since it had that many renewals. A node
    gives back a grant made to a Campaign whose call is gone with
    ``renewals=0``, so that it never ends a lease its node_id took up since.
    """

    election: str
    node_id: str
    fencing_token: int = 0
    owner: str = ""
    renewals: int = -1


@dataclass(frozen=True, slots=True)
class CancelWait:
    """A waiting Campaign ended (deadline, cancellation): leave the queue."""

    election: str
    waiter: str


@dataclass(frozen=True, slots=True)
class Expire:
    """The holder's TTL ran out as measured by the proposing node.

    It names the token and the renewal count the proposer saw, so a renewal that
    is applied first wins: the command is then a no-op.
    """

    election: str
    fencing_token: int
    renewals: int


@dataclass(frozen=True, slots=True)
class Promote:
    """Grant a free election to the head of its queue (after a start-up grace)."""

    election: str


Command = Acquire | Renew | Release | CancelWait | Expire | Promote


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds an election, as of one moment.

    ``deadline`` is on the local node's clock (the clock passed as ``now``);
    it is not replicated and means nothing on another machine.
    """

    election: str
    node_id: str
    fencing_token: int
    ttl_ms: int
    value: bytes
    deadline: float
    owner: str = ""

    def remaining_ms(self, now: float) -> int:
        """Milliseconds left before the node may expire the lease (never negative)."""
        return max(0, int((self.deadline - now) * 1000))


class EventKind(enum.IntEnum):
    """Values match ``LeaderEvent.Kind`` in the proto."""

    ELECTED = 1
    RELEASED = 2
    EXPIRED = 3
    NO_LEADER = 4


@dataclass(frozen=True, slots=True)
class Event:
    """A change of holder. For ELECTED the new holder, else the former one."""

    kind: EventKind
    election: str
    holder: Holder | None
    revision: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying one command did.

    Attributes:
        success: Acquire: granted or refreshed; Renew: extended; Release:
            released; CancelWait/Expire/Promote: the command took effect.
        holder: The holder after the command (None if the election is free).
        events: Changes for watchers, in revision order.
        granted: ``(waiter, holder)`` for each waiting Campaign this command
            elected (at most one).
        superseded: Waiters pushed out of the queue by a newer Campaign of the
            same node_id.
        persist: True when the durable state (holders, token high-water mark)
            changed, so a reply that reports a grant must wait for the disk.
        cancelled: Waiters a CancelWait took out of the queue.
    """

    success: bool
    holder: Holder | None
    events: tuple[Event, ...] = ()
    granted: tuple[tuple[str, Holder], ...] = ()
    superseded: tuple[str, ...] = ()
    persist: bool = False
    cancelled: tuple[str, ...] = ()
