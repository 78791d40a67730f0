"""Holding an election safely: the body runs only while leadership is certain.

Theory of operation (docs/design.md, promise 4). The rule for when the client
stops believing it holds the election is :class:`~._belief.Belief` (sans-IO,
also what the simulation's clients run):

    send_time_of_last_successful_heartbeat + ttl - margin

on the client's own monotonic clock (the Trio clock), never comparing clocks
across machines. The body runs in a cancel scope with that deadline: each successful
heartbeat moves the deadline later, and if heartbeats stop succeeding the body
is cancelled before the server could hand the election to anyone else. A
heartbeat that the server refuses (someone else holds it) cancels at once.
``margin`` covers clock-rate differences and the time the body needs to stop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from .._errors import ElectionError
from ._core import SILENT, Held, Renewal, lost_error
from ._keepalive import KeepAlive

log = logging.getLogger("trio_election.client")


@dataclass(eq=False)
class Leadership(Held):
    """A held election, as yielded by ``Client.leadership``.

    Attributes:
        election: The election's name.
        node_id: Our name as its holder.
        fencing_token: Pass it to every resource the body touches.
        leader: The grant as the server reported it.
    """

    _scope: trio.CancelScope = field(default_factory=trio.CancelScope, repr=False)

    @property
    def deadline(self) -> float:
        """When the client stops trusting its leadership, on the Trio clock."""
        return self._scope.deadline

    def _confirmed(self, send_time: float) -> None:
        """A grant or heartbeat sent at ``send_time`` succeeded."""
        self._scope.deadline = self._belief.confirmed(send_time)

    def _stop(self) -> None:
        self._scope.cancel()


async def keep(lead: Leadership, keepalive: KeepAlive, interval: float) -> None:
    """Renew ``lead`` every ``interval`` until cancelled, or lose it
    (when and what each answer means: :class:`._core.Renewal`)."""
    renewal = Renewal(lead.election, lead._belief, interval, trio.current_time())
    while True:
        await trio.sleep_until(renewal.next_try)
        sent = trio.current_time()
        # Past the client deadline the reply no longer matters.
        with trio.move_on_at(lead.deadline) as scope:
            try:
                reply = await keepalive.heartbeat(lead.election, lead.node_id, lead.fencing_token)
            except ElectionError as exc:
                log.debug("heartbeat for %r failed: %s", lead.election, exc)
                reply = None
        if scope.cancelled_caught:
            lead._lose(SILENT)
            return
        why = renewal.answered(sent, reply)
        if why is not None:
            lead._lose(why)
            return
        lead._scope.deadline = lead._belief.deadline


def check_lost(lead: Leadership) -> None:
    """After the body's scope: raise if it ended because leadership was lost."""
    # The scope is ours alone: it is cancelled only by its deadline or _lose.
    if lead._scope.cancelled_caught or lead._lost is not None:
        raise lost_error(lead.election, lead._lost)
