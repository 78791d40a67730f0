"""The attacks of a stranger (and of a misbehaving member) on a running cluster.

Three real node processes with peer authentication on, attacked over real
gRPC from this test: without credentials, on the client port and on the peer
port; and with the cluster key, as a member could, with what only the Raft
leader may propose or with messages Raft's rules refuse. After each attack
every replica is asked for the state, which must be what it was.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
from grpclib.exceptions import StreamTerminatedError
from h2.exceptions import StreamClosedError

from trio_election._bridge import Channel, GRPCError, Status
from trio_election._generated.v1 import cluster_grpc, cluster_pb2 as pb, election_pb2 as epb
from trio_election.core import Acquire, Expire
from trio_election.core._codec import encode_command
from trio_election.raft import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    encode_conf_change,
    encode_message,
)
from trio_election.server._raft_store import RaftStore
from trio_election.testing import make_certs, write_secret
from trio_election.testing.processes import Cluster, NodeProcess, run_cli

ADD = ConfChangeType.ADD_NODE

ELECTION = "production"
#: How a refused stream can end on the client: the status, or a reset when the
#: server refused before the client had sent everything.
REFUSED = (GRPCError, StreamTerminatedError, StreamClosedError)


async def call(channel: Channel, name: str, request: object) -> object:
    return await channel.unary(getattr(channel.stub, name), request, 5)


async def refused(channel: Channel, name: str, request: object, status: Status) -> str:
    with pytest.raises(GRPCError) as raised:
        await call(channel, name, request)
    assert raised.value.status is status, (name, raised.value)
    return raised.value.message


def peer_channel(cluster: Cluster, node_id: str, stub, key: Path | None = None) -> Channel:
    host, _, port = cluster.nodes[node_id].peer_address.rpartition(":")
    metadata = None
    if key is not None:
        metadata = {"authorization": f"Bearer {key.read_text().strip()}"}
    return Channel(host, int(port), stub, metadata=metadata)


def client_channel(cluster: Cluster, node_id: str, stub) -> Channel:
    host, _, port = cluster.nodes[node_id].address.rpartition(":")
    return Channel(host, int(port), stub)


async def views(cluster: Cluster) -> dict[str, tuple]:
    """Each replica's own view of the election and of the membership."""
    seen = {}
    for node_id in cluster.nodes:
        channel = cluster.election_channel(node_id)
        try:
            reply = await call(
                channel, "GetCurrentLeader", epb.GetCurrentLeaderRequest(election=ELECTION)
            )
        finally:
            channel.close()
        status = await cluster.status(node_id)
        assert status is not None
        leader = reply.leader
        seen[node_id] = (
            (leader.node_id, leader.fencing_token, leader.ttl_ms) if reply.has_leader else None,
            tuple(sorted(m.id for m in status.members)),
        )
    return seen


async def send(channel: Channel, sender: str, to: str, messages: list[Message]) -> None:
    """One RaftTransport.Send batch, as a member (or someone claiming to be one) sends it."""
    async with channel.stream(channel.stub.Send) as stream:
        batch = pb.RaftBatch(
            **{"from": sender}, to=to, messages=[encode_message(m) for m in messages]
        )
        await stream.send(batch, end=True)
        await stream.recv()


async def refused_send(channel: Channel, messages: list[Message], status: Status) -> None:
    """The batch is refused on its headers: the status, or a reset if the refusal
    came before the request was sent whole."""
    with pytest.raises(REFUSED) as raised:
        await send(channel, messages[0].from_, messages[0].to, messages)
    assert not isinstance(raised.value, GRPCError) or raised.value.status is status, raised.value


def forwarded(sender: str, to: str, *entries: bytes, conf_change: bool = False) -> Message:
    """A proposal forwarded by a follower: a PROP message, as its core sends one."""
    kind = EntryType.CONF_CHANGE if conf_change else EntryType.NORMAL
    return Message(
        MessageType.PROP,
        to=to,
        from_=sender,
        entries=tuple(Entry(term=0, index=0, type=kind, data=e) for e in entries),
    )


