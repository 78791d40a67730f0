"""A three-node cluster of real processes on loopback: failover, restarts,
membership, durability, no quorum (docs/design.md, promises 1, 2, 3 and 6).

Each test starts its own nodes (``python -m trio_election node``) through the
``cluster`` fixture, which kills them all at teardown and attaches their logs
to a failing test's report. Times here are real: a wait polls what it waits
for (a Status or Health answer, a call that succeeds, a renewal the client saw)
with short sleeps under ``trio.fail_after``, and every bound is generous (a
loaded machine must not fail them). The only other sleeps are a lease's TTL
elapsing where that is what the test is about. The failover time is printed,
not asserted tightly (the benchmark measures it, docs/design.md "Performance
targets").
"""

from __future__ import annotations

import json
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import trio

from trio_election import open_client
from trio_election._bridge import GRPCError, Status
from trio_election._errors import DeadlineExceeded, Unavailable
from trio_election._generated.v1 import election_pb2 as pb
from trio_election.client import Client, Leadership
from trio_election.testing.processes import Cluster, run_cli

pytestmark = pytest.mark.cluster

T = TypeVar("T")

#: Generous bound on anything that waits for a new Raft leader.
FAILOVER_BOUND = 10.0


async def eventually(call: Callable[[], Awaitable[T]], timeout: float = FAILOVER_BOUND) -> T:
    """``call()`` until it answers instead of raising Unavailable (no leader yet)."""
    with trio.fail_after(timeout):
        while True:
            try:
                return await call()
            except (Unavailable, DeadlineExceeded):
                await trio.sleep(0.05)


async def renewed(lead: Leadership, timeout: float = FAILOVER_BOUND) -> None:
    """Wait until a heartbeat of ``lead`` has succeeded since now: its deadline moved on."""
    before = lead.deadline
    with trio.fail_after(timeout):
        while lead.deadline <= before:
            await trio.sleep(0.01)


async def test_three_nodes_elect_one_raft_leader_and_all_agree(cluster: Cluster):
    leader, term = await cluster.start(3)
    statuses = {i: await cluster.status(i) for i in cluster.nodes}
    assert all(statuses.values()), statuses
    assert {s.id for s in statuses.values()} == {"n1", "n2", "n3"}
    assert {s.leader for s in statuses.values()} == {leader}
    assert {s.term for s in statuses.values()} == {term}
    assert term >= 1
    roles = {i: s.role for i, s in statuses.items()}
    assert roles == {i: "leader" if i == leader else "follower" for i in statuses}, roles
    for status in statuses.values():
        assert {(m.id, m.address) for m in status.members} == {
            (n.id, n.peer_address) for n in cluster.nodes.values()
        }
        assert [m.id for m in status.members if m.is_leader] == [leader]
    assert statuses[leader].from_leader
    await wait_all_healthy(cluster, leader)

    # A follower stopped with SIGTERM shuts down cleanly; the other two go on.
    follower = next(i for i in cluster.nodes if i != leader)
    assert await cluster.kill(follower, signal.SIGTERM) == 0
    assert "SIGTERM: shutting down" in cluster.nodes[follower].log_path.read_text()
    assert await cluster.wait_stable() == (leader, term)


async def wait_all_healthy(cluster: Cluster, leader: str, timeout: float = 5.0) -> None:
    """Wait until the Raft leader reports every member healthy.

    Not a single check: "healthy" is the core's recent_active flag, which
    CheckQuorum clears every election timeout until the next heartbeat reply,
    so about 1 status in 100 shows a live follower as unhealthy.
    """
    with trio.fail_after(timeout):
        while True:
            status = await cluster.status(leader)
            if status is not None and status.from_leader and all(m.healthy for m in status.members):
                return
            await trio.sleep(0.05)


