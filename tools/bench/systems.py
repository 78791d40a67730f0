"""The two systems the bench measures, behind one interface.

Each ``System`` starts its nodes on loopback with data dirs under the bench's
temporary folder, and offers the same operations, each done the way that
system's users do it:

================  ===================================  ===========================================
operation         trio-election                        etcd (its election recipe, v3 API)
================  ===================================  ===========================================
acquire           TryBecomeLeader of a fresh election  LeaseGrant, then Txn put-if-absent with it
renew             Heartbeat over KeepAlive             LeaseKeepAlive
renew a group     one KeepAlive message, 16 heartbeats one LeaseKeepAlive of the session lease
read              GetCurrentLeader                     Range (linearizable)
hand-over         ReleaseLeadership; Campaign returns  Resign; the waiting Campaign returns
write (failover)  TryBecomeLeader of a fresh election  Txn put
================  ===================================  ===========================================

Both load generators are the same code (``load``) over grpclib channels in
this process: ours through the project's generated stubs, etcd's through
stubs generated at run time from ``etcd/*.proto`` (etcd's own field numbers).
"""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from grpclib import GRPCError, Status
from grpclib.client import Channel

from tools.bench.processes import HOST, REPO, Processes, free_port, progress
from trio_election._generated.v1 import (
    cluster_grpc,
    cluster_pb2 as cpb,
    election_grpc,
    election_pb2 as pb,
)
from trio_election.testing import write_secret

TTL_S = 10  # of the elections the acquire workload takes
HOLD_TTL_S = 600  # of those renewed and read: they must outlive the whole run
READY_S = 60.0
# Connections per node: a node serves at most 100 calls at once on one
# connection (--max-calls-per-connection), and c goes to 256.
CONNECTIONS = 4
Op = Callable[[int], Awaitable[Any]]


async def retrying(call: Callable[[], Awaitable[Any]], attempts: int = 40) -> Any:
    """``call()``, again after a pause while the cluster answers UNAVAILABLE
    (it may be electing a Raft leader while it is being filled), or
    RESOURCE_EXHAUSTED (a connection still counts calls just ended)."""
    for attempt in range(attempts):
        try:
            return await call()
        except GRPCError as exc:
            busy = exc.status in (Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED)
            if not busy or attempt == attempts - 1:
                raise
        except TimeoutError:
            if attempt == attempts - 1:
                raise
        await asyncio.sleep(0.25)
    raise AssertionError("unreachable")


async def gather_bounded(jobs: list[Awaitable[Any]], limit: int = 256) -> list[Any]:
    """``asyncio.gather`` with at most ``limit`` running at once, results in order;
    a progress line every 10% of a long list."""
    gate = asyncio.Semaphore(limit)
    step = len(jobs) // 10 if len(jobs) >= 5_000 else 0
    done = 0
    started = time.monotonic()

    async def one(job: Awaitable[Any]) -> Any:
        nonlocal done
        async with gate:
            result = await job
        done += 1
        if step and done % step == 0:
            rate = done / (time.monotonic() - started)
            progress(f"  {done:,} of {len(jobs):,} ({rate:,.0f}/s)")
        return result

    return await asyncio.gather(*(one(j) for j in jobs))


