"""``python -m tools.bench``: measure trio-election and etcd side by side."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tools.bench import cluster, load, report, single
from tools.bench.processes import progress
from tools.bench.systems import Etcd, Ours, System, etcd_stubs

INSTALL = (
    "etcd was not found: install it (Debian/Ubuntu: apt-get install etcd-server) "
    "to measure it beside us; measuring trio-election alone"
)


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, load.Config]:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="c=16 and 256, 1 run (about a minute)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--charts", type=Path, help="write PNG charts into this folder")
    parser.add_argument("--runs", type=int, help="runs per row, the row is the median (3; 1 quick)")
    parser.add_argument("--duration", type=float, help="seconds per run (2; 1 quick)")
    parser.add_argument(
        "--held",
        type=int,
        action="append",
        help="elections held in a capacity run (repeatable; 10,000; 2,000 quick)",
    )
    parser.add_argument("--nodes", type=int, action="append", choices=(1, 3), help="(1 and 3)")
    parser.add_argument("--no-etcd", action="store_true", help="measure trio-election alone")
    args = parser.parse_args(argv)
    quick = args.quick
    config = load.Config(
        quick=quick,
        duration=args.duration or (1.0 if quick else 2.0),
        runs=args.runs or (1 if quick else 3),
        concurrency=[16, 256] if quick else [1, 16, 64, 256],
        held=args.held or ([2_000] if quick else [10_000]),
        memory_elections=2_000 if quick else 10_000,
        handover_rounds=20 if quick else 100,
        failover_rounds=1 if quick else 3,
        node_counts=sorted(set(args.nodes or [1, 3])),
    )
    return args, config


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.machine()


async def run(config: load.Config, etcd: str | None, root: Path) -> dict[str, Any]:
    stubs = etcd_stubs(root / "stubs") if etcd else None
    results: dict[str, Any] = {
        part: [] for part in ("rows", "memory", "handover", "failover", "capacity")
    }
    for nodes in config.node_counts:
        systems: list[System] = [Ours(root / f"ours{nodes}", nodes)]
        if etcd:
            systems.append(Etcd(root / f"etcd{nodes}", nodes, etcd, stubs))
        for system in systems:
            progress(f"{system.name}: starting {nodes} node(s)")
            try:
                await system.start()
                part = single if nodes == 1 else cluster
                for key, rows in (await part.measure(system, config)).items():
                    results[key] += rows
            finally:
                system.close()
    return results


def main(argv: list[str] | None = None) -> int:
    args, config = parse(argv)
    etcd = None if args.no_etcd else shutil.which("etcd")
    if etcd is None and not args.no_etcd:
        progress(INSTALL)
    # SIGTERM ends the run as Ctrl-C does: through the finally that stops every node.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # Plain asyncio for the load generator (importing trio_election installs
    # trio-asyncio's loop policy, which the servers use, not this client).
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    with tempfile.TemporaryDirectory(prefix="trio-election-bench-") as tmp:
        results = asyncio.run(run(config, etcd, Path(tmp)))
    results["machine"] = {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": sys.version.split()[0],
        "kernel": platform.release(),
    }
    results["etcd"] = (
        etcd
        and subprocess.run(
            [etcd, "--version"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0]
    )
    results["config"] = {**vars(config), "window": load.WINDOW, "group": load.GROUP}
    report.with_ratios(results)
    results["targets"] = report.targets(results)
    print(report.render(results))
    if args.charts:
        written = report.charts(results, args.charts)
        if written:
            progress("charts: " + ", ".join(str(p) for p in written))
        else:
            progress("charts need matplotlib: pip install -e '.[bench]'")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        progress(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every node it started is stopped", file=sys.stderr)
        sys.exit(130)
