"""The asyncio client against a real node process: the same guarantees as the Trio client.

These tests run on ``asyncio.run`` with real clocks, so TTLs are short but
margins generous; nothing waits on the clock to synchronise, only for events.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _node_process import AsyncioFreezableProxy, node_process

import trio_election
from trio_election import LeadershipLost, Unauthenticated, aio
from trio_election.aio import EventKind
from trio_election.testing import make_certs, write_secret

TTL = 2.0
MARGIN = 0.5
#: Bound on anything a test waits for.
WAIT = 20.0


def run(coroutine: object) -> object:
    """Run on a plain asyncio loop (the test process has trio-asyncio imported,
    whose ``asyncio.new_event_loop`` would give a Trio-hosted one)."""

    async def bounded() -> object:
        assert "trio" not in type(asyncio.get_running_loop()).__module__
        async with asyncio.timeout(WAIT):
            return await coroutine  # type: ignore[misc]

    policy = asyncio.get_event_loop_policy()
    with asyncio.Runner(loop_factory=policy.new_event_loop) as runner:
        return runner.run(bounded())


def test_the_calls_round_trip(node: int) -> None:
    async def main() -> None:
        async with aio.open_client(f"127.0.0.1:{node}") as client:
            attempt = await client.try_become_leader("prod", "w1", TTL, b"v")
            assert attempt.success and attempt.leader is not None
            token = attempt.leader.fencing_token
            assert (await client.heartbeat("prod", "w1", token)).success
            assert await client.is_leader("prod", "w1")
            leader = await client.get_leader("prod")
            assert leader is not None and (leader.node_id, leader.value) == ("w1", b"v")
            assert not (await client.try_become_leader("prod", "w2", TTL)).success
            assert await client.release("prod", "w1", token)
            assert not await client.release("prod", "w1", token)
            assert await client.get_leader("prod") is None
            won = await client.campaign("prod", "w2", TTL)
            assert won.node_id == "w2" and won.fencing_token > token

    run(main())


def test_watch_sees_each_change_and_resumes_by_revision(node: int) -> None:
    async def main() -> None:
        async with aio.open_client([f"127.0.0.1:{node}"]) as client:
            events = aiter(client.watch("prod"))
            assert (await anext(events)).kind is EventKind.NO_LEADER
            assert (await client.try_become_leader("prod", "w1", TTL)).success
            elected = await anext(events)
            assert elected.kind is EventKind.ELECTED and elected.leader.node_id == "w1"
            assert await client.release("prod", "w1")
            released = await anext(events)
            assert released.kind is EventKind.RELEASED
            await events.aclose()
            again = aiter(client.watch("prod", start_revision=elected.revision))
            assert [(await anext(again)).revision for _ in range(2)] == [
                elected.revision,
                released.revision,
            ]
            await again.aclose()

    run(main())


def test_leadership_renews_while_the_body_runs_and_releases_on_exit(node: int) -> None:
    async def main() -> None:
        async with aio.open_client([f"127.0.0.1:{node}"]) as client:
            loop = asyncio.get_running_loop()
            async with client.leadership("prod", node_id="w1", ttl=1.0) as lead:
                first = lead.deadline
                assert loop.time() < first <= loop.time() + 1.0
                await asyncio.sleep(1.5)  # longer than the TTL: renewals must go through
                assert lead.deadline > first
                assert lead.lost is None
                assert await client.is_leader("prod", "w1")
            assert await client.get_leader("prod") is None
            # The body's own errors, TimeoutError too, leave as themselves.
            with pytest.raises(TimeoutError):
                async with client.leadership("prod", node_id="w1", ttl=1.0):
                    raise TimeoutError
            assert await client.get_leader("prod") is None

    run(main())


def test_body_is_cancelled_before_the_server_deadline_and_before_anyone_else_is_granted(
    node: int,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        proxy = AsyncioFreezableProxy("127.0.0.1", node)
        port = await proxy.start()
        async with (
            aio.open_client([f"127.0.0.1:{port}"]) as silent,
            aio.open_client([f"127.0.0.1:{node}"]) as direct,
            aio.open_client([f"127.0.0.1:{node}"]) as rival,
        ):
            granted_at: list[float] = []
            cancelled_at = held = None

            async def take_over() -> aio.Leader:
                won = await rival.campaign("prod", "w2", TTL)
                granted_at.append(loop.time())
                return won

            with pytest.raises(LeadershipLost) as raised:
                async with silent.leadership("prod", node_id="w1", ttl=TTL, margin=MARGIN) as lead:
                    second = asyncio.create_task(take_over())
                    proxy.freeze()
                    try:
                        await asyncio.Event().wait()
                    finally:
                        cancelled_at = loop.time()
                        # At the moment the body stops, the server must still
                        # count w1 as the holder, with time left on its lease.
                        held = await direct.get_leader("prod")
            assert type(raised.value) is LeadershipLost
            assert cancelled_at is not None and cancelled_at <= lead.deadline + 0.2
            assert held is not None and held.node_id == "w1"
            assert held.fencing_token == lead.fencing_token
            assert held.remaining > 0
            won = await second
            assert granted_at[0] > cancelled_at
            assert won.fencing_token > lead.fencing_token
            proxy.thaw()
        await proxy.aclose()

    run(main())


def test_leadership_lost_is_caught_by_a_plain_except_around_leadership_and_open_client(
    node: int,
) -> None:
    async def lose(client: aio.Client) -> None:
        async with client.leadership("prod", node_id="w1", ttl=TTL) as lead:
            # An operator releases w1 by hand and w2 takes over.
            assert await client.release("prod", "w1", lead.fencing_token)
            assert (await client.try_become_leader("prod", "w2", TTL)).success
            await asyncio.Event().wait()

    async def main() -> None:
        caught = []
        async with aio.open_client([f"127.0.0.1:{node}"]) as client:
            try:
                await lose(client)
            except LeadershipLost as exc:
                caught.append(exc)
            assert await client.release("prod", "w2")
        try:
            async with aio.open_client([f"127.0.0.1:{node}"]) as client:
                await lose(client)
        except LeadershipLost as exc:
            caught.append(exc)
        assert [type(exc) for exc in caught] == [LeadershipLost, LeadershipLost]
        assert all("'w2' holds" in str(exc) for exc in caught)

    run(main())


def test_calls_and_leadership_fail_over_from_a_dead_endpoint(node: int) -> None:
    with socket.socket() as dead:  # bound, never listening: connections are refused
        dead.bind(("127.0.0.1", 0))
        endpoints = [f"127.0.0.1:{dead.getsockname()[1]}", f"127.0.0.1:{node}"]

        async def main() -> None:
            async with aio.open_client(endpoints) as client:
                assert await client.get_leader("prod") is None
                async with client.leadership("prod", node_id="w1", ttl=TTL) as lead:
                    assert lead.lost is None
                    assert await client.is_leader("prod", "w1")
            async with aio.open_client(endpoints[:1], timeout=1) as client:
                with pytest.raises(trio_election.Unavailable, match="no endpoint answered"):
                    await client.get_leader("prod")

        run(main())


def test_a_token_is_sent_with_every_call(tmp_path: Path) -> None:
    tokens = write_secret(tmp_path / "tokens")
    token = tokens.read_text().strip()
    with node_process(tmp_path, "--auth-token-file", str(tokens)) as port:

        async def main() -> None:
            async with aio.open_client([f"127.0.0.1:{port}"], token_file=tokens) as client:
                async with client.leadership("prod", node_id="w1", ttl=TTL):
                    assert await client.is_leader("prod", "w1")
            async with aio.open_client([f"127.0.0.1:{port}"], token=token) as client:
                assert await client.get_leader("prod") is None
            async with aio.open_client([f"127.0.0.1:{port}"]) as client:
                with pytest.raises(Unauthenticated):
                    await client.get_leader("prod")

        run(main())


def test_tls_with_the_node_s_ca(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs", ["node"])["node"]
    flags = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)]
    with node_process(tmp_path, *flags) as port:

        async def main() -> None:
            endpoint = f"https://127.0.0.1:{port}"
            async with aio.open_client([endpoint], ca=certs.ca) as client:
                async with client.leadership("prod", node_id="w1", ttl=TTL):
                    assert await client.is_leader("prod", "w1")
            async with aio.open_client([endpoint], timeout=2) as client:  # system CAs only
                with pytest.raises(trio_election.ElectionError):
                    await client.get_leader("prod")

        run(main())


def test_the_asyncio_and_blocking_clients_import_neither_trio_nor_trio_asyncio() -> None:
    # trio-asyncio, once imported, replaces asyncio.new_event_loop: an asyncio
    # program importing the client would run on a Trio-hosted loop.
    script = (
        "import asyncio, sys\n"
        "import trio_election.aio, trio_election.sync\n"
        "from trio_election import LeadershipLost, aio, sync\n"
        "assert not {'trio', 'trio_asyncio'} & set(sys.modules), sorted(sys.modules)\n"
        "async def loop(): return type(asyncio.get_running_loop()).__module__\n"
        "print(asyncio.run(loop()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT
    )
    assert done.returncode == 0, done.stderr
    assert "trio" not in done.stdout
