"""The election state machine: leases, fencing tokens, the campaign queue.

Theory of operation
-------------------
Each election has at most one :class:`_Lease` (its holder) and a FIFO queue of
waiting Campaign calls. Commands (``_types.py``) change that state; ``apply``
returns an :class:`Outcome` with the reply, the events for watchers and the
waiters it elected. The machine never reads a clock: every call that needs the
time takes ``now`` (seconds on the node's monotonic clock).

The same object serves a single node (which applies commands as they arrive)
and a cluster (which applies them as Raft commits them). For that, the state
splits in two:

* replicated state, changed only by commands and identical on every replica:
  holders, tokens, renewal counts, queues, the revision, the token high-water
  mark;
* local state, the lease deadlines, set to ``now + ttl`` when a replica applies
  a grant or renewal, and by a Raft leader's renewal off the log
  (``renew_confirmed``). Deadlines only ever move later. Also local: whether
  this node proposed the lease's expiry (``expiring``); it then refuses
  renewals off the log until the renewal count changes (which makes every
  Expire proposed so far stale) or a new term's refresh.

Nothing in ``apply`` depends on local state (the start-up grace excepted, which
only a single in-memory node uses), so replicas stay identical. Expiry is
decided by one node (the single node, or the Raft leader) through ``due(now)``,
which returns :class:`Expire` commands naming the token and renewal count it
saw; a renewal applied before the Expire makes it a no-op. A new Raft leader
calls ``refresh_all(now)`` first, so every lease gets its full TTL from the
moment that node took over (docs/design.md, promise 3).

Fencing tokens: every grant takes ``max(last_token + 1, index)``, where
``index`` is the Raft index of the granting entry in a cluster (0 for a single
node), so tokens strictly increase for all elections together, hence for each.

Expiry uses one heap of ``(time, election, token)`` entries, one live entry
per lease (the lease remembers its time; others are stale): a renewal only
moves the lease's deadline, and a popped entry whose lease has a later
deadline is pushed back. So 100,000 leases cost 100,000 heap entries,
whatever the renewal rate.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from .._errors import Unavailable
from ._types import (
    Acquire,
    CancelWait,
    Command,
    Event,
    EventKind,
    Expire,
    Holder,
    Outcome,
    Promote,
    Release,
    Renew,
)

# How long an Expire stays proposed before due() proposes it again (in a cluster a
# proposal can be lost with a Raft-leader change; a repeated Expire is a no-op).
EXPIRE_RETRY_S = 1.0


@dataclass(slots=True)
class _Lease:
    node_id: str
    token: int
    ttl_ms: int
    value: bytes
    renewals: int
    deadline: float  # local clock; see the module docstring
    # The time of this lease's one live heap entry; entries at other times
    # are stale and dropped when popped.
    scheduled: float = -math.inf
    # The identity of the credentials it was granted to ("" without client
    # auth); a command of another owner never touches it.
    owner: str = ""
    # Local: due() proposed this lease's expiry (see renew_confirmed).
    expiring: bool = False

    def held_by(self, node_id: str, owner: str) -> bool:
        return self.node_id == node_id and self.owner == owner


class ElectionMachine:
    """Elections, leases and queues; commands in, outcomes out.

    Args:
        last_token: The fencing-token high-water mark to continue from.
        grace_until: Grant nothing before this time (the start-up grace of an
            in-memory node, docs/design.md promise 5); ``-inf`` for none.
    """

    def __init__(self, *, last_token: int = 0, grace_until: float = -math.inf) -> None:
        self._leases: dict[str, _Lease] = {}
        self._queues: dict[str, deque[Acquire]] = {}
        self._heap: list[tuple[float, str, int]] = []
        self._grace_until = grace_until
        self.last_token = last_token
        self.revision = 0
        self._apply = {
            Acquire: self._acquire,
            Renew: self._renew,
            Release: self._release,
            CancelWait: self._cancel_wait,
            Expire: self._expire,
            Promote: self._promote,
        }

    # -- queries ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._leases)

    def holder(self, election: str) -> Holder | None:
        """The current holder of ``election``, or None."""
        lease = self._leases.get(election)
        return None if lease is None else self._view(election, lease)

    def holders(self) -> Iterable[Holder]:
        """Every current holder, in no particular order."""
        return (self._view(e, lease) for e, lease in self._leases.items())

    def elections(self) -> Iterable[str]:
        """The names of the elections held, in no particular order (no copy: do
        not apply commands while iterating)."""
        return self._leases.keys()

    def waiting(self, election: str) -> int:
        """How many Campaign calls wait for ``election``."""
        return len(self._queues.get(election, ()))

    def in_grace(self, now: float) -> bool:
        """Whether the start-up grace still forbids grants at ``now``."""
        return now < self._grace_until

    @property
    def grace_until(self) -> float:
        """When the start-up grace ends (``-inf``: there is none, or it is over)."""
        return self._grace_until

    # -- commands -----------------------------------------------------------

    def apply(self, command: Command, now: float, index: int = 0) -> Outcome:
        """Apply one command at ``now``; ``index`` is its Raft index (0 if none).

        Raises:
            Unavailable: an Acquire without ``wait`` during the start-up grace.
        """
        return self._apply[type(command)](command, now, index)

    def _acquire(self, cmd: Acquire, now: float, index: int) -> Outcome:
        lease = self._leases.get(cmd.election)
        if lease is not None and lease.held_by(cmd.node_id, cmd.owner):
            changed = (lease.ttl_ms, lease.value) != (cmd.ttl_ms, cmd.value)
            lease.ttl_ms, lease.value = cmd.ttl_ms, cmd.value
            self._extend(lease, now)
            # A longer TTL must be on disk before it is promised: a restart
            # recovers each lease with its stored TTL.
            return Outcome(True, self._view(cmd.election, lease), persist=changed)
        queue = self._queues.get(cmd.election)
        if lease is None and queue and not self.in_grace(now):
            # A grace just ended and its Promote is not applied yet: the
            # queue goes first.
            promoted = self._grant_next(cmd.election, now, index)
            outcome = self._acquire(cmd, now, index)
            return _merge(promoted, outcome)
        if lease is None and not self.in_grace(now):
            return self._grant(cmd, now, index)
        if not cmd.wait:
            if lease is None:
                raise Unavailable(
                    "the node restarted without a data dir and grants nothing until its "
                    "start-up grace (--max-ttl) has passed; retry later"
                )
            return Outcome(False, self._view(cmd.election, lease))
        superseded = self._enqueue(cmd)
        holder = None if lease is None else self._view(cmd.election, lease)
        return Outcome(False, holder, superseded=superseded)

    def _renew(self, cmd: Renew, now: float, index: int) -> Outcome:
        lease = self._leases.get(cmd.election)
        if lease is None:
            return Outcome(False, None)
        if lease.held_by(cmd.node_id, cmd.owner) and cmd.fencing_token in (0, lease.token):
            self._extend(lease, now)
            return Outcome(True, self._view(cmd.election, lease))
        return Outcome(False, self._view(cmd.election, lease))

    def _release(self, cmd: Release, now: float, index: int) -> Outcome:
        lease = self._leases.get(cmd.election)
        if (
            lease is None
            or not lease.held_by(cmd.node_id, cmd.owner)
            or cmd.fencing_token not in (0, lease.token)
            or cmd.renewals not in (-1, lease.renewals)
        ):
            return Outcome(False, None if lease is None else self._view(cmd.election, lease))
        return self._end(cmd.election, lease, EventKind.RELEASED, now, index)

    def _expire(self, cmd: Expire, now: float, index: int) -> Outcome:
        lease = self._leases.get(cmd.election)
        if lease is None or lease.token != cmd.fencing_token:
            return Outcome(False, None if lease is None else self._view(cmd.election, lease))
        if lease.renewals != cmd.renewals:
            # A renewal won the race: track the lease by its new deadline
            # again (this makes the proposer's retry entry stale). The
            # renewal that changed the count already cleared ``expiring``; a
            # newer Expire proposed since may have set it again, and stands.
            self._schedule(cmd.election, lease, lease.deadline)
            return Outcome(False, self._view(cmd.election, lease))
        return self._end(cmd.election, lease, EventKind.EXPIRED, now, index)

    def _cancel_wait(self, cmd: CancelWait, now: float, index: int) -> Outcome:
        queue = self._queues.get(cmd.election)
        found = False
        if queue:
            for waiting in queue:
                if waiting.waiter == cmd.waiter:
                    queue.remove(waiting)
                    found = True
                    break
            if not queue:
                del self._queues[cmd.election]
        cancelled = (cmd.waiter,) if found else ()
        return Outcome(found, self.holder(cmd.election), cancelled=cancelled)

    def _promote(self, cmd: Promote, now: float, index: int) -> Outcome:
        if cmd.election in self._leases or not self._queues.get(cmd.election):
            return Outcome(False, self.holder(cmd.election))
        return self._grant_next(cmd.election, now, index)

    # -- expiry -------------------------------------------------------------

    def next_deadline(self) -> float:
        """When ``due`` will next have something to say (``inf`` if never)."""
        first = self._heap[0][0] if self._heap else math.inf
        if self._queues and self._grace_until > -math.inf:
            return min(first, self._grace_until)
        return first

    def due(self, now: float) -> list[Expire | Promote]:
        """The commands that the passing of time calls for at ``now``.

        An Expire for each lease whose deadline has passed, and once the
        start-up grace is over a Promote for each free election with a queue.
        The caller applies them (single node) or proposes them (Raft leader).
        """
        commands: list[Expire | Promote] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, election, token = heapq.heappop(heap)
            lease = self._leases.get(election)
            if lease is None or lease.token != token or lease.scheduled != at:
                continue  # stale: ended, re-granted or rescheduled since
            if lease.deadline > now:
                self._schedule(election, lease, lease.deadline)
                continue
            commands.append(Expire(election, token, lease.renewals))
            lease.expiring = True
            self._schedule(election, lease, now + EXPIRE_RETRY_S)
        if self._grace_until > -math.inf and now >= self._grace_until:
            self._grace_until = -math.inf
            commands.extend(Promote(e) for e in list(self._queues) if e not in self._leases)
        return commands

    # -- renewals off the log (a Raft leader; see replica/_renewals.py) ----------

    def renews_off_log(self, cmd: Renew) -> bool:
        """Whether a Raft leader may answer ``cmd`` without logging it.

        Not the first renewal of a grant: a Campaign's grant that nobody
        waited for is given back by a Release conditional on no renewal since
        (``Release.renewals=0``), and only a logged renewal is seen by it.
        """
        lease = self._leases.get(cmd.election)
        return lease is not None and lease.renewals > 0

    def renew_confirmed(self, cmd: Renew, arrived: float) -> Outcome:
        """Answer a renewal that arrived at ``arrived``, once this Raft leader
        confirmed with a quorum round started after that, and applied
        everything committed before the round.

        Refused if the lease is not the caller's or this node has proposed
        its expiry; else its deadline becomes at least ``arrived + ttl``.
        Nothing replicated changes.
        """
        lease = self._leases.get(cmd.election)
        if lease is None:
            return Outcome(False, None)
        if (
            lease.expiring
            or not lease.held_by(cmd.node_id, cmd.owner)
            or cmd.fencing_token not in (0, lease.token)
        ):
            return Outcome(False, self._view(cmd.election, lease))
        lease.deadline = max(lease.deadline, arrived + lease.ttl_ms / 1000)
        return Outcome(True, self._view(cmd.election, lease))

    def waiters(self) -> Iterable[tuple[str, str]]:
        """``(election, waiter)`` for every Campaign waiting, in no particular order."""
        for election, queue in self._queues.items():
            for waiting in queue:
                yield election, waiting.waiter

    def refresh_all(self, now: float) -> None:
        """Give every lease its full TTL from ``now`` (a new Raft leader does this)."""
        for lease in self._leases.values():
            lease.deadline = max(lease.deadline, now + lease.ttl_ms / 1000)
            lease.scheduled = lease.deadline
            lease.expiring = False
        self._heap = [(lease.deadline, e, lease.token) for e, lease in self._leases.items()]
        heapq.heapify(self._heap)

    # -- recovery -----------------------------------------------------------

    def restore(self, holders: Iterable[tuple], now: float) -> None:
        """Load ``(election, node_id, token, ttl_ms, value[, owner])`` rows from disk.

        Each lease counts as freshly renewed at ``now`` (docs/design.md, promise 5).
        """
        for election, node_id, token, ttl_ms, value, *owner in holders:
            self._leases[election] = _Lease(
                node_id, token, ttl_ms, value, 0, -math.inf, owner=owner[0] if owner else ""
            )
            self.last_token = max(self.last_token, token)
        self.refresh_all(now)

    # -- internals ----------------------------------------------------------

    @staticmethod
    def _view(election: str, lease: _Lease) -> Holder:
        return Holder(
            election,
            lease.node_id,
            lease.token,
            lease.ttl_ms,
            lease.value,
            lease.deadline,
            lease.owner,
        )

    @staticmethod
    def _extend(lease: _Lease, now: float) -> None:
        lease.renewals += 1  # a pending Expire naming the old count is now stale
        lease.expiring = False
        lease.deadline = max(lease.deadline, now + lease.ttl_ms / 1000)

    def _schedule(self, election: str, lease: _Lease, at: float) -> None:
        lease.scheduled = at
        heapq.heappush(self._heap, (at, election, lease.token))

    def _enqueue(self, cmd: Acquire) -> tuple[str, ...]:
        queue = self._queues.setdefault(cmd.election, deque())
        for position, waiting in enumerate(queue):
            if (waiting.node_id, waiting.owner) == (cmd.node_id, cmd.owner):
                queue[position] = cmd  # keeps its place in line
                # The same call proposed twice (a retried forward) is no rival.
                return () if waiting.waiter == cmd.waiter else (waiting.waiter,)
        queue.append(cmd)
        return ()

    def _grant(self, cmd: Acquire, now: float, index: int) -> Outcome:
        token = max(self.last_token + 1, index)
        self.last_token = token
        lease = _Lease(
            cmd.node_id, token, cmd.ttl_ms, cmd.value, 0, now + cmd.ttl_ms / 1000, owner=cmd.owner
        )
        self._leases[cmd.election] = lease
        if len(self._heap) > 2 * len(self._leases) + 64:
            # Entries of ended leases are dropped only when popped, and a node
            # that never calls due() (a Raft follower) never pops: rebuild
            # (the new lease is in self._leases already, so it gets its entry).
            self.refresh_all(-math.inf)
        else:
            self._schedule(cmd.election, lease, lease.deadline)
        holder = self._view(cmd.election, lease)
        self.revision += 1
        event = Event(EventKind.ELECTED, cmd.election, holder, self.revision)
        granted = ((cmd.waiter, holder),) if cmd.wait else ()
        return Outcome(True, holder, (event,), granted, persist=True)

    def _grant_next(self, election: str, now: float, index: int) -> Outcome:
        queue = self._queues[election]
        head = queue.popleft()
        if not queue:
            del self._queues[election]
        return self._grant(head, now, index)

    def _end(
        self, election: str, lease: _Lease, kind: EventKind, now: float, index: int
    ) -> Outcome:
        del self._leases[election]
        self.revision += 1
        ended = Outcome(
            True,
            None,
            (Event(kind, election, self._view(election, lease), self.revision),),
            persist=True,
        )
        if self._queues.get(election) and not self.in_grace(now):
            return _merge(ended, self._grant_next(election, now, index))
        return ended


def _merge(first: Outcome, second: Outcome) -> Outcome:
    """One outcome for two steps of one command: the reply of the second, the effects of both."""
    return Outcome(
        second.success,
        second.holder,
        first.events + second.events,
        first.granted + second.granted,
        first.superseded + second.superseded,
        first.persist or second.persist,
    )
