"""A data dir belongs to one process and is opened only as what it is; health tells the truth."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
from grpclib.health.v1 import health_grpc, health_pb2

from trio_election._bridge import Channel
from trio_election.server import NodeConfig, serve
from trio_election.server._datadir import DataDirError
from trio_election.server._raft_store import RaftStore
from trio_election.server._security import PeerAuth

from ._support import CALL_TIMEOUT, StartNode, settle

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_second_node_on_a_locked_data_dir_exits_1_naming_the_first(
    start_node: StartNode, tmp_path: Path
):
    node = await start_node(data_dir=tmp_path / "data")
    assert node.port
    command = [sys.executable, "-m", "trio_election", "node", "--listen", "127.0.0.1:0"]
    command += ["--data-dir", str(tmp_path / "data")]
    with trio.fail_after(30):
        result = await trio.run_process(command, capture_stderr=True, check=False)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "is in use by another trio-election node (pid " in lines[0]
    assert str(__import__("os").getpid()) in lines[0]  # this test's process holds it
    # The first node still serves, its data untouched.
    assert (await node.client().try_become_leader("e", "w1")).success


async def test_the_lock_is_released_when_the_node_stops(start_node: StartNode, tmp_path: Path):
    first = await start_node(data_dir=tmp_path / "data")
    await first.stop()
    second = await start_node(data_dir=tmp_path / "data")
    assert (await second.client().try_become_leader("e", "w1")).success


def member_dir(path: Path, node_id: str = "n1") -> Path:
    store = RaftStore(path)
    store.set_meta("node_id", node_id)
    store.set_meta("cluster_id", "c0ffee")
    store.close()
    return path


@pytest.mark.parametrize(
    ("make", "config", "words"),
    [
        (
            lambda d: member_dir(d),
            {},
            ["holds the Raft log of cluster member n1 (cluster c0ffee)", "--id n1"],
        ),
        (
            lambda d: d,
            {
                "node_id": "n1",
                "initial_cluster": {"n1": "127.0.0.1:1"},
                "peer_auth": PeerAuth(insecure=True),
            },
            ["holds a single node's elections", "without --id"],
        ),
        (lambda d: d, {"node_id": "n1"}, ["holds no cluster state", "--initial-cluster or --join"]),
    ],
)
async def test_a_data_dir_is_refused_as_another_kind_of_node(
    start_node: StartNode, tmp_path: Path, make, config, words
):
    data_dir = tmp_path / "data"
    if not config:
        make(data_dir)
    else:
        # A single node's data dir first (or an empty one for the last case).
        if "initial_cluster" in config:
            node = await start_node(data_dir=data_dir)
            await node.stop()
    with pytest.raises(DataDirError) as raised:
        await serve(NodeConfig(port=0, data_dir=data_dir, start_grace=False, **config))
    for word in words:
        assert word in str(raised.value), raised.value


async def health_of(port: int, service: str = "") -> int:
    channel = Channel("127.0.0.1", port, health_grpc.HealthStub)
    try:
        reply = await channel.unary(
            channel.stub.Check, health_pb2.HealthCheckRequest(service=service), CALL_TIMEOUT
        )
        return reply.status
    finally:
        channel.close()


async def test_health_is_not_serving_during_the_start_grace_and_watch_follows(
    start_node: StartNode, mock_clock
):
    node = await start_node(data_dir=None, start_grace=True, max_ttl_ms=10_000)
    await settle()
    for service in ("", "trio_election.v1.LeaderElection"):
        assert await health_of(node.port, service) == NOT_SERVING
    channel = Channel("127.0.0.1", node.port, health_grpc.HealthStub)
    try:
        # A health Watch never ends by itself: leave it by cancelling it.
        with trio.CancelScope() as leave:
            async with channel.stream(channel.stub.Watch) as watch:
                await watch.send(health_pb2.HealthCheckRequest(service=""), end=True)
                assert (await watch.recv()).status == NOT_SERVING
                mock_clock.jump(10)
                await settle()
                assert (await watch.recv()).status == SERVING
                leave.cancel()
                await trio.sleep_forever()
    finally:
        channel.close()


async def test_a_members_data_dir_is_refused_under_another_id(tmp_path: Path):
    data_dir = member_dir(tmp_path / "data", "n1")
    config = NodeConfig(
        port=0, data_dir=data_dir, node_id="n2", peer_port=0, peer_auth=PeerAuth(insecure=True)
    )
    with pytest.raises(DataDirError, match="belongs to node 'n1', not 'n2'"):
        await serve(config)
