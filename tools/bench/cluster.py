"""Three nodes of each system: memory (first, on the fresh nodes), every
workload (with the bytes sent between the nodes), hand-over, failover of the
Raft leader, and the capacity runs.

Load goes to every node (task ``t`` talks to node ``t % 3``), as clients of a
cluster spread over its endpoints; followers forward to the Raft leader.
"""

from __future__ import annotations

from typing import Any

from tools.bench import load
from tools.bench.processes import progress
from tools.bench.systems import System


async def measure(system: System, config: load.Config) -> dict[str, Any]:
    out: dict[str, Any] = {
        "memory": [await load.memory(system, config.memory_elections)],
        "rows": await load.workloads(system, config),
        "handover": [await load.handover(system, config.handover_rounds)],
        "failover": [await load.failover(system, config.failover_rounds)],
        "capacity": [],
    }
    for elections in config.held:
        row = await load.capacity(system, elections, config.duration)
        out["capacity"].append(row)
        progress(
            f"{system.name} x{system.nodes} {elections:,} held: "
            f"{row['cluster_cpu_percent']:.0f}% of a core, renewal p99 {row['p99_ms']:.1f} ms"
        )
    return out
