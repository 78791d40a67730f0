"""One KeepAlive stream shared by every leadership an asyncio client holds.

As in the Trio client (``client/_keepalive.py``): heartbeats are answered in
order, so replies go to waiting callers first-in, first-out; heartbeats queued
together go as one batch message (the core's :func:`batch_message`). If the
stream breaks, every waiting caller gets :class:`Unavailable` and the stream
is opened again (on the next endpoint) for the next heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from .._errors import ElectionError
from .._generated.v1 import election_pb2 as pb
from ..client import _core as core
from ._transport import Stream, Transport

log = logging.getLogger("trio_election.aio")

_Item = tuple[pb.HeartbeatRequest, "asyncio.Future[Any]"]


class KeepAlive:
    """Multiplexes heartbeats over one stream; :meth:`run` it as a task."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._requests: asyncio.Queue[_Item] = asyncio.Queue(1024)
        self._pending: deque[list[asyncio.Future[Any]]] = deque()

    async def heartbeat(self, election: str, node_id: str, token: int) -> Any:
        """Send one heartbeat and wait for its reply.

        Raises:
            Unavailable: the stream broke before the reply came.
        """
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._requests.put((core.heartbeat_request(election, node_id, token), answer))
        return await answer

    async def run(self) -> None:
        """Keep a stream open while there is something to send."""
        failures = 0
        while True:
            first = await self._requests.get()
            try:
                async with self._transport.stream("KeepAlive") as stream:
                    async with asyncio.TaskGroup() as tasks:
                        tasks.create_task(self._receive(stream))
                        await self._forward(stream, first)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - a broken stream, in whatever wrapping
                error = core.stream_failed("KeepAlive", exc)[1]
                log.debug("KeepAlive stream failed (%d in a row): %s", failures + 1, error)
                self._fail(first[1], error)
                failures += 1
                await asyncio.sleep(core.backoff_delay(failures))

    async def _forward(self, stream: Stream, first: _Item) -> None:
        batch = [first]
        while True:
            size = batch[0][0].ByteSize()
            while core.batch_has_room(len(batch), size):
                try:
                    item = self._requests.get_nowait()
                except asyncio.QueueEmpty:
                    break
                batch.append(item)
                size += item[0].ByteSize() + 4
            self._pending.append([answer for _, answer in batch])
            await stream.send(core.batch_message([request for request, _ in batch]))
            batch = [await self._requests.get()]

    async def _receive(self, stream: Stream) -> None:
        while True:
            reply = await stream.recv()
            waiting = self._pending[0] if self._pending else []
            replies = core.batch_replies(reply, len(waiting))
            self._pending.popleft()
            for answer, one in zip(waiting, replies, strict=True):
                if not answer.done():  # its caller may have stopped waiting
                    answer.set_result(one)

    def _fail(self, first: asyncio.Future[Any], error: ElectionError) -> None:
        answers = [first]
        for waiting in self._pending:
            answers += waiting
        for answer in answers:
            if not answer.done():
                answer.set_exception(error)
        self._pending.clear()
