"""``just bench --quick`` runs end to end and reports every figure (it measures, never asserts
speed), and stops everything it started when interrupted."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
BENCH = [sys.executable, "-m", "tools.bench"]
WORKLOADS = ("acquire", "renew", "renew16", "read")


def bench_children() -> list[int]:
    """Processes whose command line names a bench data dir."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"trio-election-bench-" in cmdline:
                found.append(int(entry.name))
    return found


async def test_the_quick_bench_reports_every_figure(tmp_path: Path) -> None:
    out, charts = tmp_path / "bench.json", tmp_path / "charts"
    command = [*BENCH, "--quick", "--json", str(out), "--charts", str(charts)]
    with trio.fail_after(600):
        run = await trio.run_process(
            command, cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False
        )
    stderr = run.stderr.decode()
    assert run.returncode == 0, stderr[-3000:]
    result = json.loads(out.read_text())
    systems = {"trio-election", "etcd"} if shutil.which("etcd") else {"trio-election"}
    if "etcd" not in systems:
        assert "apt-get install etcd-server" in stderr
    rows = result["rows"]
    got = {(r["system"], r["nodes"], r["workload"], r["concurrency"]) for r in rows}
    assert got == {(s, n, w, c) for s in systems for n in (1, 3) for w in WORKLOADS
                   for c in (16, 256)}  # fmt: skip
    for row in rows:
        assert row["ops_per_s"] > 0 and row["server_cpu_us_per_op"] > 0, row
        assert row["p50_ms"] <= row["p99_ms"], row
        assert (row["peer_bytes_per_op"] is None) == (row["nodes"] == 1), row
        if row["system"] == "trio-election" and "etcd" in systems:
            assert row["vs_etcd"]["ops_per_s"] > 0, row
    for part, nodes in (("memory", (1, 3)), ("handover", (1, 3)), ("failover", (3,))):
        assert {(r["system"], r["nodes"]) for r in result[part]} == {
            (s, n) for s in systems for n in nodes
        }, part
    assert all(r["mb_per_10k"] > 0 and len(r["grown_mb"]) == 5 for r in result["memory"])
    assert all(r["bad_rounds"] == 0 and r["p50_ms"] > 0 for r in result["handover"])
    assert all(0 < r["max_s"] < 30 for r in result["failover"])
    assert {r["system"] for r in result["capacity"]} == systems
    for row in result["capacity"]:
        assert row["elections"] == 2_000 and row["renewals_per_s"] > 0, row
        assert row["refused_messages"] == 0, row
    assert result["targets"] and all(t["ours"] is not None for t in result["targets"])
    stdout = run.stdout.decode()
    assert "etcd ops/s" in stdout and "hand-over p50" in stdout and "goal" in stdout
    if importlib.util.find_spec("matplotlib"):
        for name in ("throughput", "latency", "cpu", "memory"):
            assert (charts / f"{name}.png").stat().st_size > 10_000, name
    else:
        assert "charts need matplotlib" in stderr
    assert not bench_children()


def test_ctrl_c_stops_every_node_it_started() -> None:
    proc = subprocess.Popen(
        [*BENCH, "--quick", "--no-etcd"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # until the first workload has run: nodes are up
            if "run 1/1" in line:
                break
        assert bench_children(), "no node was running"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        assert "interrupted" in proc.stderr.read()
        assert not bench_children()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_crowd_bench_reports_memory_and_latency(tmp_path):
    out = tmp_path / "crowd.json"
    command = [sys.executable, "-m", "tools.bench.crowd", "--elections", "300"]
    command += ["--watchers", "50", "--seconds", "0.5", "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["elections"] == 300 and result["watchers"] == 50
    assert set(result["rss_mb"]) == {"idle", "held", "watching", "end"}
    assert result["idle_reads"]["calls"] > 0 and result["crowded_reads"]["calls"] > 0
    assert result["events_delivered_during_reads"] > 0