async def test_holder_keeps_its_leadership_and_token_when_the_raft_leader_is_killed(
    cluster: Cluster,
):
    leader, _ = await cluster.start(3)
    survivors = [i for i in cluster.nodes if i != leader]
    ttl = 3.0
    # The client talks to the Raft leader first, so the kill breaks its
    # KeepAlive stream and its heartbeats must fail over.
    async with (
        open_client(cluster.endpoints([leader, *survivors]), timeout=2) as holder,
        open_client(cluster.endpoints(survivors), timeout=2) as probe,
    ):
        async with holder.leadership("production", node_id="worker-a", ttl=ttl) as lead:
            token = lead.fencing_token
            await renewed(lead)  # a heartbeat went through the Raft leader (its first endpoint)
            killed_at = trio.current_time()
            await cluster.kill(leader)

            async def write() -> bool:
                return (await probe.try_become_leader("failover-probe", "probe", ttl=5)).success

            assert await eventually(write)
            failover = trio.current_time() - killed_at
            print(f"failover: a write through a survivor succeeded {failover:.3f} s after the kill")
            assert failover < FAILOVER_BOUND

            # Stay well past the TTL since the kill: only heartbeats that failed
            # over and succeeded keep the body running. The TTL elapsing on the
            # nodes' real clocks is what is tested here, not a synchronisation.
            await trio.sleep_until(killed_at + 1.5 * ttl)
            assert lead.lost is None
            assert lead.deadline > killed_at + ttl - lead.margin  # renewed after the kill
            current = await probe.get_leader("production")
            assert current is not None
            assert (current.node_id, current.fencing_token) == ("worker-a", token)
            assert lead.fencing_token == token
        # Leaving the body released it, through a survivor.
        assert await eventually(lambda: probe.get_leader("production")) is None


async def test_second_campaigner_never_holds_while_the_first_does_across_a_leader_kill(
    cluster: Cluster,
):
    leader, _ = await cluster.start(3)
    survivors = [i for i in cluster.nodes if i != leader]
    ttl = 3.0
    second_elected: list[tuple[float, int]] = []
    # (when the answer came, holder, token) of linearizable reads, all along.
    holders_seen: list[tuple[float, str, int]] = []

    async def watch_holders(probe: Client) -> None:
        while True:
            try:
                current = await probe.get_leader("production")
            except (Unavailable, DeadlineExceeded):
                pass  # no Raft leader for a moment
            else:
                if current is not None:
                    seen = (trio.current_time(), current.node_id, current.fencing_token)
                    holders_seen.append(seen)
            await trio.sleep(0.1)  # how often to sample, not a wait for anything

    async with (
        open_client(cluster.endpoints([leader, *survivors]), timeout=2) as first,
        open_client(cluster.endpoints([leader, *reversed(survivors)]), timeout=2) as second,
        open_client(cluster.endpoints(survivors), timeout=2) as probe,
    ):
        elected = trio.Event()

        async def campaign_second() -> None:
            # Campaign waits past the client's 2 s call timeout, on the Raft
            # leader first, then (after the kill) on a survivor.
            async with second.leadership("production", node_id="worker-b", ttl=ttl) as lead:
                second_elected.append((trio.current_time(), lead.fencing_token))
                elected.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_holders, probe)
            async with first.leadership("production", node_id="worker-a", ttl=ttl) as lead:
                token = lead.fencing_token
                nursery.start_soon(campaign_second)
                # The first holder's heartbeat went through the Raft leader. The
                # second's Campaign, sent before, shows nowhere until granted; it
                # had as long to reach the Raft leader (a round trip on loopback
                # against a heartbeat interval of ttl / 3). Should it not have,
                # the assertions below hold all the same.
                await renewed(lead)
                killed_at = trio.current_time()
                await cluster.kill(leader)
                # The TTL elapsing since the kill is what is tested (the second
                # must not get it meanwhile), not a synchronisation.
                await trio.sleep_until(killed_at + 1.5 * ttl)
                assert lead.lost is None
                assert not second_elected, "two holders at once"
                released_at = trio.current_time()
            # Leaving the body released it: now (and only now) the second gets it.
            with trio.fail_after(FAILOVER_BOUND):
                await elected.wait()
            nursery.cancel_scope.cancel()
    elected_at, second_token = second_elected[0]
    assert elected_at >= released_at
    assert second_token > token
    # A read answered before the release began saw the first holder only (one
    # answered later may linearize after the release: it may see the second).
    before = {(holder, held) for at, holder, held in holders_seen if at < released_at}
    assert before == {("worker-a", token)}, holders_seen


