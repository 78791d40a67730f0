"""The one place where asyncio meets Trio.

grpclib is asyncio-only; trio-election is a Trio program. This module hosts
grpclib inside Trio through trio-asyncio and is the only module that imports
asyncio, trio_asyncio or grpclib's transport internals. Everything else sees:

* :func:`asyncio_loop`, which opens one trio-asyncio loop (or reuses the one
  already open) with a logging exception handler;
* :class:`GrpcServer`, a grpclib server that starts on a port (0 for any) and
  shuts down gracefully;
* :class:`Waiter` and :class:`MessageQueue`, the synchronous-callback
  primitives by which Trio code wakes asyncio handlers (``put_nowait`` style:
  no hop into Trio per message);
* :func:`recv_request`, which reads one request with a size limit;
* :func:`call`, :class:`Channel` and stream helpers for the client library.

Pitfalls handled here (DESIGN.md, "Known pitfalls of this stack"):
trio-asyncio's default exception handler re-raises what asyncio would only
log, so one malformed HTTP/2 frame could stop the node: we log instead, and
we ignore unknown frame types as RFC 7540 section 4.1 requires. grpclib's
``Server.close()`` leaves connections open: :meth:`GrpcServer.shutdown`
closes every transport itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any

import grpclib.client
import grpclib.const
import grpclib.events
import grpclib.protocol
import grpclib.server
import h2.events
import trio
import trio_asyncio
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

log = logging.getLogger("trio_election.grpc")

#: Largest request the server reads (a request is at most ~5 KiB when valid).
MAX_REQUEST_BYTES = 64 * 1024

__all__ = [
    "MAX_REQUEST_BYTES",
    "Authorize",
    "CallPeer",
    "Channel",
    "GRPCError",
    "GrpcServer",
    "MessageQueue",
    "Status",
    "StreamTerminatedError",
    "Waiter",
    "asyncio_loop",
    "end_streams",
    "serve_in_order",
    "recv_one_request",
    "recv_request",
]


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # asyncio's own default only logs; trio-asyncio's re-raises, which would
    # take the whole node down for one bad connection.
    exc = context.get("exception")
    log.warning("asyncio: %s", context.get("message", "error"), exc_info=exc)


@contextlib.asynccontextmanager
async def asyncio_loop() -> AsyncIterator[None]:
    """Make sure an asyncio loop runs inside this Trio run (open one if none is)."""
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_log_loop_exception)
        yield


# -- server -------------------------------------------------------------------


class _CoalescingTransport:
    """Gathers the writes of one loop iteration into one ``send``.

    grpclib writes headers, data and trailers of a reply separately, and each
    write is a system call; gathering them cuts the server's CPU per call.
    Everything but ``write`` and ``close`` goes to the real transport.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            asyncio.get_event_loop().call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending and not self._transport.is_closing():
            self._transport.write(b"".join(self._pending))
        self._pending.clear()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Protocol(grpclib.protocol.H2Protocol):
    """grpclib's HTTP/2 protocol, which ignores unknown frame types and
    gathers its writes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_CoalescingTransport(transport))
        self.processor.processors[h2.events.UnknownFrameReceived] = lambda event: None


async def _unimplemented(method: str, stream: grpclib.server.Stream) -> None:
    raise GRPCError(Status.UNIMPLEMENTED, f"{method}: no such method on this port")


class _Methods(dict):
    """A server's methods by path; an unknown path gets a handler that answers
    UNIMPLEMENTED as a whole gRPC response. grpclib's own answer carries no
    content-type, which grpclib's client reports as UNKNOWN."""

    def get(self, path: str, default: Any = None) -> Any:
        method = super().get(path)
        if method is not None:
            return method
        return grpclib.const.Handler(
            functools.partial(_unimplemented, path),
            grpclib.const.Cardinality.UNARY_UNARY,
            empty_pb2.Empty,
            empty_pb2.Empty,
        )


class _Server(grpclib.server.Server):
    """grpclib's server that remembers its connections, so it can close them."""

    def __init__(self, handlers: Collection[Any]) -> None:
        super().__init__(handlers)
        self._mapping = _Methods(self._mapping)
        self.protocols: weakref.WeakSet[_Protocol] = weakref.WeakSet()

    def _protocol_factory(self) -> _Protocol:
        self.__gc_step__()
        handler = grpclib.server.Handler(
            self._mapping, self._codec, self._status_details_codec, self.__dispatch__
        )
        self._handlers.add(handler)
        protocol = _Protocol(handler, self._config, self._h2_config)
        self.protocols.add(protocol)
        return protocol


#: ``authorize(method_name, metadata, peer)``, called before every call's
#: handler; it raises GRPCError to refuse the call (UNAUTHENTICATED, say).
Authorize = Callable[[str, Mapping[str, str], "CallPeer"], None]


class CallPeer:
    """Who is on the other end of a call, as :data:`Authorize` sees it."""

    __slots__ = ("_peer",)

    def __init__(self, peer: grpclib.protocol.Peer) -> None:
        self._peer = peer

    @property
    def address(self) -> tuple[str, int] | None:
        return self._peer.addr()

    @property
    def certificate(self) -> dict[str, Any] | None:
        """The client's verified certificate (mutual TLS), or None."""
        return self._peer.cert() or None


