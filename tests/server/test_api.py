"""The client API of one node over real gRPC (docs/design.md, "Client API v1").

Most tests use an in-memory node without start-up grace (no disk, no worker
threads, so ``settle()`` is exact); tests about time use ``mock_clock`` (rate
0), which the node's lease deadlines follow, and jump it by hand.
"""

from __future__ import annotations

import pytest
import trio

from trio_election._bridge import GRPCError, Status
from trio_election._generated.v1 import election_pb2 as pb

from ._support import Client, RunningNode, StartNode, settle

ELECTED = pb.LeaderEvent.ELECTED
RELEASED = pb.LeaderEvent.RELEASED
EXPIRED = pb.LeaderEvent.EXPIRED
NO_LEADER = pb.LeaderEvent.NO_LEADER


class Pending:
    """A call running in the background; ``done`` is set when it returns or fails."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: object = None
        self.error: BaseException | None = None

    async def run(self, call) -> None:
        try:
            self.result = await call()
        except Exception as exc:
            self.error = exc
        finally:
            self.done.set()


def start_call(nursery: trio.Nursery, call) -> Pending:
    pending = Pending()
    nursery.start_soon(pending.run, call)
    return pending


# -- TryBecomeLeader ------------------------------------------------------------


async def test_try_become_leader_grants_a_free_election_with_a_token(client: Client):
    reply = await client.try_become_leader("e", "a", ttl_ms=2000, value=b"addr:1")
    assert reply.success
    assert reply.leader.election == "e"
    assert reply.leader.node_id == "a"
    assert reply.leader.fencing_token > 0
    assert reply.leader.ttl_ms == 2000
    assert reply.leader.value == b"addr:1"


async def test_try_become_leader_by_a_second_node_is_refused_with_the_current_leader(
    client: Client,
):
    first = await client.try_become_leader("e", "a", value=b"A")
    second = await client.try_become_leader("e", "b", value=b"B")
    assert not second.success
    assert second.leader.node_id == "a"
    assert second.leader.fencing_token == first.leader.fencing_token
    assert second.leader.value == b"A"
    assert (await client.current_leader("e")).leader.node_id == "a"


async def test_try_become_leader_by_the_holder_refreshes_with_the_same_token(client: Client):
    first = await client.try_become_leader("e", "a", ttl_ms=1000, value=b"old")
    again = await client.try_become_leader("e", "a", ttl_ms=3000, value=b"new")
    assert again.success
    assert again.leader.fencing_token == first.leader.fencing_token
    assert again.leader.ttl_ms == 3000
    assert again.leader.value == b"new"


async def test_tokens_of_successive_grants_go_up_across_elections(client: Client):
    tokens = []
    for election in ["x", "y", "x"]:
        reply = await client.try_become_leader(election, "a")
        tokens.append(reply.leader.fencing_token)
        assert await client.release(election, "a")
    assert tokens == sorted(set(tokens))


# -- Heartbeat --------------------------------------------------------------------


async def test_heartbeat_with_the_right_token_succeeds(client: Client):
    token = (await client.try_become_leader("e", "a")).leader.fencing_token
    reply = await client.heartbeat("e", "a", token)
    assert reply.success
    assert reply.election == "e"
    assert reply.leader.node_id == "a"
    assert reply.leader.fencing_token == token


async def test_heartbeat_with_a_wrong_token_is_refused_with_the_current_leader(client: Client):
    token = (await client.try_become_leader("e", "a")).leader.fencing_token
    reply = await client.heartbeat("e", "a", token + 1)
    assert not reply.success
    assert reply.leader.node_id == "a"
    assert reply.leader.fencing_token == token


async def test_heartbeat_with_token_zero_matches_by_node_id(client: Client):
    token = (await client.try_become_leader("e", "a")).leader.fencing_token
    reply = await client.heartbeat("e", "a", 0)
    assert reply.success
    assert reply.leader.fencing_token == token


async def test_heartbeat_by_a_non_holder_is_refused_even_with_the_holders_token(client: Client):
    token = (await client.try_become_leader("e", "a")).leader.fencing_token
    for fencing_token in (0, token):
        reply = await client.heartbeat("e", "b", fencing_token)
        assert not reply.success
        assert reply.leader.node_id == "a"


async def test_heartbeat_of_a_free_election_is_refused_without_a_leader(client: Client):
    reply = await client.heartbeat("free", "a")
    assert not reply.success
    assert not reply.HasField("leader")
    assert reply.election == "free"


# -- ReleaseLeadership, IsLeader, GetCurrentLeader --------------------------------


async def test_release_by_the_holder_frees_the_election(client: Client):
    token = (await client.try_become_leader("e", "a")).leader.fencing_token
    assert await client.release("e", "a", token)
    assert not (await client.current_leader("e")).has_leader
    assert (await client.try_become_leader("e", "b")).success


async def test_release_by_a_non_holder_or_with_a_wrong_token_is_refused(client: Client):
    token = (await client.try_become_leader("e", "a")).leader.fencing_token
    assert not await client.release("e", "b")
    assert not await client.release("e", "a", token + 1)
    assert not await client.release("free", "a")
    reply = await client.current_leader("e")
    assert reply.has_leader
    assert reply.leader.fencing_token == token


async def test_is_leader_is_true_only_for_the_holder(client: Client):
    assert not (await client.is_leader("e", "a")).is_leader
    await client.try_become_leader("e", "a")
    holder = await client.is_leader("e", "a")
    other = await client.is_leader("e", "b")
    assert holder.is_leader
    assert not other.is_leader
    assert other.leader.node_id == "a"


async def test_get_current_leader_of_a_free_election_has_no_leader(client: Client):
    reply = await client.current_leader("nobody-here")
    assert not reply.has_leader
    assert not reply.HasField("leader")


async def test_get_current_leader_returns_the_holder(client: Client):
    granted = await client.try_become_leader("e", "a", ttl_ms=4000, value=b"v")
    reply = await client.current_leader("e")
    assert reply.has_leader
    assert reply.leader.node_id == "a"
    assert reply.leader.fencing_token == granted.leader.fencing_token
    assert reply.leader.ttl_ms == 4000
    assert reply.leader.value == b"v"


# -- Campaign ---------------------------------------------------------------------


async def test_campaign_of_a_free_election_is_granted_at_once(client: Client):
    reply = await client.campaign("e", "a", ttl_ms=1500)
    assert reply.leader.node_id == "a"
    assert reply.leader.ttl_ms == 1500
    assert (await client.is_leader("e", "a")).is_leader


async def test_campaign_blocks_until_release_then_is_elected_with_a_higher_token(
    node: RunningNode,
):
    holder, candidate = node.client(), node.client()
    token = (await holder.try_become_leader("e", "a")).leader.fencing_token
    async with trio.open_nursery() as nursery:
        pending = start_call(nursery, lambda: candidate.campaign("e", "b"))
        await settle()
        assert not pending.done.is_set()
        assert await holder.release("e", "a", token)
        await pending.done.wait()
    assert pending.error is None
    assert pending.result.leader.node_id == "b"
    assert pending.result.leader.fencing_token > token
    assert (await holder.current_leader("e")).leader.node_id == "b"


async def test_campaign_waiters_are_elected_in_fifo_order(node: RunningNode):
    holder, first, second = node.client(), node.client(), node.client()
    await holder.try_become_leader("e", "a")
    async with trio.open_nursery() as nursery:
        pending_b = start_call(nursery, lambda: first.campaign("e", "b"))
        await settle()
        pending_c = start_call(nursery, lambda: second.campaign("e", "c"))
        await settle()
        assert await holder.release("e", "a")
        await pending_b.done.wait()
        await settle()
        assert not pending_c.done.is_set()
        token_b = pending_b.result.leader.fencing_token
        assert pending_b.result.leader.node_id == "b"
        assert await first.release("e", "b", token_b)
        await pending_c.done.wait()
    assert pending_c.result.leader.node_id == "c"
    assert pending_c.result.leader.fencing_token > token_b


async def test_campaign_past_its_deadline_leaves_the_queue(
    node: RunningNode, mock_clock: trio.testing.MockClock
):
    holder, quitter, stayer = node.client(), node.client(), node.client()
    await holder.try_become_leader("e", "a", ttl_ms=60_000)
    async with trio.open_nursery() as nursery:
        pending_b = start_call(nursery, lambda: quitter.campaign("e", "b", timeout=1.0))
        await settle()
        pending_c = start_call(nursery, lambda: stayer.campaign("e", "c"))
        await settle()
        mock_clock.jump(1.5)  # past b's deadline, far from a's TTL
        await pending_b.done.wait()
        # grpclib's client raises TimeoutError when the call's deadline passes.
        assert isinstance(pending_b.error, TimeoutError), pending_b.error
        await settle()  # the node has seen the deadline too
        assert not pending_c.done.is_set()
        assert await holder.release("e", "a")
        await pending_c.done.wait()
    assert pending_c.error is None
    assert pending_c.result.leader.node_id == "c"
    assert (await holder.current_leader("e")).leader.node_id == "c"


# -- KeepAlive --------------------------------------------------------------------


async def test_keep_alive_answers_many_heartbeats_for_several_elections_in_order(
    client: Client,
):
    tokens = {}
    for election in ["e1", "e2", "e3"]:
        tokens[election] = (await client.try_become_leader(election, "a")).leader.fencing_token
    await client.try_become_leader("theirs", "z")
    requests = []
    for round_ in range(10):
        for election in ["e1", "e2", "e3"]:
            requests.append(pb.HeartbeatRequest(election=election, node_id="a"))
        requests.append(
            pb.HeartbeatRequest(election="e2", node_id="a", fencing_token=tokens["e2"] + 100)
        )
        requests.append(pb.HeartbeatRequest(election="theirs", node_id="a"))
        requests.append(pb.HeartbeatRequest(election=f"free{round_}", node_id="a"))
    async with client.keep_alive() as stream:
        for request in requests:  # pipelined: all sent before any is read
            await stream.send(request)
        replies = [await stream.recv() for _ in requests]
        await stream.end()
        assert await stream.recv() is None
    assert [r.election for r in replies] == [r.election for r in requests]
    for request, reply in zip(requests, replies, strict=True):
        expected = request.election in tokens and request.fencing_token in (
            0,
            tokens[request.election],
        )
        assert reply.success == expected, request
        if request.election in tokens:
            assert reply.leader.fencing_token == tokens[request.election]
        elif request.election == "theirs":
            assert reply.leader.node_id == "z"


async def test_keep_alive_heartbeats_extend_the_lease(
    client: Client, mock_clock: trio.testing.MockClock
):
    await client.try_become_leader("e", "a", ttl_ms=1000)
    async with client.keep_alive() as stream:
        for _ in range(5):
            mock_clock.jump(0.8)
            await stream.send(pb.HeartbeatRequest(election="e", node_id="a"))
            reply = await stream.recv()
            assert reply.success
            assert reply.leader.remaining_ms in (999, 1000)
    # 4 s after a grant with a 1 s TTL, still held thanks to the stream.
    assert (await client.is_leader("e", "a")).is_leader


async def test_a_batch_of_heartbeats_is_answered_in_one_reply_in_its_order(client: Client):
    token = (await client.try_become_leader("e1", "a")).leader.fencing_token
    await client.try_become_leader("e2", "z")
    batch = pb.HeartbeatRequest(
        heartbeats=[
            pb.HeartbeatRequest(election="e1", node_id="a", fencing_token=token),
            pb.HeartbeatRequest(election="e2", node_id="a"),
            pb.HeartbeatRequest(election="e1", node_id="a", fencing_token=token + 1),
            pb.HeartbeatRequest(election="free", node_id="a"),
        ]
    )
    for reply in [
        await client.call("Heartbeat", batch),
        await stream_one(client, batch),
    ]:
        assert not reply.election and not reply.success
        assert [(r.election, r.success) for r in reply.heartbeats] == [
            ("e1", True),
            ("e2", False),
            ("e1", False),
            ("free", False),
        ]
        assert reply.heartbeats[1].leader.node_id == "z"


async def stream_one(client: Client, request: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
    async with client.keep_alive() as stream:
        await stream.send(request)
        reply = await stream.recv()
        await stream.end()
    return reply


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (
            pb.HeartbeatRequest(election="e", heartbeats=[pb.HeartbeatRequest(election="e")]),
            "heartbeats: a batch carries its heartbeats only",
        ),
        (
            pb.HeartbeatRequest(
                heartbeats=[pb.HeartbeatRequest(heartbeats=[pb.HeartbeatRequest(election="e")])]
            ),
            "heartbeats: a heartbeat in a batch is not a batch",
        ),
        (
            pb.HeartbeatRequest(heartbeats=[pb.HeartbeatRequest(election="e", node_id="a")] * 1001),
            "heartbeats: 1001 in one message, at most 1000",
        ),
        (
            pb.HeartbeatRequest(heartbeats=[pb.HeartbeatRequest(election="", node_id="a")]),
            "election",
        ),
    ],
)
async def test_a_bad_batch_of_heartbeats_is_refused_naming_the_field(
    client: Client, batch: pb.HeartbeatRequest, message: str
):
    with pytest.raises(GRPCError) as info:
        await client.call("Heartbeat", batch)
    assert info.value.status is Status.INVALID_ARGUMENT
    assert message in info.value.message
    assert (await client.try_become_leader("still-serving", "a")).success


# -- Watch ------------------------------------------------------------------------


async def test_watch_of_a_free_election_starts_with_no_leader(client: Client):
    async with client.watch("e") as watch:
        first = await watch.recv()
    assert first.kind == NO_LEADER
    assert not first.HasField("leader")


async def test_watch_of_a_held_election_starts_with_elected(client: Client):
    token = (await client.try_become_leader("e", "a", value=b"v")).leader.fencing_token
    async with client.watch("e") as watch:
        first = await watch.recv()
    assert first.kind == ELECTED
    assert first.leader.node_id == "a"
    assert first.leader.fencing_token == token
    assert first.leader.value == b"v"
    assert first.revision > 0


async def test_watch_reports_elected_released_and_expired_with_increasing_revisions(
    node: RunningNode, mock_clock: trio.testing.MockClock
):
    watcher, actor = node.client(), node.client()
    await actor.try_become_leader("other", "x")  # an unrelated change: not reported
    async with watcher.watch("e") as watch:
        first = await watch.recv()
        assert first.kind == NO_LEADER
        token_a = (await actor.try_become_leader("e", "a")).leader.fencing_token
        await actor.try_become_leader("other2", "x")
        assert await actor.release("e", "a")
        token_b = (await actor.try_become_leader("e", "b", ttl_ms=500)).leader.fencing_token
        mock_clock.jump(0.6)
        events = [await watch.recv() for _ in range(4)]
    assert [(e.kind, e.leader.node_id, e.leader.fencing_token) for e in events] == [
        (ELECTED, "a", token_a),
        (RELEASED, "a", token_a),
        (ELECTED, "b", token_b),
        (EXPIRED, "b", token_b),
    ]
    revisions = [first.revision] + [e.revision for e in events]
    assert revisions == sorted(set(revisions))


# -- expiry and remaining_ms ------------------------------------------------------


async def test_lease_expires_after_its_ttl_and_never_before(
    client: Client, mock_clock: trio.testing.MockClock
):
    await client.try_become_leader("e", "a", ttl_ms=1000)
    mock_clock.jump(0.999)
    await settle()
    assert (await client.is_leader("e", "a")).is_leader
    assert not (await client.try_become_leader("e", "b")).success
    mock_clock.jump(0.002)
    await settle()
    assert not (await client.current_leader("e")).has_leader
    assert not (await client.heartbeat("e", "a")).success
    assert (await client.try_become_leader("e", "b")).success


async def test_heartbeat_restarts_the_ttl_from_the_heartbeat(
    client: Client, mock_clock: trio.testing.MockClock
):
    await client.try_become_leader("e", "a", ttl_ms=1000)
    mock_clock.jump(0.7)
    assert (await client.heartbeat("e", "a")).success
    mock_clock.jump(0.7)  # 1.4 s after the grant, 0.7 s after the heartbeat
    await settle()
    assert (await client.is_leader("e", "a")).is_leader
    mock_clock.jump(0.31)
    await settle()
    assert not (await client.current_leader("e")).has_leader


async def test_expiry_elects_the_next_campaign_waiter(
    node: RunningNode, mock_clock: trio.testing.MockClock
):
    holder, candidate = node.client(), node.client()
    token = (await holder.try_become_leader("e", "a", ttl_ms=1000)).leader.fencing_token
    async with trio.open_nursery() as nursery:
        pending = start_call(nursery, lambda: candidate.campaign("e", "b"))
        await settle()
        mock_clock.jump(0.99)
        await settle()
        assert not pending.done.is_set()
        mock_clock.jump(0.02)
        await pending.done.wait()
    assert pending.result.leader.node_id == "b"
    assert pending.result.leader.fencing_token > token


async def test_remaining_ms_counts_down_from_the_ttl(
    client: Client, mock_clock: trio.testing.MockClock
):
    granted = await client.try_become_leader("e", "a", ttl_ms=2000)
    assert granted.leader.remaining_ms in (1999, 2000)
    mock_clock.jump(0.5)
    assert (await client.current_leader("e")).leader.remaining_ms in (1499, 1500)
    mock_clock.jump(1.25)
    assert (await client.is_leader("e", "a")).leader.remaining_ms in (249, 250)
    renewed = await client.heartbeat("e", "a")
    assert renewed.leader.remaining_ms in (1999, 2000)


@pytest.mark.parametrize("data_dir", [True, False], ids=["data_dir", "in_memory"])
async def test_grant_reply_comes_with_a_usable_token_on_both_kinds_of_node(
    start_node: StartNode, tmp_path, data_dir
):
    node = await start_node(data_dir=tmp_path / "d" if data_dir else None)
    client = node.client()
    token = (await client.try_become_leader("e", "a")).leader.fencing_token
    assert (await client.heartbeat("e", "a", token)).success
    assert await client.release("e", "a", token)
