"""A tiny stand-in for Maelstrom's network, to test ``tools/maelstrom_node.py``.

It starts one adapter process per node, reads their stdout JSON lines and
routes every message by ``dest``: to another node's stdin (unless the link is
cut by :meth:`MaelstromCluster.partition`), or to the waiting client request
(matched by ``in_reply_to``). Anything on stdout that is not a protocol line
is recorded in ``protocol_errors``. Node stderr goes to one log file per node.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = ROOT / "tools" / "maelstrom_node.py"


class NodeProc:
    def __init__(self, node_id: str, proc: trio.Process, log_path: Path) -> None:
        self.id = node_id
        self.proc = proc
        self.log_path = log_path
        self.inbox_send, self.inbox = trio.open_memory_channel[bytes](math.inf)


class MaelstromCluster:
    """Routes messages between adapter processes; clients call :meth:`request`."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.nodes: dict[str, NodeProc] = {}
        self._msg_ids = itertools.count(1)
        self._waiting: dict[tuple[str, int], trio.MemorySendChannel[dict[str, Any]]] = {}
        self.blocked: set[tuple[str, str]] = set()
        self.dropped = 0
        self.node_messages = 0
        self.protocol_errors: list[str] = []

    # -- processes ---------------------------------------------------------

    async def start_node(self, node_id: str, log_dir: Path) -> None:
        log_path = log_dir / f"{node_id}.log"
        with open(log_path, "wb") as log_file:
            proc = await trio.lowlevel.open_process(
                [sys.executable, str(ADAPTER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                cwd=ROOT,
            )
        node = NodeProc(node_id, proc, log_path)
        self.nodes[node_id] = node
        self._nursery.start_soon(self._pump_out, node)
        self._nursery.start_soon(self._pump_in, node)

    async def _pump_in(self, node: NodeProc) -> None:
        assert node.proc.stdin is not None
        async for data in node.inbox:
            try:
                await node.proc.stdin.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def _pump_out(self, node: NodeProc) -> None:
        assert node.proc.stdout is not None
        buf = b""
        async for chunk in node.proc.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                self._route(node.id, line)

    def _route(self, sender: str, line: bytes) -> None:
        try:
            msg = json.loads(line)
            src, dest, body = msg["src"], msg["dest"], msg["body"]
            assert isinstance(body, dict) and "type" in body
        except Exception as exc:  # noqa: BLE001 - anything else is a protocol error
            self.protocol_errors.append(f"{sender}: {line[:200]!r}: {exc!r}")
            return
        if src != sender:
            self.protocol_errors.append(f"{sender} sent as {src!r}: {line[:200]!r}")
        if dest in self.nodes:
            self.node_messages += 1
            if (src, dest) in self.blocked:
                self.dropped += 1
                return
            self.nodes[dest].inbox_send.send_nowait(line + b"\n")
            return
        waiter = self._waiting.pop((dest, body.get("in_reply_to")), None)
        if waiter is not None:
            waiter.send_nowait(body)

    def send_raw(self, src: str, dest: str, body: dict[str, Any]) -> None:
        line = json.dumps({"src": src, "dest": dest, "body": body}).encode() + b"\n"
        self.nodes[dest].inbox_send.send_nowait(line)

    async def request(
        self, dest: str, body: dict[str, Any], *, client: str = "c1", timeout: float = 5.0
    ) -> dict[str, Any]:
        """Send ``body`` from ``client`` to ``dest``; return the reply body."""
        msg_id = next(self._msg_ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[(client, msg_id)] = send
        self.send_raw(client, dest, {**body, "msg_id": msg_id})
        try:
            with trio.fail_after(timeout):
                reply = await receive.receive()
        finally:
            self._waiting.pop((client, msg_id), None)
        assert reply["in_reply_to"] == msg_id
        return reply

    # -- network faults ----------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every link between nodes of different groups (both directions)."""
        sets = [set(g) for g in groups]
        self.blocked = {
            (a, b) for ga in sets for gb in sets if ga is not gb for a in ga for b in gb
        }

    def heal(self) -> None:
        self.blocked = set()

    # -- helpers -----------------------------------------------------------

    async def status(self, node: str) -> dict[str, Any]:
        return await self.request(node, {"type": "status"}, client="driver", timeout=2)

    async def wait_for_leader(
        self, among: Iterable[str] | None = None, *, timeout: float = 10.0
    ) -> str:
        """Poll until every node of ``among`` agrees on one leader, itself in ``among``."""
        among = list(among if among is not None else self.nodes)
        with trio.fail_after(timeout):
            while True:
                views = [await self.status(n) for n in among]
                leaders = {v["leader"] for v in views}
                if len(leaders) == 1:
                    (leader,) = leaders
                    if leader in among:
                        st = views[among.index(leader)]
                        if st["role"] == "leader":
                            return leader
                await trio.sleep(0.05)

    def logs(self) -> str:
        return "\n".join(
            f"--- {n.id} ---\n{n.log_path.read_text(errors='replace')[-4000:]}"
            for n in self.nodes.values()
        )


@asynccontextmanager
async def open_cluster(
    node_ids: list[str], log_dir: Path, *, init_timeout: float = 10.0
) -> AsyncIterator[MaelstromCluster]:
    """Start and ``init`` one adapter per node id; always kill them on exit."""
    async with trio.open_nursery() as nursery:
        cluster = MaelstromCluster(nursery)
        try:
            for nid in node_ids:
                await cluster.start_node(nid, log_dir)
            for nid in node_ids:
                reply = await cluster.request(
                    nid,
                    {"type": "init", "node_id": nid, "node_ids": node_ids},
                    client="c0",
                    timeout=init_timeout,
                )
                assert reply["type"] == "init_ok", reply
            yield cluster
            assert not cluster.protocol_errors, cluster.protocol_errors
        finally:
            with trio.CancelScope(shield=True):
                for node in cluster.nodes.values():
                    node.proc.kill()
                for node in cluster.nodes.values():
                    with trio.move_on_after(5):
                        await node.proc.wait()
            nursery.cancel_scope.cancel()
