"""``python -m tools.chaos`` (``just chaos``): real nodes under faults, and a verdict.

Starts 3 or 5 ``trio-election node`` processes on loopback, each peer link
through a proxy that can cut, delay or reset it, and client processes that
campaign, hold, release and read through random nodes. Faults come one at a
time on a schedule drawn from ``--seed``: SIGKILL and restart (of any node and
of the Raft leader), SIGSTOP pauses longer than the election timeout (of nodes
and of clients), partitions (majority/minority, the leader isolated, a bridge
node, one-way), delayed and reset links, a member removed and added back
under load, and every node killed at once. Afterwards it checks the clients'
history (no two holders at once, tokens increasing, no acknowledged grant or
release lost: ``history.py``) and that every member applied the same state,
and reports availability. Exit status: 0 clean, 1 a violation or a problem,
130 interrupted. Nothing it started outlives it.

``--plant-bug skip-refresh`` runs nodes with a known bug, to show that the
checker fails a broken cluster; ``--hold LOW-HIGH`` sets how long a holder's
body works, in TTLs (longer holds meet that bug more often).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import trio

from .client import span
from .node import BUGS
from .run import FAULTS, Options, as_dict, progress, run


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(
        prog="python -m tools.chaos", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults (60)")
    parser.add_argument(
        "--seed", type=int, help="the schedule's seed (default: a random one, printed)"
    )
    parser.add_argument("--clients", type=int, default=4, help="client processes (4)")
    parser.add_argument("--elections", type=int, default=3, help="elections they contend for (3)")
    parser.add_argument("--ttl", type=float, default=2.0, help="the clients' TTL in seconds (2)")
    parser.add_argument(
        "--hold",
        type=span,
        default=(0.1, 3.0),
        metavar="LOW-HIGH",
        help="how long a holder works, in TTLs (0.1-3)",
    )
    parser.add_argument(
        "--faults",
        help=f"comma-separated kinds to inject (default all: {','.join(FAULTS)})",
    )
    parser.add_argument("--plant-bug", choices=sorted(BUGS), help="run nodes with this bug")
    parser.add_argument("--dir", type=Path, help="keep the nodes' and clients' files here")
    parser.add_argument("--json", type=Path, help="write the report to this file")
    args = parser.parse_args(argv)
    faults = tuple(FAULTS) if args.faults is None else tuple(args.faults.split(","))
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        parser.error(f"--faults: unknown kinds {', '.join(unknown)}")
    seed = random.randrange(10**6) if args.seed is None else args.seed
    options = Options(
        nodes=args.nodes,
        duration=args.duration,
        seed=seed,
        clients=args.clients,
        elections=args.elections,
        ttl=args.ttl,
        hold=args.hold,
        plant=args.plant_bug,
        faults=faults,
        root=args.dir,
    )
    return args, options


def summary(report: dict) -> str:
    lines = [
        f"seed {report['seed']}: {report['nodes']} nodes, {report['duration']:g} s of faults",
        "faults: " + (", ".join(f"{k} {v}" for k, v in sorted(report["faults"].items())) or "none"),
        f"holds {report['holds']}, reads {report['reads']}; requests: "
        + "; ".join(
            f"{kind} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            for kind, counts in sorted(report["requests"].items())
        ),
        "availability: " + ", ".join(f"{k} {v}" for k, v in report["availability"].items()),
        f"agreement: {report['agreement']}",
    ]
    for problem in report["problems"]:
        lines.append(f"PROBLEM: {problem}")
    for violation in report["violations"]:
        lines.append(
            f"VIOLATION {violation['kind']} in {violation['election']}: {violation['detail']}"
        )
    verdict = (
        "no violation"
        if report["ok"]
        else (f"{len(report['violations'])} violations, {len(report['problems'])} problems")
    )
    lines.append(f"{verdict} (files in {report['root']}; rerun with --seed {report['seed']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, options = parse(argv)
    try:
        report = as_dict(trio.run(run, options))
    except KeyboardInterrupt:
        progress("interrupted; everything it started is stopped")
        return 130
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(summary(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
