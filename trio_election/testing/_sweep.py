"""Run many seeds of a seeded simulation at once, one process per core.

Each case is ``(profile, seed)``; ``run(profile, seed)`` is a module-level
function (the pool pickles it by name) that raises on a violation. A failing
case is reported with its message, and the rest still run.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor

Case = tuple[str, int]


def workers() -> int:
    """``SIM_WORKERS`` if set, else the cores this process may use."""
    if "SIM_WORKERS" in os.environ:
        return max(1, int(os.environ["SIM_WORKERS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def seeds(profiles: Mapping[str, tuple[object, int]], count_variable: str) -> list[Case]:
    """Every ``(profile, seed)``: each profile's default number of seeds, or
    the number in the environment variable ``count_variable`` if set."""
    count = os.environ.get(count_variable)
    return [
        (name, seed)
        for name, (_, default) in profiles.items()
        for seed in range(int(count) if count else default)
    ]


def _one(run: Callable[[str, int], object], case: Case) -> str | None:
    try:
        run(*case)
    except Exception as e:
        return "".join(traceback.format_exception_only(e)).strip()
    return None


def sweep(
    run: Callable[[str, int], object], cases: Sequence[Case], label: str
) -> list[tuple[Case, str]]:
    """Run every case; return the failing ones with their messages.

    Progress goes to stderr (shown by ``pytest -s`` and ``just simulate``).
    """
    n = workers()
    started = time.monotonic()
    failures: list[tuple[Case, str]] = []

    def progress(done: int) -> None:
        print(
            f"{label}: {done}/{len(cases)} seeds, {len(failures)} failed, "
            f"{time.monotonic() - started:.0f} s, {n} processes",
            file=sys.stderr,
            flush=True,
        )

    step = max(1, len(cases) // 10)
    if n == 1:
        results = map(_one, [run] * len(cases), cases)
    else:
        # spawn, not fork: the test process may have threads running.
        pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_one, [run] * len(cases), cases, chunksize=4)
    try:
        for done, (case, error) in enumerate(zip(cases, results, strict=True), 1):
            if error is not None:
                failures.append((case, error))
            if done % step == 0 or done == len(cases):
                progress(done)
    finally:
        if n > 1:
            pool.shutdown(cancel_futures=True)
    return failures
