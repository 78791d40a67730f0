"""Holding an election from asyncio: the body runs only while leadership is certain.

Theory of operation (docs/design.md, promise 4), as in the Trio client: the
rule for when the client stops believing it holds the election is the shared
:class:`~trio_election.client._belief.Belief`,

    send_time_of_last_successful_heartbeat + ttl - margin

on the loop's monotonic clock (``loop.time()``), and when heartbeats fall due
and what their answers mean is the shared :class:`~trio_election.client._core.Renewal`.
The body runs inside an ``asyncio.timeout()`` at that deadline; each successful
heartbeat moves it later (``Timeout.reschedule``), a refused one moves it to
now. So when leadership ends the body is cancelled, not merely told.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field

from .._errors import ElectionError
from ..client import _core as core
from ._keepalive import KeepAlive

log = logging.getLogger("trio_election.aio")


@dataclass(eq=False)
class Leadership(core.Held):
    """A held election, as yielded by ``Client.leadership``.

    Attributes:
        election: The election's name.
        node_id: Our name as its holder.
        fencing_token: Pass it to every resource the body touches.
        leader: The grant as the server reported it.
    """

    _timeout: asyncio.Timeout | None = field(default=None, repr=False)
    _deadline: float = field(default=-math.inf, repr=False)

    @property
    def deadline(self) -> float:
        """When the client stops (or stopped) trusting its leadership, on the loop's clock."""
        return self._deadline

    def _moved(self) -> None:
        """The belief changed: move the body's deadline with it."""
        if self._belief.deadline > self._deadline:
            self._deadline = self._belief.deadline
        if self._timeout is not None and not self._timeout.expired():
            loop = asyncio.get_running_loop()
            self._timeout.reschedule(max(self._belief.deadline, loop.time()))

    def _stop(self) -> None:
        self._moved()


async def keep(lead: Leadership, keepalive: KeepAlive, interval: float) -> None:
    """Renew ``lead`` every ``interval`` until cancelled, or lose it."""
    loop = asyncio.get_running_loop()
    renewal = core.Renewal(lead.election, lead._belief, interval, loop.time())
    while True:
        await asyncio.sleep(max(0.0, renewal.next_try - loop.time()))
        sent = loop.time()
        try:
            # Past the client deadline the reply no longer matters.
            async with asyncio.timeout_at(lead._belief.deadline):
                try:
                    reply = await keepalive.heartbeat(
                        lead.election, lead.node_id, lead.fencing_token
                    )
                except ElectionError as exc:
                    log.debug("heartbeat for %r failed: %s", lead.election, exc)
                    reply = None
        except TimeoutError:
            lead._lose(core.SILENT)
            return
        why = renewal.answered(sent, reply)
        if why is not None:
            lead._lose(why)
            return
        lead._moved()
