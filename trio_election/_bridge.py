"""The one place where asyncio meets Trio.

grpclib is asyncio-only; trio-election is a Trio program. This module hosts
grpclib inside Trio through trio-asyncio and is the only module that imports
asyncio, trio_asyncio or grpclib's transport internals. Everything else sees:

* :func:`asyncio_loop`, which opens one trio-asyncio loop (or reuses the one
  already open) with a logging exception handler;
* :class:`GrpcServer`, a grpclib server that starts on a port (0 for any),
  holds its clients to :class:`ConnectionLimits` and shuts down gracefully;
* :class:`Waiter` and :class:`MessageQueue`, the synchronous-callback
  primitives by which Trio code wakes asyncio handlers (``put_nowait`` style:
  no hop into Trio per message);
* :func:`recv_request`, which reads one request with a size limit;
* :func:`call`, :class:`Channel` and stream helpers for the client library.

Pitfalls handled here (docs/design.md, "Known pitfalls of this stack"):
trio-asyncio's default exception handler re-raises what asyncio would only
log, so one malformed HTTP/2 frame could stop the node: we log instead, and
we ignore unknown frame types as RFC 7540 section 4.1 requires. grpclib's
``Server.close()`` leaves connections open: :meth:`GrpcServer.close`
closes every transport itself.

Abuse (the server section): grpclib and h2 trust their clients. h2 parses a
whole read before the server sees an event and answers PING and SETTINGS by
itself; grpclib starts a task per stream and frees what a cancelled one held
only now and then, buffers 4 MiB per stream, reads a message of any announced
size, and holds connections that never finish their handshake or go quiet.
``_Protocol``, ``_Handler`` and ``_Server`` below hook grpclib's server at its
seams (the protocol factory, ``Handler.accept``/``cancel``, the events
processor's table) to hold every client to :class:`ConnectionLimits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpclib.client
import grpclib.config
import grpclib.const
import grpclib.events
import grpclib.protocol
import grpclib.server
import h2.errors
import h2.events
import h2.settings
import trio
import trio_asyncio
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.metadata import encode_grpc_message
from h2.connection import ConnectionState

log = logging.getLogger("trio_election.grpc")

#: Largest request the server reads (a request is at most ~5 KiB when valid).
MAX_REQUEST_BYTES = 64 * 1024

__all__ = [
    "MAX_REQUEST_BYTES",
    "Authorize",
    "CallPeer",
    "Channel",
    "ConnectionLimits",
    "GRPCError",
    "GrpcServer",
    "MessageQueue",
    "Status",
    "StreamTerminatedError",
    "Waiter",
    "asyncio_loop",
    "deadline_passed",
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


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What the clients of one listener (a :class:`GrpcServer`) may cost it.

    A call over a limit ends at once with RESOURCE_EXHAUSTED and a message
    naming the limit, and the connection goes on; a connection that floods the
    server with control frames gets GOAWAY ENHANCE_YOUR_CALM and is closed.
    The ``max_*_per_s`` budgets refill at that rate and hold ``burst_s``
    seconds' worth, so a client may spend ``rate * burst_s`` at once
    (``tools/abuse.py`` measures a node under each attack).

    The defaults suit the client port, whose requests are at most
    :data:`MAX_REQUEST_BYTES`. The peer port carries Raft batches and
    snapshots of up to 256 MiB over long-lived streams: they work with these
    windows, but a batch then moves one window per round trip (96 KiB per
    0.5 ms on a LAN is ~190 MB/s, per 20 ms across regions ~5 MB/s), so give
    peers larger windows (grpclib's default is 4 MiB each).

    Attributes:
        max_connections: Connections open at once, counted once accepted
            (after any TLS handshake, before the HTTP/2 one). One more gets each of its calls
            answered RESOURCE_EXHAUSTED, then GOAWAY, and lives
            ``handshake_timeout_s`` at most. 1000 stays below the usual limit
            of open files (``ulimit -n`` 1024); raise both together.
        max_streams_per_connection: Calls in progress on one connection;
            advertised as SETTINGS_MAX_CONCURRENT_STREAMS, so that clients
            queue their calls instead of being refused. 100 is h2's and
            grpc-go's default.
        max_streams_total: Calls in progress on all connections together.
            A call waiting for its client holds ~12 KiB of Python objects
            (grpclib's stream: four asyncio Events, a Queue, a task): 10,000
            are ~120 MB (~190 MB of RSS) and ~2 s of CPU to start, and match
            the node's ``max_watchers``. Without it ``max_connections`` full
            connections would hold 100,000.
        connection_window_bytes: Request bytes one connection may have
            buffered before the server has read them (its HTTP/2 window;
            grpclib's 4 MiB let 100 connections buffer 400 MB).
        stream_window_bytes: The same for one call; above the largest request
            plus its 5-byte header, so a unary request never waits for a
            WINDOW_UPDATE.
        handshake_timeout_s: How long a client may take over its TLS handshake,
            and then over its HTTP/2 preface and first SETTINGS frame.
        idle_timeout_s: A connection with no call in progress, or whose client
            has stopped reading what the server sends, for this long gets
            GOAWAY and is closed; its client reconnects when it next calls.
        request_timeout_s: How long after its headers a call that takes one
            request message (unary, or Watch) may take to send that message
            and end its side of the stream; then it ends with
            RESOURCE_EXHAUSTED. Client-streaming calls (KeepAlive, Raft's
            Send) are exempt: they are long-lived by design and are bounded by
            the stream limits instead.
        max_resets_per_s: Calls a client may reset, or have refused over a
            limit; past it the connection is closed ("rapid reset",
            CVE-2023-44487). Its burst (200) is twice a full connection, so a
            client cancelling all its calls at once stays below.
        max_settings_per_s: SETTINGS frames a client may send (each one costs
            the server an ACK and a settings update); clients send one, and a
            few more as they tune their windows.
        max_pings_per_s: PING frames a client may send. A PING that follows
            data the server sent is free, as in grpc-go: that is how a client
            measures the connection's bandwidth (grpc-go's BDP probe).
            Keepalive pings come every 10 s or more.
        burst_s: How many seconds of each budget a client may spend at once.
    """

    max_connections: int = 1000
    max_streams_per_connection: int = 100
    max_streams_total: int = 10_000
    connection_window_bytes: int = 256 * 1024
    stream_window_bytes: int = 96 * 1024
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    request_timeout_s: float = 10.0
    max_resets_per_s: float = 100.0
    max_settings_per_s: float = 10.0
    max_pings_per_s: float = 10.0
    burst_s: float = 2.0


