"""Client authentication, authorization and TLS on one node, over real gRPC.

Nodes run on port 0 with a token file (``--auth-token-file``) and, for the TLS
tests, certificates of a CA made by ``trustme``. Every refusal is checked for
its status and for leaving the state as it was.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from grpclib.health.v1 import health_grpc, health_pb2

from trio_election import NotElected, PermissionDenied, Unauthenticated, Unavailable, open_client
from trio_election._bridge import Channel, GRPCError, Status
from trio_election._generated.v1 import election_grpc, election_pb2 as pb
from trio_election._tls import client_context, server_context
from trio_election.server._auth import Role, Tokens, parse_tokens
from trio_election.server._security import SecurityConfigError
from trio_election.testing import make_certs

from ._support import CALL_TIMEOUT, RunningNode, StartNode

TEAM_A = "a" * 32
TEAM_A_OTHER = "o" * 32
TEAM_B = "b" * 32
READER = "r" * 32
ADMIN = "z" * 32


def token_file(tmp_path: Path, lines: str) -> Path:
    path = tmp_path / "tokens"
    path.write_text(lines)
    return path


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    return Tokens(
        token_file(
            tmp_path,
            f"# token           prefix    role\n"
            f"{TEAM_A}          team-a/\n"
            f"{TEAM_A_OTHER}    team-a/   write\n"
            f"{TEAM_B}          team-b/\n"
            f"{READER}          *         read\n"
            f"{ADMIN}           *         admin\n",
        )
    )


@pytest.fixture
async def secured(start_node: StartNode, tokens: Tokens) -> RunningNode:
    return await start_node(data_dir=None, tokens=tokens)


class Caller:
    """A LeaderElection channel that presents ``token`` (or nothing)."""

    def __init__(self, port: int, token: str | None, **channel: object) -> None:
        metadata = None if token is None else {"authorization": f"Bearer {token}"}
        self.channel = Channel(
            "127.0.0.1", port, election_grpc.LeaderElectionStub, metadata=metadata, **channel
        )

    async def call(self, name: str, request: object) -> object:
        return await self.channel.unary(getattr(self.channel.stub, name), request, CALL_TIMEOUT)

    async def acquire(self, election: str, node_id: str, ttl_ms: int = 30_000, value=b""):
        return await self.call(
            "TryBecomeLeader",
            pb.TryBecomeLeaderRequest(
                election=election, node_id=node_id, ttl_ms=ttl_ms, value=value
            ),
        )

    async def heartbeat(self, election: str, node_id: str, token: int):
        return await self.call(
            "Heartbeat",
            pb.HeartbeatRequest(election=election, node_id=node_id, fencing_token=token),
        )

    async def release(self, election: str, node_id: str, token: int):
        return await self.call(
            "ReleaseLeadership",
            pb.ReleaseLeadershipRequest(election=election, node_id=node_id, fencing_token=token),
        )

    async def leader(self, election: str):
        return await self.call("GetCurrentLeader", pb.GetCurrentLeaderRequest(election=election))

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def callers(secured: RunningNode):
    made: list[Caller] = []

    def make(token: str | None, **channel: object) -> Caller:
        caller = Caller(secured.port, token, **channel)
        made.append(caller)
        return caller

    yield make
    for caller in made:
        caller.close()


async def refused(call, status: Status, *words: str) -> str:
    with pytest.raises(GRPCError) as raised:
        await call
    assert raised.value.status is status, raised.value
    for word in words:
        assert word in raised.value.message, raised.value.message
    return raised.value.message


async def test_a_call_without_a_token_is_unauthenticated_and_changes_nothing(callers):
    await refused(callers(None).acquire("team-a/x", "w1"), Status.UNAUTHENTICATED, "token")
    await refused(callers("not-a-token-at-all").acquire("team-a/x", "w1"), Status.UNAUTHENTICATED)
    assert not (await callers(TEAM_A).leader("team-a/x")).has_leader


async def test_a_token_reaches_only_its_prefix(callers):
    team_a, team_b = callers(TEAM_A), callers(TEAM_B)
    assert (await team_a.acquire("team-a/x", "w1")).success
    message = await refused(team_a.acquire("team-b/x", "w1"), Status.PERMISSION_DENIED)
    assert "team-b/x" in message and "team-a/" in message
    await refused(team_b.leader("team-a/x"), Status.PERMISSION_DENIED)
    await refused(team_b.release("team-a/x", "w1", 1), Status.PERMISSION_DENIED)
    assert not (await team_b.leader("team-b/x")).has_leader
    assert (await team_a.leader("team-a/x")).leader.node_id == "w1"


async def test_a_read_token_reads_everything_and_writes_nothing(callers):
    assert (await callers(TEAM_A).acquire("team-a/x", "w1")).success
    reader = callers(READER)
    assert (await reader.leader("team-a/x")).leader.node_id == "w1"
    await refused(reader.acquire("team-a/y", "w2"), Status.PERMISSION_DENIED, "only read")
    assert not (await reader.leader("team-a/y")).has_leader


async def test_a_holder_keeps_its_authority_against_a_token_of_the_same_prefix(callers):
    """Same prefix, same node_id, even the right fencing token: another token's
    caller can neither refresh, extend nor end the leadership."""
    holder, other = callers(TEAM_A), callers(TEAM_A_OTHER)
    granted = (await holder.acquire("team-a/x", "w1", ttl_ms=5000, value=b"mine")).leader
    # TryBecomeLeader with the holder's node_id is no refresh for another token.
    attempt = await other.acquire("team-a/x", "w1", ttl_ms=60_000, value=b"theirs")
    assert not attempt.success
    assert (attempt.leader.fencing_token, attempt.leader.value) == (granted.fencing_token, b"mine")
    assert not (await other.heartbeat("team-a/x", "w1", granted.fencing_token)).success
    assert not (await other.release("team-a/x", "w1", granted.fencing_token)).released
    current = (await holder.leader("team-a/x")).leader
    assert (current.fencing_token, current.ttl_ms, current.value) == (
        granted.fencing_token,
        5000,
        b"mine",
    )
    assert (await holder.heartbeat("team-a/x", "w1", granted.fencing_token)).success
    assert (await holder.release("team-a/x", "w1", granted.fencing_token)).released


async def test_with_tokens_on_a_heartbeat_or_release_must_name_its_fencing_token(callers):
    holder = callers(TEAM_A)
    granted = (await holder.acquire("team-a/x", "w1")).leader
    await refused(holder.heartbeat("team-a/x", "w1", 0), Status.INVALID_ARGUMENT, "fencing_token")
    await refused(holder.release("team-a/x", "w1", 0), Status.INVALID_ARGUMENT, "fencing_token")
    assert (await holder.leader("team-a/x")).leader.fencing_token == granted.fencing_token


async def test_a_keepalive_stream_is_refused_outside_its_prefix(callers):
    holder = callers(TEAM_A)
    granted = (await holder.acquire("team-a/x", "w1")).leader
    with pytest.raises(GRPCError) as raised:
        async with holder.channel.stream(holder.channel.stub.KeepAlive) as stream:
            await stream.send(
                pb.HeartbeatRequest(
                    election="team-a/x", node_id="w1", fencing_token=granted.fencing_token
                )
            )
            assert (await stream.recv()).success
            await stream.send(
                pb.HeartbeatRequest(election="team-b/x", node_id="w1", fencing_token=1)
            )
            await stream.recv()
    assert raised.value.status is Status.PERMISSION_DENIED


async def test_health_stays_open_and_reflection_needs_a_token(secured: RunningNode):
    health = Channel("127.0.0.1", secured.port, health_grpc.HealthStub)
    try:
        reply = await health.unary(health.stub.Check, health_pb2.HealthCheckRequest(), CALL_TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        health.close()
    caller = Caller(secured.port, None)
    try:
        # No token: refused on the headers, before the request is read.
        await refused(caller.leader("team-a/x"), Status.UNAUTHENTICATED)
    finally:
        caller.close()


async def test_a_token_reload_takes_effect_and_a_broken_file_keeps_the_old_tokens(
    callers, tokens: Tokens
):
    new = "n" * 32
    assert (await callers(TEAM_A).acquire("team-a/x", "w1")).success
    tokens.path.write_text(f"{new} team-a/\n")
    assert tokens.reload()
    await refused(callers(TEAM_A).leader("team-a/x"), Status.UNAUTHENTICATED)
    assert (await callers(new).leader("team-a/x")).leader.node_id == "w1"
    tokens.path.write_text("short team-a/\n")  # a token under 16 characters
    assert not tokens.reload()
    assert (await callers(new).leader("team-a/x")).has_leader


async def test_the_client_library_presents_its_token_and_maps_refusals(
    secured: RunningNode, tmp_path: Path
):
    endpoint = f"127.0.0.1:{secured.port}"
    async with open_client([endpoint], token=TEAM_A) as client:
        async with client.try_leadership("team-a/job", node_id="w1", ttl=5) as lead:
            assert lead.fencing_token > 0
        with pytest.raises(PermissionDenied, match="outside this token's prefix"):
            await client.get_leader("team-b/job")
    file = tmp_path / "token"
    file.write_text(TEAM_B + "\n")
    async with open_client([endpoint], token_file=file) as client:
        assert (await client.try_become_leader("team-b/job", "w1", ttl=5)).success
    async with open_client([endpoint]) as client:
        with pytest.raises(Unauthenticated):
            await client.get_leader("team-a/job")


def test_token_files_parse_or_say_which_line_is_wrong() -> None:
    table = parse_tokens(f"{TEAM_A}\n\n# note\n{READER} x/ read # trailing\n", "f")
    grants = sorted(table.values(), key=lambda g: g.prefix)
    assert [(g.prefix, g.role) for g in grants] == [("", Role.WRITE), ("x/", Role.READ)]
    assert all(TEAM_A not in g.identity and READER not in g.identity for g in grants)
    for text, words in [
        ("short\n", "f:1: a token needs at least 16"),
        (f"{TEAM_A} x/ owner\n", "f:1: role 'owner'"),
        (f"{TEAM_A}\n{TEAM_A} y/\n", "f:2: this token is listed twice"),
        (f"{TEAM_A} a b c\n", "f:1: expected TOKEN"),
        ("# nothing\n", "f: no tokens"),
    ]:
        with pytest.raises(SecurityConfigError, match=words.replace("[", r"\[")):
            parse_tokens(text, "f")


# -- TLS ----------------------------------------------------------------------


@pytest.fixture
def certs(tmp_path: Path):
    return make_certs(tmp_path / "certs", ["node", "client"])


async def test_tls_clients_and_health_work_and_plain_text_is_refused(start_node: StartNode, certs):
    node = await start_node(
        data_dir=None, tls=server_context(certs["node"].cert, certs["node"].key)
    )
    endpoint = f"https://127.0.0.1:{node.port}"
    async with open_client([endpoint], ca=certs["node"].ca) as client:
        assert (await client.try_become_leader("x", "w1", ttl=5)).success
    health = Channel(
        "127.0.0.1", node.port, health_grpc.HealthStub, ssl=client_context(certs["node"].ca)
    )
    try:
        reply = await health.unary(health.stub.Check, health_pb2.HealthCheckRequest(), CALL_TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        health.close()
    async with open_client([f"127.0.0.1:{node.port}"], timeout=2) as plain:
        with pytest.raises(Unavailable):  # no HTTP/2 in plain text on a TLS port
            await plain.get_leader("x")


async def test_with_a_client_ca_only_clients_with_its_certificates_get_in(
    start_node: StartNode, certs
):
    node_files, client_files = certs["node"], certs["client"]
    node = await start_node(
        data_dir=None,
        tls=server_context(node_files.cert, node_files.key, client_ca=node_files.ca),
    )
    endpoint = f"https://127.0.0.1:{node.port}"
    async with open_client(
        [endpoint], ca=node_files.ca, cert=client_files.cert, key=client_files.key
    ) as client:
        assert (await client.try_become_leader("x", "w1", ttl=5)).success
    async with open_client([endpoint], ca=node_files.ca, timeout=2) as client:
        with pytest.raises(Unavailable):  # the handshake fails: no certificate
            await client.try_become_leader("x", "w2", ttl=5)
    async with open_client(
        [endpoint], ca=node_files.ca, cert=client_files.cert, key=client_files.key
    ) as client:
        with pytest.raises(NotElected):
            async with client.try_leadership("x", node_id="w2", ttl=5):
                pass
