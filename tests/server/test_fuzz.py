"""Hypothesis against every RPC of a running single node (docs/design.md, "Bad
input": the server never crashes or loses state on any input).

For each method of LeaderElection and Cluster, two kinds of input: requests
with any field values (``_fuzz.messages``, built from the request's
DESCRIPTOR), and any bytes as the request body (``_fuzz.raw_bodies``). One
node serves all the examples of a test over one connection, and every call
must end with OK or a status the node sends on purpose, never UNKNOWN or
INTERNAL, a reset or a lost connection. Afterwards a fresh client is served as
usual, the node runs, and its log holds no traceback.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import strategies as st

from trio_election._bridge import ConnectionLimits, Status
from trio_election._generated.v1 import cluster_pb2, election_pb2 as pb

from ._fuzz import (
    Answer,
    FuzzClient,
    Rpc,
    calls,
    check_status,
    fuzz,
    messages,
    raw_bodies,
    rpcs,
    tracebacks,
)
from ._support import RunningNode, StartNode

LEADER_ELECTION = rpcs(pb.DESCRIPTOR.services_by_name["LeaderElection"])
CLUSTER = rpcs(cluster_pb2.DESCRIPTOR.services_by_name["Cluster"])
RPCS = {**LEADER_ELECTION, **CLUSTER}

#: Calls that may rightly wait for ever: a Campaign for a held election, a Watch.
OPEN_ENDED = frozenset({"Campaign", "Watch"})

#: What a single node may answer besides OK: bad input, a request over the
#: size limit; and per method what only it says.
ALLOWED = frozenset({Status.INVALID_ARGUMENT, Status.RESOURCE_EXHAUSTED})
ALSO_ALLOWED = {
    "Watch": {Status.OUT_OF_RANGE},  # a start_revision the node has no history for
    "Campaign": {Status.ABORTED},  # a newer Campaign of the same node_id took its place
}

#: Examples per method and kind of input (the whole file runs in some seconds);
#: fewer for Cluster, which a single node mostly does not serve.
EXAMPLES = {"LeaderElection": 200, "Cluster": 60}

#: Failing examples found by the fuzz, tried first on every run, by (method, kind).
REGRESSIONS: dict[tuple[str, str], list[Any]] = {}


@pytest.fixture
async def node(start_node: StartNode) -> RunningNode:
    """A node with a data dir (grants are written through to SQLite). The
    fuzzer cancels (resets) open-ended calls, hundreds a second."""
    return await start_node(connection_limits=ConnectionLimits(max_resets_per_s=1e4))


async def run_fuzz(
    node: RunningNode,
    rpc: Rpc,
    strategy: st.SearchStrategy[list[Any]],
    allowed: frozenset[Status],
    regressions: list[Any],
) -> None:
    with contextlib.closing(FuzzClient("127.0.0.1", node.port)) as client:

        async def check(requests: list[Any]) -> None:
            answer: Answer = await client.call(rpc, requests, open_ended=rpc.name in OPEN_ENDED)
            check_status(rpc, answer, allowed)

        service = "Cluster" if rpc.name in CLUSTER else "LeaderElection"
        await fuzz(strategy, check, max_examples=EXAMPLES[service], regressions=regressions)


async def assert_serves_normally(node: RunningNode, caplog: pytest.LogCaptureFixture) -> None:
    """A fresh client gets a grant and renews it; the node runs; no tracebacks."""
    client = node.client()
    granted = await client.try_become_leader("after-the-fuzz", "fresh", ttl_ms=5000)
    assert granted.success
    beat = await client.heartbeat("after-the-fuzz", "fresh", granted.leader.fencing_token)
    assert beat.success and beat.leader.fencing_token == granted.leader.fencing_token
    assert not node.stopped.is_set()
    assert tracebacks(caplog.records) == []


def allowed(name: str) -> frozenset[Status]:
    extra = ALSO_ALLOWED.get(name, set())
    if name in CLUSTER:
        extra = {Status.UNIMPLEMENTED}  # a single node serves ListElections only
    return ALLOWED | extra


#: The two kinds of input: any field values (built from the request's
#: DESCRIPTOR), and any bytes as the request body.
INPUTS = {"fields": messages, "raw": raw_bodies}


@pytest.mark.parametrize("kind", sorted(INPUTS))
@pytest.mark.parametrize("name", [*sorted(LEADER_ELECTION), *sorted(CLUSTER)])
async def test_any_input_gets_a_clean_status(
    node: RunningNode, caplog: pytest.LogCaptureFixture, name: str, kind: str
):
    rpc = RPCS[name]
    await run_fuzz(
        node,
        rpc,
        calls(rpc, INPUTS[kind](rpc.request)),
        allowed(name),
        REGRESSIONS.get((name, kind), []),
    )
    await assert_serves_normally(node, caplog)
