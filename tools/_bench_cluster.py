"""The three-node cluster part of ``tools/bench.py`` (``--cluster``).

Used only through ``bench.py``, whose helpers (worker processes, latency
tallies, tables) it reuses as the module ``bench``.

Three ``python -m trio_election node --id nX --initial-cluster ...`` processes
on free ports with temporary data dirs; the script waits (bounded) until all
three report the same Raft leader in ``Cluster.Status``. Then:

1. committed operations at concurrency 1, 16, 64, 256: TryBecomeLeader
   refreshing the caller's own election, and Heartbeat over KeepAlive streams
   (a window of up to ``KA_WINDOW`` requests in flight per stream, so
   ``ceil(c / KA_WINDOW)`` streams). A refresh is one Raft log entry; a
   renewal is answered by the Raft leader off the log, after a quorum round
   (followers forward it). Each is run twice: load sent to all three nodes round-robin
   (a unary task rotates over the nodes call by call, starting with a
   follower; KeepAlive streams are spread over the nodes, followers first;
   followers forward to the Raft leader) and only to the leader. Server CPU is
   utime + stime summed over the three node processes (and given for the
   leader alone); bytes between nodes are the delta of the sum of
   ``peer_bytes_sent`` (Raft messages only; see ``render``) over the nodes.
2. failover: a client holds an election through a follower and renews it
   every ``RENEW_INTERVAL_S``; the Raft leader's process gets SIGKILL; a probe
   then tries a write (TryBecomeLeader of a fresh election, short per-call
   timeout) through each surviving node in a loop, and the time from the
   kill to the first success is the failover time. The killed node restarts
   from its data dir and the next round waits until it has caught up.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import bench as b

from trio_election.testing import write_secret

CLUSTER_SIZE = 3
CLUSTER_CONCURRENCY = (1, 16, 64, 256)
KA_WINDOW = 16
CLUSTER_KINDS = ("refresh", "keepalive")
CLUSTER_KIND_TITLES = {
    "refresh": "TryBecomeLeader (refresh own)",
    "keepalive": "Heartbeat over KeepAlive",
}
TARGET_TITLES = {"all": "all 3 (round-robin)", "leader": "leader only"}

#: Reference figures (docs/design.md and the original Go service's README).
GO_CLUSTER_OPS = 1_000  # "~1,000 ops/s distributed"
GO_BYTES_PER_SYNC = 1_000  # "~1 KB per sync"
TARGET_CLUSTER_OPS = 5_000
ETCD_CLUSTER_ACQUIRES = 3_000  # etcd 3.4, three nodes, c=64
TARGET_FAILOVER_S = 1.5

FAILOVER_ROUNDS = 3
RENEW_TTL_MS = 5_000
RENEW_INTERVAL_S = 0.05
RENEW_TIMEOUT_S = 0.5
PROBE_TIMEOUT_S = 0.25
PROBE_PAUSE_S = 0.01  # after a write that failed fast (no leader yet)
FAILOVER_MAX_S = 20.0
LEADER_WAIT_S = 30.0
CATCH_UP_WAIT_S = 60.0


# -- the cluster under test (parent side) -----------------------------------------------


class StatusClient:
    """``Cluster.Status`` calls from the (synchronous) parent, on one private asyncio loop."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._channels: dict[int, Any] = {}

    def _stub(self, port: int) -> Any:
        """A stub on a cached channel (created inside the running loop)."""
        import grpclib.client

        from trio_election._generated.v1.cluster_grpc import ClusterStub

        if port not in self._channels:
            self._channels[port] = grpclib.client.Channel(b.HOST, port)
        return ClusterStub(self._channels[port])

    async def _one(self, port: int, timeout: float) -> dict[str, Any] | None:
        from trio_election._generated.v1 import cluster_pb2 as cpb

        try:
            reply = await self._stub(port).Status(cpb.StatusRequest(), timeout=timeout)
        except Exception:  # noqa: BLE001 - down, starting, or too slow: no answer
            channel = self._channels.pop(port, None)
            if channel is not None:
                channel.close()
            return None
        return {
            "id": reply.id,
            "leader": reply.leader,
            "term": reply.term,
            "commit_index": reply.commit_index,
            "applied_index": reply.applied_index,
            "role": reply.role,
            "peer_bytes_sent": reply.peer_bytes_sent,
        }

    def status(self, ports: list[int], timeout: float = 1.0) -> list[dict[str, Any] | None]:
        """One Status per port, concurrently; None for a node that did not answer."""

        async def all_of() -> list[dict[str, Any] | None]:
            return list(await asyncio.gather(*(self._one(p, timeout) for p in ports)))

        return self._loop.run_until_complete(all_of())

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()


