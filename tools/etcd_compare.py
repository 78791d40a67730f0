#!/usr/bin/env python
"""trio-election and etcd side by side, in one run, under one load generator.

Usage::

    python tools/etcd_compare.py [--quick] [--json FILE] [--runs N] [--duration S]

Both systems run on loopback with data dirs under one temporary folder: three
``trio-election node`` processes (a Raft cluster with a cluster key), then
three ``etcd`` processes (Debian's ``etcd-server``; ``--quick`` and the full run
also measure one node of each in the full run). The load generator is this
process: asyncio tasks over grpclib channels, the same for both, each task
talking to one node (tasks spread over the nodes), in a closed loop. The
workloads do what etcd's own election recipe does:

* ``acquire``: a fresh election. Ours: TryBecomeLeader. etcd: LeaseGrant,
  then a Txn that puts the key with the lease if it does not exist.
* ``renew``: renewals of held elections over streams (16 in flight per stream).
  Ours: Heartbeat over KeepAlive. etcd: LeaseKeepAlive.
* ``renew16``: a client holding 16 elections renews them all with one
  message. Ours: a batch of 16 heartbeats over KeepAlive. etcd: one
  LeaseKeepAlive of the client's session lease, which the 16 keys share (as
  etcd's concurrency.Session does). Counted as 16 renewals.
* ``read``: who leads. Ours: GetCurrentLeader. etcd: Range (linearizable).

Then a capacity run on three nodes: N elections held (``--held``, default
10,000; ``--held 100000`` for the target's figure), each renewed every TTL/3
at TTL 10 s, 16 to a message, over 16 streams: the cluster's CPU (summed over
the nodes) and the renewal latency.

Figures per row: ops/s, p50 and p99 latency, and server CPU in microseconds
per operation (utime + stime of the node processes, summed, over the
measurement). With ``--runs N`` each row is the median of N runs, with the
spread (min..max). The ratio column is ours/etcd. Nothing is asserted: this is
a measurement, and the load generator shares the machine with the servers.

etcd's API (the part used) ships as ``tools/etcd/etcd.proto``, with etcd's own
field numbers; its Python stubs are generated into the temporary folder.
Everything started is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from grpclib import GRPCError, Status  # noqa: E402
from grpclib.client import Channel  # noqa: E402

from trio_election._generated.v1 import election_grpc, election_pb2 as pb  # noqa: E402
from trio_election.testing import write_secret  # noqa: E402

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
WINDOW = 16  # renewals in flight per stream
GROUP = 16  # elections per client session in the renew16 workload
WORKLOADS = ("acquire", "renew", f"renew{GROUP}", "read")
TTL_S = 10  # of the elections the acquire workload takes
HOLD_TTL_S = 600  # of those renewed and read: they must outlive the whole run
INSTALL = (
    "etcd was not found: install it (Debian/Ubuntu: apt-get install etcd-server) "
    "to measure it beside us; measuring trio-election alone"
)


def progress(message: str) -> None:
    print(f"[compare {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


STARTED = time.monotonic()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


class Processes:
    """Child processes with their logs; all stopped by ``stop``."""

    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen, Any]] = []

    def start(self, args: list[str]) -> subprocess.Popen:
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen(
            args, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs.append((proc, log))
        return proc

    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.procs if p.poll() is None]

    def logs(self) -> str:
        out = []
        for proc, log in self.procs:
            log.seek(0)
            out.append(f"--- pid {proc.pid}:\n{log.read().decode(errors='replace')[-2000:]}")
        return "\n".join(out)

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, log in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()
        self.procs = []


async def retrying(call: Callable[[], Awaitable[Any]], attempts: int = 20) -> Any:
    """``call()``, again after a pause while the cluster answers UNAVAILABLE
    (it may be electing a Raft leader while it is being filled)."""
    for attempt in range(attempts):
        try:
            return await call()
        except GRPCError as exc:
            if exc.status is not Status.UNAVAILABLE or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.25)
    raise AssertionError("unreachable")


async def gather_bounded(jobs: list[Awaitable[Any]], limit: int = 64) -> list[Any]:
    """``asyncio.gather`` with at most ``limit`` running at once, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[Any]) -> Any:
        async with gate:
            return await job

    return await asyncio.gather(*(one(j) for j in jobs))


# -- the two systems ---------------------------------------------------------------


