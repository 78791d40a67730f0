"""``GET /metrics`` over plain HTTP/1.1, in the node's own Trio nursery.

A Prometheus scrape is one small request every few seconds, so this is a
minimal server rather than a framework: one request per connection
(``Connection: close``), a bounded request head, a deadline on reading it,
and a cap on the connections served at once. The body is produced on the
Trio thread, where the node's state lives (``_metrics``), and never blocks
the loop for longer than one rendering. A scraper that misbehaves costs its
own connection and nothing else; the server stops with the node's nursery.
"""

from __future__ import annotations

import logging

import trio
from prometheus_client import CONTENT_TYPE_LATEST

from ._metrics import Metrics

log = logging.getLogger("trio_election.metrics")

#: Largest request head read (request line and headers).
MAX_HEAD_BYTES = 8192
#: How long a client may take to send its request head.
READ_TIMEOUT_S = 10.0
#: Connections served at once; more are closed at once.
MAX_CONNECTIONS = 16


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_metrics(
    metrics: Metrics,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``metrics`` on ``host:port`` until cancelled.

    ``task_status.started(port)`` reports the bound port (port 0 picks one).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("metrics on http://%s/metrics", format_address(host, bound))
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            await stream.aclose()
            return
        try:
            await _answer(stream, metrics)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the scraper went away
        except Exception:  # noqa: BLE001 - a failing scrape must not stop the node
            log.exception("serving /metrics failed")
        finally:
            limiter.release()
            await trio.aclose_forcefully(stream)

    task_status.started(bound)
    await trio.serve_listeners(handle, listeners)


async def _answer(stream: trio.SocketStream, metrics: Metrics) -> None:
    head = b""
    with trio.move_on_after(READ_TIMEOUT_S):
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            if len(head) > MAX_HEAD_BYTES:
                await _respond(stream, "431 Request Header Fields Too Large", b"")
                return
            data = await stream.receive_some(4096)
            if not data:
                return
            head += data
    if b"\n" not in head:
        return  # it never sent a request line in time
    request_line = head.split(b"\n", 1)[0].decode("latin-1").strip()
    parts = request_line.split()
    if len(parts) != 3:
        await _respond(stream, "400 Bad Request", b"bad request line\n")
        return
    method, target, _ = parts
    path = target.split("?", 1)[0]
    if path != "/metrics":
        await _respond(stream, "404 Not Found", b"see /metrics\n")
        return
    if method not in ("GET", "HEAD"):
        await _respond(stream, "405 Method Not Allowed", b"GET /metrics\n", allow="GET, HEAD")
        return
    body = metrics.scrape()
    await _respond(
        stream, "200 OK", body, content_type=CONTENT_TYPE_LATEST, send_body=method == "GET"
    )


async def _respond(
    stream: trio.SocketStream,
    status: str,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    allow: str | None = None,
    send_body: bool = True,
) -> None:
    headers = [
        f"HTTP/1.1 {status}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if allow is not None:
        headers.append(f"Allow: {allow}")
    await stream.send_all(
        "\r\n".join(headers).encode() + b"\r\n\r\n" + (body if send_body else b"")
    )