class System:
    """One system's nodes and channels; subclasses do the operations."""

    name = ""

    def __init__(self, root: Path, nodes: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.nodes = nodes
        self.processes = Processes()
        self.ports: list[int] = []
        self.args: list[list[str]] = []
        self.channels: list[Channel] = []

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self.configure()
        for i, args in enumerate(self.args):
            self.processes.start(i, args)
        # Slot s is a connection to node s % nodes: slot i < nodes is node i's first.
        slots = range(self.nodes * CONNECTIONS)
        self.channels = [Channel(HOST, self.ports[s % self.nodes]) for s in slots]
        self.make_stubs()
        await self.wait_ready(range(self.nodes))

    def configure(self) -> None:
        """Fill ``ports`` and ``args`` (one command line per node)."""
        raise NotImplementedError

    def make_stubs(self) -> None:
        raise NotImplementedError

    async def probe(self, i: int) -> None:
        """Succeeds once node ``i`` serves (and, in a cluster, has a leader)."""
        raise NotImplementedError

    async def wait_ready(self, nodes: Any, timeout: float = READY_S) -> None:
        deadline = time.monotonic() + timeout
        for i in nodes:
            while True:
                self.processes.check(self.name)
                try:
                    await asyncio.wait_for(self.probe(i), 1.0)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{self.name} not ready within {timeout} s:\n{self.processes.logs()}"
                        ) from None
                    await asyncio.sleep(0.1)

    def kill(self, i: int) -> None:
        self.processes.kill(i)
        for channel in self.channels[i :: self.nodes]:
            channel.close()

    async def restart(self, i: int) -> None:
        """Start node ``i`` again from its data dir; wait until it serves."""
        self.processes.start(i, self.args[i])
        for s in range(i, len(self.channels), self.nodes):
            self.channels[s] = Channel(HOST, self.ports[i])
        self.make_stubs()
        await self.wait_ready([i])

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.processes.stop()

    # -- what the bench reads --------------------------------------------------

    async def leader(self) -> int:
        """The index of the node that is the Raft leader (0 on one node)."""
        raise NotImplementedError

    async def peer_bytes(self) -> int | None:
        """Bytes sent between the nodes so far, summed (None on one node)."""
        raise NotImplementedError

    # -- operations ------------------------------------------------------------

    async def hold(self, count: int, prefix: str) -> list[Any]:
        """Take ``count`` elections, one per client; return what a renewal names."""
        raise NotImplementedError

    async def hold_groups(self, groups: int, size: int, prefix: str) -> list[Any]:
        """``groups`` clients holding ``size`` elections each, renewed by one message."""
        raise NotImplementedError

    def acquire(self, task: int) -> Op:
        raise NotImplementedError

    def read(self, task: int, held: list[Any]) -> Op:
        raise NotImplementedError

    def renew_stream(self, task: int) -> Any:
        raise NotImplementedError

    def renewal(self, item: Any) -> Any:
        raise NotImplementedError

    @staticmethod
    def renewed(reply: Any) -> bool:
        raise NotImplementedError

    async def handover(self, name: str, rounds: int) -> tuple[list[float], int]:
        """Two clients pass one election back and forth ``rounds`` times: the
        seconds from each release to the waiting campaigner's grant, and the
        number of rounds where the wrong client (or a stale token) won."""
        raise NotImplementedError

    async def write(self, i: int, key: str, timeout: float) -> None:
        """One committed write through node ``i`` (raises if it fails)."""
        raise NotImplementedError


