"""Partitions without privileges: every peer link runs through a Trio proxy.

Each member advertises its proxy's address, not its own peer listener, so
every Raft message, forwarded proposal and renewal round from member A to
member B travels a connection that A opened to B's proxy. The proxy learns
which member opened it from the kernel: the connection's source port, looked
up in ``/proc/net/tcp``, names a socket inode, and that inode is among the
open files of exactly one of the harness's node processes (ours, so no root
is needed). Everything on that connection, both ways, then obeys the state of
the directed link A->B:

* cut: nothing is forwarded (held, as a network that drops packets would
  leave it to TCP), and a new connection is accepted but not forwarded;
* delayed: each chunk is forwarded ``delay`` seconds after it arrived;
* reset: the link's connections are closed now (the member reconnects).

Raft's messages are one-way (each reply is a message of its own, on the
replier's own connection), so cutting A->B alone is a one-way partition.
Connections from anything that is not a node (the harness's own calls) are
never cut.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterator

import trio

#: Chunks buffered per direction of a held connection before it stops reading.
BUFFER = 256

Link = tuple[str, str]


class Links:
    """The state of every directed link between members, by member name."""

    def __init__(self) -> None:
        self._cut: set[Link] = set()
        self._delay: dict[Link, float] = {}
        self._connections: dict[Link, set[trio.CancelScope]] = defaultdict(set)
        self._changed = trio.Event()

    def cut(self, src: str, dst: str) -> None:
        self._cut.add((src, dst))
        self._notify()

    def delay(self, src: str, dst: str, seconds: float) -> None:
        self._delay[(src, dst)] = seconds
        self._notify()

    @contextlib.contextmanager
    def tracking(self, link: Link, scope: trio.CancelScope) -> Iterator[None]:
        """``scope`` carries a connection of ``link`` until the block ends (for :meth:`reset`)."""
        self._connections[link].add(scope)
        try:
            yield
        finally:
            self._connections[link].discard(scope)

    async def reset(self, src: str, dst: str) -> None:
        for scope in list(self._connections[(src, dst)]):
            scope.cancel()
        await trio.sleep(0)

    def heal(self) -> None:
        """Every link up, without delay."""
        self._cut.clear()
        self._delay.clear()
        self._notify()

    def is_cut(self, link: Link) -> bool:
        return link in self._cut

    def delay_of(self, link: Link) -> float:
        return self._delay.get(link, 0.0)

    async def wait_up(self, link: Link) -> None:
        while link in self._cut:
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def _socket_inode(local_port: int, remote_port: int) -> str | None:
    """The inode of the loopback TCP socket from ``local_port`` to ``remote_port``."""
    local = f"0100007F:{local_port:04X}"
    remote = f"0100007F:{remote_port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return fields[9]
    return None


def owner(pids: dict[int, str], local_port: int, remote_port: int) -> str | None:
    """Which of ``pids`` (pid -> name) holds the socket ``local_port -> remote_port``."""
    inode = _socket_inode(local_port, remote_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid, name in pids.items():
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return name
                except OSError:
                    continue
        except OSError:
            continue
    return None


class InboundProxy:
    """Forwards connections for member ``name`` to its peer listener at ``target``.

    ``pids()`` gives the node processes now running (pid -> member name).
    Use ``port = await nursery.start(proxy.serve)``.
    """

    def __init__(
        self, name: str, target: int, links: Links, pids: Callable[[], dict[int, str]]
    ) -> None:
        self.name = name
        self.target = target
        self.links = links
        self.pids = pids
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        source_port = downstream.socket.getpeername()[1]
        src = owner(self.pids(), source_port, self.port) or "outside"
        link = (src, self.name)
        async with downstream, trio.open_nursery() as nursery:
            with self.links.tracking(link, nursery.cancel_scope):
                await self.links.wait_up(link)
                try:
                    upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
                except OSError:
                    return  # the member is down: the connection ends, as it would
                async with upstream:
                    nursery.start_soon(self._pump, link, downstream, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pump, link, upstream, downstream, nursery.cancel_scope)
                    await trio.sleep_forever()

    async def _pump(
        self, link: Link, source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope
    ) -> None:
        send, receive = trio.open_memory_channel[tuple[float, bytes]](BUFFER)

        async def read() -> None:
            try:
                while data := await source.receive_some():
                    await send.send((trio.current_time(), data))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            await send.aclose()

        async def write() -> None:
            try:
                async for arrived, data in receive:
                    await self.links.wait_up(link)
                    delay = self.links.delay_of(link)
                    if delay > 0 and math.isfinite(delay):
                        await trio.sleep_until(arrived + delay)
                    await sink.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(write)
        done.cancel()
