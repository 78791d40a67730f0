"""A real node process and an asyncio proxy that can freeze, for the clients
that do not run on Trio (their tests run on asyncio.run, or on threads)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from trio_election.testing import wait_for_line

SERVING = r"serving (?:clients )?on [^\s,]+:(\d+)"


@contextlib.contextmanager
def node_process(tmp_path: Path, *flags: str, name: str = "node") -> Iterator[int]:
    """Run ``python -m trio_election node`` on port 0; yields its client port."""
    log = tmp_path / f"{name}.log"
    command = [sys.executable, "-m", "trio_election", "node", "--in-memory"]
    command += ["--unsafe-no-start-grace", "--listen", "127.0.0.1:0", *flags]
    with open(log, "wb") as out:
        node = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield int(wait_for_line(log, SERVING, node).group(1))
    finally:
        node.kill()
        node.wait(timeout=30)


class AsyncioFreezableProxy:
    """Forwards ``127.0.0.1:<port>`` to a node; :meth:`freeze` stalls it.

    Frozen, it keeps every connection open but forwards nothing, like a
    network partition (the asyncio twin of ``trio_election.testing.FreezableProxy``).
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        sink.close()


class ThreadedFreezableProxy:
    """An :class:`AsyncioFreezableProxy` on a loop of its own thread, for blocking tests."""

    def __init__(self, target_host: str, target_port: int) -> None:
        from trio_election.sync._loop import LoopThread

        self._runner = LoopThread()
        self._proxy = AsyncioFreezableProxy(target_host, target_port)
        self.port = self._runner.call(self._proxy.start())

    def freeze(self) -> None:
        self._runner.loop.call_soon_threadsafe(self._proxy.freeze)

    def thaw(self) -> None:
        self._runner.loop.call_soon_threadsafe(self._proxy.thaw)

    def close(self) -> None:
        self._runner.call(self._proxy.aclose())
        self._runner.stop()