async def test_a_killed_node_restarted_from_its_data_dir_catches_up_and_serves_reads(
    cluster: Cluster,
):
    leader, _ = await cluster.start(3)
    survivors = [i for i in cluster.nodes if i != leader]
    async with open_client(cluster.endpoints(), timeout=2) as client:
        first = await client.try_become_leader("production", "worker-a", ttl=30)
        assert first.success
        await cluster.kill(leader)
        new_leader, _ = await cluster.wait_stable(survivors)
        # While it is down: the holder changes hands, and more is written.
        assert await eventually(
            lambda: client.release("production", "worker-a", first.leader.fencing_token)
        )
        second = await client.try_become_leader("production", "worker-b", ttl=30)
        assert second.success
        for i in range(20):
            assert (await client.try_become_leader(f"other-{i}", "worker-c", ttl=30)).success
        status = await cluster.status(new_leader)
        assert status is not None
        commit = status.commit_index

    await cluster.restart(leader)  # --id --listen --data-dir only
    await cluster.wait_caught_up(leader, commit)
    await cluster.wait_stable()
    async with open_client(cluster.endpoints([leader]), timeout=2) as restarted:
        current = await eventually(lambda: restarted.get_leader("production"))
        assert current is not None
        assert (current.node_id, current.fencing_token) == (
            "worker-b",
            second.leader.fencing_token,
        )
        assert await restarted.is_leader("production", "worker-b")
        assert not await restarted.is_leader("production", "worker-a")
        assert (await restarted.get_leader("other-19")).node_id == "worker-c"


async def member_ids(endpoints: list[str]) -> list[str]:
    result = await run_cli("member", "list", "--json", "--endpoints", ",".join(endpoints))
    assert result.returncode == 0, result.stderr.decode()
    return [m["id"] for m in json.loads(result.stdout)["members"]]


async def test_a_fourth_node_joins_through_a_follower_then_is_removed_and_exits(
    cluster: Cluster,
):
    leader, _ = await cluster.start(3)
    original = list(cluster.nodes)
    follower = next(i for i in original if i != leader)
    async with open_client(cluster.endpoints(original), timeout=2) as client:
        granted = await client.try_become_leader("production", "worker-a", ttl=30)
        assert granted.success

        cluster.add("n4")
        await cluster.spawn("n4", "--join", cluster.nodes[follower].peer_address)
        leader, _ = await cluster.wait_stable(["n1", "n2", "n3", "n4"])
        assert await member_ids(cluster.endpoints(original)) == ["n1", "n2", "n3", "n4"]

        # Written after the join: n4 gets it by replication.
        later = await client.try_become_leader("later", "worker-c", ttl=30)
        status = await cluster.status(leader)
        assert status is not None
        assert status.commit_index >= later.leader.fencing_token  # the grant's Raft index
        await cluster.wait_caught_up("n4", status.commit_index)
    async with open_client(cluster.endpoints(["n4"]), timeout=2) as fourth:
        current = await eventually(lambda: fourth.get_leader("production"))
        assert current is not None
        assert (current.node_id, current.fencing_token) == (
            "worker-a",
            granted.leader.fencing_token,
        )
        assert (await fourth.get_leader("later")).node_id == "worker-c"

    # On the client port, without an admin token, the removal is refused.
    refused = await run_cli("member", "remove", "n4", "--endpoints", ",".join(cluster.endpoints()))
    assert refused.returncode == 1
    assert "need a token with the admin role" in refused.stderr.decode()
    assert await member_ids(cluster.endpoints(original)) == ["n1", "n2", "n3", "n4"]
    # With the cluster key on the peer port, it is done.
    result = await run_cli(
        "member",
        "remove",
        "n4",
        "--endpoints",
        ",".join(cluster.peer_endpoints()),
        "--cluster-key-file",
        str(cluster.key_file),
    )
    assert result.returncode == 0, result.stderr.decode()
    assert "removed n4" in result.stdout.decode()
    assert await member_ids(cluster.endpoints(original)) == ["n1", "n2", "n3"]
    await cluster.wait_stable(original)
    # It learns of its removal and stops by itself.
    code = await cluster.wait_exit("n4", timeout=10)
    assert code == 0, f"n4 exited with {code}"


