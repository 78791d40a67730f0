"""``python -m tools.bench.crowd``: one node with a crowd on it, and what the others feel.

One trio-election node (with a data dir, as by default) takes ``--elections``
held elections (200,000) and ``--watchers`` Watch streams (2,000, over 20
connections) while a writer hands the watched elections from one holder to
another, so every watcher keeps receiving events. Measured: the node's RSS
idle, with the elections, and with the watchers; and the latency of one
client's reads (GetCurrentLeader, one at a time) idle and in the crowd, as a
ratio. Nothing asserts a speed; ``--json F`` keeps the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from grpclib.client import Channel

from tools.bench.load import closed_loop, ms, percentile
from tools.bench.processes import HOST, progress
from tools.bench.systems import HOLD_TTL_S, Ours
from trio_election._generated.v1 import election_grpc, election_pb2 as pb

WATCH_CONNECTIONS = 20
MB = 1024 * 1024


class Crowded(Ours):
    """Our node, with limits that let the crowd in."""

    def configure(self) -> None:
        super().configure()
        for args in self.args:
            args += ["--max-elections", "1000000", "--max-watchers", "100000"]
            args += ["--max-watchers-per-connection", "10000", "--max-calls", "100000"]
            args += ["--max-calls-per-connection", "10000", "--max-connections", "1000"]


async def reads(system: Ours, held: list[Any], seconds: float) -> dict[str, Any]:
    latencies, errors = await closed_loop([system.read(0, held)], seconds)
    return {
        "calls": len(latencies),
        "errors": errors,
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
    }


async def watch(stub: Any, election: str, seen: list[int], ready: asyncio.Event) -> None:
    async with stub.Watch.open() as stream:
        await stream.send_message(pb.WatchRequest(election=election), end=True)
        first = True
        async for _ in stream:
            seen[0] += 1
            if first:
                first = False
                seen[1] += 1
                if seen[1] == seen[2]:
                    ready.set()


async def churn(stub: Any, elections: list[str], stop: asyncio.Event) -> int:
    """Hand each watched election to "other" and back, over and over."""
    moves = 0
    k = 0
    while not stop.is_set():
        election = elections[k % len(elections)]
        k += 1
        release = pb.ReleaseLeadershipRequest(election=election, node_id="holder")
        await stub.ReleaseLeadership(release)
        take = pb.TryBecomeLeaderRequest(
            election=election, node_id="holder", ttl_ms=HOLD_TTL_S * 1000
        )
        await stub.TryBecomeLeader(take)
        moves += 1
        await asyncio.sleep(0.005)
    return moves


async def run(elections: int, watchers: int, seconds: float, root: Path) -> dict[str, Any]:
    system = Crowded(root, 1)
    await system.start()
    try:
        pid = system.processes.pids()[0]
        rss = {"idle": system.processes.rss()[0]}
        small = await system.hold(100, "idle-")
        idle = await reads(system, small, seconds)
        progress(f"idle: reads p50 {idle['p50_ms']:.2f} ms, p99 {idle['p99_ms']:.2f} ms")
        progress(f"taking {elections:,} elections")
        started = time.monotonic()
        held = await system.hold(elections, "crowd-")
        fill_s = time.monotonic() - started
        rss["held"] = system.processes.rss()[0]
        progress(f"{elections:,} held in {fill_s:.0f} s; RSS {rss['held'] / MB:.0f} MB")
        channels = [Channel(HOST, system.ports[0]) for _ in range(WATCH_CONNECTIONS)]
        stubs = [election_grpc.LeaderElectionStub(c) for c in channels]
        watched = [name for name, _ in held[:watchers]]
        seen = [0, 0, len(watched)]  # events, watchers with their first event, watchers
        ready = asyncio.Event()
        tasks = [
            asyncio.ensure_future(watch(stubs[i % len(stubs)], name, seen, ready))
            for i, name in enumerate(watched)
        ]
        await asyncio.wait_for(ready.wait(), 120)
        rss["watching"] = system.processes.rss()[0]
        progress(f"{len(watched):,} watchers live; RSS {rss['watching'] / MB:.0f} MB")
        stop = asyncio.Event()
        mover = asyncio.ensure_future(churn(system.stubs[1], watched, stop))
        events_before = seen[0]
        crowded = await reads(system, held[watchers:] or held, seconds)
        stop.set()
        moves = await mover
        events = seen[0] - events_before
        rss["end"] = system.processes.rss()[0]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            channel.close()
        system.processes.check("trio-election")
        return {
            "pid": pid,
            "elections": elections,
            "watchers": len(watched),
            "fill_s": round(fill_s, 1),
            "rss_mb": {k: round(v / MB, 1) for k, v in rss.items()},
            "idle_reads": idle,
            "crowded_reads": crowded,
            "p50_ratio": round(crowded["p50_ms"] / idle["p50_ms"], 2),
            "p99_ratio": round(crowded["p99_ms"] / idle["p99_ms"], 2),
            "handovers_during_reads": moves,
            "events_delivered_during_reads": events,
        }
    finally:
        system.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.crowd", description=__doc__)
    parser.add_argument("--elections", type=int, default=200_000)
    parser.add_argument("--watchers", type=int, default=2_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="of reads, idle and crowded")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.watchers > args.elections:
        parser.error("--watchers watch held elections: give at least as many --elections")
    with tempfile.TemporaryDirectory(prefix="trio-election-crowd-") as root:
        try:
            result = asyncio.run(run(args.elections, args.watchers, args.seconds, Path(root)))
        except KeyboardInterrupt:
            return 130
    text = json.dumps(result, indent=1)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