class Cluster:
    """Three node processes with data dirs under ``root``; restartable one by one."""

    def __init__(self, root: Path, size: int = CLUSTER_SIZE) -> None:
        self.root = root
        self.ids = [f"n{i + 1}" for i in range(size)]
        self.ports = [b.free_port() for _ in self.ids]
        self.peer_ports = [b.free_port() for _ in self.ids]
        self.initial = ",".join(
            f"{node_id}={b.HOST}:{port}"
            for node_id, port in zip(self.ids, self.peer_ports, strict=True)
        )
        # Peers authenticate with a cluster key, as a deployment would.
        root.mkdir(parents=True, exist_ok=True)
        self.key_file = write_secret(root / "cluster.key")
        self.nodes: list[b.NodeProcess | None] = [None] * size
        self.dead: list[b.NodeProcess] = []  # killed ones, reaped in stop()
        self.status_client = StatusClient()

    def start(self, i: int) -> b.NodeProcess:
        """Start node ``i`` (again: from its data dir, on its port)."""
        for dead in self.dead:
            if dead.port == self.ports[i]:
                dead.proc.wait(5)  # gone, so its port is free
        node = b.NodeProcess(
            self.root / self.ids[i],
            port=self.ports[i],
            extra=[
                "--id",
                self.ids[i],
                "--initial-cluster",
                self.initial,
                "--cluster-key-file",
                str(self.key_file),
            ],
        )
        self.nodes[i] = node
        return node

    def start_all(self) -> None:
        for i in range(len(self.ids)):
            self.start(i)
        for node in self.nodes:
            node.wait_ready()

    def kill(self, i: int) -> b.NodeProcess:
        """SIGKILL node ``i`` (not reaped yet: see ``start``)."""
        node = self.nodes[i]
        os.kill(node.pid, signal.SIGKILL)
        self.nodes[i] = None
        self.dead.append(node)
        return node

    def alive(self) -> list[b.NodeProcess]:
        return [n for n in self.nodes if n is not None]

    def cpu_by_node(self) -> list[float]:
        return [b.proc_cpu_seconds(n.pid) for n in self.alive()]

    def status(self, timeout: float = 1.0) -> list[dict[str, Any] | None]:
        return self.status_client.status(self.ports, timeout)

    def peer_bytes(self) -> int:
        """The sum of ``peer_bytes_sent`` over the nodes (all must answer)."""
        answers = self.status(timeout=5.0)
        if any(a is None for a in answers):
            raise RuntimeError(f"a node did not answer Status: {answers}")
        return sum(a["peer_bytes_sent"] for a in answers)

    def wait_agreed(self, timeout: float = LEADER_WAIT_S) -> list[dict[str, Any]]:
        """Poll Status (bounded) until every node answers and names the same leader."""
        deadline = time.monotonic() + timeout
        while True:
            for node in self.alive():
                if node.proc.poll() is not None:
                    raise RuntimeError(f"a node exited with {node.proc.returncode}:\n{node.log()}")
            answers = self.status()
            leaders = {a["leader"] for a in answers if a is not None}
            if None not in answers and len(leaders) == 1 and "" not in leaders:
                return answers  # type: ignore[return-value]
            if time.monotonic() > deadline:
                raise RuntimeError(f"no agreed Raft leader within {timeout} s: {answers}")
            time.sleep(0.05)

    def leader_index(self, answers: list[dict[str, Any]]) -> int:
        return self.ids.index(answers[0]["leader"])

    def stop(self) -> None:
        for node in self.alive():
            node.stop()
        for node in self.dead:
            node.stop()
        self.status_client.close()


