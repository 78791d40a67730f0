"""Raft messages between nodes: one sender task and one long-lived stream per peer.

Each peer gets a bounded queue and a Trio task that drains it in batches onto
a ``RaftTransport.Send`` stream. A peer that is down or slow costs the others
nothing: its queue fills, further messages to it are dropped (Raft resends
what matters), and the core is told it is unreachable. A snapshot that could
not be delivered is reported as failed, so the leader tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import trio

from .._bridge import Channel, GRPCError, Status, StreamTerminatedError
from .._generated.v1 import cluster_grpc, cluster_pb2 as pb
from ..raft import Message, MessageType, encode_message
from ._security import PeerAuth

log = logging.getLogger("trio_election.peers")

#: Messages queued for one peer before further ones are dropped.
QUEUE_LIMIT = 4096
#: Messages sent in one batch at most.
BATCH_LIMIT = 256


class Peers:
    """Sender tasks for every other member; owned by the node's nursery.

    Args:
        self_id: This node's id (never sent to).
        auth: This node's peer credentials, presented on every call.
        nursery: Where the sender tasks run.
        unreachable: Called with a peer id when sending to it failed.
        snapshot_status: Called with ``(peer, delivered)`` for each snapshot.
        removed: Called with a peer id when that peer says we were removed.
    """

    def __init__(
        self,
        self_id: str,
        auth: PeerAuth,
        nursery: trio.Nursery,
        unreachable: Callable[[str], None],
        snapshot_status: Callable[[str, bool], None],
        removed: Callable[[str], None],
    ) -> None:
        self._self_id = self_id
        self.auth = auth
        self._nursery = nursery
        self._unreachable = unreachable
        self._snapshot_status = snapshot_status
        self._removed = removed
        self._senders: dict[str, _Sender] = {}
        self.bytes_sent = 0

    def update(self, members: dict[str, str]) -> None:
        """Start senders for new members, stop those of removed ones."""
        for peer, sender in list(self._senders.items()):
            if members.get(peer) != sender.address:
                sender.scope.cancel()
                del self._senders[peer]
        for peer, address in members.items():
            if peer != self._self_id and peer not in self._senders:
                try:
                    sender = _Sender(self, peer, address)
                except ValueError as exc:  # logged before addresses were checked
                    log.error("peer %s at %r: not sending to it: %s", peer, address, exc)
                    continue
                self._senders[peer] = sender
                self._nursery.start_soon(sender.run)

    def send(self, messages: Iterable[Message]) -> None:
        for message in messages:
            sender = self._senders.get(message.to)
            if sender is None:
                log.debug("no address for %s; dropping %s", message.to, message.type)
                continue
            sender.enqueue(message)

    def channel(self, peer: str) -> Channel | None:
        """A channel to ``peer`` for occasional unary calls (forwarding)."""
        sender = self._senders.get(peer)
        return None if sender is None else sender.channel

    def close(self) -> None:
        for sender in self._senders.values():
            sender.scope.cancel()
            sender.channel.close()
        self._senders.clear()


class _Sender:
    def __init__(self, peers: Peers, peer: str, address: str) -> None:
        self.peers = peers
        self.peer = peer
        self.address = address
        self.scope = trio.CancelScope()
        self.channel = peers.auth.channel(address, cluster_grpc.RaftTransportStub)
        self._send, self._receive = trio.open_memory_channel[Message](QUEUE_LIMIT)
        self._dropping = False

    def enqueue(self, message: Message) -> None:
        try:
            self._send.send_nowait(message)
            self._dropping = False
        except trio.WouldBlock:
            if not self._dropping:
                log.warning("peer %s is not keeping up; dropping messages to it", self.peer)
                self._dropping = True
            self._failed([message])

    async def run(self) -> None:
        with self.scope:
            failures = 0
            while True:
                first = await self._receive.receive()
                batch = [first]
                try:
                    async with self.channel.stream(self.channel.stub.Send) as stream:
                        while True:
                            batch.extend(self._drain())
                            await self._send_batch(stream, batch)
                            failures = 0
                            batch = [await self._receive.receive()]
                except GRPCError as exc:
                    if exc.status is Status.PERMISSION_DENIED:
                        self.peers._removed(self.peer)
                        return
                    if failures == 0 or exc.status is Status.UNAUTHENTICATED:
                        log.warning("peer %s refused our messages: %s", self.peer, exc.message)
                    failures += 1
                    self._failed(batch + self._drain(everything=True))
                    await trio.sleep(min(1.0, 0.05 * 2 ** min(failures, 5)))
                except Exception as exc:  # noqa: BLE001 - any failure: peer unreachable
                    if failures == 0:
                        log.info("peer %s at %s unreachable: %r", self.peer, self.address, exc)
                    failures += 1
                    self._failed(batch + self._drain(everything=True))
                    await trio.sleep(min(1.0, 0.05 * 2 ** min(failures, 5)))

    def _drain(self, everything: bool = False) -> list[Message]:
        batch: list[Message] = []
        while everything or len(batch) < BATCH_LIMIT:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        return batch

    async def _send_batch(self, stream, batch: list[Message]) -> None:
        messages = [encode_message(m) for m in batch]
        self.peers.bytes_sent += sum(len(m) for m in messages)
        try:
            await stream.send(
                pb.RaftBatch(**{"from": self.peers._self_id}, to=self.peer, messages=messages)
            )
        except StreamTerminatedError:
            await stream.recv()  # raises the status the peer ended the stream with, if any
            raise
        for message in batch:
            if message.type == MessageType.SNAP:
                self.peers._snapshot_status(self.peer, True)

    def _failed(self, batch: list[Message]) -> None:
        self.peers._unreachable(self.peer)
        for message in batch:
            if message.type == MessageType.SNAP:
                self.peers._snapshot_status(self.peer, False)