async def logged(cluster: Cluster, node_id: str, text: str, count: int = 1) -> None:
    """Wait (bounded) until ``node_id``'s log holds ``text`` ``count`` times."""
    log = cluster.nodes[node_id].log_path
    with trio.fail_after(10):
        while log.read_text(errors="replace").count(text) < count:
            await trio.sleep(0.02)


async def grant(cluster: Cluster) -> epb.Leader:
    channel = cluster.election_channel("n1")
    try:
        reply = await call(
            channel,
            "TryBecomeLeader",
            epb.TryBecomeLeaderRequest(election=ELECTION, node_id="holder", ttl_ms=30_000),
        )
    finally:
        channel.close()
    assert reply.success
    return reply.leader


async def agreed_views(cluster: Cluster, expected: tuple) -> None:
    """Wait (bounded) until every replica has applied what the leader has, then
    check that each one's view is ``expected``."""
    leader, _ = await cluster.wait_stable()
    status = await cluster.status(leader)
    for node_id in cluster.nodes:
        await cluster.wait_caught_up(node_id, status.commit_index)
    assert set((await views(cluster)).values()) == {expected}


async def test_a_stranger_without_credentials_changes_nothing(cluster: Cluster):
    leader, term = await cluster.start(3)
    granted = await grant(cluster)
    before = (("holder", granted.fencing_token, 30_000), ("n1", "n2", "n3"))
    follower = next(i for i in cluster.nodes if i != leader)

    # The client port: membership changes need an admin token.
    admin = client_channel(cluster, leader, cluster_grpc.ClusterStub)
    try:
        message = await refused(
            admin, "MemberRemove", pb.MemberRemoveRequest(id=follower), Status.PERMISSION_DENIED
        )
        assert "admin" in message
        await refused(
            admin,
            "MemberAdd",
            pb.MemberAddRequest(id="ghost", address="127.0.0.1:1"),
            Status.PERMISSION_DENIED,
        )
    finally:
        admin.close()
    # A forged expiry of the fresh lease, forwarded as a follower would.
    expire = forwarded(
        follower, leader, encode_command(Expire(ELECTION, granted.fencing_token, 0), "")
    )
    poison = forwarded(follower, leader, b"not a command")
    # The client port does not serve the Raft transport at all.
    raft_on_client_port = client_channel(cluster, leader, cluster_grpc.RaftTransportStub)
    try:
        await refused_send(raft_on_client_port, [expire], Status.UNIMPLEMENTED)
    finally:
        raft_on_client_port.close()

    # The peer port without the key: every call is UNAUTHENTICATED.
    stranger = peer_channel(cluster, leader, cluster_grpc.RaftTransportStub)
    stranger_admin = peer_channel(cluster, leader, cluster_grpc.ClusterStub)
    try:
        await refused_send(stranger, [expire], Status.UNAUTHENTICATED)
        await refused_send(stranger, [poison], Status.UNAUTHENTICATED)
        await refused(
            stranger_admin,
            "MemberRemove",
            pb.MemberRemoveRequest(id=follower),
            Status.UNAUTHENTICATED,
        )
        # Forged heartbeats of a fake leader with a higher term.
        forged = Message(MessageType.HEARTBEAT, to=follower, from_=leader, term=term + 100)
        with pytest.raises(REFUSED) as raised:
            async with stranger.stream(stranger.stub.Send) as stream:
                await stream.send(
                    pb.RaftBatch(
                        **{"from": leader}, to=follower, messages=[encode_message(forged)]
                    ),
                    end=True,
                )
                await stream.recv()
        # Refused on the headers: the status, or a reset if the refusal came
        # before the request was sent whole.
        assert not isinstance(raised.value, GRPCError) or (
            raised.value.status is Status.UNAUTHENTICATED
        )
    finally:
        stranger.close()
        stranger_admin.close()
    # A wrong key is no better than none.
    wrong = peer_channel(
        cluster, leader, cluster_grpc.RaftTransportStub, write_secret(cluster.root / "wrong.key")
    )
    try:
        await refused_send(wrong, [expire], Status.UNAUTHENTICATED)
    finally:
        wrong.close()

    await agreed_views(cluster, before)
    assert (await cluster.wait_stable())[1] == term  # no forged term reached anyone


