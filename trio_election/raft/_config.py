"""Configuration of a Raft node."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Config:
    """Parameters of one :class:`RawNode`.

    Attributes:
        id: this node's id (non-empty ``str``, e.g. ``"n1"``).
        election_tick: ticks without hearing from a leader before a follower
            campaigns. The actual timeout is drawn uniformly from
            ``[election_tick, 2 * election_tick)`` after every reset, so that
            split votes resolve (Raft §5.2).
        heartbeat_tick: ticks between leader heartbeats; must be smaller than
            ``election_tick`` (typically 1/10 of it).
        pre_vote: run a PreVote round first (Raft thesis §9.6): a node that
            could not win (e.g. a rejoining partitioned node) never bumps the
            cluster's term.
        check_quorum: a leader that has not heard from a quorum within an
            election timeout steps down, and followers that heard from a leader
            within the timeout ignore vote requests (leader lease, §6.2).
        max_entries_per_msg: cap on entries in one append message.
        max_inflight_msgs: cap on unacknowledged append messages per follower
            while replicating optimistically.
        applied: index the application has already applied when restarting:
            the index of the snapshot the state machine was restored from
            (which may be newer than the storage's compaction point), or
            more for a durable state machine. 0 means "everything up to the
            compaction point".
        rng: source of randomness for election timeouts; inject a seeded
            ``random.Random`` for deterministic tests.
    """

    id: str
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_entries_per_msg: int = 64
    max_inflight_msgs: int = 256
    applied: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def validate(self) -> None:
        """Raise ``ValueError`` if the configuration is unusable."""
        if not isinstance(self.id, str) or not self.id:
            raise ValueError("Config.id must be a non-empty str")
        if self.heartbeat_tick <= 0:
            raise ValueError("heartbeat_tick must be greater than 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick")
        if self.max_entries_per_msg <= 0:
            raise ValueError("max_entries_per_msg must be greater than 0")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max_inflight_msgs must be greater than 0")
        if self.applied < 0:
            raise ValueError("applied must not be negative")
