"""The load: closed loops of calls, renewal streams, and the phases built on them.

Every phase drives a ``System`` the same way, whichever system it is. Server
CPU is utime + stime of the node processes, summed, over the measurement;
bytes between nodes are read from each system's own counters (ours:
``Cluster.Status.peer_bytes_sent``; etcd: ``etcd_network_peer_sent_bytes_total``
on ``/metrics``). Nothing here asserts a speed.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tools.bench.processes import progress
from tools.bench.systems import TTL_S, Op, System

WINDOW = 16  # renewals in flight per stream
GROUP = 16  # elections per client in the renew16 workload
WORKLOADS = ("acquire", "renew", f"renew{GROUP}", "read")
FAILOVER_PROBE_S = 0.25  # per-call timeout of the writes that find the new leader
FAILOVER_MAX_S = 30.0


@dataclass
class Config:
    quick: bool
    duration: float  # seconds per measured run
    runs: int  # runs per row; the row is their median
    concurrency: list[int]
    held: list[int]  # elections in the capacity runs
    memory_elections: int
    handover_rounds: int
    failover_rounds: int
    node_counts: list[int] = field(default_factory=lambda: [1, 3])


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


async def closed_loop(ops: list[Op], duration: float) -> tuple[list[float], int]:
    """Each op in its own task, again and again until ``duration`` has passed."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + duration

    async def run(op: Op) -> None:
        nonlocal errors
        n = 0
        while (start := time.monotonic()) < deadline:
            try:
                await op(n)
                latencies.append(time.monotonic() - start)
            except Exception:  # noqa: BLE001 - counted, the run goes on
                errors += 1
            n += 1

    await asyncio.gather(*(run(op) for op in ops))
    return latencies, errors