async def test_a_lease_survives_all_three_nodes_killed_and_restarted_from_disk(
    cluster: Cluster,
):
    await cluster.start(3)
    ids = list(cluster.nodes)
    async with open_client(cluster.endpoints(), timeout=2) as client:
        granted = await client.try_become_leader("production", "worker-a", ttl=30, value=b"v1")
        assert granted.success
        token = granted.leader.fencing_token
    # The grant was acknowledged: it is committed, so on a quorum's disk.
    for node_id in ids:
        await cluster.kill(node_id)
    for node_id in ids:
        await cluster.restart(node_id)
    await cluster.wait_stable(ids)
    async with open_client(cluster.endpoints(), timeout=2) as client:
        current = await eventually(lambda: client.get_leader("production"))
        assert current is not None
        assert (current.node_id, current.fencing_token, current.value) == (
            "worker-a",
            token,
            b"v1",
        )
        renewed = await client.heartbeat("production", "worker-a", token)
        assert renewed.success
        assert renewed.leader.fencing_token == token
        assert await client.release("production", "worker-a", token)
        regranted = await client.try_become_leader("production", "worker-b", ttl=30)
        assert regranted.success
        assert regranted.leader.fencing_token > token


async def test_without_quorum_a_write_answers_unavailable_within_its_deadline(
    cluster: Cluster,
):
    leader, _ = await cluster.start(3)
    # Kill both followers: the survivor is the Raft leader that can no longer commit.
    for node_id in [i for i in cluster.nodes if i != leader]:
        await cluster.kill(node_id)
    deadline = 8.0  # longer than the node's 5 s request timeout
    channel = cluster.election_channel(leader)
    answers: dict[str, object] = {}

    async def call(name: str, request: object) -> None:
        started = trio.current_time()
        try:
            reply = await channel.unary(getattr(channel.stub, name), request, deadline)
        except GRPCError as exc:
            answers[name] = (exc.status, trio.current_time() - started)
        else:
            answers[name] = reply  # a success: wrong

    async def call_through_the_library() -> None:
        # The client library reports the same as Unavailable.
        async with open_client(cluster.endpoints([leader]), timeout=deadline) as client:
            started = trio.current_time()
            try:
                reply = await client.try_become_leader("e2", "worker-b", ttl=5)
            except Unavailable:
                answers["client"] = (Status.UNAVAILABLE, trio.current_time() - started)
            else:
                answers["client"] = reply

    try:
        with trio.fail_after(deadline + 2):  # a hang fails here
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    call,
                    "TryBecomeLeader",
                    pb.TryBecomeLeaderRequest(election="e", node_id="worker-a", ttl_ms=5000),
                )
                nursery.start_soon(
                    call, "GetCurrentLeader", pb.GetCurrentLeaderRequest(election="e")
                )
                nursery.start_soon(call_through_the_library)
    finally:
        channel.close()
    assert set(answers) == {"TryBecomeLeader", "GetCurrentLeader", "client"}
    for name, answer in answers.items():
        assert isinstance(answer, tuple), f"{name} answered {answer!r} without a quorum"
        status, took = answer
        assert status is Status.UNAVAILABLE, f"{name}: {status}"
        assert took < deadline
    print({name: f"{took:.2f} s" for name, (_, took) in answers.items()})

    # By now CheckQuorum has deposed the lone leader: it knows of no leader at
    # all, and says so at once (a read too, not an internal error).
    with trio.fail_after(FAILOVER_BOUND):
        while (status := await cluster.status(leader)) is None or status.leader:
            await trio.sleep(0.05)
    channel = cluster.election_channel(leader)
    try:
        with trio.fail_after(deadline + 2):
            for name, request in [
                ("GetCurrentLeader", pb.GetCurrentLeaderRequest(election="e")),
                ("IsLeader", pb.IsLeaderRequest(election="e", node_id="worker-a")),
            ]:
                with pytest.raises(GRPCError) as refused:
                    await channel.unary(getattr(channel.stub, name), request, deadline)
                assert refused.value.status is Status.UNAVAILABLE, (name, refused.value)
    finally:
        channel.close()


