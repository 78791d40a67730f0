"""The fault-injection harness: its checker, a short run, and a run with a planted bug.

The checker is tried on histories written by hand, each with one kind of
violation; then ``python -m tools.chaos`` runs real nodes under faults and
must find nothing, and the same run with nodes that skip the lease refresh on
becoming Raft leader must find the overlap that bug causes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.chaos import client, history

REPO = Path(__file__).resolve().parents[2]


def _history(*records: dict) -> history.History:
    seen = history.History()
    open_holds: dict = {}
    for record in records:
        history.add(seen, record, open_holds)
    return seen


def hold(client: str, token: int, start: float, end: float, deadline: float | None = None):
    where = {"client": client, "election": "e", "token": token}
    return [
        {"op": "hold", "start": start, "deadline": start + 1, **where},
        {"op": "end", "how": "released", "at": end, "deadline": deadline or end + 1, **where},
    ]


def read(token: int, sent: float, received: float) -> dict:
    return {
        "op": "read",
        "client": "r",
        "election": "e",
        "sent": sent,
        "received": received,
        "token": token,
    }


def kinds(seen: history.History) -> list[str]:
    return [v.kind for v in history.check(seen)]


def test_a_clean_history_has_no_violation():
    seen = _history(
        *hold("a", 1, 0.0, 1.0), read(1, 0.2, 0.3), *hold("b", 2, 1.5, 2.5), read(2, 1.6, 1.7)
    )
    assert kinds(seen) == []


def test_two_holders_at_once_are_an_overlap():
    assert kinds(_history(*hold("a", 1, 0.0, 1.0), *hold("b", 2, 0.9, 2.0))) == ["overlap"]


def test_a_hold_ends_at_its_deadline_if_that_came_first():
    # "a" woke at 5.0 from a pause, but it stopped believing at its deadline, 1.0.
    seen = _history(*hold("a", 1, 0.0, 5.0, deadline=1.0), *hold("b", 2, 1.2, 2.0))
    assert kinds(seen) == []


def test_a_body_that_began_after_its_deadline_held_nothing():
    seen = _history(*hold("a", 2, 0.0, 3.0), *hold("b", 1, 1.0, 1.0, deadline=0.5))
    assert kinds(seen) == []


def test_a_token_that_does_not_grow_is_a_violation():
    assert kinds(_history(*hold("a", 5, 0.0, 1.0), *hold("b", 5, 1.5, 2.0))) == ["token-order"]


def test_a_client_may_get_back_the_grant_it_still_held():
    assert kinds(_history(*hold("a", 5, 0.0, 1.0), *hold("a", 5, 1.5, 2.0))) == []


def test_a_read_older_than_an_acknowledged_grant_is_stale():
    seen = _history(*hold("a", 1, 0.0, 1.0), *hold("b", 2, 1.5, 2.5), read(1, 2.6, 2.7))
    assert kinds(seen) == ["stale-read"]


def test_a_read_during_a_hold_must_answer_its_holder():
    seen = _history(*hold("a", 1, 0.0, 1.0), read(0, 0.2, 0.3))
    assert kinds(seen) == ["stale-read"]


def test_a_read_after_an_acknowledged_release_must_not_answer_it():
    released = {"op": "release", "client": "a", "election": "e", "token": 1}
    seen = _history(
        *hold("a", 1, 0.0, 1.0), {**released, "received": 1.1, "released": True}, read(1, 1.2, 1.3)
    )
    assert kinds(seen) == ["released-read"]


def test_a_client_that_died_holding_holds_until_its_last_deadline(tmp_path):
    where = {"client": "a", "election": "e", "token": 1}
    lines = [
        {"op": "hold", "start": 0.0, "deadline": 1.0, **where},
        {"op": "tick", "deadline": 3.0, **where},
    ]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"op": "ti')
    seen = history.load([tmp_path / "a.jsonl"])
    assert [(h.end, h.how) for h in seen.holds] == [(3.0, "unfinished")]


def test_hold_spans_are_low_high_in_ttls():
    assert client.span("1.5-4") == (1.5, 4.0)
    for bad in ("4", "4-1.5", "a-b", "-1-2"):
        with pytest.raises(argparse.ArgumentTypeError):
            client.span(bad)


def chaos(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "tools.chaos", "--json", str(report)]
    command += ["--dir", str(tmp_path / "run"), *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert report.exists(), done.stdout + done.stderr
    return done, json.loads(report.read_text())


def test_a_short_run_under_every_kind_of_fault_finds_no_violation(tmp_path):
    done, report = chaos(tmp_path, "--duration", "40", "--seed", "1")
    assert done.returncode == 0, done.stdout + done.stderr[-5000:]
    assert report["ok"] and report["violations"] == [] and report["problems"] == []
    assert sum(report["faults"].values()) >= 5, report["faults"]
    assert report["holds"] > 10 and report["reads"] > 0
    assert report["agreement"]["agree"] is True
    assert "seed 1" in done.stdout


#: The planted-bug runs' seeds, tried in turn until one finds a violation.
PLANTED_SEEDS = (2, 3, 4)


def test_the_checker_catches_a_planted_bug(tmp_path):
    """The bug shows only where a leader change meets a holder whose last
    logged renewal is over a TTL old (the new leader expires it) while a live
    candidate waits to be granted it, before the holder's next heartbeat is
    refused. Everyone contends for one election and holds it for 1.5-4 TTLs,
    so most leader changes meet that; still a run of 30 s sometimes meets
    none (seed 2 did in one of two whole-suite runs, though five seeds run
    alone all found it), so up to three seeds are tried. A checker that
    misses the bug fails all three."""
    runs = []
    for seed in PLANTED_SEEDS:
        (tmp_path / f"seed-{seed}").mkdir()
        done, report = chaos(
            tmp_path / f"seed-{seed}",
            "--plant-bug",
            "skip-refresh",
            "--faults",
            "kill-leader,isolate-leader",
            "--clients",
            "6",
            "--elections",
            "1",
            "--hold",
            "1.5-4",
            "--duration",
            "30",
            "--seed",
            str(seed),
        )
        runs.append(done.stdout)
        if done.returncode == 1:
            break
    assert done.returncode == 1, "\n".join(runs) + done.stderr[-5000:]
    # Early expiry shows as two holders at once, or as a read that misses the
    # holder whose hold spans it; which of them a run meets depends on timing.
    kinds = {v["kind"] for v in report["violations"]}
    assert kinds & {"overlap", "stale-read"}, report
