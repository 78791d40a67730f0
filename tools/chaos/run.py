"""One chaos run: real nodes, real clients, faults on a seeded schedule, a verdict.

The nodes are ``trio-election node`` processes (through
:class:`trio_election.testing.processes.Cluster`, as the cluster tests start
them), each member's peer traffic through its :class:`~.network.InboundProxy`.
Clients are ``tools.chaos.client`` processes. One fault at a time is injected,
healed, and followed by a quiet spell; then everything is healed, the clients
finish, and the history and the members' applied states are checked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from trio_election._bridge import Channel, GRPCError, asyncio_loop
from trio_election._generated.v1 import (
    cluster_grpc,
    cluster_pb2 as cpb,
    election_grpc,
    election_pb2 as epb,
)
from trio_election.client._transport import CONNECTION_ERRORS
from trio_election.server._cluster_client import PERMANENT
from trio_election.server._security import PeerAuth
from trio_election.testing.processes import Cluster, NodeProcess

from . import history
from .network import InboundProxy, Links

REPO = Path(__file__).resolve().parents[2]
STARTED = time.monotonic()

#: Every kind of fault, with its weight in the schedule.
FAULTS = {
    "kill": 3,
    "kill-leader": 3,
    "pause-node": 2,
    "pause-leader": 2,
    "pause-client": 2,
    "partition": 2,
    "isolate-leader": 2,
    "bridge": 1,
    "one-way": 2,
    "delay": 1,
    "drop": 1,
    "membership": 1,
    "crash-all": 1,
}


def progress(message: str) -> None:
    print(f"[chaos {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Options:
    nodes: int = 3
    duration: float = 60.0
    seed: int = 0
    clients: int = 4
    elections: int = 3
    ttl: float = 2.0
    hold: tuple[float, float] = (0.1, 3.0)  # how long a holder works, in TTLs
    tick: float = 0.05
    plant: str | None = None
    faults: tuple[str, ...] = tuple(FAULTS)
    root: Path | None = None


@dataclass
class Fault:
    kind: str
    target: str
    start: float
    end: float = math.nan


@dataclass
class Report:
    seed: int
    nodes: int
    duration: float
    faults: dict[str, int] = field(default_factory=dict)
    requests: dict[str, dict[str, int]] = field(default_factory=dict)
    violations: list[dict[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    availability: dict[str, Any] = field(default_factory=dict)
    agreement: dict[str, Any] = field(default_factory=dict)
    holds: int = 0
    reads: int = 0
    root: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations and not self.problems


class Harness:
    def __init__(self, options: Options, root: Path) -> None:
        self.options = options
        self.root = root
        self.rng = random.Random(options.seed)
        self.cluster = Cluster(root, tick=options.tick)
        self.cluster.env = {"PYTHONPATH": str(REPO), "TRIO_ELECTION_DEBUG": "1"}
        self.cluster.command = [sys.executable, "-m", "tools.chaos.node"]
        if options.plant:
            self.cluster.command += ["--plant", options.plant]
        self.links = Links()
        self.slots = [f"n{i}" for i in range(1, options.nodes + 1)]
        #: slot -> the id of the member in it now (a new id after a membership change).
        self.member = {slot: slot for slot in self.slots}
        self.paused: set[str] = set()
        self.clients: dict[str, trio.Process] = {}
        self.faults: list[Fault] = []
        self.writes: list[float] = []
        self.probe_requests = Counter[str]()
        self.problems: list[str] = []
        self.generation = itertools.count(2)
        #: Node processes that the harness ended (or removed): their exits are no news.
        self.expected_exits: set[int] = set()

    # -- the cluster ------------------------------------------------------------

    def pids(self) -> dict[int, str]:
        return {
            node.process.pid: slot
            for slot in self.slots
            if (node := self.cluster.nodes.get(self.member[slot])) and node.running
        }

    def node(self, slot: str) -> NodeProcess:
        return self.cluster.nodes[self.member[slot]]

    async def start(self, nursery: trio.Nursery) -> None:
        for slot in self.slots:
            node = self.cluster.add(slot, fixed_address=True)
            proxy = InboundProxy(slot, _port(node.peer_address), self.links, self.pids)
            node.advertise = f"127.0.0.1:{await nursery.start(proxy.serve)}"
        leader, term = await self.cluster.start(self.options.nodes)
        progress(f"{self.options.nodes} nodes serve; Raft leader {leader} in term {term}")

    async def leader(self) -> str | None:
        """The slot of the Raft leader of the highest term among the answering nodes."""
        best: tuple[int, str] | None = None
        for slot in self.slots:
            if slot in self.paused or not self.node(slot).running:
                continue
            status = await self.cluster.status(self.member[slot])
            if status is not None and status.role == "leader":
                if best is None or status.term > best[0]:
                    best = (status.term, slot)
        return None if best is None else best[1]

    async def kill(self, member: str) -> None:
        self.expected_exits.add(self.cluster.nodes[member].process.pid)
        await self.cluster.kill(member)

    async def watchdog(self) -> None:
        """A node that exits by itself is a problem: report it, start it again."""
        while True:
            await trio.sleep(0.2)
            for slot in self.slots:
                node = self.node(slot)
                process = node.process
                if process is None or process.returncode is None:
                    continue
                if process.pid in self.expected_exits:
                    continue
                self.expected_exits.add(process.pid)
                tail = node.log_path.read_text(errors="replace")[-1500:]
                self.problems.append(
                    f"{node.id} exited by itself with {process.returncode}:\n{tail}"
                )
                progress(f"PROBLEM: {node.id} exited by itself ({process.returncode}); restarting")
                await self.cluster.restart(node.id)

    def running(self) -> list[str]:
        return [s for s in self.slots if self.node(s).running and s not in self.paused]

    # -- faults -----------------------------------------------------------------

    async def nemesis(self, until: float) -> None:
        kinds = list(self.options.faults)
        weights = [FAULTS[k] for k in kinds]
        while time.monotonic() < until:
            kind = self.rng.choices(kinds, weights)[0]
            await getattr(self, "_" + kind.replace("-", "_"))()
            await trio.sleep(self.rng.uniform(0.5, 2.0))

    @contextlib.contextmanager
    def _fault(self, kind: str, target: str, says: str) -> Iterator[None]:
        """Record one fault, from now until the block ends, and say it."""
        fault = Fault(kind, target, time.monotonic())
        self.faults.append(fault)
        progress(says)
        try:
            yield
        finally:
            fault.end = time.monotonic()

    async def _during(
        self, kind: str, target: str, seconds: float, heal: Callable[[], Any]
    ) -> None:
        with self._fault(kind, target, f"{kind} {target} for {seconds:.1f} s"):
            try:
                await trio.sleep(seconds)
            finally:
                heal()

    async def _kill_slot(self, slot: str, kind: str) -> None:
        down = self.rng.uniform(0.3, 3.0)
        with self._fault(kind, slot, f"{kind} {slot} (SIGKILL), restart after {down:.1f} s"):
            await self.kill(self.member[slot])
            await trio.sleep(down)
            await self.cluster.restart(self.member[slot])

    async def _kill(self) -> None:
        await self._kill_slot(self.rng.choice(self.running()), "kill")

    async def _kill_leader(self) -> None:
        leader = await self.leader()
        await self._kill_slot(leader or self.rng.choice(self.running()), "kill-leader")

    async def _pause_slot(self, slot: str, kind: str) -> None:
        process = self.node(slot).process
        self.paused.add(slot)
        process.send_signal(signal.SIGSTOP)

        def resume() -> None:
            process.send_signal(signal.SIGCONT)
            self.paused.discard(slot)

        # Longer than an election timeout (10-20 ticks), often longer than a TTL.
        seconds = self.rng.uniform(25 * self.options.tick, 2 * self.options.ttl)
        await self._during(kind, slot, seconds, resume)

    async def _pause_node(self) -> None:
        await self._pause_slot(self.rng.choice(self.running()), "pause-node")

    async def _pause_leader(self) -> None:
        leader = await self.leader()
        await self._pause_slot(leader or self.rng.choice(self.running()), "pause-leader")

    async def _pause_client(self) -> None:
        name, process = self.rng.choice(sorted(self.clients.items()))
        if process.returncode is not None:
            return
        process.send_signal(signal.SIGSTOP)
        seconds = self.rng.uniform(1.2, 2.5) * self.options.ttl
        await self._during(
            "pause-client", name, seconds, lambda: process.send_signal(signal.SIGCONT)
        )

    def _split(self, a: list[str], b: list[str]) -> None:
        for x in a:
            for y in b:
                self.links.cut(x, y)
                self.links.cut(y, x)

    async def _partition(self) -> None:
        slots = self.slots[:]
        self.rng.shuffle(slots)
        size = self.rng.randint(1, (len(slots) - 1) // 2)
        minority, majority = slots[:size], slots[size:]
        self._split(minority, majority)
        await self._during(
            "partition",
            f"{' '.join(minority)} | {' '.join(majority)}",
            self._span(),
            self.links.heal,
        )

    async def _isolate_leader(self) -> None:
        leader = await self.leader() or self.rng.choice(self.slots)
        self._split([leader], [s for s in self.slots if s != leader])
        await self._during("isolate-leader", leader, self._span(), self.links.heal)

    async def _bridge(self) -> None:
        slots = self.slots[:]
        self.rng.shuffle(slots)
        bridge, rest = slots[0], slots[1:]
        half = len(rest) // 2
        self._split(rest[:half], rest[half:])
        target = f"{' '.join(rest[:half])} | {' '.join(rest[half:])}, bridged by {bridge}"
        await self._during("bridge", target, self._span(), self.links.heal)

    async def _one_way(self) -> None:
        leader = await self.leader() or self.rng.choice(self.slots)
        others = [s for s in self.slots if s != leader]
        choice = self.rng.randrange(3)
        if choice == 0:  # the leader speaks but is not heard
            for other in others:
                self.links.cut(leader, other)
            target = f"{leader} -> everyone"
        elif choice == 1:  # the leader is heard but cannot hear
            for other in others:
                self.links.cut(other, leader)
            target = f"everyone -> {leader}"
        else:
            src, dst = self.rng.sample(self.slots, 2)
            self.links.cut(src, dst)
            target = f"{src} -> {dst}"
        await self._during("one-way", target, self._span(), self.links.heal)

    async def _delay(self) -> None:
        delayed = []
        for src, dst in itertools.permutations(self.slots, 2):
            if self.rng.random() < 0.5:
                self.links.delay(src, dst, self.rng.uniform(0.02, 0.3))
                delayed.append(f"{src}->{dst}")
        await self._during("delay", " ".join(delayed) or "none", self._span(), self.links.heal)

    async def _drop(self) -> None:
        says = "drop: connections of random links reset for a few seconds"
        with self._fault("drop", "random links", says):
            until = time.monotonic() + self.rng.uniform(2, 5)
            while time.monotonic() < until:
                src, dst = self.rng.sample(self.slots, 2)
                await self.links.reset(src, dst)
                await trio.sleep(self.rng.uniform(0.05, 0.5))

    async def _crash_all(self) -> None:
        says = "crash-all: SIGKILL every node, then start them all again"
        with self._fault("crash-all", "every node", says):
            for slot in self.slots:
                if self.node(slot).running:
                    await self.kill(self.member[slot])
            await trio.sleep(self.rng.uniform(0.2, 2.0))
            async with trio.open_nursery() as nursery:
                for slot in self.slots:
                    nursery.start_soon(self.cluster.restart, self.member[slot])

    async def _membership(self) -> None:
        """Remove a follower, then add it back under a new id with an empty data dir."""
        leader = await self.leader()
        followers = [s for s in self.running() if s != leader]
        if leader is None or not followers:
            return
        slot = self.rng.choice(followers)
        old = self.node(slot)
        new_id = f"{slot}.{next(self.generation)}"
        says = f"membership: remove {old.id}, add it back as {new_id}"
        with self._fault("membership", f"{old.id} -> {new_id}", says):
            self.expected_exits.add(old.process.pid)
            try:
                await self._admin(slot, "MemberRemove", cpb.MemberRemoveRequest(id=old.id))
            except (GRPCError, trio.TooSlowError) as exc:
                self.problems.append(f"MemberRemove {old.id} failed: {exc!r}")
                self.expected_exits.discard(old.process.pid)
                return
            try:
                await self.cluster.wait_exit(old.id, timeout=20)
            except trio.TooSlowError:
                self.problems.append(f"{old.id} did not stop within 20 s of its removal")
                await self.kill(old.id)
            node = self.cluster.add(new_id, advertise=old.advertise)
            node.peer_address, node.fixed_address = old.peer_address, old.fixed_address
            self.member[slot] = new_id
            through = self.node(next(s for s in self.slots if s != slot)).advertise
            await self.cluster.spawn(new_id, "--join", through)

    async def _admin(self, avoid: str, method: str, request: Any) -> Any:
        """A Cluster call on the peer port of any member but ``avoid``, with the
        cluster key (as ``trio-election member`` makes it), retried for a while."""
        auth = PeerAuth.from_files(cluster_key_file=self.cluster.key_file)
        with trio.fail_after(30):
            while True:
                for slot in self.running():
                    if slot == avoid:
                        continue
                    channel = auth.channel(self.node(slot).peer_address, cluster_grpc.ClusterStub)
                    try:
                        return await channel.unary(getattr(channel.stub, method), request, 5)
                    except GRPCError as exc:
                        if exc.status in PERMANENT:
                            raise
                        progress(f"{method} through {slot}: {exc.message}; trying again")
                    except (TimeoutError, *CONNECTION_ERRORS) as exc:
                        progress(f"{method} through {slot}: {exc!r}; trying again")
                    finally:
                        channel.close()
                await trio.sleep(0.5)

    def _span(self) -> float:
        return self.rng.uniform(1.5, 3 * self.options.ttl)

    async def heal_all(self) -> None:
        self.links.heal()
        for slot in list(self.paused):
            self.node(slot).process.send_signal(signal.SIGCONT)
        self.paused.clear()
        for process in self.clients.values():
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)
        for slot in self.slots:
            if not self.node(slot).running:
                await self.cluster.restart(self.member[slot])

    # -- load -------------------------------------------------------------------

    async def start_clients(self, nursery: trio.Nursery, seconds: float) -> None:
        endpoints = ",".join(self.node(s).fixed_address for s in self.slots)
        for i in range(1, self.options.clients + 1):
            name = f"c{i}"
            command = [sys.executable, "-m", "tools.chaos.client", "--name", name]
            command += ["--endpoints", endpoints, "--out", str(self.root / f"{name}.jsonl")]
            command += ["--seed", str(self.options.seed * 1000 + i), "--duration", f"{seconds}"]
            command += ["--elections", str(self.options.elections), "--ttl", str(self.options.ttl)]
            command += ["--hold", "-".join(map(str, self.options.hold))]
            log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the child's
            self.clients[name] = await trio.lowlevel.open_process(
                command,
                stdout=log,
                stderr=log,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            log.close()

    async def probe(self, slot: str, until: float) -> None:
        """Writes through ``slot`` every 0.1 s: when did some node accept one."""
        election = f"chaos-probe/{slot}"
        while time.monotonic() < until:
            await trio.sleep(0.1)
            if slot in self.paused or not self.node(slot).running:
                continue
            node = self.node(slot)
            channel = Channel(
                "127.0.0.1", _port(node.fixed_address), election_grpc.LeaderElectionStub
            )
            try:
                reply = await channel.unary(
                    channel.stub.TryBecomeLeader,
                    epb.TryBecomeLeaderRequest(election=election, node_id="probe", ttl_ms=1000),
                    1.0,
                )
                if reply.success:
                    self.writes.append(time.monotonic())
                    await channel.unary(
                        channel.stub.ReleaseLeadership,
                        epb.ReleaseLeadershipRequest(
                            election=election,
                            node_id="probe",
                            fencing_token=reply.leader.fencing_token,
                        ),
                        1.0,
                    )
                self.probe_requests["ok"] += 1
            except (GRPCError, TimeoutError, *CONNECTION_ERRORS):
                self.probe_requests["error"] += 1
            finally:
                channel.close()

    # -- the end ----------------------------------------------------------------

    async def hold_some(self, count: int = 20) -> None:
        """Grant ``count`` elections for a minute, through every member in turn, so
        that the members' final states have holders and tokens to compare."""
        for i in range(count):
            slot = self.slots[i % len(self.slots)]
            channel = Channel("127.0.0.1", self.node(slot).port, election_grpc.LeaderElectionStub)
            request = epb.TryBecomeLeaderRequest(
                election=f"chaos-final/{i}", node_id=f"final-{slot}", ttl_ms=60_000
            )
            try:
                await channel.unary(channel.stub.TryBecomeLeader, request, 5)
            except (GRPCError, TimeoutError, *CONNECTION_ERRORS) as exc:
                self.problems.append(f"a grant through {slot} after healing failed: {exc!r}")
            finally:
                channel.close()

    async def agreement(self) -> dict[str, Any]:
        """Wait until every member has applied the same index; compare their states."""
        await self.hold_some()
        ids = [self.member[s] for s in self.slots]
        last: dict[str, Any] = {}
        with trio.move_on_after(30):
            while True:
                before = {i: await self.cluster.status(i) for i in ids}
                states = {i: await self._elections(i) for i in ids}
                after = {i: await self.cluster.status(i) for i in ids}
                applied = {
                    i: (b.applied_index if b else None, a.applied_index if a else None)
                    for (i, b), a in zip(before.items(), after.values(), strict=True)
                }
                last = {"applied": applied}
                indexes = {x for pair in applied.values() for x in pair}
                if None not in indexes and len(indexes) == 1 and None not in states.values():
                    distinct = {tuple(sorted(s.items())) for s in states.values()}
                    return {
                        "agree": len(distinct) == 1,
                        "applied_index": indexes.pop(),
                        "elections": len(next(iter(states.values()))),
                        **({} if len(distinct) == 1 else {"states": states}),
                    }
                await trio.sleep(0.2)
        return {"agree": False, "why": "members did not reach one applied index in 30 s", **last}

    async def _elections(self, member: str) -> dict[str, tuple[str, int]] | None:
        """``member``'s applied holders: election -> (holder, token)."""
        try:
            _, entries = await self.cluster.elections(member, timeout=5)
        except (GRPCError, TimeoutError, *CONNECTION_ERRORS):
            return None
        return {e.election: (e.node_id, e.fencing_token) for e in entries}

    async def stop(self) -> None:
        with trio.CancelScope(shield=True):
            for process in self.clients.values():
                if process.returncode is None:
                    process.send_signal(signal.SIGCONT)
                    process.kill()
                    await process.wait()
            await self.cluster.aclose()


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def availability(harness: Harness, start: float, end: float, ttl: float, holds: list) -> dict:
    writes = sorted(w for w in harness.writes if start <= w <= end)
    marks = [start, *writes, end]
    gap = max((b - a for a, b in itertools.pairwise(marks)), default=end - start)
    windows = [
        (f.start - 1.0, (f.end if math.isfinite(f.end) else end) + ttl + 2.0)
        for f in harness.faults
    ]
    lost = [h for h in holds if h.how == "lost"]
    unexplained = [h for h in lost if not any(a <= h.end <= b for a, b in windows)]
    return {
        "longest_without_a_write_s": round(gap, 3),
        "probe_writes": dict(harness.probe_requests),
        "leaderships_lost": len(lost),
        "leaderships_lost_without_a_fault_nearby": len(unexplained),
    }


