"""tools/bench.py runs end to end (a very short run: it measures, never asserts speed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]


async def test_a_very_short_bench_run_reports_every_part() -> None:
    command = [sys.executable, str(ROOT / "tools" / "bench.py"), "--quick", "--json"]
    command += ["--duration", "0.2", "--elections", "300"]
    with trio.fail_after(240):
        result = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    report = json.loads(result.stdout)
    assert {"unary", "keepalive", "memory", "handover", "comparison", "cluster"} <= set(report)
    assert all(row["errors"] == 0 for row in report["unary"])
    assert all(h["bad_rounds"] == 0 for h in report["handover"])
    assert report["cluster"]["failover"], "the cluster part measured no failover"
