"""An asyncio loop in a background thread, for the blocking client to call into."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """Runs one asyncio loop in a daemon thread until :meth:`stop`."""

    def __init__(self) -> None:
        # The policy's own loop: if trio-asyncio is imported in this process (by
        # a Trio part of the program), asyncio.new_event_loop() is its Trio-hosted
        # loop, which cannot run in a thread of its own.
        self.loop = asyncio.get_event_loop_policy().new_event_loop()
        self._thread = threading.Thread(target=self._run, name="trio-election-client", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coroutine`` as a task of the loop; its result, for any thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` in the loop and wait for it (cancelled if we are interrupted)."""
        future = self.submit(coroutine)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        async def finish() -> None:
            await self.loop.shutdown_asyncgens()

        if self.loop.is_running():
            self.submit(finish()).result()
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
