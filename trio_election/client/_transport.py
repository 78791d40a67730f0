"""Endpoints, channels and failover for the client library.

A call goes to the current endpoint; if that endpoint cannot be reached (or
answers UNAVAILABLE), the next one is tried, once round the list. Statuses
come back as the errors of ``trio_election._errors``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import trio

from .._bridge import Channel, GRPCError, Status, StreamTerminatedError
from .._errors import (
    WIRE_ERRORS,
    DeadlineExceeded,
    ElectionError,
    InvalidArgument,
    Unavailable,
)
from .._generated.v1 import election_grpc
from ._credentials import Credentials

log = logging.getLogger("trio_election.client")

#: What a broken connection looks like from grpclib.
CONNECTION_ERRORS = (OSError, StreamTerminatedError, EOFError)


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``, with an optional ``https://`` or
    ``http://`` in front) to ``(host, port)``.

    Raises:
        InvalidArgument: not of that form (an InvalidArgument is a ValueError too).
    """
    address = endpoint.removeprefix("https://").removeprefix("http://").rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) <= 65535:
        raise BadEndpoint("endpoints", f"{endpoint!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class BadEndpoint(InvalidArgument, ValueError):
    """Raised for an endpoint that is not ``HOST:PORT``."""


def explain(exc: BaseException) -> str:
    """A failure as words for a person (not a tuple of a status and a message)."""
    if isinstance(exc, GRPCError):
        return f"{exc.status.name}: {exc.message}" if exc.message else exc.status.name
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


#: The domain error of each status a server sends on purpose.
_ERRORS: dict[Status, type[ElectionError]] = {
    Status[kind.grpc_status]: kind for kind in WIRE_ERRORS if kind.grpc_status
}


def from_status(exc: GRPCError) -> ElectionError:
    """The domain error for a status a server sent."""
    message = exc.message or exc.status.name
    if exc.status is Status.INVALID_ARGUMENT:  # with the field it names
        field, _, rest = message.partition(": ")
        error = InvalidArgument(field, rest or message)
        error.args = (message,)
        return error
    kind = _ERRORS.get(exc.status)
    if kind is None:
        return ElectionError(f"{exc.status.name}: {message}")
    return kind(message)


class Transport:
    """Channels to a list of endpoints, one current at a time."""

    def __init__(
        self, endpoints: Sequence[str], timeout: float, credentials: Credentials | None = None
    ) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.timeout = timeout
        self.credentials = credentials or Credentials()
        self._current = 0
        self._channels: dict[int, Channel] = {}

    def channel(self) -> Channel:
        index = self._current
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
        if index == self._current:
            log.debug("endpoint %s:%d failed; trying the next", *self.endpoints[index])
            self._current = (self._current + 1) % len(self.endpoints)

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
        last: BaseException | None = None
        for _ in range(len(self.endpoints)):
            channel = self.channel()
            try:
                return await channel.unary(getattr(channel.stub, name), request, timeout)
            except GRPCError as exc:
                if exc.status is not Status.UNAVAILABLE:
                    raise from_status(exc) from None
                last = exc
            except TimeoutError:
                raise DeadlineExceeded(f"{name} took longer than {timeout} s") from None
            except Exception as exc:  # noqa: BLE001 - a broken connection, however reported
                last = exc
                self.fail_over(channel, broken=True)
                continue
            self.fail_over(channel)
        raise Unavailable(
            f"no endpoint answered {name} ({explain(last) if last else 'no endpoints'})"
        ) from None

    @contextlib.asynccontextmanager
    async def stream(self, name: str, timeout: float | None = None) -> AsyncIterator[Any]:
        """Open streaming method ``name`` on the current endpoint."""
        channel = self.channel()
        try:
            async with channel.stream(getattr(channel.stub, name), timeout) as stream:
                yield stream
        except GRPCError as exc:
            if exc.status is Status.UNAVAILABLE:
                self.fail_over(channel)
            raise from_status(exc) from None
        except ElectionError:
            raise
        except Exception as exc:  # noqa: BLE001 - OSError, StreamTerminatedError, ProtocolError...
            # grpclib reports a dead connection in several ways, some of them
            # only on the next stream opened on it.
            self.fail_over(channel, broken=True)
            raise Unavailable(f"{name} stream broke: {explain(exc)}") from None

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


async def backoff(attempt: int) -> None:
    """Wait before retrying a failed stream: 50 ms, doubling up to 1 s."""
    await trio.sleep(min(1.0, 0.05 * 2**attempt))