async def test_a_member_cannot_forward_what_only_the_leader_may_propose(cluster: Cluster):
    """Proposals travel in Raft's messages (PROP); the leader checks each one
    as if a client had sent it, drops the refused ones and says why."""
    leader, _ = await cluster.start(3)
    granted = await grant(cluster)
    before = (("holder", granted.fencing_token, 30_000), ("n1", "n2", "n3"))
    follower = next(i for i in cluster.nodes if i != leader)
    member = peer_channel(cluster, leader, cluster_grpc.RaftTransportStub, cluster.key_file)
    refusals = [
        # An Expire of a fresh lease: only the leader decides expiry.
        (encode_command(Expire(ELECTION, granted.fencing_token, 0), ""), False, "Expire"),
        # Bytes that are no command would poison every log that committed them.
        (b"not a command", False, "data:"),
        # Grants that skip validation: a 46-day TTL, a control character, 5 KB.
        (encode_command(Acquire("other", "w1", 46 * 24 * 3600 * 1000), ""), False, "ttl_ms"),
        (encode_command(Acquire("bad\x07name", "w1", 5000), ""), False, "election"),
        (encode_command(Acquire("other", "w1", 5000, value=b"v" * 5000), ""), False, "value"),
        # A membership change that does not decode.
        (b"\xff\x00", True, "not a membership change"),
    ]
    try:
        for count, (data, conf_change, why) in enumerate(refusals, start=1):
            await send(
                member,
                follower,
                leader,
                [forwarded(follower, leader, data, conf_change=conf_change)],
            )
            refused_line = f"proposal forwarded by {follower} refused"
            await logged(cluster, leader, refused_line, count)
            log = cluster.nodes[leader].log_path.read_text(errors="replace")
            line = [text for text in log.splitlines() if refused_line in text][count - 1]
            assert why in line, (why, line)
    finally:
        member.close()
    await agreed_views(cluster, before)
    # The cluster still commits.
    other = cluster.election_channel(leader)
    try:
        reply = await call(
            other,
            "TryBecomeLeader",
            epb.TryBecomeLeaderRequest(election="other", node_id="w1", ttl_ms=5000),
        )
        assert reply.success
    finally:
        other.close()


async def test_a_member_cannot_make_another_diverge(cluster: Cluster):
    """Raft's own rules hold for authenticated peers: a batch from a node that
    is not a member, a message claiming another sender, an AppendEntries of
    an old term or one that does not match the log: none changes a replica."""
    leader, term = await cluster.start(3)
    granted = await grant(cluster)
    before = (("holder", granted.fencing_token, 30_000), ("n1", "n2", "n3"))
    follower = next(i for i in cluster.nodes if i != leader)
    status = await cluster.status(follower)
    forged_entry = encode_command(Acquire(ELECTION, "intruder", 30_000), "")

    def append(frm: str, term_: int, index: int, log_term: int) -> bytes:
        return encode_message(
            Message(
                MessageType.APP,
                to=follower,
                from_=frm,
                term=term_,
                index=index,
                log_term=log_term,
                entries=(Entry(term_, index + 1, data=forged_entry),),
                commit=index + 1,
            )
        )

    member = peer_channel(cluster, follower, cluster_grpc.RaftTransportStub, cluster.key_file)
    try:
        # From a node that is not a member: the whole batch is refused.
        with pytest.raises(REFUSED) as raised:
            async with member.stream(member.stub.Send) as stream:
                batch = [append("n9", term + 1, status.commit_index, term)]
                await stream.send(pb.RaftBatch(**{"from": "n9"}, to=follower, messages=batch))
                await stream.end()
                await stream.recv()
        if isinstance(raised.value, GRPCError):  # else reset before the end was sent
            assert raised.value.status is Status.FAILED_PRECONDITION
            assert "not a member" in raised.value.message
        # From a member, but a message claiming to be from another (the
        # leader) is dropped; an old term and a log that does not match are
        # refused by Raft itself.
        other = next(i for i in cluster.nodes if i not in (leader, follower))
        async with member.stream(member.stub.Send) as stream:
            batch = [
                append(leader, term, status.commit_index, term),
                append(other, term - 1 if term > 1 else 0, status.commit_index, term),
                append(other, term, status.commit_index + 50, term + 7),
            ]
            await stream.send(pb.RaftBatch(**{"from": other}, to=follower, messages=batch))
            await stream.end()
            await stream.recv()
    finally:
        member.close()
    await agreed_views(cluster, before)


