"""Endpoints, channels and failover for the client library.

A call goes to the current endpoint; if that endpoint cannot be reached (or
answers UNAVAILABLE), the next one is tried, once round the list. Statuses
come back as the errors of ``trio_election._errors``. What each failure means
and which endpoint is next is decided in :mod:`._core`, shared with the asyncio
client; this module is the Trio I/O around it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import trio

from .._bridge import Channel
from .._errors import ElectionError
from .._generated.v1 import election_grpc
from ._core import (
    CONNECTION_ERRORS as CONNECTION_ERRORS,
    BadEndpoint as BadEndpoint,
    Endpoints,
    Step,
    backoff_delay,
    explain as explain,
    from_status as from_status,
    no_endpoint_answered,
    parse_endpoint as parse_endpoint,
    stream_failed,
    unary_failed,
)
from ._credentials import Credentials

log = logging.getLogger("trio_election.client")


class Transport:
    """Channels to a list of endpoints, one current at a time (the order and
    the meaning of each failure are :mod:`._core`'s)."""

    def __init__(
        self, endpoints: Sequence[str], timeout: float, credentials: Credentials | None = None
    ) -> None:
        self._endpoints = Endpoints(endpoints)
        self.endpoints = self._endpoints.addresses
        self.timeout = timeout
        self.credentials = credentials or Credentials()
        self._channels: dict[int, Channel] = {}

    def channel(self) -> Channel:
        index = self._endpoints.current
        if index not in self._channels:
            host, port = self.endpoints[index]
            self._channels[index] = Channel(
                host,
                port,
                election_grpc.LeaderElectionStub,
                ssl=self.credentials.ssl,
                metadata=self.credentials.metadata,
            )
        return self._channels[index]

    def fail_over(self, failed: Channel, *, broken: bool = False) -> None:
        """Move to the next endpoint if ``failed`` is still the current one.

        ``broken``: the connection itself failed; drop the channel, so the
        next use of that endpoint opens a fresh connection.
        """
        index = next((i for i, c in self._channels.items() if c is failed), None)
        if index is None:
            return
        if broken:
            del self._channels[index]
            failed.close()
        if self._endpoints.failed(index):
            log.debug("endpoint %s:%d failed; trying the next", *self.endpoints[index])

    async def call(self, name: str, request: Any, timeout: float | None | object = ...) -> Any:
        """Call unary method ``name``, failing over once round the endpoints.

        ``timeout`` defaults to the client's; None means no deadline (Campaign).

        Raises:
            Unavailable: no endpoint answered.
            DeadlineExceeded: the call took longer than ``timeout``.
            InvalidArgument: the server refused a field.
        """
        if timeout is ...:
            timeout = self.timeout
        error: ElectionError = no_endpoint_answered(name, None)
        for _ in range(len(self._endpoints)):
            channel = self.channel()
            try:
                return await channel.unary(getattr(channel.stub, name), request, timeout)
            except Exception as exc:  # noqa: BLE001 - _core.unary_failed sorts them
                step, error = unary_failed(name, exc, timeout)  # type: ignore[arg-type]
            if step is Step.RAISE:
                raise error from None
            self.fail_over(channel, broken=step is Step.RECONNECT)
        raise error from None

    @contextlib.asynccontextmanager
    async def stream(self, name: str, timeout: float | None = None) -> AsyncIterator[Any]:
        """Open streaming method ``name`` on the current endpoint."""
        channel = self.channel()
        try:
            async with channel.stream(getattr(channel.stub, name), timeout) as stream:
                yield stream
        except Exception as exc:  # noqa: BLE001 - _core.stream_failed sorts them
            step, error = stream_failed(name, exc)
            if step is not Step.RAISE:
                self.fail_over(channel, broken=step is Step.RECONNECT)
            if error is exc:
                raise
            raise error from None

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


async def backoff(attempt: int) -> None:
    """Wait before retrying a failed stream (:func:`._core.backoff_delay`)."""
    await trio.sleep(backoff_delay(attempt))