async def run(options: Options) -> Report:
    async with asyncio_loop():
        return await _run(options)


async def _run(options: Options) -> Report:
    if options.root is None:
        root = Path(tempfile.mkdtemp(prefix="trio-election-chaos-"))
    else:
        root = options.root
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    harness = Harness(options, root)
    report = Report(options.seed, options.nodes, options.duration, root=str(root))
    progress(
        f"seed {options.seed}, {options.nodes} nodes, {options.clients} clients, "
        f"{options.duration:g} s of faults; files in {root}"
    )
    settle = 3 * options.ttl
    try:
        async with trio.open_nursery() as nursery:
            await harness.start(nursery)
            nursery.start_soon(harness.watchdog)
            begin = time.monotonic()
            faults_until = begin + options.duration
            await harness.start_clients(nursery, options.duration + settle)
            for slot in harness.slots:
                nursery.start_soon(harness.probe, slot, faults_until + settle)
            await harness.nemesis(faults_until)
            progress("faults over: healing everything; clients go on for a while")
            await harness.heal_all()
            for name, process in harness.clients.items():
                with trio.move_on_after(settle + 30):
                    code = await process.wait()
                    if code != 0:
                        harness.problems.append(f"client {name} exited with {code}")
            report.agreement = await harness.agreement()
            if not report.agreement.get("agree"):
                harness.problems.append(f"the members' applied states differ: {report.agreement}")
            for slot in harness.slots:
                node = harness.node(slot)
                if not node.running:
                    harness.problems.append(f"{node.id} is not running at the end")
            nursery.cancel_scope.cancel()
    finally:
        await harness.stop()
    seen = history.load(sorted(root.glob("c*.jsonl")))
    violations = history.check(seen)
    report.violations = history.as_json(violations)
    report.problems = harness.problems
    report.faults = dict(Counter(f.kind for f in harness.faults))
    report.requests = {k: dict(v) for k, v in seen.requests.items()}
    report.holds, report.reads = len(seen.holds), len(seen.reads)
    report.availability = availability(
        harness, begin, faults_until + settle, options.ttl, seen.holds
    )
    answered = sum(v.get("ok", 0) for v in report.requests.values()) + harness.probe_requests["ok"]
    failed = sum(v.get("error", 0) for v in report.requests.values())
    failed += harness.probe_requests["error"]
    report.availability["answered"] = round(answered / max(1, answered + failed), 4)
    return report


def as_dict(report: Report) -> dict[str, Any]:
    return {**dataclasses.asdict(report), "ok": report.ok}