#: Bytes of one read fed to h2 at a time. h2 parses all it is given before the
#: server sees one event, and a read is up to 256 KiB: some 15,000 tiny
#: control frames, ~0.5 s of work and as many replies before a budget check.
_FEED_BYTES = 8 * 1024

#: Closed streams h2 remembers per connection, to tell a late frame on a
#: stream it reset (ignored) from a protocol error. h2 keeps 65,536: ~8 MB
#: on every busy connection.
_CLOSED_STREAMS_KEPT = 1024

#: How long a closed connection's last bytes may take to reach its client
#: before the socket is dropped (asyncio waits for ever for a client that has
#: stopped reading).
_CLOSE_LINGER_S = 1.0


class _Budget:
    """A token bucket on the loop's clock: ``rate`` a second, ``rate * burst_s`` at once."""

    __slots__ = ("_at", "_loop", "_rate", "_size", "_tokens")

    def __init__(self, loop: asyncio.AbstractEventLoop, rate: float, burst_s: float) -> None:
        self._loop = loop
        self._rate = rate
        self._size = self._tokens = max(1.0, rate * burst_s)
        self._at = loop.time()

    def spend(self) -> bool:
        """Take one token; False when there is none left."""
        now = self._loop.time()
        self._tokens = min(self._size, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


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
        if self._transport.get_write_buffer_size():
            asyncio.get_event_loop().call_later(_CLOSE_LINGER_S, self._transport.abort)
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _AdvisoryStreamLimit(h2.settings.Settings):
    """h2's local settings, whose MAX_CONCURRENT_STREAMS h2 sends but does not enforce.

    h2 takes one stream over the limit for an error of the whole connection,
    failing every call on it; RFC 9113 section 5.1.2 lets a server refuse just
    that stream, which :class:`_Handler` does, with RESOURCE_EXHAUSTED. The
    property below is read only by h2's check of an incoming HEADERS frame.
    """

    @property
    def max_concurrent_streams(self) -> int:
        return 2**31 - 1


def _once(func: Callable[[], None]) -> Callable[[], None]:
    called = False

    def once() -> None:
        nonlocal called
        if not called:
            called = True
            func()

    return once


def _refuse(stream: grpclib.protocol.Stream, message: str) -> None:
    """End a call at once with RESOURCE_EXHAUSTED, without starting a task for it.

    Not grpclib's ``_abort``: it waits until the transport takes writes, and a
    refusal must give back its place now (its bytes go with the next flush).
    """
    headers = [
        (":status", "200"),
        ("content-type", "application/grpc+proto"),
        ("grpc-status", str(Status.RESOURCE_EXHAUSTED.value)),
        ("grpc-message", encode_grpc_message(message)),
    ]
    stream._h2_connection.send_headers(stream.id, headers, end_stream=True)
    if stream.closable:
        stream.reset_nowait()  # the client need not send the rest of its request


class _Handler(grpclib.server.Handler):
    """grpclib's handler of one connection's calls, which admits them within the
    limits, frees each one as soon as it ends, and ends a request that is late.

    grpclib keeps the tasks of ended calls until its ``__gc_interval__``-th next
    call, and never releases the stream of a call whose task it cancelled
    before the task ran (a client reset right after HEADERS): under a rapid
    reset both grow by thousands a second. Here each task's done callback
    releases its call, once.
    """

    def __init__(self, server: _Server, protocol: _Protocol) -> None:
        super().__init__(
            server._mapping, server._codec, server._status_details_codec, server.__dispatch__
        )
        self.server = server
        self.protocol = protocol
        self.idle_since = self.loop.time()  # when the last call in progress ended

    def accept(
        self,
        stream: grpclib.protocol.Stream,
        headers: list[tuple[str, str]],
        release_stream: Callable[[], Any],
    ) -> None:
        refusal = self._refusal()
        if refusal is not None:
            _refuse(stream, refusal)
            release_stream()
            self.protocol.call_refused()
            return
        release = _once(release_stream)
        task = self.loop.create_task(
            grpclib.server.request_handler(
                self.mapping,
                stream,
                headers,
                self.codec,
                self.status_details_codec,
                self.dispatch,
                release,
            )
        )
        self._tasks[stream] = task
        self.server.open_streams += 1
        timer = self._request_timer(stream, headers)
        task.add_done_callback(functools.partial(self._call_done, stream, release, timer))

    def cancel(self, stream: grpclib.protocol.Stream) -> None:
        """The client reset the call: its place is free at once."""
        super().cancel(stream)
        self._call_ended()

    def _refusal(self) -> str | None:
        limits = self.server.limits
        if self.protocol.refusal is not None:
            return self.protocol.refusal
        # Constant messages: h2 then sends each one as a single HPACK index.
        if len(self._tasks) >= limits.max_streams_per_connection:
            return (
                f"server: the limit of {limits.max_streams_per_connection} calls in progress "
                "on one connection is reached (max_streams_per_connection)"
            )
        if self.server.open_streams >= limits.max_streams_total:
            return (
                f"server: the limit of {limits.max_streams_total} calls in progress is "
                "reached (max_streams_total)"
            )
        return None

    def _request_timer(
        self, stream: grpclib.protocol.Stream, headers: list[tuple[str, str]]
    ) -> asyncio.TimerHandle | None:
        method = self.mapping.get(dict(headers).get(":path", ""))
        if method is None or method.cardinality.client_streaming:
            return None
        return self.loop.call_later(
            self.server.limits.request_timeout_s, self._request_overdue, stream
        )

    def _request_overdue(self, stream: grpclib.protocol.Stream) -> None:
        if stream.buffer._eof or stream.wrapper is None:
            return  # the request is in, or its call has not started (it is ending)
        timeout = self.server.limits.request_timeout_s
        stream.wrapper.cancel(
            GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"request: not received within {timeout:g} s of its headers (request_timeout_s)",
            )
        )

    def _call_done(
        self,
        stream: grpclib.protocol.Stream,
        release: Callable[[], None],
        timer: asyncio.TimerHandle | None,
        task: asyncio.Task[None],
    ) -> None:
        release()  # not released yet if the task was cancelled before it ran
        if timer is not None:
            timer.cancel()
        if stream.wrapper is not None:
            # grpclib's Wrapper keeps the error it ended the call with, whose
            # traceback holds the frames that hold the Wrapper: a cycle of ~75
            # objects per cancelled call, left to the (full, slow) cyclic GC.
            stream.wrapper._error = None
        self._cancelled.discard(task)
        if self._tasks.pop(stream, None) is not None:
            self._call_ended()

    def _call_ended(self) -> None:
        self.server.open_streams -= 1
        if not self._tasks:
            self.idle_since = self.loop.time()