async def test_a_node_with_another_ca_cannot_join_a_mutual_tls_cluster(cluster: Cluster):
    cluster.use_mutual_tls(["n1", "n2", "n3"])
    await cluster.start(3)
    # A certificate of another CA: the cluster's handshake refuses it.
    stranger = make_certs(cluster.root / "other-ca", ["n4"], ca_name="other")["n4"]
    cluster.add("n4")
    command = [sys.executable, "-m", "trio_election", "node", "--id", "n4"]
    command += ["--listen", cluster.nodes["n4"].address, "--data-dir", str(cluster.root / "n4")]
    command += ["--peer-listen", cluster.nodes["n4"].peer_address]
    command += ["--peer-cert", str(stranger.cert), "--peer-key", str(stranger.key)]
    command += ["--peer-ca", str(stranger.ca), "--join", cluster.nodes["n1"].peer_address]
    with trio.move_on_after(4):  # it would retry for a minute; 4 s of refusals is plenty
        await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    members = await run_cli("member", "list", "--json", "--endpoints", cluster.nodes["n1"].address)
    assert members.returncode == 0, members.stderr.decode()
    assert '"n4"' not in members.stdout.decode()
    # The CLI with the stranger's certificate cannot reach the peer port either.
    result = await run_cli(
        "member",
        "remove",
        "n3",
        "--endpoints",
        f"https://{cluster.nodes['n1'].peer_address}",
        "--ca",
        str(stranger.ca),
        "--cert",
        str(stranger.cert),
        "--key",
        str(stranger.key),
        "--timeout",
        "2",
    )
    assert result.returncode == 1
    await cluster.wait_stable(["n1", "n2", "n3"])
    assert [m.id for m in (await cluster.status("n1")).members] == ["n1", "n2", "n3"]


async def test_a_cluster_member_without_peer_credentials_refuses_to_start(tmp_path: Path):
    command = [sys.executable, "-m", "trio_election", "node", "--id", "n1"]
    # The node refuses before it binds anything: no port needs to be free.
    command += ["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "n1")]
    command += ["--initial-cluster", "n1=127.0.0.1:1"]
    with trio.fail_after(30):
        result = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "needs peer authentication" in stderr and "--cluster-key-file" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "n1").exists()  # refused before touching the data dir


async def test_committed_entries_that_do_not_decode_are_no_ops_not_a_crash(
    cluster: Cluster, tmp_path: Path
):
    """Should bytes that are no command ever be committed, every replica
    applies them as the same no-op and logs it: the node starts and serves,
    where before it exited on every restart."""
    data_dir = tmp_path / "n1"
    peer = cluster.reserve_address()
    store = RaftStore(data_dir)
    entries = [
        Entry(
            1, 1, EntryType.CONF_CHANGE, encode_conf_change(ConfChange(ADD, "n1", peer.encode()))
        ),
        Entry(1, 2, data=b"not a command"),
        Entry(1, 3, data=b'["a","",7,"w1",5000,"",false,""]'),  # an election that is a number
        Entry(1, 4, EntryType.CONF_CHANGE, b"\xff\x00"),
        Entry(1, 5, data=encode_command(Acquire(ELECTION, "w1", 30_000), "")),
    ]
    store.write(HardState(term=1, vote="n1", commit=5), entries, None)
    store.set_meta("node_id", "n1")
    store.close()
    node = cluster.nodes["n1"] = NodeProcess(
        "n1", "127.0.0.1:0", peer, data_dir, tmp_path / "n1.log"
    )
    await cluster.spawn("n1")
    await cluster.wait_stable(["n1"])
    seen = await views(cluster)
    assert seen["n1"][0][0] == "w1"  # entry 5 applied after the three bad ones
    assert node.running
    log = node.log_path.read_text()
    assert "entry 2 applied as a no-op" in log
    assert "entry 3 applied as a no-op" in log
    assert "entry 4: not a membership change, applied as a no-op" in log
    assert "Traceback" not in log