async def test_cli_status_prints_every_member_and_the_leader(cluster: Cluster):
    leader, term = await cluster.start(3)
    await wait_all_healthy(cluster, leader)
    # The first endpoint is down: the command goes on to the next one.
    dead = cluster.reserve_address()  # nothing listens there, nor can start to
    for _ in range(3):  # see wait_all_healthy: health may blink for one heartbeat
        result = await run_cli("status", "--endpoints", f"{dead},{cluster.nodes[leader].address}")
        out = result.stdout.decode()
        assert result.returncode == 0, result.stderr.decode()
        if "unreachable" not in out:
            break
    print(out)
    first, header, *rows = out.splitlines()
    assert first.startswith(f"node {leader} (leader), Raft leader {leader}, term {term}")
    assert header.split() == ["ID", "PEER", "ROLE", "MATCH", "LAG", "HEALTH"]
    table = {row.split()[0]: row.split() for row in rows}
    assert set(table) == set(cluster.nodes)
    for node in cluster.nodes.values():
        node_id, address, role, _match, lag, health = table[node.id]
        assert address == node.peer_address
        assert role == ("leader" if node.id == leader else "follower")
        assert (lag, health) == ("0", "ok")

    follower = next(i for i in cluster.nodes if i != leader)
    result = await run_cli("status", "--json", "--endpoints", cluster.nodes[follower].address)
    assert result.returncode == 0, result.stderr.decode()
    status = json.loads(result.stdout)
    assert (status["id"], status["role"], status["leader"]) == (follower, "follower", leader)
    assert [m["id"] for m in status["members"] if m["is_leader"]] == [leader]
    assert {m["id"] for m in status["members"]} == set(cluster.nodes)


async def test_a_node_that_fell_behind_a_compacted_log_catches_up_by_snapshot(
    cluster: Cluster,
):
    cluster.flags = ("--snapshot-entries", "40")
    leader, _ = await cluster.start(3)
    behind = next(i for i in cluster.nodes if i != leader)
    await cluster.kill(behind)
    async with open_client(cluster.endpoints([leader]), timeout=5) as client:
        for i in range(120):  # three snapshots' worth: the leader compacts its log
            assert (await client.try_become_leader(f"e{i}", f"w{i}", ttl=60)).success
        status = await cluster.status(leader)
        assert status is not None
        commit = status.commit_index
    await cluster.restart(behind)
    await cluster.wait_caught_up(behind, commit)
    assert "installed a snapshot" in cluster.nodes[behind].log_path.read_text()
    async with open_client(cluster.endpoints([behind]), timeout=5) as restarted:
        for i in (0, 77, 119):
            held = await eventually(lambda i=i: restarted.get_leader(f"e{i}"))
            assert held is not None and held.node_id == f"w{i}"


async def test_health_is_not_serving_without_quorum_and_serving_again_with_it(
    cluster: Cluster,
):
    await cluster.start(3)
    survivor, *others = list(cluster.nodes)
    assert await cluster.health(survivor) == "SERVING"
    for node_id in others:
        await cluster.kill(node_id)
    # Within an election timeout or two the survivor knows it has no leader.
    await cluster.wait_health(survivor, "NOT_SERVING")
    result = await run_cli("status", "--endpoints", cluster.nodes[survivor].address)
    assert result.returncode == 1
    assert "no quorum" in result.stderr.decode()
    await cluster.restart(others[0])
    await cluster.wait_health(survivor, "SERVING")


async def test_renewals_through_leader_and_follower_are_answered_off_the_log(cluster: Cluster):
    """Only the first renewal of a grant is logged; the rest, sent to the Raft
    leader or forwarded to it by a follower, leave the log as it was, and are
    refused to anyone but the holder."""
    leader, _ = await cluster.start(3)
    follower = next(i for i in cluster.nodes if i != leader)
    async with (
        open_client(cluster.endpoints([leader]), timeout=2) as at_leader,
        open_client(cluster.endpoints([follower]), timeout=2) as at_follower,
    ):
        granted = await at_follower.try_become_leader("off-log", "worker-a", ttl=5)
        assert granted.success
        token = granted.leader.fencing_token
        first = await at_follower.heartbeat("off-log", "worker-a", token)  # logged
        assert first.success
        before = (await cluster.status(leader)).commit_index
        for client in (at_leader, at_follower) * 20:
            renewed = await client.heartbeat("off-log", "worker-a", token)
            assert renewed.success and renewed.leader.fencing_token == token
            assert renewed.leader.remaining > 4
        assert not (await at_follower.heartbeat("off-log", "worker-b", 0)).success
        assert not (await at_leader.heartbeat("off-log", "worker-a", token + 1)).success
        after = (await cluster.status(leader)).commit_index
        assert after == before, f"40 renewals moved the commit index {before} -> {after}"
