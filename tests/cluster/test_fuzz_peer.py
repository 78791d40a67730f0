"""Hypothesis against the peer port of a running cluster (docs/design.md, promise 7).

Three real node processes with peer authentication on. The fuzzer calls the
Raft leader's peer port, every method of RaftTransport and Cluster: as a
stranger (no cluster key, or a wrong one), where every call must be
UNAUTHENTICATED whatever it carries; and with the cluster key, as a member
could, so that the input reaches what decodes it: RaftBatch fields, Raft
messages in the core's encoding (well formed with any values, spoilt, or
any bytes), forwarded renewals, membership changes. It also calls the Cluster
service on the client port, without an admin token, and the client API
through a follower (a Campaign it gives up on must leave the leader's queue).
Each call must end with OK or a status the node sends on purpose
(tests/server/_fuzz.py), and afterwards the cluster agrees on a leader,
serves a fresh client on every node, and no node has logged a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import strategies as st

from tests.server._fuzz import (
    Answer,
    FuzzClient,
    Rpc,
    blobs,
    calls,
    check_status,
    fuzz,
    integers,
    messages,
    raw_bodies,
    rpcs,
    spoilt,
    strings,
    weighted,
)
from trio_election._bridge import Channel, Status
from trio_election._generated.v1 import cluster_grpc, cluster_pb2 as pb, election_pb2 as epb
from trio_election.core import Acquire, CancelWait, Expire, Release, Renew
from trio_election.core._codec import encode_command
from trio_election.raft import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    encode_conf_change,
    encode_message,
)
from trio_election.raft._types import LOCAL_MESSAGE_TYPES
from trio_election.testing.processes import Cluster

pytestmark = pytest.mark.cluster

RAFT = rpcs(pb.DESCRIPTOR.services_by_name["RaftTransport"])
CLUSTER = rpcs(pb.DESCRIPTOR.services_by_name["Cluster"])
LEADER_ELECTION = rpcs(epb.DESCRIPTOR.services_by_name["LeaderElection"])
#: Calls that may rightly wait for ever; the fuzzer cannot see when a node in
#: another process is done with one, so it waits PATIENCE for a first reply.
OPEN_ENDED = frozenset({"Campaign", "Watch"})
PATIENCE = 0.1
#: An election the follower fuzz finds held, so that Campaigns for it wait.
HELD = "fuzz-held"
MEMBERS = ("n1", "n2", "n3")

#: Examples per method and kind of input.
EXAMPLES = 100

#: What a member may be told besides OK: bad input, a batch for another node or
#: from a non-member, a removed sender, a Renew to a follower, no quorum (a
#: membership change while another is pending), an unknown member.
MEMBER_ALLOWED = frozenset(
    {
        Status.INVALID_ARGUMENT,
        Status.RESOURCE_EXHAUSTED,
        Status.FAILED_PRECONDITION,
        Status.PERMISSION_DENIED,
        Status.NOT_FOUND,
        Status.UNAVAILABLE,
    }
)


def peer_client(cluster: Cluster, node_id: str, key: str | None) -> FuzzClient:
    metadata = {"authorization": f"Bearer {key}"} if key is not None else None
    return FuzzClient(*_endpoint(cluster.nodes[node_id].peer_address), metadata)


def cluster_key(cluster: Cluster) -> str:
    return cluster.key_file.read_text().strip()


async def run_fuzz(
    client: FuzzClient,
    rpc: Rpc,
    strategy: st.SearchStrategy[list[Any]],
    allowed: frozenset[Status],
    *,
    max_examples: int = EXAMPLES,
    after: Any = None,
    regressions: Iterable[Any] = (),
) -> None:
    """Fuzz ``rpc``; ``await after(requests, answer)`` follows each call."""
    open_ended = rpc.name in OPEN_ENDED

    async def check(requests: list[Any]) -> None:
        answer: Answer = await client.call(
            rpc, requests, open_ended=open_ended, patience=PATIENCE if open_ended else None
        )
        check_status(rpc, answer, allowed)
        if after is not None:
            await after(requests, answer)

    await fuzz(strategy, check, max_examples=max_examples, regressions=regressions, shrink=False)


async def assert_cluster_serves(cluster: Cluster) -> None:
    """Every node runs and agrees on a leader, each serves a fresh client, and
    no log holds a traceback."""
    for node in cluster.nodes.values():
        assert node.running, f"{node.id} exited with {node.process.returncode}"
    await cluster.wait_stable()
    for node_id in cluster.nodes:
        channel = cluster.election_channel(node_id)
        try:
            election = f"after-the-fuzz-{node_id}"
            granted = await channel.unary(
                channel.stub.TryBecomeLeader,
                epb.TryBecomeLeaderRequest(election=election, node_id="fresh", ttl_ms=5000),
                10,
            )
            assert granted.success, granted
            beat = await channel.unary(
                channel.stub.Heartbeat,
                epb.HeartbeatRequest(
                    election=election, node_id="fresh", fencing_token=granted.leader.fencing_token
                ),
                10,
            )
            assert beat.success, beat
        finally:
            channel.close()
    for node in cluster.nodes.values():
        log = node.log_path.read_text(errors="replace")
        assert "Traceback" not in log, f"{node.id} logged a traceback"
        assert "unexpected error" not in log, f"{node.id} ended with an unexpected error"


#: Failing examples found by the fuzz, tried first on every run, by method.
REGRESSIONS: dict[str, list[Any]] = {
    # Every member exited applying it: "'a' is not HOST:PORT".
    "MemberAdd": [[pb.MemberAddRequest(id="a", address="a")]],
}


# -- what a member may send -----------------------------------------------------------

u64 = integers(0, 2**64 - 1)


def commands() -> st.SearchStrategy[bytes]:
    """Election commands as a follower forwards them (the leader checks them again)."""
    kinds = st.sampled_from([Acquire, Renew, Release, CancelWait, Expire])
    return st.builds(
        encode_command, kinds.flatmap(lambda kind: st.builds(kind, election=strings)), strings
    )


def conf_changes() -> st.SearchStrategy[bytes]:
    return st.builds(
        encode_conf_change,
        st.builds(
            ConfChange,
            type=st.sampled_from(ConfChangeType),
            node_id=weighted((2, st.sampled_from(MEMBERS)), (1, strings)),
            context=weighted((2, st.just(b"127.0.0.1:1")), (1, blobs)),
        ),
    )


def raft_messages(sender: str, to: str, term: int) -> st.SearchStrategy[bytes]:
    """Raft messages in the core's encoding, from ``sender`` to ``to`` (mostly),
    with terms and indexes near the cluster's (mostly); spoilt; or any bytes."""
    ids = weighted((1, st.sampled_from(MEMBERS)), (1, strings))
    # Terms and indexes near the cluster's, anywhere, or past what the Raft
    # store keeps (SQLite's signed 64-bit integers).
    huge = st.sampled_from([2**62, 2**63 - 1, 2**63, 2**64 - 1])
    near = weighted((3, st.integers(0, term + 3)), (1, u64), (1, huge))
    network = [kind for kind in MessageType if kind not in LOCAL_MESSAGE_TYPES]
    entries = st.builds(
        Entry,
        term=near,
        index=near,
        type=st.sampled_from(EntryType),
        data=weighted((1, commands()), (1, conf_changes()), (1, blobs)),
    )
    snapshots = st.builds(
        Snapshot,
        metadata=st.builds(
            SnapshotMetadata,
            index=near,
            term=near,
            conf_state=st.builds(ConfState, voters=st.lists(ids, max_size=4).map(tuple)),
        ),
        data=blobs,
    )
    message = st.builds(
        Message,
        type=weighted((4, st.sampled_from(network)), (1, st.sampled_from(MessageType))),
        to=weighted((4, st.just(to)), (1, ids)),
        from_=weighted((4, st.just(sender)), (1, ids)),
        term=near,
        log_term=near,
        index=near,
        entries=st.lists(entries, max_size=3).map(tuple),
        commit=near,
        snapshot=weighted((4, st.none()), (1, snapshots)),
        reject=st.booleans(),
        reject_hint=near,
        context=weighted((2, st.just(b"")), (1, blobs)),
    )
    encoded = message.map(encode_message)
    return weighted((4, encoded), (1, spoilt(encoded)), (1, st.binary(max_size=64)))