class System:
    """One system's nodes, its stubs and its three workloads."""

    name = ""

    def __init__(self, root: Path, nodes: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.nodes = nodes
        self.processes = Processes()
        self.ports: list[int] = []
        self.channels: list[Channel] = []

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.processes.stop()

    async def wait_ready(self, probe: Callable[[int], Awaitable[Any]], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for i in range(len(self.ports)):
            while True:
                for proc, _ in self.processes.procs:
                    if proc.poll() is not None:
                        raise RuntimeError(f"{self.name} exited:\n{self.processes.logs()}")
                try:
                    await asyncio.wait_for(probe(i), 1.0)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{self.name} not ready within {timeout} s:\n{self.processes.logs()}"
                        ) from None
                    await asyncio.sleep(0.1)


class Ours(System):
    name = "trio-election"

    async def start(self) -> None:
        ids = [f"n{i + 1}" for i in range(self.nodes)]
        self.ports = [free_port() for _ in ids]
        peers = [free_port() for _ in ids]
        initial = ",".join(f"{n}={HOST}:{p}" for n, p in zip(ids, peers, strict=True))
        key = write_secret(self.root / "cluster.key")
        for i, node_id in enumerate(ids):
            args = [sys.executable, "-m", "trio_election", "node", "--log-level", "warning"]
            args += ["--listen", f"{HOST}:{self.ports[i]}", "--data-dir", str(self.root / node_id)]
            args += ["--max-ttl", str(HOLD_TTL_S)]
            if self.nodes > 1:
                args += ["--id", node_id, "--initial-cluster", initial]
                args += ["--cluster-key-file", str(key)]
            self.processes.start(args)
        self.channels = [Channel(HOST, p) for p in self.ports]
        self.stubs = [election_grpc.LeaderElectionStub(c) for c in self.channels]

        async def probe(i: int) -> None:
            request = pb.TryBecomeLeaderRequest(election=f"probe{i}", node_id="p", ttl_ms=1000)
            reply = await self.stubs[i].TryBecomeLeader(request, timeout=1.0)
            assert reply.success or reply.leader.node_id

        await self.wait_ready(probe, 30)

    async def hold(self, count: int, prefix: str = "held") -> list[Any]:
        """Take ``count`` elections; return what a renewal names."""

        async def take(k: int) -> tuple[str, int]:
            stub = self.stubs[k % self.nodes]
            election = f"{prefix}{k}"
            reply = await retrying(
                lambda: stub.TryBecomeLeader(
                    pb.TryBecomeLeaderRequest(
                        election=election, node_id="holder", ttl_ms=HOLD_TTL_S * 1000
                    )
                )
            )
            token = reply.leader.fencing_token
            # The first renewal of a grant is logged: here, not in the measurement.
            await retrying(
                lambda: stub.Heartbeat(
                    pb.HeartbeatRequest(election=election, node_id="holder", fencing_token=token)
                )
            )
            return election, token

        return await gather_bounded([take(k) for k in range(count)])

    def acquire(self, task: int) -> Callable[[int], Awaitable[Any]]:
        stub = self.stubs[task % self.nodes]

        async def op(n: int) -> None:
            request = pb.TryBecomeLeaderRequest(
                election=f"a{task}-{n}-{time.monotonic_ns()}", node_id="w", ttl_ms=TTL_S * 1000
            )
            reply = await stub.TryBecomeLeader(request)
            assert reply.success

        return op

    def read(self, task: int, held: list[Any]) -> Callable[[int], Awaitable[Any]]:
        stub = self.stubs[task % self.nodes]

        async def op(n: int) -> None:
            election, _ = held[(task + n) % len(held)]
            reply = await stub.GetCurrentLeader(pb.GetCurrentLeaderRequest(election=election))
            assert reply.has_leader

        return op

    def renew_stream(self, task: int) -> Any:
        return self.stubs[task % self.nodes].KeepAlive.open()

    def renewal(self, item: Any) -> Any:
        if isinstance(item, list):  # a group: one batch message
            return pb.HeartbeatRequest(heartbeats=[self.renewal(one) for one in item])
        election, token = item
        return pb.HeartbeatRequest(election=election, node_id="holder", fencing_token=token)

    @staticmethod
    def renewed(reply: Any) -> bool:
        return all(r.success for r in reply.heartbeats) if reply.heartbeats else reply.success

    async def hold_groups(self, groups: int, size: int, prefix: str = "group") -> list[Any]:
        """``groups`` groups of ``size`` elections, each renewed by one batch message."""
        held = await self.hold(groups * size, prefix=prefix)
        return [held[g * size : (g + 1) * size] for g in range(groups)]


class Etcd(System):
    name = "etcd"

    def __init__(self, root: Path, nodes: int, etcd: str, stubs: Any) -> None:
        super().__init__(root, nodes)
        self.etcd = etcd
        self.rpc, self.grpc = stubs

    async def start(self) -> None:
        names = [f"e{i + 1}" for i in range(self.nodes)]
        self.ports = [free_port() for _ in names]
        peers = [free_port() for _ in names]
        initial = ",".join(f"{n}=http://{HOST}:{p}" for n, p in zip(names, peers, strict=True))
        for i, name in enumerate(names):
            client = f"http://{HOST}:{self.ports[i]}"
            peer = f"http://{HOST}:{peers[i]}"
            self.processes.start(
                [
                    self.etcd,
                    "--name", name,
                    "--data-dir", str(self.root / name),
                    "--listen-client-urls", client,
                    "--advertise-client-urls", client,
                    "--listen-peer-urls", peer,
                    "--initial-advertise-peer-urls", peer,
                    "--initial-cluster", initial,
                    "--initial-cluster-state", "new",
                    "--initial-cluster-token", "compare",
                    "--log-level", "warn",
                ]
            )  # fmt: skip
        self.channels = [Channel(HOST, p) for p in self.ports]
        self.kv = [self.grpc.KVStub(c) for c in self.channels]
        self.lease = [self.grpc.LeaseStub(c) for c in self.channels]

        async def probe(i: int) -> None:
            await self.kv[i].Range(self.rpc.RangeRequest(key=b"probe"), timeout=1.0)

        await self.wait_ready(probe, 30)

    async def _acquire(self, i: int, key: bytes, lease_id: int = 0, ttl: int = TTL_S) -> int:
        rpc = self.rpc
        if not lease_id:
            lease_id = (await self.lease[i].LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl))).ID
        txn = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    result=rpc.Compare.EQUAL,
                    target=rpc.Compare.CREATE,
                    key=key,
                    create_revision=0,
                )
            ],
            success=[
                rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=b"w", lease=lease_id))
            ],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )
        reply = await self.kv[i].Txn(txn)
        assert reply.succeeded
        return lease_id

    async def hold_groups(self, groups: int, size: int, prefix: str = "group") -> list[Any]:
        """``groups`` session leases with ``size`` elections each (etcd's
        concurrency.Session: one lease, kept alive by one message, for all the
        elections a client holds)."""

        async def group(g: int) -> int:
            i = g % self.nodes
            grant = self.rpc.LeaseGrantRequest(TTL=HOLD_TTL_S)
            lease_id = (await self.lease[i].LeaseGrant(grant)).ID
            for k in range(size):
                await self._acquire(i, f"{prefix}{g}-{k}".encode(), lease_id)
            return lease_id

        return await gather_bounded([group(g) for g in range(groups)])

    async def hold(self, count: int) -> list[Any]:
        return await gather_bounded(
            [
                self._acquire(k % self.nodes, f"held{k}".encode(), ttl=HOLD_TTL_S)
                for k in range(count)
            ]
        )

    def acquire(self, task: int) -> Callable[[int], Awaitable[Any]]:
        i = task % self.nodes

        async def op(n: int) -> None:
            await self._acquire(i, f"a{task}-{n}-{time.monotonic_ns()}".encode())

        return op

    def read(self, task: int, held: list[Any]) -> Callable[[int], Awaitable[Any]]:
        kv = self.kv[task % self.nodes]

        async def op(n: int) -> None:
            key = f"held{(task + n) % len(held)}".encode()
            reply = await kv.Range(self.rpc.RangeRequest(key=key))
            assert reply.kvs

        return op

    def renew_stream(self, task: int) -> Any:
        return self.lease[task % self.nodes].LeaseKeepAlive.open()

    def renewal(self, item: Any) -> Any:
        return self.rpc.LeaseKeepAliveRequest(ID=item)

    @staticmethod
    def renewed(reply: Any) -> bool:
        return reply.TTL > 0


