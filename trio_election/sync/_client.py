"""The blocking client of trio-election, for threaded programs (Django, Flask, Celery).

Built on the asyncio client: one asyncio loop runs in a background thread per
client, and each method waits for its call there. Any thread may call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import aio
from .._errors import DeadlineExceeded, LeadershipLost
from ..aio._client import OnRetry
from ..client._types import Attempt, Leader, LeaderEvent
from ._leadership import Leadership, OnLost
from ._loop import LoopThread


class Client:
    """A blocking connection to trio-election; see :func:`open_client`."""

    def __init__(self, runner: LoopThread, client: aio.Client) -> None:
        self._runner = runner
        self._client = client

    # -- the RPCs -----------------------------------------------------------

    def try_become_leader(
        self, election: str, node_id: str, ttl: float, value: bytes = b""
    ) -> Attempt:
        """Take ``election`` if free, or refresh it if ``node_id`` holds it."""
        return self._runner.call(self._client.try_become_leader(election, node_id, ttl, value))

    def heartbeat(self, election: str, node_id: str, fencing_token: int = 0) -> Attempt:
        """Extend the TTL of a held election (token 0 matches by node_id alone)."""
        return self._runner.call(self._client.heartbeat(election, node_id, fencing_token))

    def release(self, election: str, node_id: str, fencing_token: int = 0) -> bool:
        """Step down; False if ``node_id`` (with that token, unless 0) does not hold it."""
        return self._runner.call(self._client.release(election, node_id, fencing_token))

    def is_leader(self, election: str, node_id: str) -> bool:
        """Whether ``node_id`` holds ``election`` now."""
        return self._runner.call(self._client.is_leader(election, node_id))

    def get_leader(self, election: str) -> Leader | None:
        """The holder of ``election`` now, or None."""
        return self._runner.call(self._client.get_leader(election))

    def campaign(
        self,
        election: str,
        node_id: str,
        ttl: float,
        value: bytes = b"",
        *,
        timeout: float | None = None,
        on_retry: OnRetry | None = None,
    ) -> Leader:
        """Wait until elected (FIFO among candidates), at most ``timeout`` seconds.

        Raises:
            DeadlineExceeded: not elected within ``timeout``.
        """
        return self._runner.call(
            _within(
                timeout,
                f"not elected to {election!r} within {timeout} s",
                self._client.campaign(election, node_id, ttl, value, on_retry=on_retry),
            )
        )

    def watch(
        self, election: str, start_revision: int = 0, *, on_retry: OnRetry | None = None
    ) -> Iterator[LeaderEvent]:
        """The current state of ``election``, then every change (a blocking iterator;
        close it, or use ``contextlib.closing``, to stop early)."""
        events = self._client.watch(election, start_revision, on_retry=on_retry)

        async def step() -> LeaderEvent | None:
            return await anext(events, None)

        try:
            while (event := self._runner.call(step())) is not None:
                yield event
        finally:
            self._runner.call(events.aclose())

    # -- leadership ---------------------------------------------------------

    @contextlib.contextmanager
    def leadership(
        self,
        election: str,
        *,
        node_id: str,
        ttl: float,
        value: bytes = b"",
        margin: float | None = None,
        timeout: float | None = None,
        on_lost: OnLost | None = None,
        on_retry: OnRetry | None = None,
    ) -> Iterator[Leadership]:
        """Campaign until elected, then renew in the background while the body runs.

        The body is *told*, not cancelled (a thread cannot be): when heartbeats
        stop succeeding in time (``send time of the last successful heartbeat
        + ttl - margin``) or the server says someone else holds it,
        ``lead.lost`` is set, ``on_lost`` is called from the client's
        background thread (keep it short), and ``lead.check()`` raises. Check
        before each step of leader work. On exit the election is released.

        Raises:
            DeadlineExceeded: not elected within ``timeout``.
            LeadershipLost: on leaving a body that ended normally after
                leadership was lost.
        """
        elected: concurrent.futures.Future[Leadership] = concurrent.futures.Future()
        leaving = self._runner.call(_event())

        async def hold() -> None:
            lead = None
            try:
                async with self._client.leadership(
                    election,
                    node_id=node_id,
                    ttl=ttl,
                    value=value,
                    margin=margin,
                    on_retry=on_retry,
                ) as held:
                    lead = Leadership(
                        held.election, held.node_id, held.fencing_token, held.leader, _held=held
                    )
                    elected.set_result(lead)
                    await leaving.wait()
            except LeadershipLost as exc:
                if lead is not None:
                    lead._lose(exc, on_lost)
                raise

        holding = self._runner.submit(hold())
        try:
            concurrent.futures.wait(
                [elected, holding], timeout, return_when=concurrent.futures.FIRST_COMPLETED
            )
        except BaseException:
            holding.cancel()
            raise
        if not elected.done():
            holding.cancel()
            with contextlib.suppress(concurrent.futures.CancelledError):
                holding.result()  # its own error, if it failed before being elected
            raise DeadlineExceeded(f"not elected to {election!r} within {timeout} s")
        lead = elected.result()
        try:
            yield lead
        except BaseException:
            self._runner.loop.call_soon_threadsafe(leaving.set)
            with contextlib.suppress(LeadershipLost):
                holding.result()
            raise
        self._runner.loop.call_soon_threadsafe(leaving.set)
        holding.result()  # LeadershipLost, if it was lost while the body ran


async def _event() -> asyncio.Event:
    return asyncio.Event()


async def _within(timeout: float | None, what: str, coroutine: Any) -> Any:
    try:
        async with asyncio.timeout(timeout):
            return await coroutine
    except TimeoutError:
        raise DeadlineExceeded(what) from None


@contextlib.contextmanager
def open_client(
    endpoints: Sequence[str] | str = "127.0.0.1:50051",
    *,
    timeout: float = 5.0,
    tls: bool | None = None,
    ca: str | Path | None = None,
    cert: str | Path | None = None,
    key: str | Path | None = None,
    token: str | None = None,
    token_file: str | Path | None = None,
) -> Iterator[Client]:
    """Connect to trio-election from blocking code; the arguments are
    :func:`trio_election.aio.open_client`'s.

    Example::

        with open_client(["127.0.0.1:50051"]) as client:
            with client.leadership("production", node_id="worker-1", ttl=10) as lead:
                for item in work():
                    lead.check()  # raises LeadershipLost once it is not certain
                    do(item, lead.fencing_token)
    """
    runner = LoopThread()
    try:
        opened = aio.open_client(
            endpoints,
            timeout=timeout,
            tls=tls,
            ca=ca,
            cert=cert,
            key=key,
            token=token,
            token_file=token_file,
        )
        client = runner.call(opened.__aenter__())
        try:
            yield Client(runner, client)
        finally:
            runner.call(opened.__aexit__(None, None, None))
    finally:
        runner.stop()