def batches(follower: str, to: str, term: int) -> st.SearchStrategy[Any]:
    """RaftBatch messages: mostly from a member (``follower`` most often, or
    ``to`` itself) to ``to``, with Raft messages from that member; or any fields."""

    def from_member(sender: str) -> st.SearchStrategy[Any]:
        return st.builds(
            lambda messages: pb.RaftBatch(**{"from": sender}, to=to, messages=messages),
            st.lists(raft_messages(sender, to, term), min_size=1, max_size=4),
        )

    senders = weighted((4, st.just(follower)), (1, st.sampled_from(MEMBERS)))
    anything = messages(
        pb.RaftBatch.DESCRIPTOR,
        fields={
            "from": weighted((1, st.sampled_from(MEMBERS)), (1, strings)),
            "to": weighted((1, st.just(to)), (1, strings)),
            "messages": st.lists(raft_messages(follower, to, term), max_size=4),
        },
    )
    return weighted((4, senders.flatmap(from_member)), (1, anything))


#: Peer addresses: any HOST:PORT, or any string.
addresses = weighted(
    (1, st.builds("{}:{}".format, strings, integers(0, 2**32 - 1))),
    (1, strings),
)


def renew_batches(sender: str) -> st.SearchStrategy[Any]:
    return messages(
        pb.RenewBatch.DESCRIPTOR,
        fields={
            "from": weighted((4, st.just(sender)), (1, st.sampled_from(MEMBERS)), (1, strings))
        },
    )


