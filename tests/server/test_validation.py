"""Bad input is INVALID_ARGUMENT naming the field (docs/design.md, "Bad input").

For every RPC and every field it checks, a bad request is refused with a
message that starts with the field's name, and afterwards the node still
serves good requests with its state unchanged.
"""

from __future__ import annotations

from typing import Any

import pytest

from trio_election._bridge import GRPCError, Status
from trio_election._generated.v1 import election_pb2 as pb
from trio_election.core import DEFAULT_MAX_TTL_MS

from ._support import Client, RunningNode

GOOD = {"election": "e", "node_id": "b", "ttl_ms": 1000, "value": b"v"}

BAD_NAMES = {
    "empty": "",
    "257_bytes": "x" * 257,
    "258_bytes_in_129_chars": "\u00e9" * 129,
    "newline": "bad\nname",
    "nul": "bad\x00name",
    "del": "bad\x7fname",
    "c1_control": "bad\x85name",
}
BAD_TTLS = {"0": 0, "99": 99, "above_max": DEFAULT_MAX_TTL_MS + 1}
BAD_VALUES = {"4097_bytes": b"v" * 4097}

# Which fields each RPC checks.
FIELDS = {
    "TryBecomeLeader": ("election", "node_id", "ttl_ms", "value"),
    "Campaign": ("election", "node_id", "ttl_ms", "value"),
    "Heartbeat": ("election", "node_id"),
    "KeepAlive": ("election", "node_id"),
    "ReleaseLeadership": ("election", "node_id"),
    "IsLeader": ("election", "node_id"),
    "GetCurrentLeader": ("election",),
    "Watch": ("election",),
}

REQUEST_TYPES = {
    "TryBecomeLeader": pb.TryBecomeLeaderRequest,
    "Campaign": pb.CampaignRequest,
    "Heartbeat": pb.HeartbeatRequest,
    "KeepAlive": pb.HeartbeatRequest,
    "ReleaseLeadership": pb.ReleaseLeadershipRequest,
    "IsLeader": pb.IsLeaderRequest,
    "GetCurrentLeader": pb.GetCurrentLeaderRequest,
    "Watch": pb.WatchRequest,
}


def _cases() -> list[Any]:
    cases = []
    for rpc, fields in FIELDS.items():
        for field in fields:
            if field in ("election", "node_id"):
                bad = BAD_NAMES
            elif field == "ttl_ms":
                bad = BAD_TTLS
            else:
                bad = BAD_VALUES
            for label, value in bad.items():
                cases.append(pytest.param(rpc, field, value, id=f"{rpc}-{field}-{label}"))
    return cases


def _request(rpc: str, field: str, value: Any) -> Any:
    request_type = REQUEST_TYPES[rpc]
    known = set(request_type.DESCRIPTOR.fields_by_name)
    fields = {name: good for name, good in GOOD.items() if name in known}
    fields[field] = value
    return request_type(**fields)


async def _send(client: Client, rpc: str, request: Any) -> Any:
    """Send one request by any of the three call shapes; return the first reply."""
    if rpc == "KeepAlive":
        async with client.keep_alive() as stream:
            await stream.send(request)
            return await stream.recv()
    if rpc == "Watch":
        async with client.watch(request.election) as stream:
            return await stream.recv()
    return await client.call(rpc, request, timeout=5)


@pytest.mark.parametrize(("rpc", "field", "value"), _cases())
async def test_bad_field_is_invalid_argument_naming_it_and_changes_nothing(
    node: RunningNode, rpc: str, field: str, value: Any
):
    client = node.client()
    granted = await client.try_become_leader("e", "a", ttl_ms=5000, value=b"held")
    token = granted.leader.fencing_token

    with pytest.raises(GRPCError) as info:
        await _send(client, rpc, _request(rpc, field, value))
    assert info.value.status is Status.INVALID_ARGUMENT
    assert info.value.message.startswith(f"{field}:"), info.value.message

    # The state is as it was, and the node serves good requests of every kind.
    reply = await client.current_leader("e")
    assert reply.has_leader
    assert (reply.leader.node_id, reply.leader.fencing_token) == ("a", token)
    assert reply.leader.value == b"held"
    assert reply.leader.ttl_ms == 5000
    assert (await client.heartbeat("e", "a", token)).success
    good = _request(rpc, "election", "other")
    reply = await _send(client, rpc, good)
    if rpc in ("TryBecomeLeader",):
        assert reply.success and reply.leader.node_id == "b"
    elif rpc == "Campaign":
        assert reply.leader.node_id == "b"
    elif rpc == "Watch":
        assert reply.kind == pb.LeaderEvent.NO_LEADER
    elif rpc in ("Heartbeat", "KeepAlive"):
        assert reply.election == "other" and not reply.success
    else:
        assert reply is not None
    # The bad call left no trace: "a" is still the only holder of "e", so a
    # release by it works and nothing is waiting to take its place.
    assert await client.release("e", "a", token)
    assert not (await client.current_leader("e")).has_leader


@pytest.mark.parametrize("ttl_ms", [100, DEFAULT_MAX_TTL_MS], ids=["min", "max"])
async def test_ttl_at_the_limits_is_accepted(client: Client, ttl_ms: int):
    reply = await client.try_become_leader("e", "a", ttl_ms=ttl_ms)
    assert reply.success
    assert reply.leader.ttl_ms == ttl_ms


async def test_name_of_256_bytes_and_value_of_4096_bytes_are_accepted(client: Client):
    election = "\u00e9" * 128  # 256 bytes of UTF-8
    node_id = "n" * 256
    reply = await client.try_become_leader(election, node_id, value=b"v" * 4096)
    assert reply.success
    assert reply.leader.election == election
    assert reply.leader.node_id == node_id
    assert len(reply.leader.value) == 4096


async def test_max_ttl_follows_the_node_config(start_node):
    node = await start_node(data_dir=None, max_ttl_ms=2000)
    client = node.client()
    assert (await client.try_become_leader("e", "a", ttl_ms=2000)).success
    with pytest.raises(GRPCError) as info:
        await client.try_become_leader("f", "a", ttl_ms=2001)
    assert info.value.status is Status.INVALID_ARGUMENT
    assert info.value.message.startswith("ttl_ms:")
    assert "2000" in info.value.message