class Ours(System):
    name = "trio-election"

    def configure(self) -> None:
        ids = [f"n{i + 1}" for i in range(self.nodes)]
        self.ids = ids
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
            self.args.append(args)

    def make_stubs(self) -> None:
        self.stubs = [election_grpc.LeaderElectionStub(c) for c in self.channels]
        self.cluster = [cluster_grpc.ClusterStub(c) for c in self.channels]

    async def probe(self, i: int) -> None:
        request = pb.TryBecomeLeaderRequest(election=f"probe{i}", node_id="p", ttl_ms=1000)
        reply = await self.stubs[i].TryBecomeLeader(request, timeout=1.0)
        assert reply.success or reply.leader.node_id

    async def _status(self) -> list[Any]:
        async def one(i: int) -> Any:
            try:
                return await self.cluster[i].Status(cpb.StatusRequest(), timeout=2.0)
            except Exception:  # noqa: BLE001 - a killed or starting node does not answer
                return None

        return list(await asyncio.gather(*(one(i) for i in range(self.nodes))))

    async def leader(self) -> int:
        if self.nodes == 1:
            return 0
        for _ in range(200):
            answers = [a for a in await self._status() if a is not None]
            leaders = {a.leader for a in answers}
            if len(answers) == self.nodes and len(leaders) == 1 and "" not in leaders:
                return self.ids.index(leaders.pop())
            await asyncio.sleep(0.1)
        raise RuntimeError("the nodes do not agree on a Raft leader")

    async def peer_bytes(self) -> int | None:
        if self.nodes == 1:
            return None
        answers = await self._status()
        if None in answers:
            raise RuntimeError("a node did not answer Status")
        return sum(a.peer_bytes_sent for a in answers)

    async def _take(self, i: int, election: str, node_id: str, ttl_s: int) -> int:
        stub = self.stubs[i]
        request = pb.TryBecomeLeaderRequest(election=election, node_id=node_id, ttl_ms=ttl_s * 1000)
        reply = await retrying(lambda: stub.TryBecomeLeader(request, timeout=10))
        token = reply.leader.fencing_token
        # The first renewal of a grant is logged: here, not in the measurement.
        heartbeat = pb.HeartbeatRequest(election=election, node_id=node_id, fencing_token=token)
        await retrying(lambda: stub.Heartbeat(heartbeat, timeout=10))
        return token

    async def hold(self, count: int, prefix: str) -> list[Any]:
        async def take(k: int) -> tuple[str, int]:
            election = f"{prefix}{k}"
            return election, await self._take(k % len(self.stubs), election, "holder", HOLD_TTL_S)

        return await gather_bounded([take(k) for k in range(count)], limit=32 * len(self.stubs))

    async def hold_groups(self, groups: int, size: int, prefix: str) -> list[Any]:
        held = await self.hold(groups * size, prefix=prefix)
        return [held[g * size : (g + 1) * size] for g in range(groups)]

    def acquire(self, task: int) -> Op:
        stub = self.stubs[task % len(self.stubs)]

        async def op(n: int) -> None:
            request = pb.TryBecomeLeaderRequest(
                election=f"a{task}-{n}-{time.monotonic_ns()}", node_id="w", ttl_ms=TTL_S * 1000
            )
            reply = await stub.TryBecomeLeader(request)
            assert reply.success

        return op

    def read(self, task: int, held: list[Any]) -> Op:
        stub = self.stubs[task % len(self.stubs)]

        async def op(n: int) -> None:
            election, _ = held[(task + n) % len(held)]
            reply = await stub.GetCurrentLeader(pb.GetCurrentLeaderRequest(election=election))
            assert reply.has_leader

        return op

    def renew_stream(self, task: int) -> Any:
        return self.stubs[task % len(self.stubs)].KeepAlive.open()

    def renewal(self, item: Any) -> Any:
        if isinstance(item, list):  # a group: one batch message
            return pb.HeartbeatRequest(heartbeats=[self.renewal(one) for one in item])
        election, token = item
        return pb.HeartbeatRequest(election=election, node_id="holder", fencing_token=token)

    @staticmethod
    def renewed(reply: Any) -> bool:
        return all(r.success for r in reply.heartbeats) if reply.heartbeats else reply.success

    async def handover(self, name: str, rounds: int) -> tuple[list[float], int]:
        # Two connections to node 0 (a follower or the leader, as it falls).
        sides = [Channel(HOST, self.ports[0]), Channel(HOST, self.ports[0])]
        stubs = [election_grpc.LeaderElectionStub(c) for c in sides]
        ids = [f"{name}-a", f"{name}-b"]
        try:
            holder = 0
            token = await self._take(0, name, ids[0], HOLD_TTL_S)
            took: list[float] = []
            bad = 0
            for _ in range(rounds):
                other = 1 - holder
                async with stubs[other].Campaign.open(timeout=10) as call:
                    campaign = pb.CampaignRequest(
                        election=name, node_id=ids[other], ttl_ms=HOLD_TTL_S * 1000
                    )
                    await call.send_message(campaign, end=True)
                    # Same connection, so the server has queued the Campaign once this is answered.
                    await stubs[other].GetCurrentLeader(pb.GetCurrentLeaderRequest(election=name))
                    start = time.monotonic()
                    release = asyncio.ensure_future(
                        stubs[holder].ReleaseLeadership(
                            pb.ReleaseLeadershipRequest(
                                election=name, node_id=ids[holder], fencing_token=token
                            )
                        )
                    )
                    elected = (await call.recv_message()).leader
                    took.append(time.monotonic() - start)
                    if not (await release).released:
                        raise RuntimeError("the holder could not release")
                bad += elected.node_id != ids[other] or elected.fencing_token <= token
                holder, token = other, elected.fencing_token
            return took, bad
        finally:
            for channel in sides:
                channel.close()

    async def write(self, i: int, key: str, timeout: float) -> None:
        request = pb.TryBecomeLeaderRequest(election=key, node_id="w", ttl_ms=TTL_S * 1000)
        reply = await self.stubs[i].TryBecomeLeader(request, timeout=timeout)
        assert reply.success