# -- the tests ------------------------------------------------------------------------


async def test_the_peer_port_refuses_a_stranger_whatever_it_sends(cluster: Cluster):
    leader, term = await cluster.start(3)
    follower = next(i for i in MEMBERS if i != leader)
    special = {"Send": batches(follower, leader, term), "Renew": renew_batches(follower)}
    for key in (None, "not-the-cluster-key-at-all"):
        with contextlib.closing(peer_client(cluster, leader, key)) as client:
            for rpc in [*RAFT.values(), *CLUSTER.values()]:
                requests = st.one_of(
                    special.get(rpc.name, messages(rpc.request)), raw_bodies(rpc.request)
                )
                await run_fuzz(
                    client,
                    rpc,
                    calls(rpc, requests),
                    frozenset({Status.UNAUTHENTICATED}),
                    max_examples=20,
                )
    await assert_cluster_serves(cluster)


def forged_term(follower: str, leader: str) -> list[Any]:
    """Found by this fuzz: a heartbeat response with a term near 2**63 made the
    leader take it up, then every node exited when the next election's term
    did not fit the Raft store."""
    message = Message(MessageType.HEARTBEAT_RESP, to=leader, from_=follower, term=2**63 - 1)
    return [pb.RaftBatch(**{"from": follower}, to=leader, messages=[encode_message(message)])]


async def test_raft_messages_from_a_member_get_a_clean_status(cluster: Cluster):
    leader, term = await cluster.start(3)
    follower = next(i for i in MEMBERS if i != leader)
    send = RAFT["Send"]
    with contextlib.closing(peer_client(cluster, leader, cluster_key(cluster))) as client:
        await run_fuzz(
            client,
            send,
            calls(send, batches(follower, leader, term)),
            MEMBER_ALLOWED,
            regressions=[forged_term(follower, leader)],
        )
        await run_fuzz(client, send, calls(send, raw_bodies(send.request)), MEMBER_ALLOWED)
    await assert_cluster_serves(cluster)


async def test_forwarded_renewals_from_a_member_get_a_clean_status(cluster: Cluster):
    leader, _ = await cluster.start(3)
    follower = next(i for i in MEMBERS if i != leader)
    renew = RAFT["Renew"]
    requests = st.one_of(renew_batches(follower), raw_bodies(renew.request))
    with contextlib.closing(peer_client(cluster, leader, cluster_key(cluster))) as client:
        await run_fuzz(client, renew, calls(renew, requests), MEMBER_ALLOWED)
    await assert_cluster_serves(cluster)


async def test_cluster_calls_from_a_member_get_a_clean_status(cluster: Cluster):
    """Status, MemberList, MemberAdd and MemberRemove on the peer port, with the
    key. A member added is removed at once (a cluster of ghosts has no quorum);
    the real members are not removed."""
    leader, _ = await cluster.start(3)
    host, port = _endpoint(cluster.nodes[leader].peer_address)
    key = {"authorization": f"Bearer {cluster_key(cluster)}"}
    admin = Channel(host, port, cluster_grpc.ClusterStub, metadata=key)

    async def remove_what_was_added(requests: list[Any], answer: Answer) -> None:
        request = _decoded(requests[0], pb.MemberAddRequest)
        if answer.status is Status.OK and request is not None and request.id not in MEMBERS:
            await admin.unary(admin.stub.MemberRemove, pb.MemberRemoveRequest(id=request.id), 10)

    with (
        contextlib.closing(admin),
        contextlib.closing(peer_client(cluster, leader, cluster_key(cluster))) as client,
    ):
        for name, rpc in sorted(CLUSTER.items()):
            fields = {"address": addresses} if name == "MemberAdd" else None
            requests = st.one_of(messages(rpc.request, fields=fields), raw_bodies(rpc.request))
            after = remove_what_was_added if name == "MemberAdd" else None
            if name == "MemberRemove":
                requests = requests.filter(_removes_a_ghost)
            await run_fuzz(
                client,
                rpc,
                calls(rpc, requests),
                MEMBER_ALLOWED,
                after=after,
                regressions=REGRESSIONS.get(name, []),
            )
    await assert_cluster_serves(cluster)


