"""The client library's leadership: safe to use, cancelled before it could be unsafe."""

from __future__ import annotations

import pytest
import trio

from trio_election import LeadershipLost, NotElected, open_client
from trio_election.client._keepalive import KeepAlive
from trio_election.server._service import LeaderElectionService
from trio_election.testing import FreezableProxy

TTL = 3.0


async def test_body_is_cancelled_before_the_server_deadline_when_the_server_goes_silent(
    node_port: int, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    proxy = FreezableProxy("127.0.0.1", node_port)
    proxy_port = await nursery.start(proxy.serve)
    cancelled_at = None
    async with (
        open_client([f"127.0.0.1:{proxy_port}"]) as silent,
        open_client([f"127.0.0.1:{node_port}"]) as direct,
    ):
        with pytest.raises(LeadershipLost):
            async with silent.leadership("prod", node_id="w1", ttl=TTL) as lead:
                await trio.sleep(2 * TTL)  # a few renewals go through
                proxy.freeze()
                try:
                    await trio.sleep_forever()
                finally:
                    cancelled_at = trio.current_time()
                    with trio.CancelScope(shield=True):
                        # At the moment the body stops, the server must still
                        # count w1 as the holder, with time left on its lease.
                        held = await direct.get_leader("prod")
        assert cancelled_at is not None
        assert held is not None and held.node_id == "w1"
        assert held.fencing_token == lead.fencing_token
        assert held.remaining > 0
        assert cancelled_at <= lead.deadline
        # Only after the server's own deadline may someone else take over.
        taken = await direct.try_become_leader("prod", "w2", TTL)
        assert not taken.success
        await trio.sleep(held.remaining + 0.01)
        taken = await direct.try_become_leader("prod", "w2", TTL)
        assert taken.success and taken.leader is not None
        assert taken.leader.fencing_token > lead.fencing_token


async def test_the_body_does_not_start_once_the_deadline_has_passed(
    node_port: int, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first heartbeat succeeds, but its answer comes (or the client is
    # paused) after the deadline it earned: the body must never begin.
    heartbeat = KeepAlive.heartbeat

    async def late(self: KeepAlive, *args: object) -> object:
        reply = await heartbeat(self, *args)
        await trio.sleep(TTL)
        return reply

    monkeypatch.setattr(KeepAlive, "heartbeat", late)
    began = False
    async with open_client([f"127.0.0.1:{node_port}"]) as client:
        with pytest.raises(LeadershipLost, match="before the body could start"):
            async with client.leadership("prod", node_id="w1", ttl=TTL):
                began = True
        assert not began
        assert await client.get_leader("prod") is None  # released on the way out


async def test_leadership_renews_for_as_long_as_the_body_runs(
    node_port: int, autojump_clock: trio.abc.Clock
) -> None:
    async with open_client([f"127.0.0.1:{node_port}"]) as client:
        async with client.leadership("prod", node_id="w1", ttl=TTL) as lead:
            for _ in range(10):
                await trio.sleep(TTL)
                assert await client.is_leader("prod", "w1")
                assert lead.lost is None
            assert (await client.get_leader("prod")).fencing_token == lead.fencing_token


async def test_leadership_is_lost_at_once_when_the_server_refuses_a_heartbeat(
    node_port: int, autojump_clock: trio.abc.Clock
) -> None:
    async with open_client([f"127.0.0.1:{node_port}"]) as client:
        with pytest.raises(LeadershipLost, match="'w2' holds"):
            async with client.leadership("prod", node_id="w1", ttl=TTL) as lead:
                start = trio.current_time()
                # An operator releases w1 by hand and w2 takes over.
                assert await client.release("prod", "w1")
                assert (await client.try_become_leader("prod", "w2", TTL)).success
                try:
                    await trio.sleep_forever()
                finally:
                    stopped = trio.current_time()
        # Cancelled at the next heartbeat (ttl / 3), not at the deadline.
        assert stopped - start <= TTL / 3 + 0.01
        assert lead.lost is not None


async def test_leadership_releases_the_election_when_the_body_ends(
    node_port: int, autojump_clock: trio.abc.Clock
) -> None:
    async with open_client([f"127.0.0.1:{node_port}"]) as client:
        async with client.leadership("prod", node_id="w1", ttl=TTL):
            assert await client.is_leader("prod", "w1")
        assert await client.get_leader("prod") is None


async def test_leadership_releases_when_the_body_raises(
    node_port: int, autojump_clock: trio.abc.Clock
) -> None:
    async with open_client([f"127.0.0.1:{node_port}"]) as client:
        with pytest.raises(ZeroDivisionError):
            async with client.leadership("prod", node_id="w1", ttl=TTL):
                1 / 0  # noqa: B018
        assert await client.get_leader("prod") is None


async def test_candidates_take_turns_in_order_with_rising_tokens(
    node_port: int, autojump_clock: trio.abc.Clock
) -> None:
    order: list[tuple[str, int]] = []

    async def worker(client, name: str, ready: trio.Event | None) -> None:
        async with client.leadership("prod", node_id=name, ttl=TTL) as lead:
            order.append((name, lead.fencing_token))
            if ready is not None:
                ready.set()
            await trio.sleep(1)

    async with open_client([f"127.0.0.1:{node_port}"]) as client:
        first_in = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker, client, "w1", first_in)
            await first_in.wait()
            for name in ("w2", "w3"):
                nursery.start_soon(worker, client, name, None)
                # w2 queues before w3. Virtual time (autojump_clock): the clock
                # moves on only once every task waits, so w2's Campaign has
                # reached the in-process node by then.
                await trio.sleep(0.1)
    assert [name for name, _ in order] == ["w1", "w2", "w3"]
    tokens = [token for _, token in order]
    assert tokens == sorted(tokens) and len(set(tokens)) == 3


async def test_try_leadership_raises_not_elected_when_someone_holds_it(
    node_port: int, autojump_clock: trio.abc.Clock
) -> None:
    async with open_client([f"127.0.0.1:{node_port}"]) as client:
        async with client.try_leadership("prod", node_id="w1", ttl=TTL):
            with pytest.raises(NotElected) as raised:
                async with client.try_leadership("prod", node_id="w2", ttl=TTL):
                    pytest.fail("w2 must not run while w1 holds the election")
            assert raised.value.leader.node_id == "w1"


async def test_cancelled_campaign_leaves_the_queue(
    node_port: int, autojump_clock: trio.abc.Clock
) -> None:
    async with open_client([f"127.0.0.1:{node_port}"]) as client:
        assert (await client.try_become_leader("prod", "w1", TTL)).success
        with trio.move_on_after(1):
            await client.campaign("prod", "w2", TTL)
        # Virtual time, as above: by the time it moves on, the in-process node
        # has seen the cancelled Campaign's stream end.
        await trio.sleep(0.1)
        assert await client.release("prod", "w1")
        assert await client.get_leader("prod") is None  # w2 is not waiting any more


async def test_a_release_that_got_no_answer_is_remembered(
    node_port: int, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    proxy = FreezableProxy("127.0.0.1", node_port)
    proxy_port = await nursery.start(proxy.serve)
    async with open_client([f"127.0.0.1:{proxy_port}"]) as client:
        async with client.try_leadership("prod", node_id="w1", ttl=TTL) as lead:
            proxy.freeze()  # the release on the way out gets no answer
        assert client._unconfirmed == {("prod", "w1"): {lead.fencing_token}}
        proxy.thaw()


async def test_a_grant_of_a_token_whose_release_may_still_land_is_taken_afresh(
    node_port: int, autojump_clock: trio.abc.Clock
) -> None:
    # The same node_id re-acquiring while its old Release is in flight gets the
    # same token back (a refresh); that late Release would then end it under
    # the new holder. The library must not trust such a grant.
    async with (
        open_client([f"127.0.0.1:{node_port}"]) as client,
        open_client([f"127.0.0.1:{node_port}"]) as late,
    ):
        old = (await client.try_become_leader("prod", "w1", TTL)).leader.fencing_token
        client._unconfirmed[("prod", "w1")] = {old}  # as if its Release got no answer
        async with client.try_leadership("prod", node_id="w1", ttl=TTL) as lead:
            assert lead.fencing_token > old
            # The old Release lands now: it must not end the new leadership.
            assert not await late.release("prod", "w1", old)
            assert await client.is_leader("prod", "w1")
        assert client._unconfirmed == {}
        # The same for leadership(), which campaigns.
        old = (await client.try_become_leader("prod", "w1", TTL)).leader.fencing_token
        client._unconfirmed[("prod", "w1")] = {old}
        async with client.leadership("prod", node_id="w1", ttl=TTL) as lead:
            assert lead.fencing_token > old


async def test_renewals_falling_due_together_go_as_one_batch_message(
    node_port: int, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    original = LeaderElectionService._renew_batch

    async def counting(self, stream, request):  # noqa: ANN001, ANN202
        sizes.append(len(request.heartbeats))
        return await original(self, stream, request)

    monkeypatch.setattr(LeaderElectionService, "_renew_batch", counting)
    async with open_client([f"127.0.0.1:{node_port}"]) as client:
        held = trio.Event()
        count = 0

        async def hold(n: int) -> None:
            nonlocal count
            async with client.leadership(f"e{n}", node_id="w1", ttl=TTL) as lead:
                count += 1
                if count == 20:
                    held.set()
                await trio.sleep(5 * TTL)
                assert lead.lost is None

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(hold, n)
            await held.wait()
    assert sizes and max(sizes) > 1, sizes
    assert sum(sizes) > 20, sizes
