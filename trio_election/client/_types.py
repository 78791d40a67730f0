"""What the client library returns: plain dataclasses, not protobuf."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Leader:
    """The holder of an election as a server reported it.

    Attributes:
        election: The election's name.
        node_id: The holder.
        fencing_token: Strictly greater than every earlier grant's token.
        ttl: The TTL the holder asked for, in seconds.
        remaining: Seconds left before the server may expire it, as of the reply.
        value: Opaque data the holder attached.
    """

    election: str
    node_id: str
    fencing_token: int
    ttl: float
    remaining: float
    value: bytes

    @classmethod
    def from_pb(cls, message: Any) -> Leader:
        return cls(
            message.election,
            message.node_id,
            message.fencing_token,
            message.ttl_ms / 1000,
            message.remaining_ms / 1000,
            message.value,
        )


def leader_or_none(message: Any, present: bool = True) -> Leader | None:
    """The Leader in a response field, or None if the field is unset."""
    if not present or not message.HasField("leader"):
        return None
    return Leader.from_pb(message.leader)


@dataclass(frozen=True, slots=True)
class Attempt:
    """The answer to TryBecomeLeader and Heartbeat: did it work, and who holds it now."""

    success: bool
    leader: Leader | None


class EventKind(enum.Enum):
    ELECTED = 1
    RELEASED = 2
    EXPIRED = 3
    NO_LEADER = 4


@dataclass(frozen=True, slots=True)
class LeaderEvent:
    """One change seen by ``watch``: for ELECTED the new holder, else the former."""

    kind: EventKind
    leader: Leader | None
    revision: int