class _Protocol(grpclib.protocol.H2Protocol):
    """grpclib's HTTP/2 protocol for one connection, held to ConnectionLimits.

    Besides gathering its writes and ignoring unknown frame types (RFC 9113
    section 4.1), it feeds h2 a slice of each read at a time, spends the
    client's budgets on the frames that cost the server a reply (RST_STREAM,
    SETTINGS, PING), closes the connection when its handshake is late or it
    has been idle, stops reading from a client that does not read, and drops
    empty DATA frames.
    """

    def __init__(self, server: _Server) -> None:
        super().__init__(_Handler(server, self), server._config, server._h2_config)
        self.server = server
        self.limits = server.limits
        #: Why every call is refused: the connection is over max_connections.
        self.refusal: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        super().connection_made(_CoalescingTransport(transport))
        self._transport = transport
        self._loop = loop = asyncio.get_event_loop()
        self._tune_h2()
        self._hook_events()
        limits = self.limits
        self._resets = _Budget(loop, limits.max_resets_per_s, limits.burst_s)
        self._settings = _Budget(loop, limits.max_settings_per_s, limits.burst_s)
        self._pings = _Budget(loop, limits.max_pings_per_s, limits.burst_s)
        self._data_sent_at_ping = 0
        self._stalled_since: float | None = None
        self.refusal = self.server.admit(self)
        self._handshake_timer = loop.call_later(limits.handshake_timeout_s, self._handshake_over)
        self._idle_timer = loop.call_later(limits.idle_timeout_s, self._check_idle)

    def _tune_h2(self) -> None:
        h2_conn = self.connection._connection
        h2_conn.local_settings.__class__ = _AdvisoryStreamLimit
        limit = self.limits.max_streams_per_connection
        h2_conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limit})
        h2_conn._closed_streams._size_limit = _CLOSED_STREAMS_KEPT
        self.connection.flush()

    def _hook_events(self) -> None:
        self.processor.processors.update(
            {
                h2.events.UnknownFrameReceived: lambda event: None,
                h2.events.RequestReceived: self._on_request,
                h2.events.DataReceived: self._on_data,
                h2.events.StreamReset: self._on_stream_reset,
                h2.events.RemoteSettingsChanged: self._on_settings,
                h2.events.PingReceived: self._on_ping,
            }
        )

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), _FEED_BYTES):
            if self.connection.is_closing():
                return  # closed by the previous slice: the rest is not read
            super().data_received(view[start : start + _FEED_BYTES])

    def pause_writing(self) -> None:
        """The client does not read what we send: stop reading what it sends,
        which would only make more replies (and ACKs) to buffer."""
        super().pause_writing()
        self._stalled_since = self._loop.time()
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stalled_since = None
        self._transport.resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._handshake_timer.cancel()
        self._idle_timer.cancel()
        self.server.forget(self)

    def call_refused(self) -> None:
        """A call was refused over a limit (see ``_Handler``)."""
        if self.refusal is None:
            self._spend(self._resets, self._too_many_resets())
        else:
            # Over max_connections: once this read's calls are answered, ask
            # the client to go (the handshake timer closes it if it stays).
            self._loop.call_soon(self._send_goaway, h2.errors.ErrorCodes.NO_ERROR, self.refusal)

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        # h2 parses a whole slice before the server sees its events: a call
        # reset in the same slice (a rapid reset) is over before it began, and
        # skipping it spares a grpclib stream and a task that would only be
        # cancelled.
        stream = self.connection._connection.streams.get(event.stream_id)
        if stream is not None and not stream.closed:
            self.processor.process_request_received(event)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        # An empty DATA frame carries no flow-control credit, so no window
        # bounds how many a client sends; grpclib would queue each one (and
        # take it for the end of the message it is reading).
        if event.flow_controlled_length:
            self.processor.process_data_received(event)

    def _on_stream_reset(self, event: h2.events.StreamReset) -> None:
        self.processor.process_stream_reset(event)
        if event.remote_reset:
            self._spend(self._resets, self._too_many_resets())

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        if self.refusal is None:
            self._handshake_timer.cancel()  # preface and first SETTINGS are in
        what = f"more than {self.limits.max_settings_per_s:g} SETTINGS a second"
        if self._spend(self._settings, what):
            self.processor.process_remote_settings_changed(event)

    def _on_ping(self, event: h2.events.PingReceived) -> None:
        # h2 has queued the PING's ACK already.
        sent = self.connection.data_sent
        if sent != self._data_sent_at_ping:
            self._data_sent_at_ping = sent
            return
        self._spend(self._pings, f"more than {self.limits.max_pings_per_s:g} PINGs a second")

    def _too_many_resets(self) -> str:
        return f"more than {self.limits.max_resets_per_s:g} calls a second reset or refused"

    def _spend(self, budget: _Budget, what: str) -> bool:
        """Spend from ``budget``; past it, GOAWAY ENHANCE_YOUR_CALM and close."""
        if budget.spend():
            return True
        self.server.log_calm_down(self._peer(), what)
        self._close(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, what)
        return False

    def _handshake_over(self) -> None:
        timeout = self.limits.handshake_timeout_s
        reason = self.refusal or f"no HTTP/2 preface and SETTINGS within {timeout:g} s"
        log.debug("closing the connection from %s: %s", self._peer(), reason)
        self._close(h2.errors.ErrorCodes.SETTINGS_TIMEOUT, reason)

    def _check_idle(self) -> None:
        """Close the connection once it has been of no use for idle_timeout_s;
        else look again when it could be (one timer, re-armed lazily)."""
        timeout = self.limits.idle_timeout_s
        since = self._stalled_since
        if since is None and not self.handler._tasks:
            since = self.handler.idle_since
        now = self._loop.time()
        if since is not None and now - since >= timeout:
            log.debug("closing the connection from %s: idle", self._peer())
            self._close(h2.errors.ErrorCodes.NO_ERROR, f"idle for {timeout:g} s")
            return
        delay = timeout if since is None else since + timeout - now
        self._idle_timer = self._loop.call_later(delay, self._check_idle)

    def _send_goaway(self, code: h2.errors.ErrorCodes, reason: str) -> None:
        h2_conn = self.connection._connection
        if self.connection.is_closing() or h2_conn.state_machine.state is ConnectionState.CLOSED:
            return  # a GOAWAY went (or came) already; h2 now takes any frame for an error
        h2_conn.close_connection(error_code=code, additional_data=reason.encode())
        self.connection.flush()

    def _close(self, code: h2.errors.ErrorCodes, reason: str) -> None:
        """GOAWAY, then close: the calls in progress are cancelled."""
        self._send_goaway(code, reason)
        self.processor.close(reason)

    def _peer(self) -> Any:
        return self._transport.get_extra_info("peername")


