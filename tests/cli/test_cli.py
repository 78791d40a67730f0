"""The command line, through ``main([...])`` against a node running in a thread."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from trio_election import open_client
from trio_election._tls import server_context
from trio_election.cli import _settings, main
from trio_election.cli._main import build_parser
from trio_election.cli._node import config_from
from trio_election.server import NodeConfig, serve
from trio_election.server._auth import Tokens
from trio_election.testing import METRICS_LINE, MetricSamples, make_certs, wait_for_line


@pytest.fixture
def endpoint() -> Iterator[str]:
    """A node in its own thread and Trio run, on a free port."""
    yield from _serve_in_thread(NodeConfig(port=0, data_dir=None, start_grace=False))


def _serve_in_thread(config: NodeConfig) -> Iterator[str]:
    ports: queue.Queue[int] = queue.Queue()
    stop: dict[str, trio.CancelScope | trio.lowlevel.TrioToken] = {}

    async def run() -> None:
        with trio.CancelScope() as scope:
            stop["scope"], stop["token"] = scope, trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                ports.put(await nursery.start(serve, config))

    thread = threading.Thread(target=trio.run, args=(run,), daemon=True)
    thread.start()
    port = ports.get(timeout=30)
    yield f"127.0.0.1:{port}"
    trio.from_thread.run_sync(stop["scope"].cancel, trio_token=stop["token"])
    thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A node with TLS and a token file; its endpoint and the client flags it needs."""
    certs = make_certs(tmp_path / "certs", ["node"])["node"]
    token = tmp_path / "token"
    token.write_text("t" * 32 + "\n")
    tokens = tmp_path / "tokens"
    tokens.write_text("t" * 32 + " team-a/\n")
    config = NodeConfig(
        port=0,
        data_dir=None,
        start_grace=False,
        tls=server_context(certs.cert, certs.key),
        tokens=Tokens(tokens),
    )
    for endpoint in _serve_in_thread(config):
        yield f"https://{endpoint}", ["--ca", str(certs.ca), "--token-file", str(token)]


def test_client_commands_work_over_tls_with_a_token(secure, capsys) -> None:
    endpoint, flags = secure
    command = ["campaign", "team-a/x", "--node-id", "w1", "--endpoints", endpoint, *flags]
    assert main([*command, "--", sys.executable, "-c", "pass"]) == 0
    assert "elected: team-a/x" in capsys.readouterr().out
    assert main(["leader", "team-a/x", "--endpoints", endpoint, *flags]) == 0
    assert capsys.readouterr().out.strip() == "team-a/x: no leader"
    # Outside the token's prefix, and without the token: one sentence each, exit 1.
    assert main(["leader", "team-b/x", "--endpoints", endpoint, *flags]) == 1
    assert "outside this token's prefix" in capsys.readouterr().err
    assert main(["leader", "team-a/x", "--endpoints", endpoint, flags[0], flags[1]]) == 1
    err = capsys.readouterr().err
    assert err.startswith("trio-election: authorization: this node needs a token")
    assert "Traceback" not in err


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
            "120",
            "--endpoints",
            endpoint,
            "--",
            "true",
        ]
    )
    assert status == 1  # within what the CLI accepts, past the node's --max-ttl
    assert "ttl_ms: 120000 ms is outside 100 ms .. 60000 ms" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "status", "words"),
    [
        (["campaign", "x", "--node-id", "a", "--ttl", "-5", "--", "true"], 2, "--ttl: must be"),
        (["campaign", "x", "--node-id", "a", "--", "no-such-cmd-here"], 1, "no such command"),
        (["campaign", "x", "--node-id", "a"], 2, "give the command to run after --"),
        (["leader", "x", "--endpoints", "localhost"], 1, "'localhost' is not HOST:PORT"),
        (["leader", "x", "--endpoints", "h:99999"], 1, "'h:99999' is not HOST:PORT"),
        (["leader", "x", "--timeout", "soon"], 2, "'soon' is not a number of seconds"),
        (["release", "x", "--node-id", "a", "--token", "-1"], 2, "--token: must be from 0"),
        (["node", "--listen", "localhost:99999"], 2, "a port from 0 to 65535"),
        (["node", "--in-memory", "--data-dir", "x"], 2, "drop --data-dir, or --in-memory"),
        (["node", "--max-ttl", "0"], 2, "--max-ttl: must be from 0.1"),
        (["node", "--tls-cert", "c.pem"], 2, "--tls-cert and --tls-key go together"),
        (["node", "--peer-listen", "127.0.0.1:1"], 2, "peer flags are for cluster members"),
        (["node", "--id", "n1", "--initial-cluster", "n1=h:1"], 1, "needs peer authentication"),
        (["node", "--tls-cert", "no.pem", "--tls-key", "no.key"], 1, "no such file"),
        (["leader", "x", "--token-file", "/no/such/file"], 1, "token file /no/such/file"),
        (["watch", "x", "--ca", "/no/such/ca.pem"], 1, "no such file: /no/such/ca.pem"),
        (["--config", "/no/such.toml", "leader", "x"], 2, "cannot read /no/such.toml"),
        (["no-such-command"], 2, "invalid choice"),
        (["status", "--count", "2"], 2, "--interval and --count go with --watch"),
        (["status", "--watch", "--interval", "0"], 2, "--interval: must be from 0.1"),
        (["elections", "--limit", "0"], 2, "--limit: must be from 1"),
    ],
)
def test_bad_arguments_end_in_one_sentence_and_the_documented_status(
    argv, status, words, capsys
) -> None:
    assert main(argv) == status
    err = capsys.readouterr().err
    assert words in err, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(("trio-election", "usage:")), err


