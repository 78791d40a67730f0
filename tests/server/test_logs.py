"""``--log-format json``: one JSON object a line, naming the node, its Raft term
and the election a line is about; the text format stays as it was."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trio_election.server._logs import TEXT_FORMAT, JsonFormatter, NodeFields
from trio_election.server._security import PeerAuth

from ._support import StartNode


@pytest.fixture
def json_lines(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """What the node's loggers write through a JSON handler, as the CLI sets it up."""
    caplog.set_level(logging.INFO, logger="trio_election")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(NodeFields())
    logger = logging.getLogger("trio_election")
    logger.addHandler(handler)
    try:
        yield out
    finally:
        logger.removeHandler(handler)


def parsed(out: io.StringIO) -> list[dict]:
    lines = out.getvalue().splitlines()
    assert lines
    return [json.loads(line) for line in lines]  # every line is one JSON object


async def test_a_members_json_lines_name_it_its_term_and_the_election(
    start_node: StartNode, json_lines: io.StringIO, tmp_path: Path
):
    node = await start_node(
        data_dir=tmp_path / "n1",
        node_id="n1",
        initial_cluster={"n1": "127.0.0.1:1"},
        peer_port=0,
        peer_auth=PeerAuth(insecure=True),
    )
    assert (await node.client().try_become_leader("jobs", "a")).success  # once it leads
    lines = parsed(json_lines)
    for line in lines:
        assert {"ts", "level", "logger", "message"} <= line.keys(), line
        assert line["node_id"] == "n1", line
        assert line["ts"].endswith("+00:00")
    leads = next(line for line in lines if line["message"] == "Raft leader is now n1")
    assert leads["level"] == "info" and leads["logger"] == "trio_election.cluster"
    assert leads["term"] >= 1
    elected = next(line for line in lines if line["message"].startswith("elected 'jobs'"))
    assert elected["election"] == "jobs"
    assert elected["term"] == leads["term"]
    assert "election" not in leads


async def test_a_single_nodes_json_lines_have_no_node_id_but_the_election(
    start_node: StartNode, json_lines: io.StringIO
):
    node = await start_node(data_dir=None)
    client = node.client()
    token = (await client.try_become_leader("jobs", "a")).leader.fencing_token
    assert await client.release("jobs", "a", token)
    lines = parsed(json_lines)
    assert all("node_id" not in line and "term" not in line for line in lines)
    about = [line for line in lines if line.get("election") == "jobs"]
    assert [line["message"].split()[0] for line in about] == ["elected", "released"]


def test_the_text_format_is_unchanged_and_ignores_the_extra_fields() -> None:
    record = logging.LogRecord("trio_election.node", logging.INFO, "", 0, "hi %s", ("x",), None)
    record.election = "jobs"
    line = logging.Formatter(TEXT_FORMAT).format(record)
    assert line.endswith(" INFO trio_election.node: hi x")


def test_a_traceback_goes_into_the_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "trio_election.node", logging.ERROR, "", 0, "failed", (), sys.exc_info()
        )
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "error" and line["message"] == "failed"
    assert "ValueError: boom" in line["exc"]