def _bounded_reads(func: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``func`` with its stream's ``recv_message`` replaced by :func:`recv_request`,
    if ``func`` is a method of one of grpclib's own services (health, reflection).

    Their reader reads a message of any announced size, up to 4 GiB, and takes
    an undecodable one for an application error, logged with a traceback;
    ``recv_request`` holds it to MAX_REQUEST_BYTES and answers
    INVALID_ARGUMENT. Our services call ``recv_request`` themselves, and are
    left as they are: no wrapper on their calls' path.
    """
    owner = getattr(func, "__self__", None)
    if not type(owner).__module__.startswith("grpclib."):
        return func

    async def handle(stream: grpclib.server.Stream) -> None:
        stream.recv_message = functools.partial(recv_request, stream)
        try:
            await func(stream)
        finally:
            del stream.recv_message  # a cycle through the stream, else left to the GC

    return handle


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
    """grpclib's server held to ConnectionLimits: it knows its connections (to
    close them) and counts them and their calls."""

    def __init__(self, handlers: Collection[Any], limits: ConnectionLimits) -> None:
        windows = grpclib.config.Configuration(
            http2_connection_window_size=limits.connection_window_bytes,
            http2_stream_window_size=limits.stream_window_bytes,
        )
        super().__init__(handlers, config=windows)
        self._mapping = _Methods(
            {path: m._replace(func=_bounded_reads(m.func)) for path, m in self._mapping.items()}
        )
        self.limits = limits
        self.connections: set[_Protocol] = set()
        self.admitted = 0  # connections not over max_connections
        self.open_streams = 0  # calls in progress, over all connections
        self._calm_logged_at = -math.inf
        self._calm_unlogged = 0

    def _protocol_factory(self) -> _Protocol:
        self.__gc_step__()
        protocol = _Protocol(self)
        self._handlers.add(protocol.handler)
        return protocol

    def admit(self, protocol: _Protocol) -> str | None:
        """Count in a connection that is made; the refusal for one over the limit."""
        self.connections.add(protocol)
        limit = self.limits.max_connections
        if self.admitted >= limit:
            return f"server: the limit of {limit} open connections is reached (max_connections)"
        self.admitted += 1
        return None

    def log_calm_down(self, peer: Any, what: str) -> None:
        """Log a connection closed for a flood, once a second at most: an
        attacker reconnects in a loop, and the log must not be its next target."""
        now = self._loop.time()
        if now - self._calm_logged_at < 1:
            self._calm_unlogged += 1
            return
        log.warning(
            "closing the connection from %s: %s (and %d more since the last such line)",
            peer,
            what,
            self._calm_unlogged,
        )
        self._calm_logged_at, self._calm_unlogged = now, 0

    def forget(self, protocol: _Protocol) -> None:
        self.connections.discard(protocol)
        if protocol.refusal is None:
            self.admitted -= 1


class _QuietDisconnects(logging.Filter):
    """Demote grpclib's line for each call cut short by its client to DEBUG.

    grpclib logs "Request was cancelled: Connection lost" (or "Stream reset by
    remote party") at INFO for every such call: thousands of lines when many
    clients go away or one resets calls in a loop. Every other record passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != "Request was cancelled: %s":
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_QUIET_DISCONNECTS = _QuietDisconnects()


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


class GrpcServer:
    """A grpclib server inside Trio. Use it inside :func:`asyncio_loop`.

    Args:
        handlers: The services.
        ssl: Serve TLS with this context (see ``_tls.server_context``).
        authorize: Checks each call's metadata before its handler runs.
        limits: What its clients may cost it (:class:`ConnectionLimits`).
    """

    def __init__(
        self,
        handlers: Collection[Any],
        *,
        ssl: ssl.SSLContext | None = None,
        authorize: Authorize | None = None,
        limits: ConnectionLimits = ConnectionLimits(),
    ) -> None:
        self._server = _Server(handlers, limits)
        self._ssl = ssl
        logging.getLogger("grpclib.server").addFilter(_QUIET_DISCONNECTS)
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
            ssl_handshake_timeout=(
                server.limits.handshake_timeout_s if self._ssl is not None else None
            ),
            reuse_address=None if sock is not None else True,
        )
        server._server_closed_fut = loop.create_future()
        sockets = server._server.sockets  # the asyncio server's
        return sockets[0].getsockname()[1]

    def stop_accepting(self) -> None:
        """Close the listening socket; calls in progress go on."""
        self._server._server.close()

    def connections(self) -> int:
        """How many client connections are open (past their TLS handshake)."""
        return len(self._server.connections)

    async def close(self) -> None:
        """Cancel every call in progress and close every connection."""
        self._server.close()
        for protocol in list(self._server.connections):
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


