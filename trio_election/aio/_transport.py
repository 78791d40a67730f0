"""Channels, streams and failover for the asyncio client, on grpclib directly.

The order of endpoints and what each failure means are the shared core's
(:mod:`trio_election.client._core`), as for the Trio client; this module is
only the asyncio I/O around it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from grpclib.client import Channel
from grpclib.exceptions import StreamTerminatedError

from .._errors import ElectionError
from .._generated.v1 import election_grpc
from ..client import _core as core
from ..client._credentials import Credentials

log = logging.getLogger("trio_election.aio")


class Stream:
    """A streaming call: ``send``, ``recv`` (None at the end) and ``end``."""

    __slots__ = ("_stream",)

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def send(self, message: Any, *, end: bool = False) -> None:
        await self._stream.send_message(message, end=end)

    async def end(self) -> None:
        await self._stream.end()

    async def recv(self) -> Any:
        """The next message, or None at the end of the stream.

        Raises:
            GRPCError: the stream ended with a status other than OK.
        """
        try:
            message = await self._stream.recv_message()
            if message is None and not self._stream._recv_trailing_metadata_done:
                # grpclib checks the status only on leaving the call, and not at
                # all when the connection is closing by then (a node shutting
                # down): a stream ended with UNAVAILABLE would look like a clean end.
                await self._stream.recv_trailing_metadata()
        except StreamTerminatedError:
            # The server may send its status, then reset the stream or close
            # the connection: report the status it sent, if any.
            self._stream._maybe_raise()
            raise
        return message


class Transport:
    """Channels to a list of endpoints, one current at a time."""

    def __init__(
        self, endpoints: Sequence[str], timeout: float, credentials: Credentials | None = None
    ) -> None:
        self._endpoints = core.Endpoints(endpoints)
        self.timeout = timeout
        self.credentials = credentials or Credentials()
        self._channels: dict[int, tuple[Channel, Any]] = {}

    def _stub(self) -> tuple[int, Any]:
        index = self._endpoints.current
        if index not in self._channels:
            host, port = self._endpoints.addresses[index]
            channel = Channel(host, port, ssl=self.credentials.ssl)
            self._channels[index] = (channel, election_grpc.LeaderElectionStub(channel))
        return index, self._channels[index][1]

    def _fail_over(self, index: int, step: core.Step) -> None:
        if step is core.Step.RAISE:
            return
        if step is core.Step.RECONNECT and index in self._channels:
            # Drop the channel, so the next use of that endpoint reconnects.
            self._channels.pop(index)[0].close()
        if self._endpoints.failed(index):
            log.debug("endpoint %s:%d failed; trying the next", *self._endpoints.addresses[index])

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
        error: ElectionError = core.no_endpoint_answered(name, None)
        metadata = self.credentials.metadata
        for _ in range(len(self._endpoints)):
            index, stub = self._stub()
            try:
                return await getattr(stub, name)(request, timeout=timeout, metadata=metadata)
            except Exception as exc:  # noqa: BLE001 - the core sorts them
                step, error = core.unary_failed(name, exc, timeout)  # type: ignore[arg-type]
            if step is core.Step.RAISE:
                raise error from None
            self._fail_over(index, step)
        raise error from None

    @contextlib.asynccontextmanager
    async def stream(self, name: str, timeout: float | None = None) -> AsyncIterator[Stream]:
        """Open streaming method ``name`` on the current endpoint.

        Raises:
            ElectionError: the stream failed (Unavailable if it broke).
        """
        index, stub = self._stub()
        try:
            cm = getattr(stub, name).open(timeout=timeout, metadata=self.credentials.metadata)
            raw = await cm.__aenter__()
            try:
                # Send the headers now: grpclib refuses to receive on a stream
                # whose request is not sent yet, and our readers may start first.
                await raw.send_request()
                yield Stream(raw)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await raw.cancel()
                    await cm.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            else:
                if not raw._end_done:
                    await raw.end()
                await cm.__aexit__(None, None, None)
        except Exception as exc:  # noqa: BLE001 - the core sorts them
            step, error = core.stream_failed(name, exc)
            self._fail_over(index, step)
            if error is exc:
                raise
            raise error from None

    def close(self) -> None:
        for channel, _ in self._channels.values():
            channel.close()
        self._channels.clear()