async def test_cluster_calls_on_the_client_port_without_an_admin_token(cluster: Cluster):
    leader, _ = await cluster.start(3)
    follower = next(i for i in MEMBERS if i != leader)
    for node_id in (leader, follower):
        host, port = _endpoint(cluster.nodes[node_id].address)
        with contextlib.closing(FuzzClient(host, port)) as client:
            for rpc in CLUSTER.values():
                requests = st.one_of(messages(rpc.request), raw_bodies(rpc.request))
                await run_fuzz(
                    client,
                    rpc,
                    calls(rpc, requests),
                    frozenset({Status.INVALID_ARGUMENT, Status.PERMISSION_DENIED}),
                    max_examples=30,
                )
    await assert_cluster_serves(cluster)


async def test_client_calls_on_a_follower_get_a_clean_status(cluster: Cluster):
    """The client API through a follower, which forwards writes and renewals to
    the Raft leader and asks it for reads: the leader checks them again. A
    Campaign waiting there is cancelled (the follower withdraws it from the
    leader's queue); a Watch resumes from any revision."""
    leader, _ = await cluster.start(3)
    follower = next(i for i in MEMBERS if i != leader)
    allowed = frozenset({Status.INVALID_ARGUMENT, Status.RESOURCE_EXHAUSTED, Status.UNAVAILABLE})
    also = {"Watch": {Status.OUT_OF_RANGE}, "Campaign": {Status.ABORTED}}
    # Most generated requests are refused at once; these reach the waiting:
    # a Campaign queued behind a holder, a Watch of an election that changes.
    channel = cluster.election_channel(leader)
    try:
        held = epb.TryBecomeLeaderRequest(election=HELD, node_id="holder", ttl_ms=60_000)
        assert (await channel.unary(channel.stub.TryBecomeLeader, held, 10)).success
    finally:
        channel.close()
    plausible = {
        "election": st.sampled_from([HELD, "fuzz-free"]),
        "node_id": st.sampled_from(["holder", "w1", "w2"]),
        "ttl_ms": st.integers(1_000, 60_000),
        "start_revision": st.integers(0, 50),
    }
    with contextlib.closing(FuzzClient(*_endpoint(cluster.nodes[follower].address))) as client:
        for name, rpc in sorted(LEADER_ELECTION.items()):
            inputs = [messages(rpc.request), raw_bodies(rpc.request)]
            if name in OPEN_ENDED:
                fields = {
                    f.name: plausible[f.name] for f in rpc.request.fields if f.name in plausible
                }
                inputs.append(messages(rpc.request, fields=fields))
            for requests in inputs:
                await run_fuzz(
                    client,
                    rpc,
                    calls(rpc, requests),
                    allowed | also.get(name, set()),
                    max_examples=40,
                )
    await assert_cluster_serves(cluster)
    # Every Campaign the fuzzer gave up on was withdrawn: released, the held
    # election goes to nobody, not to a candidate that is no longer there.
    channel = cluster.election_channel(leader)
    try:
        current = await channel.unary(
            channel.stub.GetCurrentLeader, epb.GetCurrentLeaderRequest(election=HELD), 10
        )
        assert current.has_leader and current.leader.node_id == "holder", current
        release = epb.ReleaseLeadershipRequest(
            election=HELD, node_id="holder", fencing_token=current.leader.fencing_token
        )
        assert (await channel.unary(channel.stub.ReleaseLeadership, release, 10)).released
        after = await channel.unary(
            channel.stub.GetCurrentLeader, epb.GetCurrentLeaderRequest(election=HELD), 10
        )
        assert not after.has_leader, f"a withdrawn Campaign was granted: {after}"
    finally:
        channel.close()


def _removes_a_ghost(request: Any) -> bool:
    decoded = _decoded(request, pb.MemberRemoveRequest)
    return decoded is None or decoded.id not in MEMBERS


def _decoded(request: Any, kind: Any) -> Any:
    """``request`` as a ``kind``, or None if its bytes are not one."""
    if not isinstance(request, bytes):
        return request if isinstance(request, kind) else _decoded(request.SerializeToString(), kind)
    try:
        return kind.FromString(request)
    except Exception:  # noqa: BLE001 - any bytes at all
        return None


def _endpoint(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)
