"""Cluster.ListElections on a single node: what it lists, pages, token filtering, bad input.

An in-memory node (``node`` fixture) unless the test is about the disk; time
is pytest-trio's ``mock_clock``, moved only by ``jump``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from trio_election._bridge import Channel, GRPCError, Status
from trio_election._generated.v1 import cluster_grpc, cluster_pb2 as cpb
from trio_election.core import Acquire, ElectionMachine
from trio_election.server import _listing
from trio_election.server._auth import Tokens
from trio_election.server._listing import MAX_LIST_LIMIT

from ._support import CALL_TIMEOUT, Client, RunningNode, StartNode, settle
from .test_auth import Caller

TEAM_A = "a" * 32
TEAM_B = "b" * 32
READER = "r" * 32


class Lister:
    """A Cluster channel to one node, presenting ``token`` (or nothing)."""

    def __init__(self, node: RunningNode, token: str | None = None) -> None:
        metadata = None if token is None else {"authorization": f"Bearer {token}"}
        self.channel = Channel("127.0.0.1", node.port, cluster_grpc.ClusterStub, metadata=metadata)

    async def page(self, **fields: object) -> cpb.ListElectionsResponse:
        request = cpb.ListElectionsRequest(**fields)
        return await self.channel.unary(self.channel.stub.ListElections, request, CALL_TIMEOUT)

    async def names(self, **fields: object) -> list[str]:
        return [e.election for e in (await self.page(**fields)).elections]

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
async def lister(node: RunningNode):
    lister = Lister(node)
    yield lister
    lister.close()


async def test_lists_each_holder_with_token_ttl_and_remaining_time_in_name_order(
    client: Client, lister: Lister, mock_clock: trio.testing.MockClock
):
    b = (await client.try_become_leader("b", "w2", ttl_ms=2000)).leader
    a = (await client.try_become_leader("a", "w1", ttl_ms=5000)).leader
    await client.try_become_leader("c", "w3")
    assert await client.release("c", "w3")
    mock_clock.jump(0.5)
    page = await lister.page()
    assert [
        (e.election, e.node_id, e.fencing_token, e.ttl_ms, e.remaining_ms, e.owner)
        for e in page.elections
    ] == [
        ("a", "w1", a.fencing_token, 5000, 4500, ""),
        ("b", "w2", b.fencing_token, 2000, 1500, ""),
    ]
    assert (page.applied_index, page.id) == (0, "")  # a single node
    assert (page.truncated, page.next_start_after) == (False, "")
    # An expired lease is gone from the list.
    mock_clock.jump(1.6)
    await settle()
    assert await lister.names() == ["a"]


async def test_prefix_limit_and_start_after_page_through_everything(client: Client, lister: Lister):
    names = [f"svc/{i:02d}" for i in range(7)] + ["other", "svc"]
    for name in names:
        await client.try_become_leader(name, "w")
    assert await lister.names(prefix="svc/", limit=3) == ["svc/00", "svc/01", "svc/02"]
    seen, start_after, pages = [], "", 0
    while True:
        page = await lister.page(prefix="svc/", limit=3, start_after=start_after)
        pages += 1
        seen += [e.election for e in page.elections]
        if not page.truncated:
            break
        assert page.next_start_after == seen[-1]
        start_after = page.next_start_after
    assert seen == [f"svc/{i:02d}" for i in range(7)]
    assert pages == 3
    assert await lister.names() == sorted(names)  # limit 0: the default, all of them here
    assert await lister.names(prefix="nothing-here") == []


async def test_a_listing_from_a_data_dir_node_shows_its_grants(start_node: StartNode, tmp_path):
    node = await start_node(data_dir=tmp_path / "d")
    client, lister = node.client(), Lister(node)
    try:
        token = (await client.try_become_leader("e", "w")).leader.fencing_token
        page = await lister.page()
        assert [(e.election, e.fencing_token) for e in page.elections] == [("e", token)]
    finally:
        lister.close()


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"limit": MAX_LIST_LIMIT + 1}, "limit: 10001 is over 10000"),
        ({"prefix": "x" * 257}, "prefix: is 257 bytes, the limit is 256"),
        ({"prefix": "a\nb"}, "prefix: has a control character (U+000A)"),
        ({"start_after": "é" * 129}, "start_after: is 258 bytes"),
        ({"start_after": "\x7f"}, "start_after: has a control character"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    lister: Lister, fields: dict, words: str
):
    with pytest.raises(GRPCError) as caught:
        await lister.page(**fields)
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert words in caught.value.message


async def test_the_other_cluster_calls_stay_unimplemented_on_a_single_node(lister: Lister):
    with pytest.raises(GRPCError) as caught:
        await lister.channel.unary(lister.channel.stub.Status, cpb.StatusRequest(), CALL_TIMEOUT)
    assert caught.value.status is Status.UNIMPLEMENTED  # `trio-election status` relies on it


@pytest.fixture
async def secured(start_node: StartNode, tmp_path: Path) -> RunningNode:
    path = tmp_path / "tokens"
    path.write_text(f"{TEAM_A} team-a/\n{TEAM_B} team-b/\n{READER} * read\n")
    return await start_node(data_dir=None, tokens=Tokens(path))


async def test_a_token_lists_only_the_elections_under_its_prefix(secured: RunningNode):
    team_a, team_b = Caller(secured.port, TEAM_A), Caller(secured.port, TEAM_B)
    listers = {t: Lister(secured, t) for t in (TEAM_A, TEAM_B, READER, None)}
    try:
        granted_a = (await team_a.acquire("team-a/x", "w")).leader
        await team_a.acquire("team-a/y", "w")
        await team_b.acquire("team-b/x", "w")
        assert await listers[TEAM_A].names() == ["team-a/x", "team-a/y"]
        assert await listers[TEAM_A].names(prefix="team-a/y") == ["team-a/y"]
        assert await listers[TEAM_A].names(prefix="team") == ["team-a/x", "team-a/y"]
        assert await listers[TEAM_B].names() == ["team-b/x"]
        everything = await listers[READER].page()
        assert [e.election for e in everything.elections] == ["team-a/x", "team-a/y", "team-b/x"]
        # The owner is the token's identity, which never shows the token.
        owner = everything.elections[0].owner
        assert owner and TEAM_A not in owner
        assert everything.elections[0].fencing_token == granted_a.fencing_token
        assert everything.elections[1].owner == owner != everything.elections[2].owner
        with pytest.raises(GRPCError) as caught:
            await listers[TEAM_A].page(prefix="team-b/")
        assert caught.value.status is Status.PERMISSION_DENIED
        assert "prefix: 'team-b/' is outside this token's prefix 'team-a/'" in caught.value.message
        with pytest.raises(GRPCError) as caught:
            await listers[None].page()
        assert caught.value.status is Status.UNAUTHENTICATED
    finally:
        for lister in listers.values():
            lister.close()
        team_a.close()
        team_b.close()


def test_a_page_ends_before_its_byte_budget_but_never_empty(monkeypatch):
    machine = ElectionMachine()
    for i in range(5):
        machine.apply(Acquire(f"e{i}", "n" * 200, ttl_ms=1000), now=0.0)
    monkeypatch.setattr(_listing, "MAX_PAGE_BYTES", 500)
    page = _listing.list_page(machine, 0.0, "", 10, "")
    assert [e.election for e in page.elections] == ["e0", "e1"]  # ~245 bytes each
    assert (page.truncated, page.next_start_after) == (True, "e1")
    monkeypatch.setattr(_listing, "MAX_PAGE_BYTES", 10)
    page = _listing.list_page(machine, 0.0, "", 10, "e3")
    assert [e.election for e in page.elections] == ["e4"]
    assert not page.truncated
