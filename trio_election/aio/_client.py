"""The asyncio client of trio-election: the Trio client's surface, on grpclib directly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from .._errors import ElectionError, NotElected, Unavailable
from ..client import _core as core
from ..client._belief import default_margin
from ..client._credentials import Credentials
from ..client._types import Attempt, Leader, LeaderEvent
from ._keepalive import KeepAlive
from ._leadership import Leadership, keep
from ._transport import Transport

log = logging.getLogger("trio_election.aio")

#: Told why a call that waits (campaign, watch) is being made again.
OnRetry = Callable[[ElectionError], None]


class Client:
    """A connection to a trio-election node or cluster; see :func:`open_client`.

    TTLs are in seconds (floats); the wire carries milliseconds.
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._keepalive: KeepAlive | None = None
        self._tasks: set[asyncio.Task[None]] = set()
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

        Bound the wait with ``asyncio.timeout()``. No endpoint answering is no
        reason to stop waiting: the call is made again, and ``on_retry`` (if
        given) is told why each time.
        """
        request = core.campaign_request(election, node_id, ttl, value)
        while True:
            try:
                reply = await self._transport.call("Campaign", request, timeout=None)
            except Unavailable as exc:
                log.info("campaign for %r: %s; trying again", election, exc)
                if on_retry is not None:
                    on_retry(exc)
                await asyncio.sleep(core.CAMPAIGN_RETRY_DELAY)
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
        current state. ``on_retry`` (if given) is told of each failure.
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
                await asyncio.sleep(delay)

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
        stream. The body runs inside an ``asyncio.timeout()`` at
        ``send time of the last successful heartbeat + ttl - margin`` on the
        loop's clock; if heartbeats stop succeeding (or the server says someone
        else holds it) the body is cancelled and :class:`LeadershipLost` is
        raised from the ``async with``. On exit the election is released.

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
        loop = asyncio.get_running_loop()
        for _ in range(2):
            sent = loop.time()
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
        loop = asyncio.get_running_loop()
        keepalive = self._keepalive_stream()
        lead = Leadership(
            leader.election,
            leader.node_id,
            leader.fencing_token,
            leader,
            ttl,
            default_margin(ttl) if margin is None else margin,
        )
        renewal: asyncio.Task[None] | None = None
        try:
            if sent is None:
                # A Campaign may have waited longer than the TTL: the grant's
                # send time proves nothing, a fresh heartbeat does.
                sent = loop.time()
                try:
                    async with asyncio.timeout_at(sent + ttl - lead.margin):
                        reply = await keepalive.heartbeat(
                            leader.election, leader.node_id, leader.fencing_token
                        )
                except TimeoutError:
                    lead._lose("the first heartbeat got no answer in time")
                    raise core.lost_error(lead.election, lead.lost) from None
                if not reply.success:
                    lead._lose("the grant was gone before the first heartbeat")
                    raise core.lost_error(lead.election, lead.lost)
            lead._belief.confirmed(sent)
            lead._moved()
            if loop.time() >= lead.deadline:
                raise core.lost_error(lead.election, core.LATE)
            renewal = asyncio.create_task(keep(lead, keepalive, ttl / 3))
            try:
                async with asyncio.timeout_at(lead.deadline) as timeout:
                    lead._timeout = timeout
                    yield lead
            except TimeoutError:
                if not timeout.expired():
                    raise  # the body's own
                lead._lose(core.SILENT)
            if lead.lost is not None:
                raise core.lost_error(lead.election, lead.lost)
        finally:
            if renewal is not None:
                renewal.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewal
            if lead.lost is None:
                await self._release_on_exit(leader)

    async def _release_on_exit(self, leader: Leader) -> None:
        try:
            async with asyncio.timeout(core.RELEASE_TIMEOUT):
                await self.release(leader.election, leader.node_id, leader.fencing_token)
        except (ElectionError, TimeoutError):
            self._unconfirmed.add(leader)

    def _keepalive_stream(self) -> KeepAlive:
        if self._keepalive is None:
            self._keepalive = KeepAlive(self._transport)
            task = asyncio.create_task(self._keepalive.run())
            self._tasks.add(task)
        return self._keepalive

    async def _aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._transport.close()


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
    """Connect to trio-election at one or more ``HOST:PORT`` endpoints, from asyncio.

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
    client = Client(Transport(endpoints, timeout, credentials))
    try:
        yield client
    finally:
        await client._aclose()
