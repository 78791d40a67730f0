"""Bookkeeping for ReadIndex (Raft thesis §6.4, "safe" read-only queries).

A read request records the leader's commit index at the time it arrives,
then the leader broadcasts a heartbeat carrying the request's ``ctx``. Once a
quorum acknowledges a heartbeat with that ctx, the leader knows it was still
the leader when the request arrived, so reading state applied up to the
recorded index is linearizable. Requests are answered in arrival order: an
acknowledged ctx also confirms every earlier pending one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._types import Message


@dataclass(slots=True)
class ReadIndexStatus:
    req: Message
    index: int
    acks: set[str] = field(default_factory=set)


class ReadOnly:
    """Pending ReadIndex requests, keyed (and de-duplicated) by ctx."""

    def __init__(self) -> None:
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, req: Message) -> None:
        ctx = req.context
        if ctx in self.pending:
            return
        self.pending[ctx] = ReadIndexStatus(req=req, index=index)
        self.queue.append(ctx)

    def recv_ack(self, node: str, ctx: bytes) -> set[str] | None:
        """Record ``node``'s heartbeat ack for ``ctx``; return all acks so far."""
        rs = self.pending.get(ctx)
        if rs is None:
            return None
        rs.acks.add(node)
        return rs.acks

    def advance(self, ctx: bytes) -> list[ReadIndexStatus]:
        """Pop and return every request up to and including ``ctx``."""
        if ctx not in self.pending:
            return []
        i = self.queue.index(ctx)
        done, self.queue = self.queue[: i + 1], self.queue[i + 1 :]
        return [self.pending.pop(c) for c in done]

    def last_pending_ctx(self) -> bytes:
        return self.queue[-1] if self.queue else b""
