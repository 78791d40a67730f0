"""The leader's view of each follower: replication progress and flow control.

A :class:`Progress` is in one of three states (see etcd-io/raft's
``tracker/progress.go``):

* ``PROBE``: we don't know where the follower's log ends. Send at most one
  append per heartbeat interval and wait for the answer (``paused``).
* ``REPLICATE``: the follower is known to match; stream appends optimistically,
  bounded by ``Inflights`` so a slow follower cannot make us buffer forever.
* ``SNAPSHOT``: the follower needs a snapshot; send nothing else until it
  reports back (via an append response or ``report_snapshot``).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable


class ProgressState(enum.IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2

    def __str__(self) -> str:
        return "State" + self.name.title()


class Inflights:
    """A bounded FIFO of the last indexes of in-flight append messages."""

    __slots__ = ("capacity", "_q")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._q: deque[int] = deque()

    def add(self, last_index: int) -> None:
        # May exceed capacity: after a heartbeat response un-pauses a full
        # window, one more message is sent to recover from lost appends.
        self._q.append(last_index)

    def free_le(self, index: int) -> None:
        """Forget messages whose last index is ``<= index`` (acknowledged)."""
        while self._q and self._q[0] <= index:
            self._q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.capacity

    def count(self) -> int:
        return len(self._q)

    def reset(self) -> None:
        self._q.clear()


class Progress:
    """Replication state of one peer, as tracked by the leader.

    ``match``: highest index known to be replicated on the peer.
    ``next``: index of the next entry to send.
    """

    __slots__ = (
        "match",
        "next",
        "state",
        "pending_snapshot",
        "recent_active",
        "paused",
        "inflights",
        "sent_commit",
        "last_active_tick",
    )

    def __init__(self, *, match: int, next: int, max_inflight: int) -> None:
        self.match = match
        self.next = next
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        # Whether we heard from the peer since the last CheckQuorum round.
        self.recent_active = False
        # Don't send more appends until a reply or heartbeat response: in
        # PROBE after each non-empty append, in REPLICATE when the inflight
        # window is full. A heartbeat response clears it, so that lost
        # messages can't stall the flow forever.
        self.paused = False
        self.inflights = Inflights(max_inflight)
        # Highest commit index sent in an append (to know when to bump it).
        self.sent_commit = 0
        # Leader's tick counter when we last heard from the peer (health).
        self.last_active_tick: int | None = None

    def __repr__(self) -> str:
        s = f"{self.state} match={self.match} next={self.next}"
        if self.state == ProgressState.SNAPSHOT:
            s += f" pending_snap={self.pending_snapshot}"
        if self.paused:
            s += " paused"
        if self.inflights.count():
            s += f" inflight={self.inflights.count()}"
        return s

    def _reset_state(self, state: ProgressState) -> None:
        self.paused = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        # After a snapshot, the follower has at least the snapshot's index,
        # so probing below it is pointless.
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index
        self.next = snapshot_index + 1

    def sent_entries(self, count: int, last_index: int) -> None:
        """Update flow control after sending an append of ``count`` entries."""
        if self.state == ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index)
            self.paused = self.inflights.full()
        elif self.state == ProgressState.PROBE:
            if count:
                self.paused = True

    def maybe_update(self, n: int) -> bool:
        """Record an acknowledgement up to ``n``; True if ``match`` advanced."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.paused = False
        self.next = max(self.next, n + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """Handle a rejected append for index ``rejected``; False if stale."""
        if self.state == ProgressState.REPLICATE:
            # A rejection for an index we know matched is a stale reply.
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        # In PROBE/SNAPSHOT, only the rejection of the last probe counts.
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.paused = False
        return True

    def can_bump_commit(self, index: int) -> bool:
        """Whether sending commit ``index`` would tell the peer something new.

        Only useful if the peer may hold entries beyond what it was told is
        committed (``sent_commit < next - 1``).
        """
        return index > self.sent_commit and self.sent_commit < self.next - 1

    def is_paused(self) -> bool:
        if self.state == ProgressState.SNAPSHOT:
            return True
        return self.paused


def quorum(n: int) -> int:
    """Votes needed among ``n`` voters."""
    return n // 2 + 1


class ProgressTracker:
    """Membership, per-voter :class:`Progress` and election votes."""

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.voters: set[str] = set()
        self.progress: dict[str, Progress] = {}
        self.votes: dict[str, bool] = {}

    def sorted_voters(self) -> list[str]:
        return sorted(self.voters)

    def set_voters(self, voters: Iterable[str], next_index: int) -> None:
        """Replace the membership; new peers start probing at ``next_index``."""
        self.voters = set(voters)
        for v in list(self.progress):
            if v not in self.voters:
                del self.progress[v]
        for v in self.voters:
            if v not in self.progress:
                pr = Progress(match=0, next=next_index, max_inflight=self.max_inflight)
                # A new member gets the benefit of the doubt for one
                # CheckQuorum round, so adding it can't depose the leader.
                pr.recent_active = True
                self.progress[v] = pr

    def committed(self) -> int:
        """Largest index replicated on a quorum of voters."""
        if not self.voters:
            return 0
        matches = sorted((self.progress[v].match for v in self.voters), reverse=True)
        return matches[quorum(len(matches)) - 1]

    def quorum_active(self, self_id: str) -> bool:
        active = sum(1 for v in self.voters if v == self_id or self.progress[v].recent_active)
        return active >= quorum(len(self.voters))

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node: str, granted: bool) -> None:
        self.votes.setdefault(node, granted)

    def tally(self) -> tuple[int, int, str]:
        """Return (granted, rejected, result) with result won/lost/pending."""
        granted = sum(1 for v in self.voters if self.votes.get(v) is True)
        rejected = sum(1 for v in self.voters if self.votes.get(v) is False)
        q = quorum(len(self.voters))
        if granted >= q:
            return granted, rejected, "won"
        if rejected > len(self.voters) - q:
            return granted, rejected, "lost"
        return granted, rejected, "pending"