def etcd_stubs(out: Path) -> tuple[Any, Any, Any, Any]:
    """Generate grpclib stubs of ``etcd/*.proto`` into ``out`` and import them."""
    from grpc_tools import protoc

    plugin = Path(sys.executable).parent / "protoc-gen-grpclib_python"
    source = REPO / "tools" / "bench" / "etcd"
    out.mkdir(parents=True, exist_ok=True)
    for proto in ("etcd.proto", "election.proto"):
        command = ["protoc", f"-I{source}", f"--python_out={out}"]
        command += [f"--plugin=protoc-gen-grpclib_python={plugin}", f"--grpclib_python_out={out}"]
        if protoc.main([*command, str(source / proto)]) != 0:
            raise RuntimeError(f"protoc failed on tools/bench/etcd/{proto}")
    sys.path.insert(0, str(out))
    names = ("etcd_pb2", "etcd_grpc", "election_pb2", "election_grpc")
    return tuple(importlib.import_module(m) for m in names)  # type: ignore[return-value]


_PEER_SENT = re.compile(rb"^etcd_network_peer_sent_bytes_total\{[^}]*\} (\S+)$", re.M)


class Etcd(System):
    name = "etcd"

    def __init__(self, root: Path, nodes: int, binary: str, stubs: tuple[Any, ...]) -> None:
        super().__init__(root, nodes)
        self.binary = binary
        self.rpc, self.grpc, self.epb, self.egrpc = stubs

    def configure(self) -> None:
        names = [f"e{i + 1}" for i in range(self.nodes)]
        self.ports = [free_port() for _ in names]
        peers = [free_port() for _ in names]
        initial = ",".join(f"{n}=http://{HOST}:{p}" for n, p in zip(names, peers, strict=True))
        for i, name in enumerate(names):
            client = f"http://{HOST}:{self.ports[i]}"
            peer = f"http://{HOST}:{peers[i]}"
            self.args.append(
                [
                    self.binary,
                    "--name", name,
                    "--data-dir", str(self.root / name),
                    "--listen-client-urls", client,
                    "--advertise-client-urls", client,
                    "--listen-peer-urls", peer,
                    "--initial-advertise-peer-urls", peer,
                    "--initial-cluster", initial,
                    "--initial-cluster-state", "new",
                    "--initial-cluster-token", "bench",
                    "--log-level", "warn",
                ]
            )  # fmt: skip

    def make_stubs(self) -> None:
        self.kv = [self.grpc.KVStub(c) for c in self.channels]
        self.lease = [self.grpc.LeaseStub(c) for c in self.channels]
        self.maintenance = [self.grpc.MaintenanceStub(c) for c in self.channels]
        self.election = [self.egrpc.ElectionStub(c) for c in self.channels]

    async def probe(self, i: int) -> None:
        await self.kv[i].Range(self.rpc.RangeRequest(key=b"probe"), timeout=1.0)

    async def leader(self) -> int:
        if self.nodes == 1:
            return 0
        for _ in range(200):
            with_answer = []
            for i in range(self.nodes):
                try:
                    reply = await self.maintenance[i].Status(self.rpc.StatusRequest(), timeout=2)
                    with_answer.append((i, reply))
                except Exception:  # noqa: BLE001 - a killed or starting node does not answer
                    pass
            leaders = {r.leader for _, r in with_answer}
            if len(with_answer) == self.nodes and len(leaders) == 1 and 0 not in leaders:
                leader = leaders.pop()
                return next(i for i, r in with_answer if r.header.member_id == leader)
            await asyncio.sleep(0.1)
        raise RuntimeError("the etcd members do not agree on a leader")

    async def peer_bytes(self) -> int | None:
        if self.nodes == 1:
            return None

        def scrape(port: int) -> int:
            with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as reply:
                return int(sum(float(v) for v in _PEER_SENT.findall(reply.read())))

        return sum(await asyncio.gather(*(asyncio.to_thread(scrape, p) for p in self.ports)))

    async def _lease(self, i: int, ttl: int) -> int:
        grant = self.rpc.LeaseGrantRequest(TTL=ttl)
        return (await retrying(lambda: self.lease[i].LeaseGrant(grant, timeout=10))).ID

    async def _acquire(self, i: int, key: bytes, lease_id: int) -> None:
        rpc = self.rpc
        put = rpc.PutRequest(key=key, value=b"w", lease=lease_id)
        txn = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=key, create_revision=0
                )
            ],
            success=[rpc.RequestOp(request_put=put)],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )
        reply = await retrying(lambda: self.kv[i].Txn(txn, timeout=10))
        assert reply.succeeded

    async def hold(self, count: int, prefix: str) -> list[Any]:
        async def take(k: int) -> tuple[bytes, int]:
            i = k % len(self.kv)
            key = f"{prefix}{k}".encode()
            lease_id = await self._lease(i, HOLD_TTL_S)
            await self._acquire(i, key, lease_id)
            return key, lease_id

        return await gather_bounded([take(k) for k in range(count)])

    async def hold_groups(self, groups: int, size: int, prefix: str) -> list[Any]:
        """One session lease per group, as etcd's concurrency.Session shares it."""

        async def group(g: int) -> int:
            i = g % len(self.kv)
            lease_id = await self._lease(i, HOLD_TTL_S)
            for k in range(size):
                await self._acquire(i, f"{prefix}{g}-{k}".encode(), lease_id)
            return lease_id

        return await gather_bounded([group(g) for g in range(groups)])

    def acquire(self, task: int) -> Op:
        i = task % len(self.kv)

        async def op(n: int) -> None:
            grant = await self.lease[i].LeaseGrant(self.rpc.LeaseGrantRequest(TTL=TTL_S))
            await self._acquire(i, f"a{task}-{n}-{time.monotonic_ns()}".encode(), grant.ID)

        return op

    def read(self, task: int, held: list[Any]) -> Op:
        kv = self.kv[task % len(self.kv)]

        async def op(n: int) -> None:
            key, _ = held[(task + n) % len(held)]
            reply = await kv.Range(self.rpc.RangeRequest(key=key))
            assert reply.kvs

        return op

    def renew_stream(self, task: int) -> Any:
        return self.lease[task % len(self.lease)].LeaseKeepAlive.open()

    def renewal(self, item: Any) -> Any:
        # A held election (key, lease), or a group's session lease.
        return self.rpc.LeaseKeepAliveRequest(ID=item[1] if isinstance(item, tuple) else item)

    @staticmethod
    def renewed(reply: Any) -> bool:
        return reply.TTL > 0

    async def handover(self, name: str, rounds: int) -> tuple[list[float], int]:
        election = self.election[0]
        leases = [await self._lease(0, HOLD_TTL_S) for _ in range(2)]
        key = name.encode()

        async def campaign(side: int) -> Any:
            request = self.epb.CampaignRequest(name=key, lease=leases[side], value=b"w")
            return (await election.Campaign(request, timeout=10)).leader

        async def queued(count: int) -> None:
            """Until ``count`` campaigners' keys exist under the election's prefix."""
            request = self.rpc.RangeRequest(key=key + b"/", range_end=key + b"0", count_only=True)
            while (await self.kv[0].Range(request)).count < count:
                await asyncio.sleep(0.001)

        holder, lead = 0, await campaign(0)
        took: list[float] = []
        bad = 0
        for _ in range(rounds):
            other = 1 - holder
            waiting = asyncio.ensure_future(campaign(other))
            await queued(2)
            start = time.monotonic()
            await election.Resign(self.epb.ResignRequest(leader=lead))
            elected = await waiting
            took.append(time.monotonic() - start)
            bad += elected.lease != leases[other] or elected.rev <= lead.rev
            holder, lead = other, elected
        await election.Resign(self.epb.ResignRequest(leader=lead))
        return took, bad

    async def write(self, i: int, key: str, timeout: float) -> None:
        put = self.rpc.PutRequest(key=key.encode(), value=b"w")
        txn = self.rpc.TxnRequest(success=[self.rpc.RequestOp(request_put=put)])
        await self.kv[i].Txn(txn, timeout=timeout)
