"""Real node processes on loopback, for cluster tests and the fault-injection harness.

A :class:`Cluster` starts ``python -m trio_election node`` processes, each with
its own data dir and log file under the test's tmp_path, and talks to them
over gRPC (the ``Cluster.Status`` RPC) from the test's Trio run. These are real
processes with real clocks, so no virtual time: waiting for them is polling
something observable (a log line, a Status or Health answer) with short sleeps
between polls, always bounded by ``trio.fail_after``. Every process is
SIGKILLed at teardown, whatever the test did.

Ports. A node's client port is never chosen here: every node listens on
``127.0.0.1:0`` and :meth:`Cluster.spawn` learns the port from its "serving
clients on HOST:PORT, peers on HOST:PORT" log line (which is also how it knows
the node is up). Peer ports cannot work that way: every ``--initial-cluster``
names all members' peer addresses before any of them starts, the first node
of a cluster advertises its ``--initial-cluster`` entry (so even bootstrapping
one node and ``--join``-ing the rest needs one port in advance, and would no
longer test ``--initial-cluster``), and a restarted node binds the peer
address its data dir remembers. So the harness reserves each peer port for
the whole test, and does not merely pick one that was free a moment ago: it
keeps open a socket bound to it with SO_REUSEADDR that never listens, until
:meth:`Cluster.aclose`. On Linux the node, whose listeners set SO_REUSEADDR
too, can bind and listen on that port, while no other process can take it:
a bind without SO_REUSEADDR fails with EADDRINUSE, and the kernel never hands
a bound port to a bind to port 0 or to an outgoing connection. So there is no
window between choosing the port and the node binding it, not even while a
node is down between a kill and its restart. (Retrying a start-up on
EADDRINUSE would only paper over that window.) Elsewhere (BSD and macOS share
a port only with SO_REUSEPORT) the reservation falls back to
:func:`free_port`, with its small race.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import trio
from grpclib.health.v1 import health_grpc, health_pb2

from trio_election._bridge import Channel, GRPCError
from trio_election._generated.v1 import cluster_grpc, cluster_pb2 as pb, election_grpc
from trio_election.client._transport import CONNECTION_ERRORS
from trio_election.testing import CertFiles, make_certs, write_secret

#: How long a cluster may take to agree on a Raft leader (processes start in ~0.3 s).
STABLE_TIMEOUT = 20.0
#: How long a node may take to say it serves (a --join waits for the join first).
SERVING_TIMEOUT = 20.0
#: Deadline of each Status poll.
POLL_TIMEOUT = 1.0
#: Pause between polls.
POLL_INTERVAL = 0.05


#: Whether a bound socket that never listens can reserve a port for a node
#: process to listen on (Linux SO_REUSEADDR semantics; see the module docstring).
RESERVATION_WORKS = sys.platform.startswith("linux")

#: A node's start-up line: its client port, and its peer address.
SERVING = re.compile(r"serving clients on [^\s,]+:(\d+), peers on (\S+):(\d+) ")


def free_port() -> int:
    """A port that was free a moment ago, and may not be by the time it is used.

    Another process could take it in between. Use :meth:`Cluster.reserve_address`
    for an address a node will listen on, or one where nothing may listen.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class NodeProcess:
    """One member: its identity, its data dir and log, and its process if running."""

    id: str
    #: The client address: where it serves now (each start picks a new port).
    address: str
    peer_address: str
    data_dir: Path
    log_path: Path
    #: Where the other members reach it, if not at ``peer_address`` (e.g. a proxy).
    advertise: str | None = None
    #: Its client address for every start, if not port 0 (learnt) each time.
    fixed_address: str | None = None
    process: trio.Process | None = None
    exit_codes: list[int] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Cluster:
    """Node processes under ``root``; use through the ``cluster`` fixture."""

    def __init__(self, root: Path, tick: float = 0.05) -> None:
        self.root = root
        self.tick = tick
        self.nodes: dict[str, NodeProcess] = {}
        #: Flags every node gets (e.g. a small --snapshot-entries).
        self.flags: tuple[str, ...] = ()
        #: How a node is started: the command before ``node --id ...``.
        self.command: list[str] = [sys.executable, "-m", "trio_election"]
        #: Environment variables every node gets on top of this process's.
        self.env: dict[str, str] = {}
        #: The cluster key every member presents (peer authentication).
        self.key_file = write_secret(root / "cluster.key")
        #: Set by use_mutual_tls: each member's certificate instead of the key.
        self.certs: dict[str, CertFiles] | None = None
        #: The sockets that hold reserve_address's ports until aclose.
        self._reserved: list[socket.socket] = []

    def reserve_address(self) -> str:
        """A loopback address whose port is this cluster's until :meth:`aclose`.

        Nothing listens there unless a node is started on it (connections are
        refused), and no other process can take the port meanwhile; see the
        module docstring.
        """
        if not RESERVATION_WORKS:
            return f"127.0.0.1:{free_port()}"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._reserved.append(sock)
        return f"127.0.0.1:{sock.getsockname()[1]}"

    def use_mutual_tls(self, names: Iterable[str]) -> None:
        """Authenticate peers by certificates of one fresh CA instead of the key."""
        self.certs = make_certs(self.root / "certs", list(names))

    def peer_flags(self, node_id: str) -> list[str]:
        """The peer-authentication flags of ``node_id``."""
        if self.certs is None:
            return ["--cluster-key-file", str(self.key_file)]
        files = self.certs[node_id]
        return [
            "--peer-cert",
            str(files.cert),
            "--peer-key",
            str(files.key),
            "--peer-ca",
            str(files.ca),
        ]

    def peer_endpoints(self, ids: Iterable[str] | None = None) -> list[str]:
        return [self.nodes[i].peer_address for i in (self.nodes if ids is None else ids)]

    # -- processes ------------------------------------------------------------

    def endpoints(self, ids: Iterable[str] | None = None) -> list[str]:
        return [self.nodes[i].address for i in (self.nodes if ids is None else ids)]

    def add(
        self, node_id: str, *, advertise: str | None = None, fixed_address: bool = False
    ) -> NodeProcess:
        """A new member with a reserved peer address; its client address (port 0
        until then) is learnt when it is spawned, unless ``fixed_address``
        reserves one for all its starts. Peers reach it at ``advertise``
        (default: its peer address)."""
        node = NodeProcess(
            node_id,
            "127.0.0.1:0",
            self.reserve_address(),
            self.root / node_id,
            self.root / f"{node_id}.log",
            advertise=advertise,
            fixed_address=self.reserve_address() if fixed_address else None,
        )
        self.nodes[node_id] = node
        return node

    async def start(self, count: int = 3) -> tuple[str, int]:
        """Bootstrap ``count`` members n1..nN (those not yet :meth:`add`-ed are
        added); return the agreed (leader, term)."""
        ids = [f"n{i}" for i in range(1, count + 1)]
        for node_id in ids:
            if node_id not in self.nodes:
                self.add(node_id)
        initial = ",".join(
            f"{i}={self.nodes[i].advertise or self.nodes[i].peer_address}" for i in ids
        )
        # All start at once (none can elect a leader alone), then each says it serves.
        offsets = {i: await self._launch(i, "--initial-cluster", initial) for i in ids}
        for node_id, offset in offsets.items():
            await self._wait_serving(node_id, offset)
        return await self.wait_stable(ids)

    async def spawn(self, node_id: str, *extra: str, peer_listen: bool = True) -> NodeProcess:
        """Start (or restart) ``node_id`` with ``--id --listen --data-dir``, its peer
        credentials, ``--peer-listen`` (unless ``peer_listen`` is False) and ``extra``;
        return once it serves (after its join, with ``--join``).

        It listens for clients on port 0: ``node.address`` is set from its log.
        """
        await self._wait_serving(
            node_id, await self._launch(node_id, *extra, peer_listen=peer_listen)
        )
        return self.nodes[node_id]

    async def _launch(self, node_id: str, *extra: str, peer_listen: bool = True) -> int:
        """Start the process (see :meth:`spawn`); return where its output begins in its log."""
        node = self.nodes[node_id]
        assert not node.running, f"{node_id} is running already"
        command = [*self.command, "node", "--id", node_id]
        command += ["--listen", node.fixed_address or "127.0.0.1:0"]
        command += ["--data-dir", str(node.data_dir)]
        if peer_listen:
            command += ["--peer-listen", node.peer_address]
            if node.advertise is not None:
                command += ["--advertise", node.advertise]
        command += self.peer_flags(node_id)
        command += ["--tick", str(self.tick), *self.flags, *extra]
        with open(node.log_path, "ab") as log:
            log.write(f"==== {' '.join(command[1:])}\n".encode())
            log.flush()
            offset = log.tell()
            node.process = await trio.lowlevel.open_process(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        return offset

    async def _wait_serving(self, node_id: str, offset: int) -> None:
        """Wait until ``node_id`` logs (past ``offset``) that it serves; learn its
        client address from that line and check its peer address."""
        node = self.nodes[node_id]
        assert node.process is not None
        text = ""
        try:
            with trio.fail_after(SERVING_TIMEOUT):
                while True:
                    text = node.log_path.read_bytes()[offset:].decode(errors="replace")
                    if match := SERVING.search(text):
                        break
                    if node.process.returncode is not None:
                        raise AssertionError(
                            f"{node_id} exited with {node.process.returncode} before it served:"
                            f"\n{text}"
                        )
                    await trio.sleep(POLL_INTERVAL)
        except trio.TooSlowError:
            raise AssertionError(
                f"{node_id} did not say it serves within {SERVING_TIMEOUT:g} s:\n{text}"
            ) from None
        node.address = f"127.0.0.1:{match[1]}"
        peer = f"{match[2]}:{match[3]}"
        assert peer == node.peer_address, (
            f"{node_id} serves peers on {peer}, not {node.peer_address}"
        )

    async def restart(self, node_id: str) -> NodeProcess:
        """Start a stopped member again from its data dir: no cluster flags at all
        (its peer address too comes from the data dir), only its credentials."""
        return await self.spawn(node_id, peer_listen=False)

    async def kill(self, node_id: str, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` and wait (bounded) for the process to end; its exit code."""
        node = self.nodes[node_id]
        assert node.process is not None and node.running, f"{node_id} is not running"
        node.process.send_signal(sig)
        return await self.wait_exit(node_id, timeout=10)

    async def wait_exit(self, node_id: str, timeout: float) -> int:
        """Wait until ``node_id``'s process ends by itself; its exit code."""
        node = self.nodes[node_id]
        assert node.process is not None
        with trio.fail_after(timeout):
            code = await node.process.wait()
        node.exit_codes.append(code)
        return code

    async def aclose(self) -> None:
        """SIGKILL every process still running and reap it."""
        with trio.CancelScope(shield=True):
            for node in self.nodes.values():
                if node.process is None:
                    continue
                if node.process.returncode is None:
                    node.process.kill()
                    with trio.move_on_after(10):
                        node.exit_codes.append(await node.process.wait())
            for sock in self._reserved:
                sock.close()
            self._reserved.clear()

    def logs(self) -> str:
        parts = []
        for node in self.nodes.values():
            text = node.log_path.read_text(errors="replace") if node.log_path.exists() else ""
            parts.append(f"----- {node.id} ({node.address}) exits {node.exit_codes} -----\n{text}")
        return "\n".join(parts)

    # -- gRPC -------------------------------------------------------------------

    def election_channel(self, node_id: str) -> Channel:
        """A LeaderElection channel to one node only (close it when done)."""
        host, _, port = self.nodes[node_id].address.rpartition(":")
        return Channel(host, int(port), election_grpc.LeaderElectionStub)

    async def status(self, node_id: str) -> pb.StatusResponse | None:
        """``node_id``'s Cluster.Status, or None if it does not answer now."""
        node = self.nodes[node_id]
        channel = Channel("127.0.0.1", node.port, cluster_grpc.ClusterStub)
        try:
            return await channel.unary(channel.stub.Status, pb.StatusRequest(), POLL_TIMEOUT)
        except (GRPCError, TimeoutError, *CONNECTION_ERRORS):
            return None
        finally:
            channel.close()

    async def elections(
        self, node_id: str, timeout: float = POLL_TIMEOUT
    ) -> tuple[int, list[pb.ElectionEntry]]:
        """Every election ``node_id`` holds as of its applied state, paged through
        Cluster.ListElections: its applied index (of the last page) and the entries.

        Raises:
            GRPCError, TimeoutError, OSError: the node did not answer.
        """
        node = self.nodes[node_id]
        channel = Channel("127.0.0.1", node.port, cluster_grpc.ClusterStub)
        entries: list[pb.ElectionEntry] = []
        try:
            page = pb.ListElectionsResponse(truncated=True)
            while page.truncated:
                request = pb.ListElectionsRequest(start_after=page.next_start_after)
                page = await channel.unary(channel.stub.ListElections, request, timeout)
                entries += page.elections
        finally:
            channel.close()
        return page.applied_index, entries

    async def health(self, node_id: str) -> str | None:
        """The overall health status name of ``node_id``, or None if it does not answer."""
        host, _, port = self.nodes[node_id].address.rpartition(":")
        channel = Channel(host, int(port), health_grpc.HealthStub)
        try:
            reply = await channel.unary(
                channel.stub.Check, health_pb2.HealthCheckRequest(), POLL_TIMEOUT
            )
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except (GRPCError, TimeoutError, *CONNECTION_ERRORS):
            return None
        finally:
            channel.close()

    async def wait_health(self, node_id: str, status: str, timeout: float = 15.0) -> None:
        """Wait until ``node_id``'s health is ``status``."""
        seen = None
        try:
            with trio.fail_after(timeout):
                while (seen := await self.health(node_id)) != status:
                    await trio.sleep(POLL_INTERVAL)
        except trio.TooSlowError:
            raise AssertionError(f"{node_id} health stayed {seen}, not {status}") from None

    async def wait_stable(
        self, ids: Iterable[str] | None = None, timeout: float = STABLE_TIMEOUT
    ) -> tuple[str, int]:
        """Wait until every node of ``ids`` (default: the running ones) names the
        same Raft leader, among them, in the same term, with the same members.

        Returns:
            The leader's id and the term.
        """
        ids = sorted(ids if ids is not None else [n.id for n in self.nodes.values() if n.running])
        last: dict[str, object] = {}
        try:
            with trio.fail_after(timeout):
                while True:
                    statuses = {i: await self.status(i) for i in ids}
                    last = {i: _summary(s) for i, s in statuses.items()}
                    if all(statuses.values()):
                        seen = {
                            (s.leader, s.term, tuple(sorted(m.id for m in s.members)))
                            for s in statuses.values()
                        }
                        if len(seen) == 1:
                            leader, term, members = seen.pop()
                            if leader in ids and set(ids) <= set(members):
                                return leader, term
                    await trio.sleep(POLL_INTERVAL)
        except trio.TooSlowError:
            raise AssertionError(
                f"{ids} did not agree on a Raft leader within {timeout:g} s; last seen: "
                + json.dumps(last, indent=1)
            ) from None

    async def wait_caught_up(self, node_id: str, index: int, timeout: float = 15.0) -> None:
        """Wait until ``node_id`` has applied the entry at ``index``."""
        status = None
        try:
            with trio.fail_after(timeout):
                while (status := await self.status(node_id)) is None or (
                    status.applied_index < index
                ):
                    await trio.sleep(POLL_INTERVAL)
        except trio.TooSlowError:
            raise AssertionError(
                f"{node_id} did not apply {index} within {timeout:g} s: {_summary(status)}"
            ) from None


def _summary(status: pb.StatusResponse | None) -> object:
    if status is None:
        return None
    return {
        "leader": status.leader,
        "term": status.term,
        "role": status.role,
        "commit": status.commit_index,
        "applied": status.applied_index,
        "members": [m.id for m in status.members],
    }


async def run_cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[bytes]:
    """``trio-election ARGS`` in a subprocess (it runs its own Trio loop)."""
    with trio.fail_after(timeout):
        return await trio.run_process(
            [sys.executable, "-m", "trio_election", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