def test_settings_come_from_the_command_line_then_environment_then_file(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(
        'max-ttl = 30\ntick = 0.1\nendpoints = ["h1:1", "h2:2"]\n'
        "[node]\nmax-ttl = 40\nin-memory = true\n"
    )
    monkeypatch.setenv("TRIO_ELECTION_TICK", "0.2")
    monkeypatch.setenv("TRIO_ELECTION_CONFIG", str(config))
    parser = build_parser()
    path, argv = _settings.take_config(["node", "--listen", "127.0.0.1:0"])
    _settings.apply(parser, _settings.load_file(path), str(path))
    node = config_from(parser.parse_args(argv))
    assert node.max_ttl_ms == 40_000  # the [node] table over the top level
    assert node.tick_s == 0.2  # the environment over the file
    assert node.data_dir is None  # in-memory = true from the file
    parser = build_parser()
    _settings.apply(parser, _settings.load_file(path), str(path))
    assert parser.parse_args(["leader", "x"]).endpoints == "h1:1,h2:2"
    args = parser.parse_args(["leader", "x", "--endpoints", "h3:3"])
    assert args.endpoints == "h3:3"  # the command line over everything
    config.write_text("max-tll = 30\n")
    assert main(["leader", "x"]) == 2
    assert "unknown settings: max-tll" in capsys.readouterr().err


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


def test_connection_limits_come_from_their_flags() -> None:
    args = build_parser().parse_args(
        ["node", "--max-connections", "5", "--max-calls-per-connection", "7"]
        + ["--idle-timeout", "30", "--max-resets-per-s", "20", "--connection-window", "65536"]
    )
    limits = config_from(args).connection_limits
    assert (limits.max_connections, limits.max_streams_per_connection) == (5, 7)
    assert (limits.idle_timeout_s, limits.max_resets_per_s) == (30.0, 20)
    assert limits.connection_window_bytes == 65536
    assert limits.handshake_timeout_s == 10.0  # the default, where no flag was given


def test_a_bad_connection_limit_names_its_flag(capsys) -> None:
    assert main(["node", "--max-connections", "0"]) == 2
    assert "--max-connections" in capsys.readouterr().err


def test_max_ttl_over_a_day_is_refused(capsys) -> None:
    assert main(["node", "--max-ttl", "90000"]) == 2
    assert "--max-ttl: must be from 0.1 to 86400 seconds" in capsys.readouterr().err


def test_a_node_reloads_its_tokens_on_sighup(tmp_path: Path, capsys) -> None:
    old, new = "o" * 32, "n" * 32
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{old}\n")
    (tmp_path / "old").write_text(old)
    (tmp_path / "new").write_text(new)
    log = tmp_path / "node.log"
    command = [sys.executable, "-m", "trio_election", "node", "--in-memory"]
    command += ["--unsafe-no-start-grace", "--listen", "127.0.0.1:0"]
    command += ["--auth-token-file", str(tokens)]
    with open(log, "wb") as out:
        node = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        port = wait_for_line(log, r"serving on 127\.0\.0\.1:(\d+)", node).group(1)
        endpoint = f"127.0.0.1:{port}"
        for name, code in [("old", 0), ("new", 1)]:
            assert (
                main(["leader", "x", "--endpoints", endpoint, "--token-file", str(tmp_path / name)])
                == code
            )
        tokens.write_text(f"{new}\n")
        node.send_signal(signal.SIGHUP)
        wait_for_line(log, r"reloaded 1 tokens", node)
        for name, code in [("old", 1), ("new", 0)]:
            assert (
                main(["leader", "x", "--endpoints", endpoint, "--token-file", str(tmp_path / name)])
                == code
            )
        assert old not in log.read_text() and new not in log.read_text()  # never logged
    finally:
        node.terminate()
        assert node.wait(timeout=30) == 0
    capsys.readouterr()


def test_a_waiting_campaign_notes_changes_once_each_as_plain_lines(capsys) -> None:
    from argparse import Namespace

    from trio_election import Unavailable
    from trio_election.cli._client_commands import Notes

    notes = Notes(Namespace(json=False))
    notes.retrying(Unavailable("no endpoint answered Campaign (connection refused)"))
    notes.retrying(Unavailable("no endpoint answered Campaign (connection refused)"))
    notes.answered()
    notes.status("waiting: x is held by a", None)
    notes.status("waiting: x is held by a", None)
    notes.status("waiting: x is held by b", None)
    assert capsys.readouterr().err.splitlines() == [
        "cannot reach the cluster (no endpoint answered Campaign (connection refused)); "
        "still trying",
        "waiting: x is held by a",
        "waiting: x is held by b",
    ]


# -- elections and status --watch -----------------------------------------------


def _hold(endpoint: str, names: list[str], ttl: float = 60, **client: object) -> dict[str, int]:
    """Take each election as ``w-<name>``; their fencing tokens."""

    async def take() -> dict[str, int]:
        async with open_client([endpoint], **client) as c:
            return {
                name: (await c.try_become_leader(name, f"w-{name}", ttl=ttl)).leader.fencing_token
                for name in names
            }

    return trio.run(take)


def test_elections_lists_holders_as_a_table_and_as_json(endpoint: str, capsys) -> None:
    tokens = _hold(endpoint, ["jobs/b", "jobs/a", "cron"])
    assert main(["elections", "--endpoints", endpoint]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ELECTION", "HOLDER", "TOKEN", "TTL", "LEFT", "OWNER"]
    rows = [line.split() for line in lines[1:-1]]
    assert [row[:4] for row in rows] == [
        [name, f"w-{name}", str(tokens[name]), "60s"] for name in ("cron", "jobs/a", "jobs/b")
    ]
    assert all(row[5] == "-" for row in rows)  # no owner without client tokens
    assert lines[-1] == "3 elections"

    assert main(["elections", "--endpoints", endpoint, "--json", "--prefix", "jobs/"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["election"], e["fencing_token"]) for e in listed["elections"]] == [
        ("jobs/a", tokens["jobs/a"]),
        ("jobs/b", tokens["jobs/b"]),
    ]
    first = listed["elections"][0]
    assert (first["node_id"], first["owner"], first["ttl_s"]) == ("w-jobs/a", None, 60.0)
    assert 0 < first["remaining_s"] <= 60
    assert (listed["node"], listed["applied_index"], listed["truncated"]) == (None, 0, False)


def test_elections_says_when_the_limit_cut_the_list(endpoint: str, capsys) -> None:
    _hold(endpoint, ["a", "b", "c"])
    assert main(["elections", "--endpoints", endpoint, "--limit", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:-1]] == ["a", "b"]
    assert out[-1] == "the first 2 elections; more match: raise --limit or narrow --prefix"
    assert main(["elections", "--endpoints", endpoint, "--limit", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["truncated"] is True
    assert main(["elections", "--endpoints", endpoint, "--prefix", "zzz"]) == 0
    assert capsys.readouterr().out.strip() == "no elections held under 'zzz'"


def test_elections_with_a_token_shows_its_owner_and_refuses_other_prefixes(
    secure, tmp_path: Path, capsys
) -> None:
    endpoint, flags = secure
    _hold(endpoint, ["team-a/x"], ca=flags[1], token_file=flags[3])
    assert main(["elections", "--endpoints", endpoint, *flags, "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["elections"]
    assert entry["election"] == "team-a/x" and entry["owner"]
    assert main(["elections", "--endpoints", endpoint, *flags, "--prefix", "team-b/"]) == 1
    assert "outside this token's prefix 'team-a/'" in capsys.readouterr().err


def test_status_watch_prints_each_refresh_after_a_blank_line(endpoint: str, capsys) -> None:
    argv = ["status", "--watch", "--count", "3", "--interval", "0.1", "--endpoints", endpoint]
    assert main(argv) == 0
    refreshes = capsys.readouterr().out.strip("\n").split("\n\n")
    assert len(refreshes) == 3
    for refresh in refreshes:
        header, line = refresh.splitlines()
        assert header.startswith("every 0.1 s, at ") and header.endswith("(Ctrl-C stops)")
        assert line == f"{endpoint}: a single node (not a cluster member), SERVING"


def test_status_of_a_node_in_its_start_up_grace_says_why_it_is_not_serving(capsys) -> None:
    for endpoint in _serve_in_thread(NodeConfig(port=0, data_dir=None, start_grace=True)):
        assert main(["status", "--endpoints", endpoint]) == 1
        out = capsys.readouterr().out
        assert f"{endpoint}: a single node (not a cluster member), NOT_SERVING" in out
        assert "start-up grace" in out and "data dir cannot be written" in out
        assert main(["status", "--endpoints", endpoint, "--json"]) == 1
        assert json.loads(capsys.readouterr().out)["health"] == "NOT_SERVING"


def test_status_watch_goes_on_when_an_endpoint_or_all_of_them_do_not_answer(
    endpoint: str, capsys
) -> None:
    dead = "127.0.0.1:1"
    argv = ["status", "--watch", "--json", "--count", "2", "--interval", "0.1", "--timeout", "2"]
    assert main([*argv, "--endpoints", f"{dead},{endpoint}"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["endpoint"], line["health"]) for line in lines] == [(endpoint, "SERVING")] * 2
    assert all(line["not_answering"] == [f"{dead}: connection refused"] for line in lines)
    assert lines[0]["time"] <= lines[1]["time"]
    # Nothing answers: each refresh says so, the watch goes on, the exit status is the last's.
    assert main([*argv, "--endpoints", dead]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["error"] for line in lines] == [
        f"no endpoint answered ({dead}: connection refused)"
    ] * 2


def test_status_watch_redraws_in_place_on_a_terminal(endpoint: str, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    argv = ["status", "--watch", "--count", "2", "--interval", "0.1", "--endpoints", endpoint]
    assert main(argv) == 0
    out = capsys.readouterr().out
    first, second = out.split("\x1b[J")[:2]
    assert first.startswith("\x1b[2J\x1b[H")  # clear once, then home
    assert second.startswith("\x1b[H") and "\x1b[2J" not in second
    assert out.endswith("\x1b[J")
    assert f"{endpoint}: a single node (not a cluster member), SERVING\x1b[K\n" in second


def test_status_watch_ends_cleanly_on_ctrl_c(endpoint: str) -> None:
    command = [sys.executable, "-m", "trio_election", "status", "--watch", "--interval", "0.1"]
    watch = subprocess.Popen(
        [*command, "--endpoints", endpoint], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert watch.stdout is not None
        assert watch.stdout.readline().startswith(b"every 0.1 s")  # it is refreshing
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 0
    assert err == b"", err


def test_metrics_and_log_format_flags_become_the_config(capsys) -> None:
    args = build_parser().parse_args(["node", "--metrics-listen", "0.0.0.0:9100"])
    assert config_from(args).metrics_listen == ("0.0.0.0", 9100)
    assert args.log_format == "text"
    assert config_from(build_parser().parse_args(["node"])).metrics_listen is None  # off
    assert main(["node", "--metrics-listen", "nowhere"]) == 2
    assert "--metrics-listen: 'nowhere' is not HOST:PORT" in capsys.readouterr().err
    assert main(["node", "--log-format", "xml"]) == 2
    assert "--log-format" in capsys.readouterr().err


def test_a_node_serves_metrics_and_logs_json_lines(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    command = [sys.executable, "-m", "trio_election", "node", "--in-memory"]
    command += ["--unsafe-no-start-grace", "--listen", "127.0.0.1:0"]
    command += ["--metrics-listen", "127.0.0.1:0", "--log-format", "json"]
    with open(log, "wb") as out:
        node = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_line(log, r"serving on 127\.0\.0\.1:\d+", node)
        port = wait_for_line(log, METRICS_LINE.pattern, node).group(2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith("text/plain")
            text = reply.read().decode()
        assert MetricSamples(text).get("trio_election_serving") == 1
    finally:
        node.terminate()
        assert node.wait(timeout=30) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]  # each one JSON
    messages = [line["message"] for line in lines]
    assert any(m.startswith("serving on 127.0.0.1:") for m in messages)
    assert "SIGTERM: shutting down" in messages
    assert all(line["level"] in ("info", "warning") for line in lines), lines
