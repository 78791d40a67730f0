#!/usr/bin/env python
"""Benchmark trio-election: one node, then a three-node Raft cluster.

Usage::

    python tools/bench.py [--cluster] [--quick] [--json] [--duration S] [--workers N]

Without ``--cluster`` it measures one node (throughput, server CPU, memory,
hand-over; phases 1-4 below), then a three-node cluster (phase 5); with
``--cluster`` only the cluster.

The node runs in its own process (``python -m trio_election node`` on a free
port), started and killed by this script. The load comes from worker
processes of this same script (``--worker``), driven over their stdin/stdout
with one JSON line per command: the parent tells a worker what to run, the
worker connects and warms up, answers ``ready``, waits for ``go``, runs for
``--duration`` seconds by its own clock and answers with its counts and
latencies. Between ``go`` and the last answer the parent reads the server's
CPU time (utime + stime in /proc/PID/stat, every thread), so

    server CPU us per op = CPU seconds used by the node / ops completed

which does not depend on how fast the (Python) load generator is; 1e6 / it is
the ops/s one server core would sustain. Throughput, by contrast, is what this
load generator reached on this machine, and is printed with the load
generator's own CPU use so a reader can tell who was the bottleneck.

The workers use grpclib directly in a plain asyncio loop, not the project's
Trio client (``trio_election._bridge.Channel`` inside ``asyncio_loop()``):
every call through the bridge hops from Trio into asyncio and back, which
costs tens of microseconds of client CPU per call (docs/design.md, pitfalls) and
would make the load generator, not the server, what is measured. The stubs
and messages are the project's generated ones.

Phases (each announced on stderr as it starts and ends):

1. unary calls at concurrency 1, 16, 64 against a node with ``--data-dir``:
   TryBecomeLeader refreshing the caller's own election (no disk write);
   TryBecomeLeader granting then ReleaseLeadership (a grant is fsynced before
   its reply; one op = the pair); Heartbeat; GetCurrentLeader;
2. heartbeats pipelined over KeepAlive streams (a window of requests in
   flight per stream), compared with unary Heartbeat;
3. memory: VmRSS of a fresh in-memory node before and after it holds N
   elections (TryBecomeLeader, long TTL, no keep-alive);
4. hand-over: one client holds an election, another waits in Campaign; the
   time from the holder's ReleaseLeadership to the campaigner's reply, with
   and without a data dir;
5. a three-node cluster (tools/_bench_cluster.py, which describes it):
   committed TryBecomeLeader refreshes and KeepAlive heartbeats at
   concurrency 1, 16, 64, 256, sent to all nodes round-robin and to the Raft
   leader only, with CPU summed over the nodes and bytes sent between them;
   then failover, three rounds of SIGKILL to the Raft leader.

Synchronisation never sleeps on the clock, except the bounded poll of the
node's port until it accepts connections. A campaigner is known to be queued
before the release is sent: it sends its Campaign and then a GetCurrentLeader
on the same HTTP/2 connection and waits for that reply; the server starts
handlers in the order their requests arrive, and a Campaign handler reaches
the state machine without yielding once its request is buffered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent

#: Reference figures (docs/design.md): the original Go service, the targets, etcd 3.4.
GO_OPS_PER_CORE = 10_000
GO_MB_PER_10K = 1.0
TARGET_OPS = 10_000
TARGET_MB_PER_10K = 1.0
TARGET_HANDOVER_P50_MS = 10.0
ETCD_ACQUIRES_PER_S = 5_400
ETCD_US_PER_KEEPALIVE = 22.0
ETCD_HANDOVER_MS = 100.0
ETCD_MB_PER_10K = 2.7 * 1024 * 10_000 / 1e6

UNARY_KINDS = ("refresh", "grant_release", "heartbeat", "get_leader")
KIND_TITLES = {
    "refresh": "TryBecomeLeader (refresh own)",
    "grant_release": "TryBecomeLeader grant + Release (disk)",
    "heartbeat": "Heartbeat (unary)",
    "get_leader": "GetCurrentLeader",
    "keepalive": "Heartbeat over KeepAlive",
}
CONCURRENCY = (1, 16, 64)
BENCH_TTL_MS = 120_000  # with --max-ttl 600: nothing expires during a run
CALL_TIMEOUT = 10.0

_T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def _die_with_parent(sig: int) -> Any:
    """A preexec_fn: the child gets ``sig`` if this process dies (Linux)."""

    def preexec() -> None:
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG

    return preexec


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (nan if empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# -- the node under test -----------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14, 15 of stat(5)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK  # minus idle, iowait


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class NodeProcess:
    """``python -m trio_election node`` in a child process."""

    def __init__(
        self,
        data_dir: Path | None,
        max_ttl_s: float = 600,
        port: int | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port() if port is None else port
        self._log = tempfile.TemporaryFile()
        args = [
            sys.executable,
            "-m",
            "trio_election",
            "node",
            "--listen",
            f"{HOST}:{self.port}",
            "--log-level",
            "warning",
            "--max-ttl",
            str(max_ttl_s),
        ]
        if data_dir is None:
            args += ["--in-memory", "--unsafe-no-start-grace"]
        else:
            args += ["--data-dir", str(data_dir)]
        args += extra or []
        self.proc = subprocess.Popen(
            args,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent(signal.SIGTERM),
        )
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll the port until it accepts (bounded), or fail with the node's log."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the node exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the node did not listen within {timeout} s") from None
                time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """utime + stime of the node (all threads), in seconds."""
        return proc_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


# -- load-generator processes ------------------------------------------------------


class Worker:
    """A ``--worker`` child; one JSON line per command and per answer."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            preexec_fn=_die_with_parent(signal.SIGKILL),
        )

    def send(self, message: dict[str, Any] | str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((message if isinstance(message, str) else json.dumps(message)) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.index} died (exit {self.proc.poll()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"worker {self.index} failed:\n{answer['error']}")
        return answer

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        return self.recv()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def split(total: int, parts: int) -> list[int]:
    """``total`` tasks over at most ``parts`` workers (no worker with zero)."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def measured_phase(
    node: NodeProcess, workers: list[Worker], specs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Run one spec per worker together; return merged counts, latencies and CPU."""
    active = workers[: len(specs)]
    for worker, spec in zip(active, specs, strict=True):
        worker.send(spec)
    for worker in active:
        worker.recv()  # ready: connected, elections held, warmed up

    def ours() -> float:  # the node, the workers and this process
        return sum(proc_cpu_seconds(w.proc.pid) for w in workers) + time.process_time()

    busy0, ours0 = machine_busy_seconds(), ours()
    cpu0, wall0 = node.cpu_seconds(), time.perf_counter()
    for worker in active:
        worker.send("go")
    answers = [worker.recv() for worker in active]
    cpu1, wall1 = node.cpu_seconds(), time.perf_counter()
    busy1, ours1 = machine_busy_seconds(), ours()
    # CPU used by other processes on the machine meanwhile (other work competing with ours).
    other = (busy1 - busy0) - (cpu1 - cpu0) - (ours1 - ours0)
    for worker in active:
        worker.recv()  # cleaned up (elections released), not measured
    ops = sum(a["ops"] for a in answers)
    elapsed = max(a["elapsed"] for a in answers)
    latencies = sorted(x for a in answers for x in a["lat_us"])
    server_cpu = cpu1 - cpu0
    us_per_op = server_cpu * 1e6 / ops if ops else math.nan
    return {
        "ops": ops,
        "errors": sum(a["errors"] for a in answers),
        "seconds": round(elapsed, 3),
        "ops_per_s": round(ops / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(percentile(latencies, 0.50) / 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) / 1000, 3),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_us_per_op": round(us_per_op, 1),
        "ops_per_s_per_server_core": round(1e6 / us_per_op) if us_per_op > 0 else None,
        "server_cpu_util": round(server_cpu / (wall1 - wall0), 3),
        "loadgen_cpu_util": round(sum(a["cpu_s"] for a in answers) / elapsed, 3),
        "other_cpu_util": round(max(0.0, other) / (wall1 - wall0), 3),
        "loadgen_processes": len(active),
    }


# -- worker side (plain asyncio + grpclib) -------------------------------------------


class _Clients:
    """grpclib channels of one worker, by (port, slot)."""

    def __init__(self) -> None:
        self._channels: dict[tuple[int, int], Any] = {}

    def stub(self, port: int, slot: int = 0) -> Any:
        import grpclib.client

        from trio_election._generated.v1.election_grpc import LeaderElectionStub

        key = (port, slot)
        if key not in self._channels:
            self._channels[key] = grpclib.client.Channel(HOST, port)
        return LeaderElectionStub(self._channels[key])

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


async def _bounded(concurrency: int, jobs: list[Any]) -> list[Any]:
    """Await coroutine factories ``jobs`` with at most ``concurrency`` at once."""
    results: list[Any] = [None] * len(jobs)
    it = iter(enumerate(jobs))

    async def runner() -> None:
        for i, job in it:
            results[i] = await job()

    await asyncio.gather(*(runner() for _ in range(max(1, concurrency))))
    return results


async def _hold(stub: Any, elections: list[tuple[str, str]], concurrency: int) -> list[int]:
    """Acquire each (election, node_id); return the fencing tokens."""
    from trio_election._generated.v1 import election_pb2 as pb

    def job(election: str, node_id: str) -> Any:
        async def acquire() -> int:
            reply = await stub.TryBecomeLeader(
                pb.TryBecomeLeaderRequest(
                    election=election, node_id=node_id, ttl_ms=BENCH_TTL_MS, value=b"10.0.0.1:8080"
                ),
                timeout=CALL_TIMEOUT,
            )
            if not reply.success:
                raise RuntimeError(f"could not acquire {election!r}: held by {reply.leader}")
            return reply.leader.fencing_token

        return acquire

    return await _bounded(concurrency, [job(e, n) for e, n in elections])


async def _release(stub: Any, held: list[tuple[str, str, int]], concurrency: int) -> None:
    from trio_election._generated.v1 import election_pb2 as pb

    def job(election: str, node_id: str, token: int) -> Any:
        async def release() -> None:
            await stub.ReleaseLeadership(
                pb.ReleaseLeadershipRequest(
                    election=election, node_id=node_id, fencing_token=token
                ),
                timeout=CALL_TIMEOUT,
            )

        return release

    await _bounded(concurrency, [job(*h) for h in held])


def _unary_op(stub: Any, kind: str, election: str, node_id: str, token: int) -> Any:
    """A coroutine function doing one op; returns True on success."""
    from trio_election._generated.v1 import election_pb2 as pb

    if kind == "refresh":
        request = pb.TryBecomeLeaderRequest(
            election=election, node_id=node_id, ttl_ms=BENCH_TTL_MS, value=b"10.0.0.1:8080"
        )
        method = stub.TryBecomeLeader

        async def op() -> bool:
            return (await method(request, timeout=CALL_TIMEOUT)).success

    elif kind == "grant_release":
        request = pb.TryBecomeLeaderRequest(
            election=election, node_id=node_id, ttl_ms=BENCH_TTL_MS, value=b"10.0.0.1:8080"
        )
        acquire, release = stub.TryBecomeLeader, stub.ReleaseLeadership

        async def op() -> bool:
            reply = await acquire(request, timeout=CALL_TIMEOUT)
            if not reply.success:
                return False
            released = await release(
                pb.ReleaseLeadershipRequest(
                    election=election, node_id=node_id, fencing_token=reply.leader.fencing_token
                ),
                timeout=CALL_TIMEOUT,
            )
            return released.released

    elif kind == "heartbeat":
        request = pb.HeartbeatRequest(election=election, node_id=node_id, fencing_token=token)
        method = stub.Heartbeat

        async def op() -> bool:
            return (await method(request, timeout=CALL_TIMEOUT)).success

    elif kind == "get_leader":
        request = pb.GetCurrentLeaderRequest(election=election)
        method = stub.GetCurrentLeader

        async def op() -> bool:
            return (await method(request, timeout=CALL_TIMEOUT)).has_leader

    else:
        raise ValueError(kind)
    return op


class _Tally:
    __slots__ = ("ops", "errors", "lat")

    def __init__(self) -> None:
        self.ops = 0
        self.errors = 0
        self.lat: list[int] = []


async def _unary_loop(op: Any, stop_at: float, tally: _Tally | None) -> None:
    clock = time.perf_counter
    while (start := clock()) < stop_at:
        try:
            ok = await op()
        except Exception:  # noqa: BLE001 - counted, the run goes on
            ok = False
        if tally is not None:
            tally.lat.append(round((clock() - start) * 1e6))
            if ok:
                tally.ops += 1
            else:
                tally.errors += 1


def _worker_names(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(election, holder) pairs a worker renews or calls for."""
    tag = spec["tag"]
    if spec["kind"] == "keepalive":
        return [
            (f"{tag}-s{s}-{i}", f"{tag}-holder-s{s}-{i}")
            for s in range(spec["streams"])
            for i in range(spec["window"])
        ]
    return [(f"{tag}-{i}", f"{tag}-holder-{i}") for i in range(spec["concurrency"])]


async def _keepalive_worker(
    stub_for: Any,
    names: list[tuple[str, str]],
    tokens: list[int],
    spec: dict[str, Any],
    ctl: Any,
    tally: _Tally,
) -> tuple[float, float]:
    """Pump heartbeats over ``spec["streams"]`` KeepAlive streams (stream s on
    ``stub_for(s)``), a window each: warm up, report ready, measure on "go".

    Returns the elapsed time and this process's CPU time of the measurement.
    """
    from trio_election._generated.v1 import election_pb2 as pb

    clock = time.perf_counter
    window = spec["window"]
    requests = [
        pb.HeartbeatRequest(election=e, node_id=n, fencing_token=t)
        for (e, n), t in zip(names, tokens, strict=True)
    ]
    async with contextlib.AsyncExitStack() as stack:
        opened = []
        for s in range(spec["streams"]):
            stream = await stack.enter_async_context(stub_for(s).KeepAlive.open())
            await stream.send_request()
            opened.append((stream, requests[s * window : (s + 1) * window]))

        async def pumps(until: float, t: _Tally | None) -> None:
            await asyncio.gather(*(_pump(st, rq, window, until, t) for st, rq in opened))

        await pumps(clock() + spec["warmup"], None)
        await ctl.answer({"ready": True})
        await ctl.expect("go")
        cpu0, start = time.process_time(), clock()
        await pumps(start + spec["duration"], tally)
        elapsed, cpu = clock() - start, time.process_time() - cpu0
        for stream, _ in opened:
            await stream.end()
            while await stream.recv_message() is not None:
                pass
    return elapsed, cpu


async def _pump(
    stream: Any, requests: list[Any], window: int, stop_at: float, tally: _Tally | None
) -> None:
    """Send heartbeats on ``stream`` with ``window`` in flight until ``stop_at``, then drain."""
    clock = time.perf_counter
    slots = asyncio.Semaphore(window)
    sent_at: deque[float] = deque()
    more = asyncio.Event()
    state = {"sent": 0, "done": False}

    async def sender() -> None:
        i = 0
        n = len(requests)
        while clock() < stop_at:
            await slots.acquire()
            sent_at.append(clock())
            await stream.send_message(requests[i % n])
            i += 1
            state["sent"] = i
            more.set()
        state["done"] = True
        more.set()

    async def receiver() -> None:
        got = 0
        while True:
            if got == state["sent"]:
                if state["done"]:
                    return
                more.clear()
                await more.wait()
                continue
            reply = await stream.recv_message()
            if reply is None:
                raise RuntimeError("KeepAlive stream ended early")
            got += 1
            slots.release()
            start = sent_at.popleft()
            if tally is not None:
                tally.lat.append(round((clock() - start) * 1e6))
                if reply.success:
                    tally.ops += 1
                else:
                    tally.errors += 1

    await asyncio.gather(sender(), receiver())


async def _cmd_run(spec: dict[str, Any], clients: _Clients, ctl: Any) -> dict[str, Any]:
    """Set up, warm up, answer ready, wait for go, measure, answer, clean up."""

    port, kind = spec["port"], spec["kind"]
    stub = clients.stub(port)
    clock = time.perf_counter
    names = _worker_names(spec)
    tokens = [0] * len(names)
    if kind != "grant_release":
        tokens = await _hold(stub, names, 64)
    tally = _Tally()

    if kind == "keepalive":
        elapsed, cpu = await _keepalive_worker(lambda _: stub, names, tokens, spec, ctl, tally)
    else:
        ops = [_unary_op(stub, kind, e, n, t) for (e, n), t in zip(names, tokens, strict=True)]
        until = clock() + spec["warmup"]
        await asyncio.gather(*(_unary_loop(op, until, None) for op in ops))
        await ctl.answer({"ready": True})
        await ctl.expect("go")
        cpu0, start = time.process_time(), clock()
        await asyncio.gather(*(_unary_loop(op, start + spec["duration"], tally) for op in ops))
        elapsed, cpu = clock() - start, time.process_time() - cpu0

    await ctl.answer(
        {
            "ops": tally.ops,
            "errors": tally.errors,
            "elapsed": elapsed,
            "cpu_s": cpu,
            "lat_us": tally.lat,
        }
    )
    if kind != "grant_release":
        await _release(stub, [(e, n, t) for (e, n), t in zip(names, tokens, strict=True)], 64)
    return {"cleaned": True}


async def _cmd_hold(spec: dict[str, Any], clients: _Clients, ctl: Any) -> dict[str, Any]:
    """Acquire ``count`` elections named ``{tag}-{i}`` with long TTLs."""
    stub = clients.stub(spec["port"])
    names = [
        (f"{spec['tag']}-{i:06d}", f"node-{i:06d}")
        for i in range(spec["first"], spec["first"] + spec["count"])
    ]
    start = time.perf_counter()
    await _hold(stub, names, spec["concurrency"])
    return {"held": len(names), "elapsed": time.perf_counter() - start}


async def _cmd_handover(spec: dict[str, Any], clients: _Clients, ctl: Any) -> dict[str, Any]:
    """Alternate two clients (two connections) holding one election; time each hand-over."""
    from trio_election._generated.v1 import election_pb2 as pb

    port, election = spec["port"], spec["tag"]
    side = [clients.stub(port, 1), clients.stub(port, 2)]  # two HTTP/2 connections
    ids = [f"{election}-a", f"{election}-b"]
    reply = await side[0].TryBecomeLeader(
        pb.TryBecomeLeaderRequest(election=election, node_id=ids[0], ttl_ms=BENCH_TTL_MS),
        timeout=CALL_TIMEOUT,
    )
    if not reply.success:
        raise RuntimeError(f"could not acquire {election!r}")
    holder, token = 0, reply.leader.fencing_token
    latencies: list[int] = []
    bad = 0
    for _ in range(spec["warmup_rounds"] + spec["rounds"]):
        other = 1 - holder
        campaigner = side[other]
        async with campaigner.Campaign.open(timeout=CALL_TIMEOUT) as call:
            await call.send_message(
                pb.CampaignRequest(election=election, node_id=ids[other], ttl_ms=BENCH_TTL_MS),
                end=True,
            )
            # Same connection, so the server has queued the Campaign once this is answered.
            await campaigner.GetCurrentLeader(
                pb.GetCurrentLeaderRequest(election=election), timeout=CALL_TIMEOUT
            )
            start = time.perf_counter()
            release = asyncio.ensure_future(
                side[holder].ReleaseLeadership(
                    pb.ReleaseLeadershipRequest(
                        election=election, node_id=ids[holder], fencing_token=token
                    ),
                    timeout=CALL_TIMEOUT,
                )
            )
            elected = await call.recv_message()
            took = time.perf_counter() - start
            if not (await release).released:
                raise RuntimeError("the holder could not release")
        leader = elected.leader
        if leader.node_id != ids[other] or leader.fencing_token <= token:
            bad += 1
        latencies.append(round(took * 1e6))
        holder, token = other, leader.fencing_token
    await side[holder].ReleaseLeadership(
        pb.ReleaseLeadershipRequest(election=election, node_id=ids[holder], fencing_token=token),
        timeout=CALL_TIMEOUT,
    )
    return {"lat_us": latencies[spec["warmup_rounds"] :], "bad": bad}


class _Control:
    """The worker's end of the command pipe."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def readline(self) -> str:
        return await self._loop.run_in_executor(None, sys.stdin.readline)

    async def answer(self, message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    async def expect(self, word: str) -> None:
        line = (await self.readline()).strip()
        if line != word:
            raise RuntimeError(f"expected {word!r}, got {line!r}")


async def _worker_main() -> None:
    commands = {
        "run": _cmd_run,
        "hold": _cmd_hold,
        "handover": _cmd_handover,
        **_cluster_part().WORKER_COMMANDS,
    }
    ctl = _Control()
    clients = _Clients()
    try:
        while line := await ctl.readline():
            spec = json.loads(line)
            try:
                answer = await commands[spec["cmd"]](spec, clients, ctl)
            except Exception:  # noqa: BLE001 - reported to the parent, which stops
                answer = {"error": traceback.format_exc()}
            await ctl.answer(answer)
    finally:
        clients.close()


def worker_main() -> None:
    # The parent handles Ctrl-C and kills its workers; PR_SET_PDEATHSIG covers a parent crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_worker_main())


# -- phases ------------------------------------------------------------------------


def unary_phases(
    node: NodeProcess, workers: list[Worker], duration: float, warmup: float
) -> list[dict[str, Any]]:
    results = []
    for kind in UNARY_KINDS:
        for concurrency in CONCURRENCY:
            title = f"{KIND_TITLES[kind]}, c={concurrency}"
            progress(f"start: {title} ({duration:g} s)")
            specs = [
                {
                    "cmd": "run",
                    "port": node.port,
                    "kind": kind,
                    "tag": f"{kind}-c{concurrency}-w{w}",
                    "concurrency": n,
                    "duration": duration,
                    "warmup": warmup,
                }
                for w, n in enumerate(split(concurrency, len(workers)))
            ]
            result = {
                "kind": kind,
                "concurrency": concurrency,
                **measured_phase(node, workers, specs),
            }
            results.append(result)
            progress(
                f"end:   {title}: {result['ops_per_s']:,.0f} ops/s, "
                f"{result['server_cpu_us_per_op']:.0f} us server CPU/op"
                + (f", {result['errors']} errors" if result["errors"] else "")
            )
    return results


def keepalive_phases(
    node: NodeProcess,
    workers: list[Worker],
    duration: float,
    warmup: float,
    configs: list[tuple[int, int]],
) -> list[dict[str, Any]]:
    results = []
    for streams, window in configs:
        title = f"{KIND_TITLES['keepalive']}, {streams} stream(s)/process x window {window}"
        progress(f"start: {title} ({duration:g} s)")
        specs = [
            {
                "cmd": "run",
                "port": node.port,
                "kind": "keepalive",
                "tag": f"ka-{streams}x{window}-w{w}",
                "streams": streams,
                "window": window,
                "duration": duration,
                "warmup": warmup,
            }
            for w in range(len(workers))
        ]
        result = {
            "kind": "keepalive",
            "streams": streams * len(workers),
            "window": window,
            **measured_phase(node, workers, specs),
        }
        results.append(result)
        progress(
            f"end:   {title}: {result['ops_per_s']:,.0f} heartbeats/s, "
            f"{result['server_cpu_us_per_op']:.1f} us server CPU/heartbeat"
        )
    return results


def memory_phase(node: NodeProcess, worker: Worker, n: int) -> dict[str, Any]:
    progress(f"start: memory, {n:,} elections held by an in-memory node")
    hold = {"cmd": "hold", "port": node.port, "concurrency": 64}
    # Warm up: connections, handler code paths, allocator arenas.
    worker.call({**hold, "tag": "mem-warmup", "first": 0, "count": 500})
    rss0 = node.rss_bytes()
    half = n // 2
    worker.call({**hold, "tag": "svc", "first": 0, "count": half})
    rss_half = node.rss_bytes()
    answer = worker.call({**hold, "tag": "svc", "first": half, "count": n - half})
    rss1 = node.rss_bytes()
    per_election = (rss1 - rss0) / n
    result = {
        "elections": n,
        "rss_before_mb": round(rss0 / 1e6, 2),
        "rss_after_mb": round(rss1 / 1e6, 2),
        "bytes_per_election": round(per_election),
        "bytes_per_election_second_half": round((rss1 - rss_half) / (n - half)),
        "mb_per_10k": round(per_election * 10_000 / 1e6, 2),
        "acquires_per_s_while_filling": round((n - half) / answer["elapsed"]),
    }
    progress(
        f"end:   memory: {result['bytes_per_election']} B/election, "
        f"{result['mb_per_10k']} MB per 10,000"
    )
    return result


def handover_phase(node: NodeProcess, worker: Worker, rounds: int, label: str) -> dict[str, Any]:
    progress(f"start: hand-over ({label}), {rounds} rounds")
    answer = worker.call(
        {
            "cmd": "handover",
            "port": node.port,
            "tag": f"handover-{label}",
            "rounds": rounds,
            "warmup_rounds": 5,
        }
    )
    lat = sorted(answer["lat_us"])
    result = {
        "node": label,
        "rounds": len(lat),
        "p50_ms": round(percentile(lat, 0.5) / 1000, 3),
        "p99_ms": round(percentile(lat, 0.99) / 1000, 3),
        "max_ms": round(lat[-1] / 1000, 3),
        "bad_rounds": answer["bad"],
    }
    progress(f"end:   hand-over ({label}): p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")
    return result


# -- report ------------------------------------------------------------------------


def _num(value: Any, fmt: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def _table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def comparison_table(title: str, rows: list[dict[str, Any]], small: str, etcd: str) -> str:
    """The table of :func:`comparison_row` rows: ``small`` formats figures under 100."""
    cells = []
    for c in rows:
        fmt = ",.0f" if c["ours"] is not None and abs(c["ours"]) >= 100 else small
        cells.append(
            [
                c["metric"],
                _num(c["ours"], fmt),
                _num(c["go"], ",.0f") if c["go"] is not None else "-",
                _num(c["ours_over_go"], ".2f") + ("x" if c["ours_over_go"] is not None else ""),
                c["target"] or "-",
                "-" if c["meets_target"] is None else ("yes" if c["meets_target"] else "NO"),
                _num(c["etcd"], etcd) if c["etcd"] is not None else "-",
                _num(c["ours_over_etcd"], ".2f") + ("x" if c["ours_over_etcd"] is not None else ""),
            ]
        )
    headers = [title, "ours", "Go", "ours/Go", "target", "met", "etcd", "ours/etcd"]
    return _table(headers, cells)


def comparison_row(
    metric: str,
    ours: float | None,
    go: float | None = None,
    target: tuple[str, float] | None = None,
    etcd: float | None = None,
) -> dict[str, Any]:
    """One row of a comparison table: our figure beside Go's, a target, etcd's."""
    meets = None
    if target is not None and ours is not None:
        op, value = target
        meets = {">=": ours >= value, "<=": ours <= value, "<": ours < value}[op]
    return {
        "metric": metric,
        "ours": ours,
        "go": go,
        "ours_over_go": round(ours / go, 2) if go and ours is not None else None,
        "target": f"{target[0]} {target[1]:g}" if target else None,
        "meets_target": meets,
        "etcd": round(etcd, 1) if etcd is not None else None,
        "ours_over_etcd": round(ours / etcd, 2) if etcd and ours is not None else None,
    }


def comparison(results: dict[str, Any]) -> list[dict[str, Any]]:
    unary = {(r["kind"], r["concurrency"]): r for r in results["unary"]}
    ka = results["keepalive"]
    best_ka = max(ka, key=lambda r: r["ops_per_s"])
    cheapest_ka = min(ka, key=lambda r: r["server_cpu_us_per_op"])
    hb64 = unary[("heartbeat", 64)]
    gr64 = unary[("grant_release", 64)]
    rf64 = unary[("refresh", 64)]
    mem = results["memory"]
    ho = {h["node"]: h for h in results["handover"]}
    out: list[dict[str, Any]] = []

    def row(metric: str, ours: float | None, *against: Any, **named: Any) -> None:
        out.append(comparison_row(metric, ours, *against, **named))

    row(
        "renewals/s via KeepAlive, measured",
        best_ka["ops_per_s"],
        GO_OPS_PER_CORE,
        (">=", TARGET_OPS),
    )
    row(
        "renewals/s via KeepAlive, per server core",
        cheapest_ka["ops_per_s_per_server_core"],
        GO_OPS_PER_CORE,
        (">=", TARGET_OPS),
    )
    row(
        "unary Heartbeat/s per server core (c=64)",
        hb64["ops_per_s_per_server_core"],
        GO_OPS_PER_CORE,
    )
    row(
        "unary TryBecomeLeader refresh/s per core (c=64)",
        rf64["ops_per_s_per_server_core"],
        GO_OPS_PER_CORE,
    )
    row("grant+release pairs/s, disk, measured (c=64)", gr64["ops_per_s"], etcd=ETCD_ACQUIRES_PER_S)
    row(
        "server CPU us per KeepAlive heartbeat",
        cheapest_ka["server_cpu_us_per_op"],
        1e6 / GO_OPS_PER_CORE,
        etcd=ETCD_US_PER_KEEPALIVE,
    )
    row(
        "memory, MB per 10,000 elections",
        mem["mb_per_10k"],
        GO_MB_PER_10K,
        ("<=", TARGET_MB_PER_10K),
        ETCD_MB_PER_10K,
    )
    row(
        "hand-over p50 ms (in memory)",
        ho["in-memory"]["p50_ms"],
        target=("<", TARGET_HANDOVER_P50_MS),
        etcd=ETCD_HANDOVER_MS,
    )
    row(
        "hand-over p50 ms (data dir, fsync)",
        ho["data-dir"]["p50_ms"],
        target=("<", TARGET_HANDOVER_P50_MS),
        etcd=ETCD_HANDOVER_MS,
    )
    return out


def render(results: dict[str, Any]) -> str:
    parts = []
    cfg = results["config"]
    parts.append(
        f"trio-election bench ({'quick' if cfg['quick'] else 'full'}): {cfg['duration_s']:g} s per "
        f"measurement, {cfg['loadgen_processes']} load-generator process(es) "
        f"(Python, grpclib on asyncio), {cfg['cpus']} CPUs, {cfg['python']}"
    )
    parts.append(
        "server CPU us/op = node process utime+stime / ops; per core = 1e6 / that. "
        "srv%/gen%/other% = CPU use of the node / the load generators / every other process "
        "on the machine during the measurement (100% = one core)."
    )
    rows = []
    for r in results["unary"]:
        rows.append(
            [
                KIND_TITLES[r["kind"]],
                str(r["concurrency"]),
                _num(r["ops_per_s"]),
                _num(r["p50_ms"], ".2f"),
                _num(r["p99_ms"], ".2f"),
                _num(r["server_cpu_us_per_op"], ".1f"),
                _num(r["ops_per_s_per_server_core"]),
                f"{r['server_cpu_util'] * 100:.0f}%",
                f"{r['loadgen_cpu_util'] * 100:.0f}%",
                f"{r['other_cpu_util'] * 100:.0f}%",
                _num(r["errors"]),
            ]
        )
    for r in results["keepalive"]:
        rows.append(
            [
                f"{KIND_TITLES['keepalive']}, {r['streams']} stream(s)",
                f"{r['streams'] * r['window']}",
                _num(r["ops_per_s"]),
                _num(r["p50_ms"], ".2f"),
                _num(r["p99_ms"], ".2f"),
                _num(r["server_cpu_us_per_op"], ".1f"),
                _num(r["ops_per_s_per_server_core"]),
                f"{r['server_cpu_util'] * 100:.0f}%",
                f"{r['loadgen_cpu_util'] * 100:.0f}%",
                f"{r['other_cpu_util'] * 100:.0f}%",
                _num(r["errors"]),
            ]
        )
    parts.append(
        _table(
            [
                "operation",
                "conc",
                "ops/s",
                "p50 ms",
                "p99 ms",
                "srv us/op",
                "ops/s/core",
                "srv%",
                "gen%",
                "other%",
                "errors",
            ],
            rows,
        )
    )
    busiest = max(results["unary"] + results["keepalive"], key=lambda r: r["other_cpu_util"])
    if busiest["other_cpu_util"] > 0.2:
        parts.append(
            f"WARNING: other processes on this machine used up to "
            f"{busiest['other_cpu_util'] * 100:.0f}% of a CPU during a measurement; measured "
            "throughput (not server CPU per op) is depressed by it."
        )
    parts.append(
        "grant + Release: one op = TryBecomeLeader (granted; its reply waits for the fsync of "
        "its batch) then ReleaseLeadership. KeepAlive 'conc' = heartbeats in flight."
    )
    ratio = results["keepalive_vs_unary"]
    parts.append(
        f"KeepAlive vs unary Heartbeat: {ratio['server_cpu_ratio']:.1f}x less server CPU per "
        f"heartbeat ({ratio['unary_us']:.1f} -> {ratio['stream_us']:.1f} us), "
        f"{ratio['throughput_ratio']:.1f}x the measured throughput "
        f"({ratio['unary_ops_per_s']:,.0f} -> {ratio['stream_ops_per_s']:,.0f} /s)."
    )
    mem = results["memory"]
    parts.append(
        f"Memory (in-memory node): VmRSS {mem['rss_before_mb']} MB -> {mem['rss_after_mb']} MB "
        f"for {mem['elections']:,} elections: {mem['bytes_per_election']} B/election "
        f"({mem['bytes_per_election_second_half']} B in the second half), "
        f"{mem['mb_per_10k']} MB per 10,000."
    )
    parts.append(
        _table(
            ["hand-over (release -> elected)", "rounds", "p50 ms", "p99 ms", "max ms", "bad"],
            [
                [
                    h["node"],
                    str(h["rounds"]),
                    _num(h["p50_ms"], ".2f"),
                    _num(h["p99_ms"], ".2f"),
                    _num(h["max_ms"], ".2f"),
                    str(h["bad_rounds"]),
                ]
                for h in results["handover"]
            ],
        )
    )
    parts.append(
        comparison_table(
            "vs the original Go service, DESIGN targets and etcd 3.4",
            results["comparison"],
            small=",.2f",
            etcd=",.1f",
        )
    )
    parts.append(
        "Go: ~10,000 ops/s per core (so ~100 us/op) and ~1 MB per 10,000 elections; etcd: "
        "docs/design.md's measurements on this kind of machine. 'measured' throughput is capped by "
        "the Python load generator sharing the 2 CPUs; 'per server core' is what the node's "
        "own CPU use implies."
    )
    return "\n\n".join(parts)


# -- main --------------------------------------------------------------------------


def _cluster_part() -> Any:
    """tools/_bench_cluster.py, which uses this module's helpers as ``bench``."""
    sys.modules.setdefault("bench", sys.modules[__name__])
    tools = str(Path(__file__).resolve().parent)
    if tools not in sys.path:
        sys.path.insert(0, tools)
    import _bench_cluster

    return _bench_cluster


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (a minute or two)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run only the three-node cluster part (the default runs one node, then a cluster)",
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per measurement (default 5, 1.5 with --quick)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="load-generator processes (default %(default)s)"
    )
    parser.add_argument("--elections", type=int, help="for the memory phase (10,000; 2,000 quick)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main()
        return 0

    duration = args.duration or (1.5 if args.quick else 5.0)
    warmup = min(0.5, duration / 3)
    n_elections = args.elections or (2_000 if args.quick else 10_000)
    rounds = 50 if args.quick else 200
    ka_configs = [(1, 64), (4, 64)]
    # Ctrl-C and SIGTERM end the run through the finally below, which stops the nodes and the
    # workers (explicitly: a shell may start a background job with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    results: dict[str, Any] = {
        "config": {
            "quick": args.quick,
            "duration_s": duration,
            "warmup_s": warmup,
            "loadgen_processes": args.workers,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        }
    }
    nodes: list[NodeProcess] = []
    workers: list[Worker] = []
    tmp = tempfile.mkdtemp(prefix="trio-election-bench-")
    try:
        progress(f"starting {args.workers} load generator(s)")
        workers = [Worker(i) for i in range(args.workers)]
        if not args.cluster:
            progress(f"single node: starting a node with --data-dir {tmp}/data")
            node = NodeProcess(Path(tmp) / "data")
            nodes.append(node)
            node.wait_ready()
            progress(f"node pid {node.pid} on port {node.port}")
            results["unary"] = unary_phases(node, workers, duration, warmup)
            results["keepalive"] = keepalive_phases(node, workers, duration, warmup, ka_configs)
            handover = [handover_phase(node, workers[0], rounds, "data-dir")]
            node.stop()

            progress("starting a fresh in-memory node")
            node = NodeProcess(None, max_ttl_s=3600)
            nodes.append(node)
            node.wait_ready()
            progress(f"node pid {node.pid} on port {node.port}")
            results["memory"] = memory_phase(node, workers[0], n_elections)
            handover.insert(0, handover_phase(node, workers[0], rounds, "in-memory"))
            results["handover"] = handover
            node.stop()
            _summarise_single(results)
        # The cluster part stops its own nodes in a finally of its own.
        results["cluster"] = _cluster_part().run(Path(tmp) / "cluster", workers, duration, warmup)
    finally:
        for worker in workers:
            worker.stop()
        for node in nodes:
            node.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    progress("done")
    if args.json:
        print(json.dumps(results, indent=None))
    else:
        parts = [] if args.cluster else [render(results)]
        parts.append(_cluster_part().render(results["cluster"], results["config"]))
        print("\n\n".join(parts))
    return 0


def _summarise_single(results: dict[str, Any]) -> None:
    """KeepAlive vs unary and the comparison table of the single-node part."""
    hb = min(
        (r for r in results["unary"] if r["kind"] == "heartbeat"),
        key=lambda r: r["server_cpu_us_per_op"],
    )
    hb_fast = max(
        (r for r in results["unary"] if r["kind"] == "heartbeat"), key=lambda r: r["ops_per_s"]
    )
    ka_cheap = min(results["keepalive"], key=lambda r: r["server_cpu_us_per_op"])
    ka_fast = max(results["keepalive"], key=lambda r: r["ops_per_s"])
    results["keepalive_vs_unary"] = {
        "unary_us": hb["server_cpu_us_per_op"],
        "stream_us": ka_cheap["server_cpu_us_per_op"],
        "server_cpu_ratio": round(hb["server_cpu_us_per_op"] / ka_cheap["server_cpu_us_per_op"], 2),
        "unary_ops_per_s": hb_fast["ops_per_s"],
        "stream_ops_per_s": ka_fast["ops_per_s"],
        "throughput_ratio": round(ka_fast["ops_per_s"] / hb_fast["ops_per_s"], 2),
    }
    results["comparison"] = comparison(results)


if __name__ == "__main__":
    if "--worker" not in sys.argv[1:]:
        sys.path.insert(0, str(REPO))
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; node and workers stopped", file=sys.stderr)
        sys.exit(130)
