"""Helpers for the server tests: gRPC clients, running nodes, a raw HTTP/2 client.

Every test that talks to a node uses the ``start_node`` fixture (conftest.py):
it opens the trio-asyncio loop that grpclib needs (shared with the test
through pytest-trio's common contextvars context), starts ``serve`` on port 0
and stops every node and closes every channel at teardown.

Time: ``loop.time()`` of trio-asyncio is the Trio clock, so with pytest-trio's
``mock_clock`` (rate 0) lease deadlines, the start-up grace and grpclib call
deadlines all move only when a test calls ``mock_clock.jump``. Real sockets work
under it: I/O readiness does not depend on the clock. ``settle()`` (Trio's
``wait_all_tasks_blocked``) waits until the node and the clients have done all
they can; on localhost a sent request is readable by the server at once, so
"all tasks blocked" means the node has handled it. It does not see worker
threads (the SQLite flush), so tests that rely on it use in-memory nodes or
wait for a reply that comes after the flush.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import trio
import trio.testing

from trio_election._bridge import Channel
from trio_election._generated.v1 import election_grpc, election_pb2 as pb
from trio_election.server import NodeConfig

#: Unary calls fail instead of hanging if a node never answers (Trio clock).
CALL_TIMEOUT = 10.0

SERVICE = "trio_election.v1.LeaderElection"


async def settle() -> None:
    """Wait until every task (node, clients) is blocked: the node has caught up."""
    await trio.testing.wait_all_tasks_blocked()


class _LeaveStream(Exception):
    """Raised to leave a stream by cancelling it (see ``Client.watch``)."""


class Client:
    """A LeaderElection client over the bridge's grpclib Channel, one method per RPC."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.channel = Channel("127.0.0.1", port, election_grpc.LeaderElectionStub)
        self.stub = self.channel.stub

    async def call(self, name: str, request: Any, timeout: float | None = CALL_TIMEOUT) -> Any:
        return await self.channel.unary(getattr(self.stub, name), request, timeout)

    async def try_become_leader(
        self, election: str, node_id: str, ttl_ms: int = 5000, value: bytes = b""
    ) -> pb.TryBecomeLeaderResponse:
        request = pb.TryBecomeLeaderRequest(
            election=election, node_id=node_id, ttl_ms=ttl_ms, value=value
        )
        return await self.call("TryBecomeLeader", request)

    async def heartbeat(
        self, election: str, node_id: str, fencing_token: int = 0
    ) -> pb.HeartbeatResponse:
        request = pb.HeartbeatRequest(
            election=election, node_id=node_id, fencing_token=fencing_token
        )
        return await self.call("Heartbeat", request)

    async def release(self, election: str, node_id: str, fencing_token: int = 0) -> bool:
        request = pb.ReleaseLeadershipRequest(
            election=election, node_id=node_id, fencing_token=fencing_token
        )
        return (await self.call("ReleaseLeadership", request)).released

    async def is_leader(self, election: str, node_id: str) -> pb.IsLeaderResponse:
        return await self.call("IsLeader", pb.IsLeaderRequest(election=election, node_id=node_id))

    async def current_leader(self, election: str) -> pb.GetCurrentLeaderResponse:
        return await self.call("GetCurrentLeader", pb.GetCurrentLeaderRequest(election=election))

    async def campaign(
        self,
        election: str,
        node_id: str,
        ttl_ms: int = 5000,
        value: bytes = b"",
        timeout: float | None = None,
    ) -> pb.CampaignResponse:
        request = pb.CampaignRequest(election=election, node_id=node_id, ttl_ms=ttl_ms, value=value)
        return await self.call("Campaign", request, timeout)

    def keep_alive(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.channel.stream(self.stub.KeepAlive)

    @contextlib.asynccontextmanager
    async def watch(self, election: str) -> AsyncIterator[Any]:
        """An open Watch stream (request sent); ``recv()`` gives the next LeaderEvent.

        Leaving the block cancels the call: a clean exit from a grpclib stream
        would wait for trailers that a Watch never sends on its own.
        """
        try:
            async with self.channel.stream(self.stub.Watch) as stream:
                await stream.send(pb.WatchRequest(election=election), end=True)
                yield stream
                raise _LeaveStream
        except _LeaveStream:
            pass

    def close(self) -> None:
        self.channel.close()


@dataclass
class RunningNode:
    """One node started by ``start_node``; ``stop()`` cancels its serve task."""

    config: NodeConfig
    port: int
    scope: trio.CancelScope
    stopped: trio.Event
    clients: list[Client] = field(default_factory=list)

    def client(self) -> Client:
        client = Client(self.port)
        self.clients.append(client)
        return client

    async def stop(self) -> None:
        """Cancel serve (what SIGTERM does) and wait until it has returned."""
        self.scope.cancel()
        await self.stopped.wait()


# -- a raw HTTP/2 client, for input that no gRPC library would send ------------


def grpc_frame(message: bytes, *, compressed: bool = False) -> bytes:
    """gRPC length-prefixed message framing."""
    return bytes([int(compressed)]) + len(message).to_bytes(4, "big") + message


@dataclass
class RawResponse:
    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    reset: bool = False

    @property
    def grpc_status(self) -> int | None:
        status = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return None if status is None else int(status)

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))


class RawH2:
    """An HTTP/2 client on a Trio socket, built on the h2 state machine."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.responses: dict[int, RawResponse] = {}
        self.ended: set[int] = set()

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, port: int) -> AsyncIterator[RawH2]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            raw = cls(stream)
            raw.conn.initiate_connection()
            await raw.flush()
            yield raw

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def send_raw(self, data: bytes) -> None:
        """Bytes straight onto the socket, past the h2 state machine."""
        await self.flush()
        await self.stream.send_all(data)

    def queue_call(self, path: str) -> int:
        """Queue a call's headers only (sent with the next flush); return its stream id."""
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", f"127.0.0.1:{self.stream.socket.getpeername()[1]}"),
                ("content-type", "application/grpc+proto"),
                ("te", "trailers"),
            ],
        )
        self.responses[stream_id] = RawResponse()
        return stream_id

    async def request(self, path: str, body: bytes) -> int:
        """Send one complete gRPC request; return its stream id."""
        stream_id = self.queue_call(path)
        self.conn.send_data(stream_id, body, end_stream=True)
        await self.flush()
        return stream_id

    async def response(self, stream_id: int) -> RawResponse:
        """Read until ``stream_id`` ends (or the connection closes).

        Tests that use it run on the real clock: the limit turns a node that
        never answers into a failure instead of a hang.
        """
        with trio.fail_after(10):
            return await self._response(stream_id)

    async def _response(self, stream_id: int) -> RawResponse:
        while stream_id not in self.ended:
            data = await self.stream.receive_some()
            if not data:
                raise ConnectionError("the server closed the connection")
            for event in self.conn.receive_data(data):
                self._handle(event)
            await self.flush()
        return self.responses[stream_id]

    def _handle(self, event: h2.events.Event) -> None:
        stream_id = getattr(event, "stream_id", None)
        response = self.responses.get(stream_id) if stream_id else None
        if isinstance(event, h2.events.ResponseReceived) and response:
            response.headers.update(dict(event.headers))
        elif isinstance(event, h2.events.TrailersReceived) and response:
            response.trailers.update(dict(event.headers))
        elif isinstance(event, h2.events.DataReceived) and response:
            response.data += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.ended.add(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            if response:
                response.reset = True
            self.ended.add(event.stream_id)


StartNode = Callable[..., Awaitable[RunningNode]]
