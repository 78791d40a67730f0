#!/usr/bin/env python
"""Run a larger sweep of the seeded simulations than the test suite does.

Usage::

    python tools/simulate.py [--seeds N] [pytest arguments...]

Every profile of the Raft simulation (``tests/raft/test_simulation.py``) and of
the election simulation over Raft (``tests/cluster/test_election_simulation.py``)
runs seeds 0 to N-1, in a pool of processes (``SIM_WORKERS``, default one per
core); both run the replica the server ships. A failure prints its profile
and seed, and how to rerun it alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200, help="seeds per profile (default 200)")
    args, rest = parser.parse_known_args(argv)
    env = dict(os.environ, RAFT_SIM_SEEDS=str(args.seeds), ELECTION_SIM_SEEDS=str(args.seeds))
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-k",
        "test_sweep",
        "-s",
    ]
    command += ["tests/raft/test_simulation.py", "tests/cluster/test_election_simulation.py"]
    print(f"{args.seeds} seeds per profile: {' '.join(command[2:])}", file=sys.stderr)
    return subprocess.call(command + rest, cwd=REPO, env=env)


if __name__ == "__main__":
    sys.exit(main())
