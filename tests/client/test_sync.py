"""The blocking client against a real node process: told, in time, when leadership ends."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from _node_process import ThreadedFreezableProxy, node_process

from trio_election import DeadlineExceeded, ElectionError, LeadershipLost, Unauthenticated, sync
from trio_election.sync import EventKind
from trio_election.testing import make_certs, write_secret

TTL = 2.0
MARGIN = 0.5
#: Bound on anything a test waits for.
WAIT = 20.0


def test_the_calls_and_watch_round_trip(node: int) -> None:
    with sync.open_client(f"127.0.0.1:{node}") as client:
        attempt = client.try_become_leader("prod", "w1", TTL)
        assert attempt.success and attempt.leader is not None
        token = attempt.leader.fencing_token
        assert client.heartbeat("prod", "w1", token).success
        assert client.is_leader("prod", "w1")
        assert client.get_leader("prod").node_id == "w1"
        with pytest.raises(DeadlineExceeded, match="not elected"):
            client.campaign("prod", "w2", TTL, timeout=0.2)
        events = client.watch("prod")
        assert next(events).kind is EventKind.ELECTED
        assert client.release("prod", "w1", token)
        assert next(events).kind is EventKind.RELEASED
        events.close()
        assert client.campaign("prod", "w2", TTL, timeout=WAIT).fencing_token > token


def test_leadership_renews_in_the_background_and_releases_on_exit(node: int) -> None:
    with sync.open_client([f"127.0.0.1:{node}"]) as client:
        with client.leadership("prod", node_id="w1", ttl=1.0) as lead:
            first = lead.deadline
            assert not lead.lost.wait(1.5)  # longer than the TTL: renewals go through
            assert lead.deadline > first
            lead.check()
            assert client.is_leader("prod", "w1")
        assert client.get_leader("prod") is None


def test_the_body_is_told_before_the_server_deadline_and_before_anyone_else_is_granted(
    node: int,
) -> None:
    proxy = ThreadedFreezableProxy("127.0.0.1", node)
    told = threading.Event()
    granted_at: list[float] = []
    try:
        with (
            sync.open_client([f"127.0.0.1:{proxy.port}"]) as silent,
            sync.open_client([f"127.0.0.1:{node}"]) as direct,
        ):

            def take_over() -> None:
                direct.campaign("prod", "w2", TTL, timeout=WAIT)
                granted_at.append(time.monotonic())

            with pytest.raises(LeadershipLost) as raised:
                with silent.leadership(
                    "prod",
                    node_id="w1",
                    ttl=TTL,
                    margin=MARGIN,
                    on_lost=lambda exc: told.set(),
                ) as lead:
                    rival = threading.Thread(target=take_over)
                    rival.start()
                    proxy.freeze()
                    assert lead.lost.wait(WAIT)
                    told_at = time.monotonic()
                    held = direct.get_leader("prod")
                    with pytest.raises(LeadershipLost):
                        lead.check()
            assert type(raised.value) is LeadershipLost
            assert told.is_set()
            assert told_at <= lead.deadline + 0.2
            assert held is not None and held.node_id == "w1" and held.remaining > 0
            rival.join(WAIT)
            assert granted_at and granted_at[0] > told_at
            proxy.thaw()
    finally:
        proxy.close()


def test_leadership_lost_is_caught_by_a_plain_except_around_open_client(node: int) -> None:
    caught = None
    try:
        with sync.open_client([f"127.0.0.1:{node}"]) as client:
            with client.leadership("prod", node_id="w1", ttl=TTL) as lead:
                assert client.release("prod", "w1", lead.fencing_token)
                assert client.try_become_leader("prod", "w2", TTL).success
                assert lead.lost.wait(WAIT)
    except LeadershipLost as exc:
        caught = exc
    assert type(caught) is LeadershipLost and "'w2' holds" in str(caught)


def test_leadership_fails_over_from_a_dead_endpoint(node: int) -> None:
    with socket.socket() as dead:  # bound, never listening: connections are refused
        dead.bind(("127.0.0.1", 0))
        endpoints = [f"127.0.0.1:{dead.getsockname()[1]}", f"127.0.0.1:{node}"]
        with sync.open_client(endpoints) as client:
            with client.leadership("prod", node_id="w1", ttl=TTL, timeout=WAIT) as lead:
                lead.check()
                assert client.is_leader("prod", "w1")


def test_tokens_and_tls_with_the_node_s_ca(tmp_path: Path) -> None:
    tokens = write_secret(tmp_path / "tokens")
    certs = make_certs(tmp_path / "certs", ["node"])["node"]
    flags = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)]
    with node_process(tmp_path, *flags, "--auth-token-file", str(tokens)) as port:
        endpoint = f"https://127.0.0.1:{port}"
        with sync.open_client([endpoint], ca=certs.ca, token_file=tokens) as client:
            with client.leadership("prod", node_id="w1", ttl=TTL) as lead:
                lead.check()
                assert client.is_leader("prod", "w1")
        with sync.open_client([endpoint], ca=certs.ca) as client:  # no token
            with pytest.raises(Unauthenticated):
                client.get_leader("prod")
        with sync.open_client([endpoint], timeout=2, token_file=tokens) as client:  # system CAs
            with pytest.raises(ElectionError):
                client.get_leader("prod")