def etcd_stubs(out: Path) -> Any:
    """Generate the grpclib stubs of tools/etcd/etcd.proto into ``out``; import them."""
    from grpc_tools import protoc

    plugin = Path(sys.executable).parent / "protoc-gen-grpclib_python"
    source = REPO / "tools" / "etcd"
    out.mkdir(parents=True, exist_ok=True)
    code = protoc.main(
        [
            "protoc",
            f"-I{source}",
            f"--python_out={out}",
            f"--plugin=protoc-gen-grpclib_python={plugin}",
            f"--grpclib_python_out={out}",
            str(source / "etcd.proto"),
        ]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed ({code}) on tools/etcd/etcd.proto")
    sys.path.insert(0, str(out))
    return importlib.import_module("etcd_pb2"), importlib.import_module("etcd_grpc")


# -- measuring -------------------------------------------------------------------------


async def closed_loop(
    ops: list[Callable[[int], Awaitable[Any]]], duration: float
) -> tuple[list[float], int]:
    """Each op in its own task, again and again until ``duration`` has passed."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + duration

    async def run(op: Callable[[int], Awaitable[Any]]) -> None:
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
    system: System, workload: str, concurrency: int, duration: float, held: list[Any]
) -> dict[str, Any]:
    pids = system.processes.pids()
    cpu0 = sum(cpu_seconds(p) for p in pids)
    started = time.monotonic()
    if workload == "renew":
        latencies, errors = await renew_streams(system, held, concurrency, duration)
    elif workload == f"renew{GROUP}":
        latencies, errors = await renew_streams(system, held, concurrency, duration, GROUP)
    elif workload == "acquire":
        latencies, errors = await closed_loop(
            [system.acquire(t) for t in range(concurrency)], duration
        )
    else:
        latencies, errors = await closed_loop(
            [system.read(t, held) for t in range(concurrency)], duration
        )
    elapsed = time.monotonic() - started
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    ops = len(latencies)
    return {
        "ops_per_s": ops / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "server_cpu_us_per_op": cpu / ops * 1e6 if ops else None,
        "errors": errors,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the runs, and the spread of ops/s."""
    out: dict[str, Any] = {"runs": len(runs)}
    for key in ("ops_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_op"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    rates = [r["ops_per_s"] for r in runs]
    out["ops_per_s_spread"] = [min(rates), max(rates)]
    out["errors"] = sum(r["errors"] for r in runs)
    return out


async def run_system(
    system: System, concurrencies: list[int], duration: float, runs: int, held_n: list[int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    progress(f"{system.name}: starting {system.nodes} node(s)")
    await system.start()
    held = await system.hold(max(concurrencies) * 2)
    # Groups are shared by the messages in flight beyond 64: fewer to take.
    groups = await system.hold_groups(min(64, max(concurrencies)), GROUP)
    rows = []
    for workload in WORKLOADS:
        for c in concurrencies:
            results = []
            for r in range(runs):
                items = groups if workload == f"renew{GROUP}" else held
                results.append(await measure(system, workload, c, duration, items))
                progress(
                    f"{system.name} x{system.nodes} {workload} c={c} run {r + 1}/{runs}: "
                    f"{results[-1]['ops_per_s']:,.0f} ops/s"
                )
            rows.append({"system": system.name, "nodes": system.nodes, "workload": workload,
                         "concurrency": c, **summarise(results)})  # fmt: skip
    held_rows = []
    if system.nodes > 1:
        for n in held_n:
            held_rows.append(await capacity(system, n, duration))
            r = held_rows[-1]
            progress(
                f"{system.name} x{system.nodes} {n:,} held: {r['cluster_cpu_percent']:.0f}% CPU, "
                f"renewal p99 {r['p99_ms']:.1f} ms"
            )
    return rows, held_rows


async def capacity(system: System, elections: int, duration: float) -> dict[str, Any]:
    """``elections`` held at TTL 10 s, each renewed every TTL/3, 16 to a
    message (a client's renewals falling due together; etcd: one session
    lease per 16), over 16 streams: the cluster's CPU and the renewal latency."""
    groups = await system.hold_groups(max(1, elections // GROUP), GROUP, f"cap{elections}-")
    progress(f"{system.name} x{system.nodes}: {elections:,} elections held; renewing")
    interval = TTL_S / 3
    streams = 16
    latencies: list[float] = []
    refused = 0
    pids = system.processes.pids()
    started = time.monotonic()
    stop = started + max(duration, interval)
    cpu0 = sum(cpu_seconds(p) for p in pids)

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
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    return {
        "system": system.name,
        "nodes": system.nodes,
        "elections": len(groups) * GROUP,
        "renewals_per_s": len(latencies) * GROUP / wall,
        "cluster_cpu_percent": cpu / wall * 100,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "refused_messages": refused,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def table(rows: list[dict[str, Any]]) -> str:
    def key(row: dict[str, Any]) -> tuple:
        return (row["nodes"], row["workload"], row["concurrency"])

    etcd = {key(r): r for r in rows if r["system"] == "etcd"}
    lines = [
        f"{'nodes':>5} {'workload':<8} {'c':>4} | {'ours ops/s':>10} {'spread':>15} "
        f"{'p50/p99 ms':>13} {'CPU us/op':>9} | {'etcd ops/s':>10} {'p50/p99 ms':>13} "
        f"{'CPU us/op':>9} | {'ops ours/etcd':>13} {'CPU ours/etcd':>13}"
    ]
    lines.append("-" * len(lines[0]))

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for r in rows:
        if r["system"] != "trio-election":
            continue
        e = etcd.get(key(r), {})
        lo, hi = r["ops_per_s_spread"]
        lines.append(
            f"{r['nodes']:>5} {r['workload']:<8} {r['concurrency']:>4} | "
            f"{r['ops_per_s']:>10,.0f} {f'{lo:,.0f}..{hi:,.0f}':>15} "
            f"{fmt(r['p50_ms'], '.1f') + '/' + fmt(r['p99_ms'], '.1f'):>13} "
            f"{fmt(r['server_cpu_us_per_op'], ',.0f'):>9} | "
            f"{fmt(e.get('ops_per_s'), ',.0f'):>10} "
            f"{fmt(e.get('p50_ms'), '.1f') + '/' + fmt(e.get('p99_ms'), '.1f'):>13} "
            f"{fmt(e.get('server_cpu_us_per_op'), ',.0f'):>9} | "
            f"{fmt(ratio(r['ops_per_s'], e.get('ops_per_s')), '.2f'):>13} "
            f"{fmt(ratio(r['server_cpu_us_per_op'], e.get('server_cpu_us_per_op')), '.2f'):>13}"
        )
    return "\n".join(lines)


def capacity_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'held elections':>14} {'system':<14} {'nodes':>5} {'renewals/s':>10} "
        f"{'cluster CPU':>11} {'p50 ms':>7} {'p99 ms':>7}"
    ]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(
            f"{r['elections']:>14,} {r['system']:<14} {r['nodes']:>5} "
            f"{r['renewals_per_s']:>10,.0f} {r['cluster_cpu_percent']:>10.0f}% "
            f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f}"
        )
    return "\n".join(lines) + (
        "\nTTL 10 s, each election renewed every TTL/3, 16 to a message (etcd: a session lease "
        "per 16); cluster CPU summed over the nodes, in % of one core."
    )


async def main_async(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    etcd = shutil.which("etcd")
    if etcd is None:
        progress(INSTALL)
    stubs = etcd_stubs(root / "stubs") if etcd else None
    node_counts = [3] if args.quick else [1, 3]
    rows, held_rows = [], []
    for nodes in node_counts:
        systems: list[System] = [Ours(root / f"ours{nodes}", nodes)]
        if etcd:
            systems.append(Etcd(root / f"etcd{nodes}", nodes, etcd, stubs))
        for system in systems:
            try:
                more, held = await run_system(
                    system, args.concurrency, args.duration, args.runs, args.held
                )
                rows += more
                held_rows += held
            finally:
                system.close()
    return {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "etcd": etcd
        and subprocess.run([etcd, "--version"], capture_output=True, text=True).stdout.splitlines()[
            0
        ],
        "config": {
            "duration_s": args.duration,
            "runs": args.runs,
            "window": WINDOW,
            "concurrency": args.concurrency,
            "nodes": node_counts,
        },  # fmt: skip
        "rows": rows,
        "capacity": held_rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="three nodes, c=16 and 256, 1 run")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--runs", type=int, help="runs per row (median; default 3, 1 quick)")
    parser.add_argument("--duration", type=float, help="seconds per run (default 2, 1.5 quick)")
    parser.add_argument(
        "--held",
        type=int,
        action="append",
        help="elections held in the capacity run (repeatable; default 10,000, 2,000 quick)",
    )
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.duration = args.duration or (1.5 if args.quick else 2.0)
    args.concurrency = [16, 256] if args.quick else [1, 16, 64, 256]
    args.held = args.held or ([2_000] if args.quick else [10_000])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop children on SIGTERM too
    # Plain asyncio for the load generator (importing trio_election installs
    # trio-asyncio's loop policy, which the servers use, not this client).
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    with tempfile.TemporaryDirectory(prefix="trio-election-vs-etcd-") as tmp:
        result = asyncio.run(main_async(args, Path(tmp)))
    print(table(result["rows"]))
    print()
    print(capacity_table(result["capacity"]))
    print(
        f"\n{result['machine']['cpus']} CPUs shared by the servers and this one load generator "
        f"(Python {result['machine']['python']}); etcd: {result['etcd'] or 'not measured'}. "
        "CPU us/op is summed over the nodes; ratios are ours/etcd."
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