#: How long a client may take over its TLS handshake before it is dropped.
TLS_HANDSHAKE_TIMEOUT_S = 10.0


class GrpcServer:
    """A grpclib server inside Trio. Use it inside :func:`asyncio_loop`.

    Args:
        handlers: The services.
        ssl: Serve TLS with this context (see ``_tls.server_context``).
        authorize: Checks each call's metadata before its handler runs.
    """

    def __init__(
        self,
        handlers: Collection[Any],
        *,
        ssl: ssl.SSLContext | None = None,
        authorize: Authorize | None = None,
    ) -> None:
        self._server = _Server(handlers)
        self._ssl = ssl
        if authorize is not None:

            async def check(event: grpclib.events.RecvRequest) -> None:
                authorize(event.method_name, event.metadata, CallPeer(event.peer))

            grpclib.events.listen(self._server, grpclib.events.RecvRequest, check)

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> int:
        """Listen on ``host:port`` (or on the bound ``sock``) and return the port."""
        loop = asyncio.get_event_loop()
        server = self._server
        server._loop = loop  # what grpclib's own start() sets
        server._server = await trio_asyncio.aio_as_trio(loop.create_server)(
            server._protocol_factory,
            None if sock is not None else host,
            None if sock is not None else port,
            sock=sock,
            ssl=self._ssl,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if self._ssl is not None else None,
            reuse_address=None if sock is not None else True,
        )
        server._server_closed_fut = loop.create_future()
        sockets = server._server.sockets  # the asyncio server's
        return sockets[0].getsockname()[1]

    def stop_accepting(self) -> None:
        """Close the listening socket; calls in progress go on."""
        self._server._server.close()

    def connections(self) -> int:
        """How many client connections are open."""
        return sum(1 for p in self._server.protocols if hasattr(p.connection, "_transport"))

    async def close(self) -> None:
        """Cancel every call in progress and close every connection."""
        self._server.close()
        for protocol in list(self._server.protocols):
            # A connection whose TLS handshake failed never got a processor.
            if hasattr(protocol, "processor"):
                protocol.processor.close("server shutting down")
        await trio_asyncio.aio_as_trio(self._server.wait_closed)()


async def recv_request(stream: grpclib.server.Stream, limit: int = MAX_REQUEST_BYTES) -> Any:
    """Read one message from ``stream``, refusing oversized or undecodable input.

    Returns None at the end of a client stream.

    Raises:
        GRPCError: RESOURCE_EXHAUSTED over ``limit`` bytes (before the
            body is read), INVALID_ARGUMENT when the bytes do not decode.
    """
    raw = stream._stream
    header = await _recv_exactly(raw, 5, "message header", may_end=True)
    if not header:
        return None
    if header[0]:
        raise GRPCError(Status.UNIMPLEMENTED, "request: compressed messages are not supported")
    size = int.from_bytes(header[1:5], "big")
    if size > limit:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"request: message of {size} bytes is over the limit of {limit} bytes",
        )
    data = await _recv_exactly(raw, size, "message")
    try:
        return stream._recv_type.FromString(data)
    except DecodeError as exc:
        raise GRPCError(
            Status.INVALID_ARGUMENT, f"request: not a valid {stream._recv_type.__name__}: {exc}"
        ) from None


async def _recv_exactly(raw: Any, size: int, what: str, *, may_end: bool = False) -> bytes:
    """``size`` bytes of the request body; b"" at its clean end if ``may_end``."""
    try:
        data = await raw.recv_data(size)
    except AssertionError:
        # grpclib's Buffer.read asserts when the stream ends short of ``size``.
        data = None
    if data is None or (len(data) != size and not (may_end and not data)):
        raise GRPCError(Status.INVALID_ARGUMENT, f"request: truncated {what}")
    return data


async def end_streams(streams: Collection[grpclib.server.Stream], error: GRPCError) -> None:
    """End each open server stream now with ``error``'s status and message."""

    async def end(stream: grpclib.server.Stream) -> None:
        with contextlib.suppress(Exception):
            await stream.send_trailing_metadata(status=error.status, status_message=error.message)
        # The call is over: a handler waiting for the client's next message
        # must see the end of the request stream, not wait until the shutdown
        # grace runs out and the connection is closed under it.
        stream._stream.buffer.eof()

    for stream in list(streams):
        await trio_asyncio.aio_as_trio(end)(stream)


