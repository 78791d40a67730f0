"""Who is waiting on the election machine: Campaign calls and Watch streams.

Both kinds of node (single and cluster) report each applied command's outcome
here: grants wake the Campaign that asked for them, events go to watchers, and
a watcher too slow to keep up is dropped rather than slowing the node.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from itertools import count
from typing import Any, Protocol

from .._bridge import MessageQueue, Waiter
from .._errors import OutOfRange, Superseded, Unavailable
from ..core import (
    CancelWait,
    Command,
    ElectionMachine,
    Event,
    EventKind,
    Holder,
    Outcome,
    Release,
)

log = logging.getLogger("trio_election.node")

#: Recent events kept so that a watch can resume from a revision.
HISTORY = 10_000

#: Put in a watcher's queue when it fell too far behind, or the node closes.
OVERFLOW = object()
CLOSING = object()


class CampaignCall(Protocol):
    """Where a Campaign's result goes: a :class:`Waiter` its handler awaits
    (or, in the simulation, a simulated call)."""

    def set(self, value: Any = None) -> None: ...

    def fail(self, exc: BaseException) -> None: ...


class Hub:
    """Campaign waiters and watchers of one node.

    Args:
        prefix: Makes waiter ids unique across the cluster (node id and boot).
        call: Makes the object a Campaign's result is given to.
    """

    def __init__(self, prefix: str = "", call: Callable[[], CampaignCall] = Waiter) -> None:
        self._prefix = prefix
        self._new_call = call
        # Waiters of this node's earlier runs too: "node/" of "node/boot/".
        self._node_prefix = prefix.split("/", 1)[0] + "/" if "/" in prefix else prefix
        self._ids = count(1)
        self._campaigns: dict[str, CampaignCall] = {}
        self._watchers: dict[str, set[MessageQueue]] = {}
        self._history: deque[Event] = deque(maxlen=HISTORY)
        self.closed = False
        #: Events published, by kind (metrics: leadership changes by cause).
        self.changes: dict[EventKind, int] = {}

    def new_campaign(self) -> tuple[str, Any]:
        """A fresh waiter id and the call its grant will be reported to."""
        waiter_id = f"{self._prefix}{next(self._ids)}"
        waiter = self._new_call()
        self._campaigns[waiter_id] = waiter
        return waiter_id, waiter

    def forget_campaign(self, waiter_id: str) -> bool:
        """Stop tracking a Campaign; True if it was still waiting."""
        return self._campaigns.pop(waiter_id, None) is not None

    def report(self, outcome: Outcome) -> list[Holder]:
        """Wake the granted, fail the superseded and cancelled, publish the events.

        Returns the grants to Campaigns this node carried whose call is gone
        (it ended before its CancelWait applied, or this node restarted since):
        nobody waits for them, so the caller releases them at once.
        """
        for waiter_id in outcome.superseded:
            waiter = self._campaigns.pop(waiter_id, None)
            if waiter is not None:
                waiter.fail(Superseded("a newer Campaign of this node_id took its place"))
        for waiter_id in outcome.cancelled:
            waiter = self._campaigns.pop(waiter_id, None)
            if waiter is not None:  # the Raft leader took this node for gone
                waiter.fail(Unavailable("the Campaign was taken out of the queue; retry"))
        orphans = []
        for waiter_id, holder in outcome.granted:
            waiter = self._campaigns.pop(waiter_id, None)
            if waiter is not None:
                waiter.set(holder)
            elif waiter_id.startswith(self._node_prefix):
                orphans.append(holder)
        for event in outcome.events:
            self._publish(event)
        return orphans

    def watch(self, election: str, queue: MessageQueue) -> None:
        if self.closed:
            raise Unavailable("the node is shutting down")
        self._watchers.setdefault(election, set()).add(queue)

    def unwatch(self, election: str, queue: MessageQueue) -> None:
        queues = self._watchers.get(election)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._watchers[election]

    def history(self, election: str, start: int, current: int) -> list[Event]:
        """This node's events of ``election`` with revision >= ``start``.

        Raises:
            OutOfRange: events from ``start`` on are no longer (or not yet) known.
        """
        oldest = self._history[0].revision if self._history else current + 1
        if start > current + 1 or (start < oldest and start <= current):
            raise OutOfRange(
                f"start_revision: {start} is outside the history this node keeps "
                f"({oldest}..{current}); watch from the current state"
            )
        return [e for e in self._history if e.revision >= start and e.election == election]

    def close(self) -> None:
        """End every waiting Campaign and Watch: the node is shutting down."""
        self.closed = True
        for waiter in self._campaigns.values():
            waiter.fail(Unavailable("the node is shutting down"))
        self._campaigns.clear()
        for queues in self._watchers.values():
            for queue in queues:
                queue.force(CLOSING)
        self._watchers.clear()

    def _publish(self, event: Event) -> None:
        self._history.append(event)
        self.changes[event.kind] = self.changes.get(event.kind, 0) + 1
        holder: Holder | None = event.holder
        log.info(
            "%s %r: %s (token %d)",
            event.kind.name.lower(),
            event.election,
            holder.node_id if holder else "-",
            holder.fencing_token if holder else 0,
            extra={"election": event.election},
        )
        queues = self._watchers.get(event.election)
        if not queues:
            return
        for queue in list(queues):
            if not queue.put_nowait(event):
                queue.force(OVERFLOW)
                queues.discard(queue)


class HubClient:
    """What both kinds of node offer handlers for Campaign and Watch.

    The node provides ``hub``, ``machine`` and ``submit``.
    """

    hub: Hub
    machine: ElectionMachine
    #: Told whether the node can serve writes now (the health service's
    #: status); ``serve`` sets it.
    on_serving: Callable[[bool], None] | None = None
    #: What the node last said of it.
    serving = False
    #: Given to the node's store, which tells it how long each fsynced write
    #: took, in seconds (metrics); ``serve`` sets it.
    on_write: Callable[[float], None] | None = None

    def submit(self, command: Command) -> None:
        raise NotImplementedError

    def report_serving(self, serving: bool) -> None:
        self.serving = serving
        if self.on_serving is not None:
            self.on_serving(serving)

    def new_campaign(self) -> tuple[str, Waiter]:
        """A fresh waiter id and the Waiter its grant will be reported to."""
        return self.hub.new_campaign()

    def report(self, outcome: Outcome) -> None:
        """Tell the hub what a command did; give back grants nobody waits for."""
        for holder in self.hub.report(outcome):
            log.info(
                "%r was granted to a Campaign whose call is gone: released",
                holder.election,
                extra={"election": holder.election},
            )
            # Only if nobody renewed it since: its node_id may have taken it up.
            self.submit(
                Release(
                    holder.election, holder.node_id, holder.fencing_token, holder.owner, renewals=0
                )
            )

    def end_campaign(self, election: str, waiter_id: str) -> None:
        """The Campaign call ended: leave the queue if still in it."""
        if self.hub.forget_campaign(waiter_id):
            self.submit(CancelWait(election, waiter_id))

    def watch(self, election: str, queue: MessageQueue) -> tuple[Holder | None, int]:
        """Register ``queue`` for the events of ``election``; return the state now."""
        self.hub.watch(election, queue)
        return self.machine.holder(election), self.machine.revision

    def unwatch(self, election: str, queue: MessageQueue) -> None:
        self.hub.unwatch(election, queue)
