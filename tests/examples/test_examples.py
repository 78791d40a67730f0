"""Every example in examples/ runs as written, against a real node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client._node_process import node_process

ROOT = Path(__file__).resolve().parents[2]

#: Drives the FastAPI example in its own process (an asyncio program of its own):
#: its lifespan campaigns, and /leader shows the job running with a token.
FASTAPI_DRIVER = """
import json, time
from fastapi.testclient import TestClient
from examples.fastapi_service import app
with TestClient(app) as client:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen = client.get("/leader").json()
        if seen["this_replica"]["leading"] and seen["this_replica"]["ticks"] >= 3:
            break
        time.sleep(0.05)
print(json.dumps(seen))
"""


def run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("example", ["trio_worker.py", "threaded_worker.py"])
def test_a_worker_leads_and_works_with_its_fencing_token(tmp_path, example):
    with node_process(tmp_path) as port:
        done = run(f"examples/{example}", "--endpoints", f"127.0.0.1:{port}", "--steps", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("worker-1 leads 'nightly-report' (token ")
    token = lines[0].rpartition("token ")[2].rstrip(")")
    assert lines[1:] == [f"step {i} with fencing token {token}" for i in range(3)]


def test_the_fastapi_service_runs_its_job_while_it_leads(tmp_path):
    with node_process(tmp_path) as port:
        env = {"TRIO_ELECTION_ENDPOINTS": f"127.0.0.1:{port}", "NODE_ID": "api-1"}
        done = run("-c", FASTAPI_DRIVER, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads(done.stdout)
    assert seen["holder"] == "api-1" and seen["fencing_token"] > 0
    assert seen["this_replica"]["leading"] is True
    assert seen["this_replica"]["token"] == seen["fencing_token"]
    assert seen["this_replica"]["ticks"] >= 3