async def serve_in_order(
    stream: grpclib.server.Stream,
    handle: Callable[[Any], Any],
    *,
    limit: int,
    stop: Callable[[], bool],
) -> None:
    """Answer a client stream's requests concurrently, replying in order.

    ``handle(request)`` returns an awaitable reply; up to ``limit`` run at once
    (a cluster commits them together). An error from a request ends the
    stream when its turn to be answered comes. ``stop()`` is checked before
    each request is taken.
    """
    replies: asyncio.Queue[Any] = asyncio.Queue(limit)

    async def read() -> None:
        try:
            while (request := await recv_request(stream)) is not None and not stop():
                await replies.put(asyncio.ensure_future(handle(request)))
        finally:
            await replies.put(None)

    reader = asyncio.ensure_future(read())
    try:
        while (reply := await replies.get()) is not None:
            await stream.send_message(await reply)
        await reader  # raises what the reader met (a bad message, say)
    finally:
        reader.cancel()
        while not replies.empty():
            pending = replies.get_nowait()
            if pending is not None:
                pending.cancel()


async def recv_one_request(stream: grpclib.server.Stream) -> Any:
    """The request of a call that takes exactly one (INVALID_ARGUMENT if none)."""
    request = await recv_request(stream)
    if request is None:
        raise GRPCError(Status.INVALID_ARGUMENT, "request: missing")
    return request


class Waiter:
    """A one-shot result that Trio code sets and one asyncio handler awaits."""

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[Any] = asyncio.get_event_loop().create_future()

    @property
    def done(self) -> bool:
        return self._future.done()

    def set(self, value: Any = None) -> None:
        if not self._future.done():
            self._future.set_result(value)

    def fail(self, exc: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(exc)

    async def wait(self, timeout: float | None = None) -> Any:
        """Await the result (from an asyncio handler).

        Raises:
            TimeoutError: nothing was set within ``timeout`` seconds.
        """
        if timeout is None:
            return await asyncio.shield(self._future)
        return await asyncio.wait_for(asyncio.shield(self._future), timeout)


class MessageQueue:
    """A bounded queue fed synchronously from Trio, read by one asyncio handler.

    ``put_nowait`` returns False when the queue is full, so a slow reader can be
    dropped instead of slowing the writer or growing without bound.
    """

    __slots__ = ("_queue",)

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    def put_nowait(self, item: Any) -> bool:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    def force(self, item: Any) -> None:
        """Put ``item`` even if full, dropping the oldest (for a final sentinel)."""
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(item)

    async def get(self) -> Any:
        return await self._queue.get()


# -- client -------------------------------------------------------------------


class Channel:
    """A grpclib channel to one endpoint, used from Trio.

    Args:
        host: The endpoint's host.
        port: The endpoint's port.
        stub_factory: The generated stub class, e.g. ``LeaderElectionStub``.
        ssl: Connect with TLS using this context (``_tls.client_context``).
        metadata: Sent with every call (e.g. an ``authorization`` header).
    """

    def __init__(
        self,
        host: str,
        port: int,
        stub_factory: Callable[[Any], Any],
        *,
        ssl: ssl.SSLContext | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self._channel = grpclib.client.Channel(host, port, ssl=ssl)
        self._metadata = dict(metadata) if metadata else None
        self.stub = stub_factory(self._channel)

    async def unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        """Call a unary method of the stub; raises GRPCError or OSError."""
        return await trio_asyncio.aio_as_trio(method)(
            request, timeout=timeout, metadata=self._metadata
        )

    @contextlib.asynccontextmanager
    async def stream(self, method: Any, timeout: float | None = None) -> AsyncIterator[_Stream]:
        """Open a streaming call; yields an object with ``send``, ``recv`` and ``end``."""
        cm = method.open(timeout=timeout, metadata=self._metadata)
        stream = await trio_asyncio.aio_as_trio(cm.__aenter__)()
        try:
            # Send the headers now: grpclib refuses to receive on a stream
            # whose request is not sent yet, and our readers may start first.
            await trio_asyncio.aio_as_trio(stream.send_request)()
            yield _Stream(stream)
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await trio_asyncio.aio_as_trio(stream.cancel)()
                    await trio_asyncio.aio_as_trio(cm.__aexit__)(type(exc), exc, exc.__traceback__)
            raise
        else:
            wrapped = _Stream(stream)
            if not stream._end_done:
                await wrapped.end()
            await trio_asyncio.aio_as_trio(cm.__aexit__)(None, None, None)

    def close(self) -> None:
        self._channel.close()


class _Stream:
    __slots__ = ("_stream",)

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def send(self, message: Any, *, end: bool = False) -> None:
        await trio_asyncio.aio_as_trio(self._stream.send_message)(message, end=end)

    async def end(self) -> None:
        await trio_asyncio.aio_as_trio(self._stream.end)()

    async def recv(self) -> Any:
        """The next message, or None at the end of the stream.

        Raises:
            GRPCError: the stream ended with a status other than OK.
        """
        try:
            message = await trio_asyncio.aio_as_trio(self._stream.recv_message)()
            if message is None and not self._stream._recv_trailing_metadata_done:
                # grpclib checks the status only on leaving the call, and not at
                # all when the connection is closing by then (a node shutting
                # down): a stream ended with UNAVAILABLE would look like a clean end.
                await trio_asyncio.aio_as_trio(self._stream.recv_trailing_metadata)()
        except StreamTerminatedError:
            # The server may send its status, then reset the stream or close
            # the connection: report the status it sent, if any.
            self._stream._maybe_raise()
            raise
        return message
