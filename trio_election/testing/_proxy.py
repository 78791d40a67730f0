"""A TCP proxy that can freeze, to test what clients do when a server goes silent.

Frozen, it keeps every connection open but forwards nothing, like a network
partition or a stalled server; thawed, it forwards what it held. Tests and users
of the client library can import it from ``trio_election.testing``.
"""

from __future__ import annotations

import trio


class FreezableProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; :meth:`freeze` stalls it.

    Use ``port = await nursery.start(proxy.serve)``.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._flowing = trio.Event()
        self._flowing.set()
        self._connections: set[trio.CancelScope] = set()

    def freeze(self) -> None:
        """Stop forwarding in both directions (connections stay open)."""
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def thaw(self) -> None:
        """Forward again, including what arrived while frozen."""
        self._flowing.set()

    async def drop_connections(self) -> None:
        """Cut every open connection (clients see them break and reconnect)."""
        for scope in list(self._connections):
            scope.cancel()
        await trio.sleep(0)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        async with downstream, await trio.open_tcp_stream(*self._target) as upstream:
            async with trio.open_nursery() as nursery:
                self._connections.add(nursery.cancel_scope)
                nursery.start_soon(self._pump, downstream, upstream, nursery.cancel_scope)
                nursery.start_soon(self._pump, upstream, downstream, nursery.cancel_scope)
            self._connections.discard(nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some():
                await self._flowing.wait()
                await sink.send_all(data)
        except trio.BrokenResourceError:
            pass
        done.cancel()
