"""tools/etcd_compare.py runs end to end (very short; it measures, never asserts speed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_very_short_comparison_reports_every_row(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    command = [sys.executable, str(ROOT / "tools" / "etcd_compare.py"), "--quick"]
    command += ["--duration", "0.3", "--held", "320", "--json", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    systems = {"trio-election", "etcd"} if shutil.which("etcd") else {"trio-election"}
    if "etcd" not in systems:
        assert "apt-get install etcd-server" in run.stderr
    rows = result["rows"]
    assert {r["system"] for r in rows} == systems
    for system in systems:
        got = {(r["workload"], r["concurrency"]) for r in rows if r["system"] == system}
        assert got == {(w, c) for w in ("acquire", "renew", "renew16", "read") for c in (16, 256)}
    for row in rows:
        assert row["ops_per_s"] > 0, row
        assert row["server_cpu_us_per_op"] > 0, row
        assert row["p50_ms"] <= row["p99_ms"], row
    assert "ops ours/etcd" in run.stdout
    assert {r["system"] for r in result["capacity"]} == systems
    for row in result["capacity"]:
        assert row["elections"] == 320 and row["renewals_per_s"] > 0, row
        assert row["refused_messages"] == 0, row
