"""The command line, through ``main([...])`` against a node running in a thread."""

from __future__ import annotations

import json
import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from trio_election.cli import main
from trio_election.cli._main import build_parser
from trio_election.cli._node import config_from
from trio_election.server import NodeConfig, serve


@pytest.fixture
def endpoint() -> Iterator[str]:
    """A node in its own thread and Trio run, on a free port."""
    ports: queue.Queue[int] = queue.Queue()
    stop: dict[str, trio.CancelScope | trio.lowlevel.TrioToken] = {}

    async def run() -> None:
        with trio.CancelScope() as scope:
            stop["scope"], stop["token"] = scope, trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                ports.put(
                    await nursery.start(serve, NodeConfig(port=0, data_dir=None, start_grace=False))
                )

    thread = threading.Thread(target=trio.run, args=(run,), daemon=True)
    thread.start()
    port = ports.get(timeout=30)
    yield f"127.0.0.1:{port}"
    trio.from_thread.run_sync(stop["scope"].cancel, trio_token=stop["token"])
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_leader_says_no_leader_for_a_free_election(endpoint: str, capsys) -> None:
    assert main(["leader", "prod", "--endpoints", endpoint]) == 0
    assert capsys.readouterr().out.strip() == "prod: no leader"


def test_campaign_runs_the_command_with_the_token_and_returns_its_status(
    endpoint: str, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "token"
    script = (
        f"import os; open({str(out)!r}, 'w').write(os.environ['TRIO_ELECTION_FENCING_TOKEN']);"
        " raise SystemExit(7)"
    )
    status = main(
        [
            "campaign",
            "prod",
            "--node-id",
            "w1",
            "--ttl",
            "2",
            "--endpoints",
            endpoint,
            "--",
            sys.executable,
            "-c",
            script,
        ]
    )
    assert status == 7
    printed = capsys.readouterr().out
    token = int(out.read_text())
    assert f"elected: prod with fencing token {token}" in printed
    assert "command exited with status 7; releasing prod" in printed
    # Released on the way out.
    assert main(["leader", "prod", "--endpoints", endpoint, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"election": "prod", "leader": None}


def test_campaign_kills_the_command_when_leadership_is_lost(
    endpoint: str, tmp_path: Path, capsys
) -> None:
    # The command itself reads the leader, then has an operator release it
    # (itself), then works on: campaign must notice at its next heartbeat,
    # kill it, and exit with status 3.
    seen = tmp_path / "leader.json"
    cli = f"{sys.executable} -m trio_election"
    script = (
        f"{cli} leader prod --json --endpoints {endpoint} > {seen} && "
        f"{cli} release prod --node-id w1 --endpoints {endpoint} && exec sleep 60"
    )
    status = main(
        [
            "campaign",
            "prod",
            "--node-id",
            "w1",
            "--ttl",
            "1",
            "--value",
            "10.0.0.7:80",
            "--endpoints",
            endpoint,
            "--",
            "sh",
            "-c",
            script,
        ]
    )
    assert status == 3
    assert "the command was stopped" in capsys.readouterr().out
    leader = json.loads(seen.read_text())["leader"]
    assert leader["node_id"] == "w1" and leader["value"] == "10.0.0.7:80"
    assert leader["fencing_token"] > 0 and 0 < leader["remaining_s"] <= 1


def test_release_by_a_non_holder_fails(endpoint: str, capsys) -> None:
    assert main(["release", "prod", "--node-id", "nobody", "--endpoints", endpoint]) == 1
    assert "nobody does not hold prod" in capsys.readouterr().out


def test_bad_input_is_reported_with_the_field(endpoint: str, capsys) -> None:
    status = main(
        [
            "campaign",
            "prod",
            "--node-id",
            "w1",
            "--ttl",
            "0.001",
            "--endpoints",
            endpoint,
            "--",
            "true",
        ]
    )
    assert status == 1
    assert "ttl_ms: 1 ms is outside 100 ms" in capsys.readouterr().err


def test_unreachable_endpoint_is_a_clear_error(capsys) -> None:
    assert main(["leader", "prod", "--endpoints", "127.0.0.1:1", "--timeout", "2"]) == 1
    assert "no endpoint answered" in capsys.readouterr().err


def test_node_flags_become_one_config() -> None:
    args = build_parser().parse_args(
        [
            "node",
            "--listen",
            "0.0.0.0:7000",
            "--in-memory",
            "--max-ttl",
            "30",
            "--unsafe-no-start-grace",
        ]
    )
    config = config_from(args)
    assert (config.host, config.port, config.data_dir) == ("0.0.0.0", 7000, None)
    assert config.max_ttl_ms == 30_000 and not config.start_grace
    default = config_from(build_parser().parse_args(["node"]))
    assert default.data_dir == Path("default.trio-election") and default.start_grace


def test_max_ttl_over_a_day_is_refused() -> None:
    with pytest.raises(SystemExit, match="--max-ttl"):
        config_from(build_parser().parse_args(["node", "--max-ttl", "90000"]))
