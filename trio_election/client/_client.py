"""The Trio client of trio-election."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import trio

from .. import _util
from .._bridge import asyncio_loop
from .._errors import ElectionError, NotElected, Unavailable
from . import _core as core
from ._belief import default_margin
from ._credentials import Credentials
from ._keepalive import KeepAlive
from ._leadership import Leadership, check_lost, keep
from ._transport import Transport
from ._types import Attempt, Leader, LeaderEvent

log = logging.getLogger("trio_election.client")

#: Told why a call that waits (campaign, watch) is being made again.
OnRetry = Callable[[ElectionError], None]


class Client:
    """A connection to a trio-election node or cluster; see :func:`open_client`.

    TTLs are in seconds (floats); the wire carries milliseconds.
    """

    def __init__(self, transport: Transport, nursery: trio.Nursery) -> None:
        self._transport = transport
        self._nursery = nursery
        self._keepalive: KeepAlive | None = None
        self._unconfirmed = core.Unconfirmed()

    # -- the RPCs -----------------------------------------------------------

    async def try_become_leader(
        self, election: str, node_id: str, ttl: float, value: bytes = b""
    ) -> Attempt:
        """Take ``election`` if free, or refresh it if ``node_id`` holds it."""
        request = core.try_become_leader_request(election, node_id, ttl, value)
        return core.attempt_from(await self._transport.call("TryBecomeLeader", request))

    async def heartbeat(self, election: str, node_id: str, fencing_token: int = 0) -> Attempt:
        """Extend the TTL of a held election (token 0 matches by node_id alone)."""
        request = core.heartbeat_request(election, node_id, fencing_token)
        return core.attempt_from(await self._transport.call("Heartbeat", request))

    async def release(self, election: str, node_id: str, fencing_token: int = 0) -> bool:
        """Step down; False if ``node_id`` (with that token, unless 0) does not hold it."""
        request = core.release_request(election, node_id, fencing_token)
        return core.released_from(await self._transport.call("ReleaseLeadership", request))

    async def is_leader(self, election: str, node_id: str) -> bool:
        """Whether ``node_id`` holds ``election`` now."""
        request = core.is_leader_request(election, node_id)
        return core.is_leader_from(await self._transport.call("IsLeader", request))

    async def get_leader(self, election: str) -> Leader | None:
        """The holder of ``election`` now, or None (GetCurrentLeader)."""
        request = core.get_leader_request(election)
        return core.get_leader_from(await self._transport.call("GetCurrentLeader", request))

    async def campaign(
        self,
        election: str,
        node_id: str,
        ttl: float,
        value: bytes = b"",
        *,
        on_retry: OnRetry | None = None,
    ) -> Leader:
        """Wait until elected (FIFO among candidates); cancel to leave the queue.

        Use a Trio cancel scope (``trio.fail_after``) to bound the wait. No
        endpoint answering is no reason to stop waiting: the call is made
        again, and ``on_retry`` (if given) is told why each time.
        """
        request = core.campaign_request(election, node_id, ttl, value)
        while True:
            try:
                reply = await self._transport.call("Campaign", request, timeout=None)
            except Unavailable as exc:
                log.info("campaign for %r: %s; trying again", election, exc)
                if on_retry is not None:
                    on_retry(exc)
                await trio.sleep(core.CAMPAIGN_RETRY_DELAY)
                continue
            return core.campaign_from(reply)

    async def watch(
        self, election: str, start_revision: int = 0, *, on_retry: OnRetry | None = None
    ) -> AsyncIterator[LeaderEvent]:
        """The current state of ``election``, then every change, as they happen.

        With ``start_revision``, every change from that revision on instead.
        If the stream breaks, it is opened again (on the next endpoint) from
        the revision after the last one seen, so no change is missed; if that
        node no longer has the history, the watch starts again from the
        current state (a NO_LEADER or ELECTED event). ``on_retry`` (if given)
        is told of each failure before the watch is opened again.
        """
        cursor = core.WatchCursor(election, start_revision)
        while True:
            try:
                async with self._transport.stream("Watch") as stream:
                    await stream.send(cursor.request(), end=True)
                    while (message := await stream.recv()) is not None:
                        yield cursor.event(message)
                return
            except ElectionError as exc:  # broken, dropped as too slow, or node gone
                delay = cursor.failed(exc)
                if delay is None:
                    raise
                log.info("watch %r: %s; watching again", election, exc)
                if delay and on_retry is not None:
                    on_retry(exc)
                await trio.sleep(delay)

    # -- leadership ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def leadership(
        self,
        election: str,
        *,
        node_id: str,
        ttl: float,
        value: bytes = b"",
        margin: float | None = None,
        on_retry: OnRetry | None = None,
    ) -> AsyncIterator[Leadership]:
        """Campaign until elected, then run the body while leadership is certain.

        Heartbeats go every ``ttl / 3`` over the client's shared KeepAlive
        stream. If they stop succeeding, the body is cancelled at
        ``send time of the last successful heartbeat + ttl - margin`` and
        :class:`LeadershipLost` is raised from the ``async with``. On exit the
        election is released.

        Raises:
            LeadershipLost: the body was cancelled because leadership ended.
        """
        while True:
            leader = await self.campaign(election, node_id, ttl, value, on_retry=on_retry)
            if not await self._stale(leader):
                break
        async with self._hold(leader, ttl, margin, sent=None) as lead:
            yield lead

    @contextlib.asynccontextmanager
    async def try_leadership(
        self,
        election: str,
        *,
        node_id: str,
        ttl: float,
        value: bytes = b"",
        margin: float | None = None,
    ) -> AsyncIterator[Leadership]:
        """Like :meth:`leadership`, but without waiting.

        Raises:
            NotElected: someone else holds the election.
        """
        for _ in range(2):
            sent = trio.current_time()
            attempt = await self.try_become_leader(election, node_id, ttl, value)
            if not attempt.success or attempt.leader is None:
                raise NotElected(election, attempt.leader)
            if not await self._stale(attempt.leader):
                break
        else:
            raise NotElected(election, None)
        async with self._hold(attempt.leader, ttl, margin, sent=sent) as lead:
            yield lead

    async def _stale(self, leader: Leader) -> bool:
        """Whether ``leader`` is a grant we released without an answer; if so,
        release it again, this time waiting for the answer."""
        if not self._unconfirmed.stale(leader):
            return False
        await self.release(leader.election, leader.node_id, leader.fencing_token)
        self._unconfirmed.settled(leader)
        return True

    @contextlib.asynccontextmanager
    async def _hold(
        self, leader: Leader, ttl: float, margin: float | None, sent: float | None
    ) -> AsyncIterator[Leadership]:
        keepalive = self._keepalive_stream()
        lead = Leadership(
            leader.election,
            leader.node_id,
            leader.fencing_token,
            leader,
            ttl,
            default_margin(ttl) if margin is None else margin,
        )
        # Until the first confirmation: as long as the first heartbeat may take.
        lead._scope.deadline = trio.current_time() + ttl - lead.margin
        try:
            if sent is None:
                # A Campaign may have waited longer than the TTL: the grant's
                # send time proves nothing, a fresh heartbeat does.
                sent = trio.current_time()
                reply = await keepalive.heartbeat(
                    leader.election, leader.node_id, leader.fencing_token
                )
                if not reply.success:
                    lead._lose("the grant was gone before the first heartbeat")
                    check_lost(lead)
            lead._confirmed(sent)
            if trio.current_time() >= lead.deadline:
                raise core.lost_error(lead.election, core.LATE)
            # Renewal runs in the client's nursery, so the body's own
            # exceptions reach the caller unwrapped.
            renewal = trio.CancelScope()

            async def renew() -> None:
                with renewal:
                    await keep(lead, keepalive, ttl / 3)

            self._nursery.start_soon(renew)
            try:
                with lead._scope:
                    yield lead
            finally:
                renewal.cancel()
            check_lost(lead)
        finally:
            if lead.lost is None:
                answered = False
                with trio.move_on_after(core.RELEASE_TIMEOUT) as cleanup:
                    cleanup.shield = True
                    with contextlib.suppress(ElectionError):
                        await self.release(leader.election, leader.node_id, leader.fencing_token)
                        answered = True
                if not answered:
                    self._unconfirmed.add(leader)

    def _keepalive_stream(self) -> KeepAlive:
        if self._keepalive is None:
            self._keepalive = KeepAlive(self._transport)
            self._nursery.start_soon(self._keepalive.run)
        return self._keepalive


@contextlib.asynccontextmanager
async def open_client(
    endpoints: Sequence[str] | str = "127.0.0.1:50051",
    *,
    timeout: float = 5.0,
    tls: bool | None = None,
    ca: str | Path | None = None,
    cert: str | Path | None = None,
    key: str | Path | None = None,
    token: str | None = None,
    token_file: str | Path | None = None,
) -> AsyncIterator[Client]:
    """Connect to trio-election at one or more ``HOST:PORT`` endpoints.

    Args:
        endpoints: Nodes to talk to; calls fail over between them. Write
            ``https://HOST:PORT`` to use TLS.
        timeout: Default deadline of a unary call, in seconds.
        tls: Force TLS on or off; by default it is on for ``https://``
            endpoints or when ``ca`` or ``cert`` is given.
        ca: The CA that signed the nodes' certificates (default: the system's).
        cert: A client certificate, for nodes that require one (with ``key``).
        key: The private key of ``cert``.
        token: Sent with every call, for nodes started with ``--auth-token-file``.
        token_file: A file whose first line is the token.

    Example::

        async with open_client(["127.0.0.1:50051"]) as client:
            async with client.leadership("production", node_id="worker-1", ttl=10) as lead:
                await do_leader_work(lead.fencing_token)
    """
    endpoints = core.split_endpoints(endpoints)
    credentials = Credentials.create(
        endpoints, tls=tls, ca=ca, cert=cert, key=key, token=token, token_file=token_file
    )
    transport = Transport(endpoints, timeout, credentials)
    # Both the loop (trio-asyncio's own nursery) and ours would wrap what the
    # body raises in a group: the caller gets it as itself.
    with _util.unwrap_single_exception():
        async with asyncio_loop():
            try:
                async with trio.open_nursery() as nursery:
                    try:
                        yield Client(transport, nursery)
                    finally:
                        nursery.cancel_scope.cancel()
            finally:
                transport.close()  # after the background tasks have ended