async def renew_streams(
    system: System, held: list[Any], concurrency: int, duration: float, per_message: int = 1
) -> tuple[list[float], int]:
    """``concurrency`` messages in flight, ``WINDOW`` per stream; each renews
    ``per_message`` elections (and counts as that many)."""
    window = min(WINDOW, concurrency)
    streams = max(1, concurrency // window)
    latencies: list[float] = []
    refused = 0
    deadline = time.monotonic() + duration

    async def pump(task: int) -> None:
        nonlocal refused
        mine = held[task::streams] or held
        async with system.renew_stream(task) as stream:
            sent: deque[float] = deque()
            k = 0
            for _ in range(window):
                sent.append(time.monotonic())
                await stream.send_message(system.renewal(mine[k % len(mine)]))
                k += 1
            while time.monotonic() < deadline:
                reply = await stream.recv_message()
                now = time.monotonic()
                latencies.extend([now - sent.popleft()] * per_message)
                refused += not system.renewed(reply)
                sent.append(now)
                await stream.send_message(system.renewal(mine[k % len(mine)]))
                k += 1
            await stream.cancel()

    await asyncio.gather(*(pump(t) for t in range(streams)))
    return latencies, refused


async def measure(
    system: System, workload: str, concurrency: int, duration: float, items: list[Any]
) -> dict[str, Any]:
    """One run of one workload: ops/s, latency, CPU and bytes between nodes per op."""
    bytes0 = await system.peer_bytes()
    cpu0 = system.processes.cpu()
    started = time.monotonic()
    if workload == "acquire":
        ops = [system.acquire(t) for t in range(concurrency)]
        latencies, errors = await closed_loop(ops, duration)
    elif workload == "read":
        ops = [system.read(t, items) for t in range(concurrency)]
        latencies, errors = await closed_loop(ops, duration)
    else:
        per_message = GROUP if workload == f"renew{GROUP}" else 1
        latencies, errors = await renew_streams(system, items, concurrency, duration, per_message)
    elapsed = time.monotonic() - started
    cpu = system.processes.cpu() - cpu0
    bytes1 = await system.peer_bytes()
    n = len(latencies)
    return {
        "ops_per_s": n / elapsed,
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "server_cpu_us_per_op": cpu / n * 1e6 if n else None,
        "peer_bytes_per_op": (bytes1 - bytes0) / n if n and bytes0 is not None else None,
        "errors": errors,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the runs, and the spread (min, max) of ops/s."""
    out: dict[str, Any] = {"runs": len(runs)}
    for key in ("ops_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_op", "peer_bytes_per_op"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    rates = [r["ops_per_s"] for r in runs]
    out["ops_per_s_spread"] = [min(rates), max(rates)]
    out["errors"] = sum(r["errors"] for r in runs)
    return out


async def workloads(system: System, config: Config) -> list[dict[str, Any]]:
    """Every workload at every concurrency, ``config.runs`` times each."""
    top = max(config.concurrency)
    held = await system.hold(top * 2, prefix="held")
    # Groups are shared by the messages in flight beyond 64: fewer to take.
    groups = await system.hold_groups(min(64, top), GROUP, prefix="group")
    rows = []
    for workload in WORKLOADS:
        for c in config.concurrency:
            results = []
            for r in range(config.runs):
                items = groups if workload == f"renew{GROUP}" else held
                results.append(await measure(system, workload, c, config.duration, items))
                progress(
                    f"{system.name} x{system.nodes} {workload} c={c} run {r + 1}/{config.runs}: "
                    f"{results[-1]['ops_per_s']:,.0f} ops/s"
                )
            rows.append(
                {"system": system.name, "nodes": system.nodes, "workload": workload,
                 "concurrency": c, **summarise(results)}
            )  # fmt: skip
    return rows


async def memory(system: System, elections: int, steps: int = 4) -> dict[str, Any]:
    """RSS of the largest node as it takes ``elections`` more, one per client,
    in ``steps`` equal steps: the points of memory against elections held."""
    base = system.processes.rss()
    points = [(0, 0.0)]
    for step in range(steps):
        await system.hold(elections // steps, prefix=f"mem{step}-")
        grown = max(a - b for a, b in zip(system.processes.rss(), base, strict=True))
        points.append(((step + 1) * (elections // steps), grown / 2**20))
    held, grown_mb = points[-1]
    row = {
        "system": system.name,
        "nodes": system.nodes,
        "elections": held,
        "rss_mb_before": max(base) / 2**20,
        "grown_mb": points,
        "mb_per_10k": grown_mb / held * 10_000,
    }
    progress(
        f"{system.name} x{system.nodes}: {held:,} more elections held, "
        f"{row['mb_per_10k']:.1f} MB per 10,000 (largest node)"
    )
    return row


async def handover(system: System, rounds: int) -> dict[str, Any]:
    """Release, and the time until the waiting campaigner is elected."""
    took, bad = await system.handover(f"handover{system.nodes}", rounds)
    row = {
        "system": system.name,
        "nodes": system.nodes,
        "rounds": rounds,
        "p50_ms": ms(percentile(took, 50)),
        "p99_ms": ms(percentile(took, 99)),
        "bad_rounds": bad,
    }
    progress(f"{system.name} x{system.nodes}: hand-over p50 {row['p50_ms']:.2f} ms")
    return row


async def failover(system: System, rounds: int) -> dict[str, Any]:
    """SIGKILL the Raft leader; the time until a write commits through a survivor.

    The killed node restarts from its data dir before the next round.
    """
    times = []
    for r in range(rounds):
        leader = await system.leader()
        survivors = [i for i in range(system.nodes) if i != leader]
        for i in survivors:  # connections open before the kill
            await system.write(i, f"warm{r}-{i}", timeout=10)
        killed_at = time.monotonic()
        system.kill(leader)
        won = asyncio.get_running_loop().create_future()

        async def probe(i: int, r: int = r, won: asyncio.Future = won) -> None:
            n = 0
            while not won.done():
                sent = time.monotonic()
                try:
                    await system.write(i, f"failover{r}-{i}-{n}", timeout=FAILOVER_PROBE_S)
                    if not won.done():
                        won.set_result(time.monotonic())
                    return
                except Exception:  # noqa: BLE001 - no leader yet
                    n += 1
                    await asyncio.sleep(max(0.0, sent + 0.01 - time.monotonic()))

        probes = [asyncio.ensure_future(probe(i)) for i in survivors]
        try:
            first = await asyncio.wait_for(won, FAILOVER_MAX_S)
        finally:
            for task in probes:
                task.cancel()
            await asyncio.gather(*probes, return_exceptions=True)
        times.append(first - killed_at)
        progress(
            f"{system.name} x{system.nodes}: failover round {r + 1}/{rounds}: "
            f"a write committed {times[-1]:.3f} s after the leader's SIGKILL; restarting it"
        )
        await system.restart(leader)
        await system.leader()
    return {
        "system": system.name,
        "nodes": system.nodes,
        "rounds": rounds,
        "each_s": times,
        "median_s": statistics.median(times),
        "max_s": max(times),
    }


async def capacity(system: System, elections: int, duration: float) -> dict[str, Any]:
    """``elections`` held at TTL 10 s, each renewed every TTL/3, 16 to a
    message (a client's renewals falling due together; etcd: one session
    lease per 16), over 16 streams: the cluster's CPU and the renewal latency."""
    rss0 = system.processes.rss()
    progress(f"{system.name} x{system.nodes}: taking {elections:,} elections")
    groups = await system.hold_groups(max(1, elections // GROUP), GROUP, f"cap{elections}-")
    rss1 = system.processes.rss()
    progress(f"{system.name} x{system.nodes}: {elections:,} elections held; renewing")
    interval = TTL_S / 3
    streams = 16
    latencies: list[float] = []
    refused = 0
    started = time.monotonic()
    stop = started + max(duration, interval)
    cpu0 = system.processes.cpu()

    async def pump(task: int) -> None:
        nonlocal refused
        mine = groups[task::streams]
        if not mine:
            return
        gap = interval / len(mine)
        sent: deque[float] = deque()
        async with system.renew_stream(task) as stream:
            await stream.send_request()  # before the receiver waits on the stream

            async def receive() -> None:
                nonlocal refused
                while True:
                    reply = await stream.recv_message()
                    latencies.append(time.monotonic() - sent.popleft())
                    refused += not system.renewed(reply)

            receiver = asyncio.ensure_future(receive())
            k = 0
            while (due := started + k * gap) < stop:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                sent.append(time.monotonic())
                await stream.send_message(system.renewal(mine[k % len(mine)]))
                k += 1
            await asyncio.sleep(0.5)  # the last replies
            if receiver.done():
                receiver.result()  # it failed: say why
            receiver.cancel()
            await stream.cancel()

    await asyncio.gather(*(pump(t) for t in range(streams)))
    wall = time.monotonic() - started
    cpu = system.processes.cpu() - cpu0
    held = len(groups) * GROUP
    return {
        "system": system.name,
        "nodes": system.nodes,
        "elections": held,
        "renewals_per_s": len(latencies) * GROUP / wall,
        "cluster_cpu_percent": cpu / wall * 100,
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "refused_messages": refused,
        "rss_mb_per_10k": max(b - a for a, b in zip(rss0, rss1, strict=True))
        / 2**20
        / held
        * 10_000,
    }
