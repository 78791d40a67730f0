"""Google's grpcio, with stubs generated from the same proto, talks to a node.

The node runs in a background thread with its own ``trio.run`` (grpcio's
client blocks); the stubs are generated into tmp_path by ``grpc_tools.protoc``
at test time and imported under a unique name, since their own import path
(``trio_election.v1``) would clash with the installed package.
"""

from __future__ import annotations

import importlib.util
import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import grpc
import pytest
import trio
from grpc_tools import protoc

from trio_election.server import NodeConfig, serve

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
PROTO = "trio_election/v1/election.proto"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def grpcio_stubs(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """``pb2`` and ``grpc`` modules fresh from protoc, under names of their own."""
    out = tmp_path / "generated"
    out.mkdir()
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_ROOT / PROTO),
        ]
    )
    assert status == 0
    generated = out / "trio_election" / "v1"
    prefix = f"interop_{id(tmp_path):x}"
    pb2_name, grpc_name = f"{prefix}_election_pb2", f"{prefix}_election_pb2_grpc"
    grpc_source = generated / "election_pb2_grpc.py"
    original = "from trio_election.v1 import election_pb2 as"
    text = grpc_source.read_text()
    assert original in text
    grpc_source.write_text(text.replace(original, f"import {pb2_name} as"))
    try:
        pb2 = _load(pb2_name, generated / "election_pb2.py")
        grpc_module = _load(grpc_name, grpc_source)
        yield SimpleNamespace(pb2=pb2, grpc=grpc_module)
    finally:
        sys.modules.pop(pb2_name, None)
        sys.modules.pop(grpc_name, None)


@pytest.fixture
def node_in_thread(tmp_path: Path) -> Iterator[int]:
    """A node serving in a thread of its own (real clock); yields its port."""
    ports: queue.Queue[int | BaseException] = queue.Queue()
    handle: dict[str, object] = {}

    async def main() -> None:
        with trio.CancelScope() as scope:
            handle["scope"] = scope
            handle["token"] = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                config = NodeConfig(port=0, data_dir=tmp_path / "data", start_grace=False)
                ports.put(await nursery.start(serve, config))

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test instead of lost
            ports.put(exc)
            raise

    thread = threading.Thread(target=run, name="trio-election node", daemon=True)
    thread.start()
    port = ports.get(timeout=30)
    if isinstance(port, BaseException):
        raise port
    try:
        yield port
    finally:
        scope = handle["scope"]
        trio.from_thread.run_sync(scope.cancel, trio_token=handle["token"])  # type: ignore[attr-defined]
        thread.join(timeout=30)
        assert not thread.is_alive()


@pytest.fixture
def stub(grpcio_stubs: SimpleNamespace, node_in_thread: int) -> Iterator[SimpleNamespace]:
    """A grpcio LeaderElectionStub on the node; ``stub.pb2`` builds the messages."""
    with grpc.insecure_channel(f"127.0.0.1:{node_in_thread}") as channel:
        grpc_stub = grpcio_stubs.grpc.LeaderElectionStub(channel)
        yield SimpleNamespace(pb2=grpcio_stubs.pb2, call=grpc_stub)


def grant(stub: SimpleNamespace, election: str = "e", node_id: str = "a") -> int:
    request = stub.pb2.TryBecomeLeaderRequest(
        election=election, node_id=node_id, ttl_ms=10_000, value=b"v"
    )
    reply = stub.call.TryBecomeLeader(request, timeout=10)
    assert reply.success
    return reply.leader.fencing_token


def test_grpcio_try_become_leader_grants_then_refuses_another_node(stub: SimpleNamespace):
    token = grant(stub)
    assert token > 0
    refused = stub.call.TryBecomeLeader(
        stub.pb2.TryBecomeLeaderRequest(election="e", node_id="b", ttl_ms=1000), timeout=10
    )
    assert not refused.success
    assert refused.leader.node_id == "a"
    assert refused.leader.fencing_token == token
    assert refused.leader.value == b"v"


def test_grpcio_heartbeat_succeeds_for_the_holder_only(stub: SimpleNamespace):
    token = grant(stub)
    pb2 = stub.pb2
    beat = stub.call.Heartbeat(
        pb2.HeartbeatRequest(election="e", node_id="a", fencing_token=token), timeout=10
    )
    assert beat.success
    assert beat.leader.fencing_token == token
    other = stub.call.Heartbeat(pb2.HeartbeatRequest(election="e", node_id="b"), timeout=10)
    assert not other.success


def test_grpcio_get_current_leader(stub: SimpleNamespace):
    pb2 = stub.pb2
    free = stub.call.GetCurrentLeader(pb2.GetCurrentLeaderRequest(election="e"), timeout=10)
    assert not free.has_leader
    token = grant(stub)
    held = stub.call.GetCurrentLeader(pb2.GetCurrentLeaderRequest(election="e"), timeout=10)
    assert held.has_leader
    assert (held.leader.node_id, held.leader.fencing_token) == ("a", token)
    assert 0 < held.leader.remaining_ms <= 10_000


def test_grpcio_watch_stream_starts_with_the_current_state(stub: SimpleNamespace):
    token = grant(stub)
    watch = stub.call.Watch(stub.pb2.WatchRequest(election="e"), timeout=10)
    try:
        first = next(watch)
    finally:
        watch.cancel()
    assert first.kind == stub.pb2.LeaderEvent.ELECTED
    assert first.leader.fencing_token == token
    assert first.revision > 0


def test_grpcio_keep_alive_stream_answers_in_order(stub: SimpleNamespace):
    token = grant(stub)
    pb2 = stub.pb2
    requests = [
        pb2.HeartbeatRequest(election="e", node_id="a", fencing_token=token),
        pb2.HeartbeatRequest(election="e", node_id="b"),
        pb2.HeartbeatRequest(election="free", node_id="a"),
        pb2.HeartbeatRequest(election="e", node_id="a"),
    ]
    replies = list(stub.call.KeepAlive(iter(requests), timeout=10))
    assert [(r.election, r.success) for r in replies] == [
        ("e", True),
        ("e", False),
        ("free", False),
        ("e", True),
    ]


def test_grpcio_sees_invalid_argument_naming_the_field(stub: SimpleNamespace):
    with pytest.raises(grpc.RpcError) as info:
        stub.call.TryBecomeLeader(
            stub.pb2.TryBecomeLeaderRequest(election="", node_id="a", ttl_ms=1000), timeout=10
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("election:")
