"""One node of each system: memory per election (first, on the fresh node, so
that nothing freed by the workloads is reused), every workload, hand-over.

Our node writes through to its data dir (``--data-dir``), as etcd's does, so a
grant is on disk before its reply in both.
"""

from __future__ import annotations

from typing import Any

from tools.bench import load
from tools.bench.systems import System


async def measure(system: System, config: load.Config) -> dict[str, Any]:
    return {
        "memory": [await load.memory(system, config.memory_elections)],
        "rows": await load.workloads(system, config),
        "handover": [await load.handover(system, config.handover_rounds)],
    }
