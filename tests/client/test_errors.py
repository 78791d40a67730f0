"""Errors a Python programmer can catch: LeadershipLost as itself, messages that say what broke."""

from __future__ import annotations

import pytest
import trio

from trio_election import LeadershipLost, Unavailable, open_client
from trio_election.client import _core as core
from trio_election.testing import FreezableProxy

TTL = 3.0


async def test_leadership_lost_is_caught_by_a_plain_except_around_open_client(
    node_port: int, autojump_clock: trio.abc.Clock
) -> None:
    caught = None
    try:
        async with open_client([f"127.0.0.1:{node_port}"]) as client:
            async with client.leadership("prod", node_id="w1", ttl=TTL):
                assert await client.release("prod", "w1")
                assert (await client.try_become_leader("prod", "w2", TTL)).success
                await trio.sleep_forever()
    except LeadershipLost as exc:
        caught = exc
    assert type(caught) is LeadershipLost
    assert "'w2' holds" in str(caught)


async def test_leadership_lost_is_caught_by_a_plain_except_around_leadership(
    node_port: int, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    proxy = FreezableProxy("127.0.0.1", node_port)
    proxy_port = await nursery.start(proxy.serve)
    caught = None
    async with open_client([f"127.0.0.1:{proxy_port}"]) as client:
        try:
            async with client.leadership("prod", node_id="w1", ttl=TTL):
                proxy.freeze()
                await trio.sleep_forever()
        except LeadershipLost as exc:
            caught = exc
        proxy.thaw()
    assert type(caught) is LeadershipLost
    assert core.SILENT in str(caught)


async def test_the_body_s_own_error_leaves_open_client_as_itself(node_port: int) -> None:
    with pytest.raises(KeyError):
        async with open_client([f"127.0.0.1:{node_port}"]) as client:
            async with client.leadership("prod", node_id="w1", ttl=TTL):
                raise KeyError("mine")


def test_a_broken_stream_says_what_broke_not_that_a_nursery_had_an_exception() -> None:
    group = ExceptionGroup("Exceptions from Trio nursery", [ConnectionResetError(104, "Gone")])
    _, error = core.stream_failed("KeepAlive", group)
    assert isinstance(error, Unavailable)
    assert str(error) == "KeepAlive stream broke: gone"
    _, error = core.stream_failed("KeepAlive", ExceptionGroup("n", [Unavailable("the end")]))
    assert str(error) == "the end"
    assert "nursery" not in core.explain(ExceptionGroup("nursery", [EOFError("cut")]))
