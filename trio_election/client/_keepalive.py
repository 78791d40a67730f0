"""One KeepAlive stream shared by every leadership a client holds.

Heartbeats over an open stream cost the server a few microseconds each, a
unary call well over a hundred (docs/design.md, pitfalls), so the library renews
through this stream. Requests are answered in order, so replies are matched
to waiting callers first-in, first-out. Heartbeats that are queued together
(the renewals of many leaderships falling due at once) go as one batch
message, answered by one reply. If the stream breaks, every waiting caller
gets :class:`Unavailable` and the stream is opened again (on the next
endpoint) for the next heartbeat.
"""

from __future__ import annotations

import logging
from collections import deque

import trio

from .._errors import ElectionError
from .._generated.v1 import election_pb2 as pb
from ._core import (
    batch_has_room,
    batch_message,
    batch_replies,
    heartbeat_request,
    stream_failed,
)
from ._transport import Transport, backoff

log = logging.getLogger("trio_election.client")


class _Slot:
    __slots__ = ("done", "reply", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: pb.HeartbeatResponse | None = None
        self.error: ElectionError | None = None


class KeepAlive:
    """Multiplexes heartbeats over one stream; run :meth:`run` in a nursery."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._send, self._requests = trio.open_memory_channel[tuple[pb.HeartbeatRequest, _Slot]](
            1024
        )
        self._pending: deque[list[_Slot]] = deque()

    async def heartbeat(self, election: str, node_id: str, token: int) -> pb.HeartbeatResponse:
        """Send one heartbeat and wait for its reply.

        Raises:
            Unavailable: the stream broke before the reply came.
        """
        slot = _Slot()
        request = heartbeat_request(election, node_id, token)
        await self._send.send((request, slot))
        await slot.done.wait()
        if slot.error is not None:
            raise slot.error
        assert slot.reply is not None
        return slot.reply

    async def run(self) -> None:
        """Keep a stream open while there is something to send."""
        failures = 0
        while True:
            first = await self._requests.receive()
            try:
                async with self._transport.stream("KeepAlive") as stream:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._receive, stream)
                        await self._forward(stream, first)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - a broken stream, in whatever wrapping
                error = _as_unavailable(exc)
                log.debug("KeepAlive stream failed (%d in a row): %s", failures + 1, error)
                self._fail(first[1], error)
                failures += 1
                await backoff(failures)

    async def _forward(self, stream: object, first: tuple[pb.HeartbeatRequest, _Slot]) -> None:
        batch = [first]
        while True:
            size = batch[0][0].ByteSize()
            while batch_has_room(len(batch), size):
                try:
                    item = self._requests.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(item)
                size += item[0].ByteSize() + 4
            self._pending.append([slot for _, slot in batch])
            await stream.send(batch_message([request for request, _ in batch]))
            batch = [await self._requests.receive()]

    async def _receive(self, stream: object) -> None:
        while True:
            reply = await stream.recv()
            waiting = self._pending[0] if self._pending else []
            replies = batch_replies(reply, len(waiting))
            self._pending.popleft()
            for slot, one in zip(waiting, replies, strict=True):
                slot.reply = one
                slot.done.set()

    def _fail(self, first: _Slot, error: ElectionError) -> None:
        slots = [first]
        for waiting in self._pending:
            slots += waiting
        for slot in slots:
            if not slot.done.is_set():
                slot.error = error
                slot.done.set()
        self._pending.clear()


def _as_unavailable(exc: Exception) -> ElectionError:
    """The one error for a broken stream, saying what broke (nurseries wrap
    what they raise in groups: :func:`._core.stream_failed` looks inside)."""
    return stream_failed("KeepAlive", exc)[1]
