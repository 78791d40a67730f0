"""The asyncio bridge: what grpclib raises becomes what callers handle."""

from __future__ import annotations

import pytest
from grpclib.exceptions import StreamTerminatedError

from trio_election._bridge import Channel, asyncio_loop
from trio_election._generated.v1 import election_grpc, election_pb2 as pb


async def test_a_call_on_a_connection_grpclib_is_closing_is_a_lost_connection():
    # grpclib issue #110: a call that starts while the transport is being closed.
    async def racing(request, timeout, metadata):  # noqa: ANN001, ANN202 - a stub method
        raise AttributeError("'Connection' object has no attribute '_transport'")

    async def broken(request, timeout, metadata):  # noqa: ANN001, ANN202
        raise AttributeError("something else")

    async with asyncio_loop():
        channel = Channel("127.0.0.1", 9, election_grpc.LeaderElectionStub)
        try:
            with pytest.raises(StreamTerminatedError, match="Connection lost"):
                await channel.unary(racing, pb.IsLeaderRequest(), 1)
            with pytest.raises(AttributeError, match="something else"):
                await channel.unary(broken, pb.IsLeaderRequest(), 1)
        finally:
            channel.close()