def deadline_passed(stream: grpclib.server.Stream) -> bool:
    """Whether grpclib cancelled the call on ``stream`` because its deadline
    passed (it then answers DEADLINE_EXCEEDED)."""
    wrapper = getattr(getattr(stream, "_stream", None), "wrapper", None)
    return isinstance(getattr(wrapper, "_error", None), asyncio.TimeoutError)


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

        The one handler awaits the future itself: if it is cancelled, so is
        the future, and a later ``set`` or ``fail`` does nothing. (No
        ``wait_for`` and no ``shield``: each costs a task or a future per call,
        on every request.)

        Raises:
            TimeoutError: nothing was set within ``timeout`` seconds.
        """
        future = self._future
        if timeout is None or future.done():
            return await future
        timer = future.get_loop().call_later(timeout, self._time_out)
        try:
            return await future
        finally:
            timer.cancel()

    def _time_out(self) -> None:
        if not self._future.done():
            self._future.set_exception(TimeoutError())


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


@contextlib.contextmanager
def _connection_race() -> Iterator[None]:
    """grpclib's lost connection, as the error it is.

    A call that starts in the moment between grpclib closing a connection's
    transport and hearing that it was lost fails with ``AttributeError:
    'Connection' object has no attribute '_transport'`` (grpclib issue #110);
    the next call connects again. Callers handle a lost connection, not that.
    """
    try:
        yield
    except AttributeError as exc:
        if "_transport" not in str(exc):
            raise
        raise StreamTerminatedError("Connection lost") from exc


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
        """Call a unary method of the stub; raises GRPCError, OSError or
        StreamTerminatedError."""
        with _connection_race():
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
            with _connection_race():
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