def measured_cluster_phase(
    cluster: Cluster, leader: int, workers: list[b.Worker], specs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Like ``bench.measured_phase``, with CPU per node and bytes between nodes."""
    active = workers[: len(specs)]
    for worker, spec in zip(active, specs, strict=True):
        worker.send(spec)
    for worker in active:
        worker.recv()  # ready

    def ours() -> float:
        return sum(b.proc_cpu_seconds(w.proc.pid) for w in workers) + time.process_time()

    bytes0 = cluster.peer_bytes()
    busy0, ours0 = b.machine_busy_seconds(), ours()
    cpu0, wall0 = cluster.cpu_by_node(), time.perf_counter()
    for worker in active:
        worker.send("go")
    answers = [worker.recv() for worker in active]
    cpu1, wall1 = cluster.cpu_by_node(), time.perf_counter()
    busy1, ours1 = b.machine_busy_seconds(), ours()
    bytes1 = cluster.peer_bytes()
    for worker in active:
        worker.recv()  # cleaned up
    per_node = [c1 - c0 for c0, c1 in zip(cpu0, cpu1, strict=True)]
    server_cpu = sum(per_node)
    other = (busy1 - busy0) - server_cpu - (ours1 - ours0)
    wall = wall1 - wall0
    ops = sum(a["ops"] for a in answers)
    elapsed = max(a["elapsed"] for a in answers)
    latencies = sorted(x for a in answers for x in a["lat_us"])

    def per_op(value: float) -> float:
        return value / ops if ops else math.nan

    leader_us = per_op(per_node[leader] * 1e6)
    return {
        "ops": ops,
        "errors": sum(a["errors"] for a in answers),
        "seconds": round(elapsed, 3),
        "ops_per_s": round(ops / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(b.percentile(latencies, 0.50) / 1000, 3),
        "p99_ms": round(b.percentile(latencies, 0.99) / 1000, 3),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_s_by_node": [round(c, 3) for c in per_node],
        "server_cpu_us_per_op": round(per_op(server_cpu * 1e6), 1),
        "leader_cpu_us_per_op": round(leader_us, 1),
        # What the leader's CPU use implies if it had a core of its own (it is the bottleneck:
        # it does the work of a follower plus replication and the forwarded proposals).
        "ops_per_s_per_leader_core": round(1e6 / leader_us) if leader_us > 0 else None,
        "peer_bytes": bytes1 - bytes0,
        "peer_bytes_per_op": round(per_op(bytes1 - bytes0), 1),
        "server_cpu_util": round(server_cpu / wall, 3),
        "server_cpu_util_by_node": [round(c / wall, 3) for c in per_node],
        "loadgen_cpu_util": round(sum(a["cpu_s"] for a in answers) / elapsed, 3),
        "other_cpu_util": round(max(0.0, other) / wall, 3),
        "loadgen_processes": len(active),
    }


def _target_ports(cluster: Cluster, leader: int, target: str) -> list[int]:
    """Ports to send load to, in round-robin order: followers first, or the leader only."""
    if target == "leader":
        return [cluster.ports[leader]]
    followers = [p for i, p in enumerate(cluster.ports) if i != leader]
    return [*followers, cluster.ports[leader]]


def load_phases(
    cluster: Cluster, workers: list[b.Worker], duration: float, warmup: float
) -> list[dict[str, Any]]:
    results = []
    for kind in CLUSTER_KINDS:
        for concurrency in CLUSTER_CONCURRENCY:
            for target in ("all", "leader"):
                before = cluster.wait_agreed()  # the leader may have changed under load
                leader = cluster.leader_index(before)
                ports = _target_ports(cluster, leader, target)
                title = (
                    f"cluster: {CLUSTER_KIND_TITLES[kind]}, c={concurrency}, "
                    f"{TARGET_TITLES[target]}"
                )
                b.progress(f"start: {title} ({duration:g} s)")
                base = {
                    "cmd": "cluster_run",
                    "ports": ports,
                    "kind": kind,
                    "duration": duration,
                    "warmup": warmup,
                }
                if kind == "keepalive":
                    window = min(concurrency, KA_WINDOW)
                    streams = math.ceil(concurrency / window)
                    specs, first = [], 0
                    for w, n in enumerate(b.split(streams, len(workers))):
                        tag = f"cl-ka-{target}-c{concurrency}-w{w}"
                        specs.append(
                            {**base, "tag": tag, "streams": n, "window": window, "first": first}
                        )
                        first += n
                    shape = {"streams": streams, "window": window}
                else:
                    specs, first = [], 0
                    for w, n in enumerate(b.split(concurrency, len(workers))):
                        tag = f"cl-rf-{target}-c{concurrency}-w{w}"
                        specs.append({**base, "tag": tag, "concurrency": n, "first": first})
                        first += n
                    shape = {}
                result = {
                    "kind": kind,
                    "target": target,
                    "concurrency": concurrency,
                    **shape,
                    **measured_cluster_phase(cluster, leader, workers, specs),
                }
                after = cluster.wait_agreed()
                result["leader"] = cluster.ids[leader]
                result["leader_changed"] = after[0]["leader"] != before[0]["leader"] or max(
                    a["term"] for a in after
                ) != max(a["term"] for a in before)
                if result["leader_changed"]:
                    b.progress(f"WARNING: the Raft leader changed during {title}")
                results.append(result)
                b.progress(
                    f"end:   {title}: {result['ops_per_s']:,.0f} ops/s, "
                    f"p50 {result['p50_ms']:.1f} ms, "
                    f"{result['server_cpu_us_per_op']:.0f} us server CPU/op (3 nodes), "
                    f"{result['peer_bytes_per_op']:,.0f} B/op between nodes"
                    + (f", {result['errors']} errors" if result["errors"] else "")
                )
    return results


def failover_phase(cluster: Cluster, worker: b.Worker, rounds: int) -> list[dict[str, Any]]:
    results = []
    for r in range(rounds):
        answers = cluster.wait_agreed()
        leader = cluster.leader_index(answers)
        followers = [i for i in range(len(cluster.ids)) if i != leader]
        renew_via = followers[0]
        b.progress(
            f"start: failover round {r + 1}/{rounds}: leader {cluster.ids[leader]} "
            f"(term {answers[leader]['term']}), a client renews through "
            f"{cluster.ids[renew_via]}"
        )
        worker.send(
            {
                "cmd": "cluster_failover",
                "tag": f"failover-r{r}",
                "renew_port": cluster.ports[renew_via],
                "probe_ports": [cluster.ports[i] for i in followers],
            }
        )
        worker.recv()  # ready: the lease is held and renewed, probe connections open
        kill_at = time.monotonic()
        cluster.kill(leader)
        worker.send({"kill_at": kill_at})
        answer = worker.recv()
        killed_id = cluster.ids[leader]
        survivors = [cluster.ports[i] for i in followers]
        after = [a for a in cluster.status_client.status(survivors) if a is not None]
        new_leader = after[0]["leader"] if after else ""
        port_ids = dict(zip(cluster.ports, cluster.ids, strict=True))
        renew = answer["renew"]
        result = {
            "round": r + 1,
            "killed": killed_id,
            "old_term": answers[leader]["term"],
            "new_leader": new_leader,
            "new_term": max((a["term"] for a in after), default=0),
            "failover_s": round(answer["first_write_at"] - kill_at, 3),
            "first_write_via": port_ids[answer["first_write_port"]],
            "probe_attempts": answer["attempts"],
            "probe_errors": answer["errors"],
            "renew_via": cluster.ids[renew_via],
            "renew_resumed_s": (
                round(renew["first_ok_after_kill"] - kill_at, 3)
                if renew["first_ok_after_kill"] is not None
                else None
            ),
            "renew_max_gap_s": renew["max_gap_s"],
            "renew_failures": renew["failures"],
            "lease_kept": renew["lease_kept"],
        }
        b.progress(
            f"end:   failover round {r + 1}: a write succeeded {result['failover_s']:.3f} s "
            f"after the kill (via {result['first_write_via']}; new leader {new_leader}, "
            f"term {result['new_term']}); renewals resumed after {result['renew_resumed_s']} s"
        )
        # Restart the killed node from its data dir; wait until it has caught up.
        target = max((a["commit_index"] for a in after), default=0)
        b.progress(f"restarting {killed_id} from its data dir; waiting for it to catch up")
        start = time.monotonic()
        node = cluster.start(leader)
        node.wait_ready()
        deadline = start + CATCH_UP_WAIT_S
        while True:
            answers = cluster.wait_agreed(max(1.0, deadline - time.monotonic()))
            if answers[leader]["applied_index"] >= target:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{killed_id} did not catch up within {CATCH_UP_WAIT_S} s")
            time.sleep(0.05)
        result["catch_up_s"] = round(time.monotonic() - start, 3)
        b.progress(f"{killed_id} is back (pid {node.pid}) after {result['catch_up_s']:.1f} s")
        results.append(result)
    return results


def run(root: Path, workers: list[b.Worker], duration: float, warmup: float) -> dict[str, Any]:
    """The whole cluster part; always stops every node process it started."""
    cluster = Cluster(root)
    try:
        b.progress(f"cluster: starting {len(cluster.ids)} nodes, data dirs under {root}")
        cluster.start_all()
        started = time.monotonic()
        answers = cluster.wait_agreed()
        leader = cluster.leader_index(answers)
        b.progress(
            f"cluster: nodes {', '.join(f'{i}=pid {n.pid}:{n.port}' for i, n in zip(cluster.ids, cluster.nodes, strict=True))}; "  # noqa: E501
            f"Raft leader {cluster.ids[leader]} after {time.monotonic() - started:.2f} s"
        )
        # Background traffic between idle nodes (Raft heartbeats every tick).
        idle_bytes0, idle_t0 = cluster.peer_bytes(), time.monotonic()
        time.sleep(1.0)
        idle_rate = (cluster.peer_bytes() - idle_bytes0) / (time.monotonic() - idle_t0)
        load = load_phases(cluster, workers, duration, warmup)
        failover = failover_phase(cluster, workers[0], FAILOVER_ROUNDS)
    finally:
        cluster.stop()
    return {
        "nodes": len(cluster.ids),
        "initial_leader": cluster.ids[leader],
        "idle_peer_bytes_per_s": round(idle_rate),
        "ka_window": KA_WINDOW,
        "load": load,
        "failover": failover,
        "failover_median_s": round(statistics.median(f["failover_s"] for f in failover), 3),
        "comparison": comparison(load, failover),
    }


# -- worker side (plain asyncio + grpclib) ---------------------------------------------


def _rotating(ops: list[Any], start: int) -> Any:
    """One op that calls ``ops`` in turn, beginning at index ``start``."""
    turn = itertools.cycle(ops[start:] + ops[:start])

    async def op() -> bool:
        return await next(turn)()

    return op


async def _cmd_cluster_run(spec: dict[str, Any], clients: Any, ctl: Any) -> dict[str, Any]:
    """``bench._cmd_run`` for a cluster: the load is spread over ``ports``."""

    ports, kind, first = spec["ports"], spec["kind"], spec["first"]
    home = clients.stub(ports[0])  # elections are taken and released through it
    clock = time.perf_counter
    tally = b._Tally()
    names = b._worker_names(spec)
    tokens = await b._hold(home, names, 64)

    if kind == "keepalive":
        elapsed, cpu = await b._keepalive_worker(
            lambda s: clients.stub(ports[(first + s) % len(ports)]), names, tokens, spec, ctl, tally
        )
    else:
        ops = [
            _rotating(
                [b._unary_op(clients.stub(p), kind, e, n, t) for p in ports],
                (first + i) % len(ports),
            )
            for i, ((e, n), t) in enumerate(zip(names, tokens, strict=True))
        ]
        until = clock() + spec["warmup"]
        await asyncio.gather(*(b._unary_loop(op, until, None) for op in ops))
        await ctl.answer({"ready": True})
        await ctl.expect("go")
        cpu0, start = time.process_time(), clock()
        await asyncio.gather(*(b._unary_loop(op, start + spec["duration"], tally) for op in ops))
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
    await b._release(home, [(e, n, t) for (e, n), t in zip(names, tokens, strict=True)], 64)
    return {"cleaned": True}


async def _cmd_cluster_failover(spec: dict[str, Any], clients: Any, ctl: Any) -> dict[str, Any]:
    """Renew a lease through one node; after the kill, probe writes until one succeeds.

    Times are ``time.monotonic()`` (CLOCK_MONOTONIC, the same in every process).
    """
    import json

    from trio_election._generated.v1 import election_pb2 as pb

    tag = spec["tag"]
    clock = time.monotonic
    renew_stub = clients.stub(spec["renew_port"], slot=1)
    election, holder = f"{tag}-lease", f"{tag}-holder"
    reply = await renew_stub.TryBecomeLeader(
        pb.TryBecomeLeaderRequest(election=election, node_id=holder, ttl_ms=RENEW_TTL_MS),
        timeout=b.CALL_TIMEOUT,
    )
    if not reply.success:
        raise RuntimeError(f"could not acquire {election!r}")
    token = reply.leader.fencing_token
    renewals: list[tuple[float, float, bool]] = []  # (sent, answered, renewed)
    heartbeat = pb.HeartbeatRequest(election=election, node_id=holder, fencing_token=token)

    async def renewer() -> None:
        while True:
            sent = clock()
            try:
                answer = await renew_stub.Heartbeat(heartbeat, timeout=RENEW_TIMEOUT_S)
                ok = answer.success and answer.leader.fencing_token == token
            except Exception:  # noqa: BLE001 - UNAVAILABLE or a timeout during the failover
                ok = False
            renewals.append((sent, clock(), ok))
            await asyncio.sleep(max(0.0, sent + RENEW_INTERVAL_S - clock()))

    probes = {port: clients.stub(port, slot=2) for port in spec["probe_ports"]}
    for stub in probes.values():  # open the connections before the kill
        await stub.GetCurrentLeader(pb.GetCurrentLeaderRequest(election=election), timeout=5)
    renewing = asyncio.ensure_future(renewer())
    try:
        await asyncio.sleep(0.5)  # a few renewals before the kill
        await ctl.answer({"ready": True})
        kill_at = json.loads(await ctl.readline())["kill_at"]
        attempts, errors = 0, {}
        won = asyncio.get_running_loop().create_future()

        async def probe(port: int, stub: Any) -> None:
            nonlocal attempts
            request = pb.TryBecomeLeaderRequest(
                election=f"{tag}-fresh-{port}", node_id=f"{tag}-prober", ttl_ms=b.BENCH_TTL_MS
            )
            while not won.done():
                sent = clock()
                attempts += 1
                try:
                    answer = await stub.TryBecomeLeader(request, timeout=PROBE_TIMEOUT_S)
                    if answer.success:
                        if not won.done():
                            won.set_result((clock(), port))
                        return
                    name = "refused"
                except Exception as exc:  # noqa: BLE001 - counted by kind
                    name = getattr(getattr(exc, "status", None), "name", type(exc).__name__)
                errors[name] = errors.get(name, 0) + 1
                await asyncio.sleep(max(0.0, sent + PROBE_PAUSE_S - clock()))

        probing = [asyncio.ensure_future(probe(p, s)) for p, s in probes.items()]
        try:
            first_write_at, first_port = await asyncio.wait_for(won, FAILOVER_MAX_S)
        finally:
            for task in probing:
                task.cancel()
            await asyncio.gather(*probing, return_exceptions=True)
        # Wait (bounded) for the renewing client to get through again.
        deadline = clock() + FAILOVER_MAX_S
        while not any(ok and sent > kill_at for sent, _, ok in renewals) and clock() < deadline:
            await asyncio.sleep(0.02)
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)
    ok_times = [done for _, done, ok in renewals if ok]
    after = [done for sent, done, ok in renewals if ok and sent > kill_at]
    gaps = [y - x for x, y in itertools.pairwise(ok_times)]
    with b.contextlib.suppress(Exception):
        await renew_stub.ReleaseLeadership(
            pb.ReleaseLeadershipRequest(election=election, node_id=holder, fencing_token=token),
            timeout=b.CALL_TIMEOUT,
        )
    return {
        "first_write_at": first_write_at,
        "first_write_port": first_port,
        "attempts": attempts,
        "errors": errors,
        "renew": {
            "first_ok_after_kill": after[0] if after else None,
            "max_gap_s": round(max(gaps), 3) if gaps else None,
            "failures": sum(1 for _, _, ok in renewals if not ok),
            "lease_kept": bool(after) and renewals[-1][2],
            "renewals": len(renewals),
        },
    }


WORKER_COMMANDS = {
    "cluster_run": _cmd_cluster_run,
    "cluster_failover": _cmd_cluster_failover,
}


# -- report ----------------------------------------------------------------------------


def comparison(load: list[dict[str, Any]], failover: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def row(metric: str, ours: float | None, *against: Any, **named: Any) -> None:
        out.append(b.comparison_row(metric, ours, *against, **named))

    by = {(r["kind"], r["target"], r["concurrency"]): r for r in load}
    for kind in CLUSTER_KINDS:
        for target in ("all", "leader"):
            rows = [r for r in load if r["kind"] == kind and r["target"] == target]
            best = max(rows, key=lambda r: r["ops_per_s"])
            row(
                f"{CLUSTER_KIND_TITLES[kind]}/s, {TARGET_TITLES[target]}, best "
                f"(c={best['concurrency']})",
                best["ops_per_s"],
                GO_CLUSTER_OPS,
                (">=", TARGET_CLUSTER_OPS),
                ETCD_CLUSTER_ACQUIRES,
            )
    rf64 = by[("refresh", "leader", 64)]
    row(
        "TryBecomeLeader/s, leader only, c=64 (etcd: acquires, c=64)",
        rf64["ops_per_s"],
        GO_CLUSTER_OPS,
        (">=", TARGET_CLUSTER_OPS),
        ETCD_CLUSTER_ACQUIRES,
    )
    cheapest = min(load, key=lambda r: r["leader_cpu_us_per_op"])
    row(
        f"committed ops/s per leader core, best ({CLUSTER_KIND_TITLES[cheapest['kind']]}, "
        f"{cheapest['target']}, c={cheapest['concurrency']})",
        cheapest["ops_per_s_per_leader_core"],
        GO_CLUSTER_OPS,
        (">=", TARGET_CLUSTER_OPS),
        ETCD_CLUSTER_ACQUIRES,
    )
    for target in ("all", "leader"):
        r = by[("refresh", target, 64)]
        row(
            f"bytes between nodes per TryBecomeLeader, {TARGET_TITLES[target]}, c=64",
            r["peer_bytes_per_op"],
            GO_BYTES_PER_SYNC,
        )
    median = statistics.median(f["failover_s"] for f in failover)
    row("failover: kill -> first write, s (median)", median, target=("<", TARGET_FAILOVER_S))
    row(
        "failover: kill -> first write, s (worst)",
        max(f["failover_s"] for f in failover),
        target=("<", TARGET_FAILOVER_S),
    )
    return out


def render(cluster: dict[str, Any], config: dict[str, Any]) -> str:
    parts = [
        f"trio-election cluster bench ({'quick' if config['quick'] else 'full'}): "
        f"{cluster['nodes']} nodes on one machine ({config['cpus']} CPUs), "
        f"{config['duration_s']:g} s per measurement, {config['loadgen_processes']} "
        "load-generator process(es). Every operation is a committed Raft entry.",
        "srv us/op = utime+stime of all 3 node processes / ops; ldr us/op = the leader's "
        "alone (1e6 / it = ops/s the leader could do on a core of its own); B/op = delta of "
        "the sum of peer_bytes_sent / ops; srv% = the 3 nodes together (100% = one core). "
        "'all 3': a task rotates over the nodes call by call (followers first); KeepAlive "
        f"streams (window {cluster['ka_window']}) are spread over the nodes.",
    ]
    rows = []
    for r in cluster["load"]:
        name = CLUSTER_KIND_TITLES[r["kind"]]
        if r["kind"] == "keepalive":
            name += f", {r['streams']}x{r['window']}"
        if r["leader_changed"]:
            name += " (*)"
        rows.append(
            [
                name,
                TARGET_TITLES[r["target"]],
                str(r["concurrency"]),
                b._num(r["ops_per_s"]),
                b._num(r["p50_ms"], ".2f"),
                b._num(r["p99_ms"], ".2f"),
                b._num(r["server_cpu_us_per_op"], ".0f"),
                b._num(r["leader_cpu_us_per_op"], ".0f"),
                b._num(r["ops_per_s_per_leader_core"]),
                b._num(r["peer_bytes_per_op"], ",.0f"),
                f"{r['server_cpu_util'] * 100:.0f}%",
                f"{r['loadgen_cpu_util'] * 100:.0f}%",
                f"{r['other_cpu_util'] * 100:.0f}%",
                b._num(r["errors"]),
            ]
        )
    parts.append(
        b._table(
            [
                "cluster operation",
                "sent to",
                "conc",
                "ops/s",
                "p50 ms",
                "p99 ms",
                "srv us/op",
                "ldr us/op",
                "ops/s/ldr core",
                "B/op",
                "srv%",
                "gen%",
                "other%",
                "errors",
            ],
            rows,
            left=2,
        )
    )
    if any(r["leader_changed"] for r in cluster["load"]):
        parts.append("(*) the Raft leader changed during this measurement.")
    busiest = max(cluster["load"], key=lambda r: r["other_cpu_util"])
    if busiest["other_cpu_util"] > 0.2:
        parts.append(
            f"WARNING: other processes on this machine used up to "
            f"{busiest['other_cpu_util'] * 100:.0f}% of a CPU during a cluster measurement; "
            "measured throughput (not CPU per op) is depressed by it."
        )
    parts.append(
        f"Idle cluster: {cluster['idle_peer_bytes_per_s']:,} B/s between nodes (Raft "
        "heartbeats), included in B/op. peer_bytes_sent counts Raft messages, and so "
        "the commands a follower forwards to the leader (PROP messages) too."
    )
    parts.append(
        b._table(
            [
                "failover round",
                "killed",
                "new leader",
                "kill->write s",
                "via",
                "renewal back s",
                "max renew gap s",
                "lease kept",
                "catch-up s",
            ],
            [
                [
                    str(f["round"]),
                    f"{f['killed']} (term {f['old_term']})",
                    f"{f['new_leader']} (term {f['new_term']})",
                    f"{f['failover_s']:.3f}",
                    f["first_write_via"],
                    b._num(f["renew_resumed_s"], ".3f"),
                    b._num(f["renew_max_gap_s"], ".3f"),
                    "yes" if f["lease_kept"] else "NO",
                    f"{f['catch_up_s']:.1f}",
                ]
                for f in cluster["failover"]
            ],
        )
    )
    parts.append(
        f"Failover median {cluster['failover_median_s']:.3f} s (target < {TARGET_FAILOVER_S} s): "
        "from SIGKILL of the Raft leader to the first successful TryBecomeLeader of a fresh "
        f"election through a surviving node (writes polled with {PROBE_TIMEOUT_S} s timeouts). "
        f"The renewing client (TTL {RENEW_TTL_MS} ms, every {RENEW_INTERVAL_S * 1000:g} ms, "
        "through a follower) is shown with the time its renewals got through again."
    )
    parts.append(
        b.comparison_table(
            "cluster vs the original Go service, DESIGN targets and etcd 3.4",
            cluster["comparison"],
            small=",.3f",
            etcd=",.0f",
        )
    )
    parts.append(
        "Go: the original service's '~1,000 ops/s distributed' and '~1 KB per sync'; etcd: "
        "docs/design.md's ~3,000 acquires/s on three nodes (c=64), a constant: "
        "`just bench-etcd` measures etcd beside us. All three nodes, the load "
        f"generator and anything else running share this machine's {config['cpus']} CPUs, so "
        "measured throughput is a floor; 'per leader core' is what the leader's own CPU use "
        "implies."
    )
    return "\n\n".join(parts)
