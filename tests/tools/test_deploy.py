"""deploy/: the systemd unit and the Dockerfile run a node the real CLI accepts.

No systemd or docker daemon is needed: the files are parsed, the command each
names is checked by the CLI's own parser, then started (with the program
replaced by this interpreter, on port 0 and a temporary data dir) and stopped
with SIGTERM, as systemd and ``docker stop`` would. docs/operations.md is held
to the same rule: every ``trio-election`` command it shows must parse.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from trio_election.cli._main import build_parser
from trio_election.cli._node import config_from
from trio_election.testing import wait_for_line

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "trio-election.service"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
OPERATIONS = ROOT / "docs" / "operations.md"
SERVING = r"serving on 127\.0\.0\.1:(\d+)"
PROGRAM = "trio-election"


def parse(args: list[str]) -> argparse.Namespace:
    """``build_parser().parse_args(args)``, with every option spelled out in full.

    argparse takes unambiguous abbreviations (``--data`` for ``--data-dir``);
    a deployment file or a guide must not rely on that.
    """
    parser = build_parser()
    command = parser
    for word in args:
        if word.startswith("--"):
            option = word.partition("=")[0]
            assert option in command._option_string_actions, f"{option}: not an option"
            continue
        sub = next((a for a in command._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is not None and word in sub.choices:
            command = sub.choices[word]
    return parser.parse_args(args)


# -- the systemd unit -------------------------------------------------------


def read_unit(path: Path = UNIT) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string(path.read_text())
    return unit


def unit_command() -> list[str]:
    return shlex.split(read_unit()["Service"]["ExecStart"])


def test_unit_has_the_sections_and_keys_an_operator_relies_on() -> None:
    unit = read_unit()
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    expected = {
        "Type": "exec",
        "StateDirectory": "trio-election",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "KillSignal": "SIGTERM",
        "Restart": "on-failure",
        "TimeoutStopSec": "15",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "LimitNOFILE": "65536",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert service.get("User") not in (None, "", "root", "0")
    assert service.get("DynamicUser", "no") != "yes" or "User" not in service
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_unit_exec_start_is_a_single_node_the_cli_accepts() -> None:
    command = unit_command()
    assert command[0] == "/usr/local/bin/trio-election"
    args = parse(command[1:])
    assert args.command == "node"
    config = config_from(args)
    assert (config.host, config.port) == ("127.0.0.1", 50051)
    assert config.data_dir == Path("/var/lib/trio-election")  # = StateDirectory
    assert config.node_id is None and config.peer_auth is None


def test_unit_comment_shows_cluster_flags_the_cli_accepts() -> None:
    shown = [
        line.removeprefix("#").strip().removeprefix("ExecStart=")
        for line in UNIT.read_text().splitlines()
        if line.startswith("#") and "ExecStart=/usr/local/bin/trio-election" in line
    ]
    assert shown, "the unit should show a cluster member's ExecStart in a comment"
    for line in shown:
        args = parse(shlex.split(line)[1:])
        assert args.id and args.peer_listen and args.initial_cluster and args.cluster_key_file


# -- the Dockerfile ---------------------------------------------------------


def read_dockerfile(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order; continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        instruction, _, rest = whole.partition(" ")
        instructions.append((instruction.upper(), rest.strip()))
    assert not pending, "the last instruction ends in a backslash"
    return instructions


def dockerfile_values(instruction: str) -> list[str]:
    return [rest for name, rest in read_dockerfile() if name == instruction]


def exec_form(text: str) -> list[str]:
    """An instruction's JSON array (exec form): the only form that gets signals."""
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def docker_command() -> list[str]:
    (entrypoint,) = dockerfile_values("ENTRYPOINT")
    command = exec_form(entrypoint)
    cmds = dockerfile_values("CMD")
    if cmds:
        command += exec_form(cmds[-1])
    return command


def test_dockerfile_builds_a_non_root_image_with_a_volume_and_both_ports() -> None:
    assert dockerfile_values("FROM") == ["python:3.11-slim"]
    users = dockerfile_values("USER")
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    volumes = [v for text in dockerfile_values("VOLUME") for v in exec_form(text)]
    assert volumes == ["/var/lib/trio-election"]
    ports = {p.split("/")[0] for text in dockerfile_values("EXPOSE") for p in text.split()}
    assert ports == {"50051", "50151"}
    assert any("pip install --no-cache-dir ." in run for run in dockerfile_values("RUN"))


def test_dockerfile_command_is_a_single_node_the_cli_accepts() -> None:
    command = docker_command()
    assert command[0] == PROGRAM
    config = config_from(parse(command[1:]))
    assert (config.host, config.port) == ("0.0.0.0", 50051)
    assert config.data_dir == Path("/var/lib/trio-election")
    assert config.node_id is None


