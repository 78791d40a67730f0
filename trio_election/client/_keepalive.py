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

from .._errors import ElectionError, Unavailable
from .._generated.v1 import election_pb2 as pb
from ._transport import Transport, backoff

log = logging.getLogger("trio_election.client")

#: Heartbeats sent in one batch message at most (the server takes 1,000), and
#: their encoded size (the server reads at most 64 KiB a message).
MAX_BATCH = 500
MAX_BATCH_BYTES = 48 * 1024


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
        self._pending: deque[_Slot | list[_Slot]] = deque()

    async def heartbeat(self, election: str, node_id: str, token: int) -> pb.HeartbeatResponse:
        """Send one heartbeat and wait for its reply.

        Raises:
            Unavailable: the stream broke before the reply came.
        """
        slot = _Slot()
        request = pb.HeartbeatRequest(election=election, node_id=node_id, fencing_token=token)
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
            while len(batch) < MAX_BATCH and size < MAX_BATCH_BYTES:
                try:
                    item = self._requests.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(item)
                size += item[0].ByteSize() + 4
            if len(batch) == 1:
                request, slot = batch[0]
                self._pending.append(slot)
                await stream.send(request)
            else:
                self._pending.append([slot for _, slot in batch])
                await stream.send(pb.HeartbeatRequest(heartbeats=[r for r, _ in batch]))
            batch = [await self._requests.receive()]

    async def _receive(self, stream: object) -> None:
        while True:
            reply = await stream.recv()
            if reply is None:
                raise Unavailable("the server ended the KeepAlive stream")
            waiting = self._pending.popleft()
            if isinstance(waiting, _Slot):
                waiting.reply = reply
                waiting.done.set()
                continue
            if len(reply.heartbeats) != len(waiting):
                raise Unavailable(
                    f"a batch of {len(waiting)} heartbeats got {len(reply.heartbeats)} answers"
                )
            for slot, one in zip(waiting, reply.heartbeats, strict=True):
                slot.reply = one
                slot.done.set()

    def _fail(self, first: _Slot, error: ElectionError) -> None:
        slots = [first]
        for waiting in self._pending:
            slots += [waiting] if isinstance(waiting, _Slot) else waiting
        for slot in slots:
            if not slot.done.is_set():
                slot.error = error
                slot.done.set()
        self._pending.clear()


def _as_unavailable(exc: Exception) -> ElectionError:
    """The one error for a broken stream (nurseries wrap what they raise in groups)."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, ElectionError):
        return exc
    return Unavailable(f"the KeepAlive stream broke: {exc!r}")