def test_dockerfile_comment_shows_cluster_flags_the_cli_accepts() -> None:
    # The example's arguments after the image name are appended to ENTRYPOINT.
    text = "\n".join(
        line.removeprefix("#")
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith("#")
    )
    runs = re.findall(r"docker run ((?:[^\n]*\\\n)*[^\n]*)", text)
    cluster = [shlex.split(run.replace("\\\n", " ")) for run in runs if "--id" in run]
    assert cluster, "the Dockerfile should show how to run a cluster member"
    for words in cluster:
        extra = words[words.index(PROGRAM) + 1 :]
        args = parse(docker_command()[1:] + extra)
        assert args.id and args.peer_listen == "0.0.0.0:50151" and args.advertise
        assert args.initial_cluster and args.cluster_key_file


# -- the commands really run --------------------------------------------------


def local(command: list[str], data_dir: Path) -> list[str]:
    """``command`` as this test can run it: this interpreter, port 0, ``data_dir``."""
    assert Path(command[0]).name == PROGRAM, command
    args = list(command[1:])
    for flag, value in [("--listen", "127.0.0.1:0"), ("--data-dir", str(data_dir))]:
        assert flag in args, f"{flag} missing from {command}"
        args[args.index(flag) + 1] = value
    return [sys.executable, "-m", "trio_election", *args, "--log-level", "info"]


def clean_env() -> dict[str, str]:
    # TRIO_ELECTION_* would change the node's settings beneath its flags.
    return {k: v for k, v in os.environ.items() if not k.startswith("TRIO_ELECTION_")}


def serve_then_sigterm(command: list[str], tmp_path: Path, while_serving=None) -> str:
    """Start ``command``, wait until it serves, SIGTERM it; return its log."""
    data_dir = tmp_path / "data"
    log = tmp_path / "node.log"
    with open(log, "wb") as out:
        node = subprocess.Popen(
            local(command, data_dir), stdout=out, stderr=subprocess.STDOUT, env=clean_env()
        )
    try:
        port = int(wait_for_line(log, SERVING, node).group(1))
        assert port != 0
        if while_serving is not None:
            while_serving(port, node, log)
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0, log.read_text()
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    text = log.read_text()
    assert "SIGTERM: shutting down" in text
    assert (data_dir / "leases.db").exists()  # it used the data dir it was given
    return text


def test_the_units_command_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    serve_then_sigterm(unit_command(), tmp_path)


def test_the_unit_reload_signal_reaches_a_running_node(tmp_path: Path) -> None:
    # ExecReload is ``/bin/kill -HUP $MAINPID``: the node must live through it.
    assert shlex.split(read_unit()["Service"]["ExecReload"])[1:] == ["-HUP", "$MAINPID"]

    def reload(port: int, node: subprocess.Popen, log: Path) -> None:
        node.send_signal(signal.SIGHUP)
        wait_for_line(log, r"SIGHUP: no --auth-token-file to reload", node)

    text = serve_then_sigterm(unit_command(), tmp_path, reload)
    assert text.index("SIGHUP") < text.index("SIGTERM")


def test_the_images_command_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    serve_then_sigterm(docker_command(), tmp_path)


def healthcheck(port: int) -> subprocess.CompletedProcess[bytes]:
    (text,) = dockerfile_values("HEALTHCHECK")
    form = text[text.index("CMD") + 3 :].strip()
    command = exec_form(form)
    assert command[0] == "python" and "50051" in command[-1]
    command = [sys.executable, *command[1:-1], command[-1].replace("50051", str(port))]
    return subprocess.run(command, capture_output=True, timeout=30, env=clean_env())


def test_the_images_healthcheck_passes_while_the_node_serves(tmp_path: Path) -> None:
    results = []
    serve_then_sigterm(
        docker_command(), tmp_path, lambda port, node, log: results.append(healthcheck(port))
    )
    (result,) = results
    assert result.returncode == 0, result.stderr.decode()


def test_the_images_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:
        # Bound but never listening: connections are refused, and no other
        # process can start to listen on the port while the check runs.
        sock.bind(("127.0.0.1", 0))
        assert healthcheck(sock.getsockname()[1]).returncode == 1


# -- docs/operations.md --------------------------------------------------------


def documented_commands(path: Path = OPERATIONS) -> list[list[str]]:
    """Every ``trio-election ...`` command in the shell blocks of ``path``, as words."""
    commands: list[list[str]] = []
    in_block = False
    pending = ""
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_block = not in_block and line.strip() in ("```sh", "```shell", "```console")
            continue
        if not in_block:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole, pending = pending + line, ""
        lexer = shlex.shlex(whole, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
        # Each simple command of the line: cut at ; && || | ( ) and redirections
        # (the word after a redirection starts a "command" that is never ours).
        command: list[str] = []
        for word in [*words, ";"]:
            if word and set(word) <= set(";&|<>()"):
                if command and command[0] == PROGRAM:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


def test_every_command_in_the_operations_guide_is_one_the_cli_accepts() -> None:
    commands = documented_commands()
    assert len(commands) >= 10
    seen = set()
    for words in commands:
        args = words[1:]
        if "--" in args:  # campaign's COMMAND, never our options
            args = args[: args.index("--")]
        try:
            parsed = parse(args)
        except (SystemExit, AssertionError) as exc:
            pytest.fail(f"docs/operations.md: the CLI refuses {shlex.join(words)} ({exc})")
        seen.add(parsed.command)
    assert {"node", "status", "member", "keygen"} <= seen
