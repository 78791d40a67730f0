"""tools/maelstrom_node.py as a Maelstrom lin-kv node, without Maelstrom.

Three adapter processes talk through ``maelstrom_driver`` (a stand-in for
Maelstrom's network that routes JSON lines by ``dest`` and can partition).
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import subprocess
import sys
import types
from collections.abc import Callable

import pytest
import trio
from maelstrom_driver import ADAPTER, MaelstromCluster, open_cluster

from trio_election._errors import InvalidArgument

NODES = ["n1", "n2", "n3"]
TIMEOUT = 0  # Maelstrom: indefinite
UNAVAILABLE = 11  # Maelstrom: definite
ABSENT = 20
MISMATCH = 22


@pytest.fixture
async def cluster(tmp_path):
    async with open_cluster(NODES, tmp_path) as c:
        yield c


async def op(c: MaelstromCluster, node: str, body: dict, client: str = "c1") -> dict:
    return await c.request(node, body, client=client)


async def kind(c: MaelstromCluster, node: str, body: dict) -> str:
    return (await op(c, node, body))["type"]


def followers_of(leader: str) -> list[str]:
    return [n for n in NODES if n != leader]


async def test_kv_semantics_on_the_leader(cluster: MaelstromCluster) -> None:
    leader = await cluster.wait_for_leader()
    r = await op(cluster, leader, {"type": "read", "key": 1})
    assert (r["type"], r["code"]) == ("error", ABSENT) and r["text"]
    assert await kind(cluster, leader, {"type": "write", "key": 1, "value": 10}) == "write_ok"
    r = await op(cluster, leader, {"type": "read", "key": 1})
    assert r == {
        "type": "read_ok",
        "value": 10,
        "in_reply_to": r["in_reply_to"],
        "msg_id": r["msg_id"],
    }
    r = await op(cluster, leader, {"type": "cas", "key": 1, "from": 10, "to": 11})
    assert r["type"] == "cas_ok"
    r = await op(cluster, leader, {"type": "cas", "key": 1, "from": 10, "to": 12})
    assert (r["type"], r["code"]) == ("error", MISMATCH) and r["text"]
    r = await op(cluster, leader, {"type": "cas", "key": 2, "from": 0, "to": 1})
    assert (r["type"], r["code"]) == ("error", ABSENT)
    r = await op(
        cluster, leader, {"type": "cas", "key": 2, "from": 0, "to": 1, "create_if_not_exists": True}
    )
    assert r["type"] == "cas_ok"
    assert (await op(cluster, leader, {"type": "read", "key": 1}))["value"] == 11
    assert (await op(cluster, leader, {"type": "read", "key": 2}))["value"] == 1
    # Keys are JSON values: "1" and 1 are different keys.
    r = await op(cluster, leader, {"type": "read", "key": "1"})
    assert r["code"] == ABSENT
    r = await op(cluster, leader, {"type": "frobnicate"})
    assert (r["type"], r["code"]) == ("error", 10)


async def test_followers_forward_writes_and_serve_linearizable_reads(
    cluster: MaelstromCluster,
) -> None:
    leader = await cluster.wait_for_leader()
    f1, f2 = followers_of(leader)
    assert await kind(cluster, f1, {"type": "write", "key": "k", "value": "a"}) == "write_ok"
    # The write was acknowledged, so a read anywhere (ReadIndex) must see it.
    for node in NODES:
        r = await op(cluster, node, {"type": "read", "key": "k"}, client="c2")
        assert r["type"] == "read_ok" and r["value"] == "a", (node, r)
    r = await op(cluster, f2, {"type": "cas", "key": "k", "from": "b", "to": "c"})
    assert r["code"] == MISMATCH
    r = await op(cluster, f2, {"type": "cas", "key": "missing", "from": "b", "to": "c"})
    assert r["code"] == ABSENT
    assert await kind(cluster, f2, {"type": "cas", "key": "k", "from": "a", "to": "c"}) == "cas_ok"
    assert (await op(cluster, f1, {"type": "read", "key": "k"}))["value"] == "c"
    assert cluster.node_messages > 0


async def test_partitioned_leader_loses_writes_and_majority_moves_on(
    cluster: MaelstromCluster,
) -> None:
    old = await cluster.wait_for_leader()
    rest = followers_of(old)
    assert (await op(cluster, old, {"type": "write", "key": "x", "value": 1}))["type"] == "write_ok"

    cluster.partition([old], rest)
    # The isolated leader accepts the proposal but can never commit it.
    lost = await op(cluster, old, {"type": "write", "key": "x", "value": "lost"})
    assert lost["type"] == "error" and lost["code"] in (TIMEOUT, UNAVAILABLE), lost

    new = await cluster.wait_for_leader(rest)
    assert new != old
    assert (await op(cluster, new, {"type": "write", "key": "x", "value": 2}))["type"] == "write_ok"
    other = next(n for n in rest if n != new)
    assert (await op(cluster, other, {"type": "read", "key": "x"}))["value"] == 2

    # The minority side knows it has no leader (check_quorum): definite 11,
    # for writes (never proposed) and reads alike, once it stepped down.
    with trio.fail_after(5):
        while True:
            r = await op(cluster, old, {"type": "write", "key": "x", "value": "never"})
            if r["type"] == "error" and r["code"] == UNAVAILABLE:
                break
            assert r["type"] == "error" and r["code"] == TIMEOUT, r
    r = await op(cluster, old, {"type": "read", "key": "x"})
    assert (r["type"], r["code"]) == ("error", UNAVAILABLE)

    cluster.heal()
    assert await cluster.wait_for_leader() == new
    # The old leader's uncommitted entry was discarded: everyone reads 2.
    for node in NODES:
        r = await op(cluster, node, {"type": "read", "key": "x"})
        assert r["type"] == "read_ok" and r["value"] == 2, (node, r)
    assert cluster.dropped > 0


async def test_concurrent_clients_single_register_histories(cluster: MaelstromCluster) -> None:
    """Clients hammer random nodes; each key is driven sequentially by one client.

    For every key the model tracks the set of values the register may hold:
    an acknowledged write/cas pins it, a definite failure changes nothing, an
    indefinite one (timeout) adds a possibility. Every read and cas outcome
    must be consistent with that set, and the final reads on every node too.
    """
    await cluster.wait_for_leader()
    rng = random.Random(7)
    keys = list(range(6))
    possible: dict[int, set[object]] = {}  # absent key = {None}
    stats = {"ok": 0, "fail": 0}

    async def client(key: int, name: str) -> None:
        states: set[object] = {None}
        maybe: set[object] = set()  # values of indefinite ops: may land any time
        crng = random.Random(rng.random())
        for i in range(20):
            node = crng.choice(NODES)
            kind = crng.choice(["read", "write", "cas", "cas"])
            if kind == "read":
                r = await op(cluster, node, {"type": "read", "key": key}, client=name)
                if r["type"] == "read_ok":
                    assert r["value"] in states | maybe, (key, r, states)
                    states = {r["value"]}
                elif r["code"] == ABSENT:
                    assert None in states | maybe, (key, r, states)
                    states = {None}
                else:
                    assert r["code"] == UNAVAILABLE, r
            elif kind == "write":
                value = f"{name}-{i}"
                r = await op(cluster, node, {"type": "write", "key": key, "value": value}, name)
                if r["type"] == "write_ok":
                    states = {value}
                elif r["code"] == TIMEOUT:
                    maybe.add(value)
                else:
                    assert r["code"] == UNAVAILABLE, r
            else:
                frm = crng.choice(sorted(map(str, states | maybe)) + ["nope"])
                if frm == "None":
                    frm = "nope"
                to = f"{name}-{i}"
                r = await op(
                    cluster, node, {"type": "cas", "key": key, "from": frm, "to": to}, name
                )
                if r["type"] == "cas_ok":
                    assert frm in states | maybe, (key, frm, states)
                    states = {to}
                elif r["code"] == MISMATCH:
                    assert (states | maybe) - {frm, None}, (key, frm, states)
                    states -= {frm, None}
                elif r["code"] == ABSENT:
                    assert None in states | maybe, (key, r, states)
                    states = {None}
                elif r["code"] == TIMEOUT:
                    maybe.add(to)
                else:
                    assert r["code"] == UNAVAILABLE, r
            stats["ok" if r["type"] != "error" or r["code"] in (ABSENT, MISMATCH) else "fail"] += 1
        possible[key] = states | maybe

    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(client, key, f"c{key + 1}")
    assert stats["ok"] >= 0.9 * len(keys) * 20, stats  # a healthy cluster answers

    for key in keys:
        for node in NODES:
            r = await op(cluster, node, {"type": "read", "key": key}, client="final")
            value = r.get("value") if r["type"] == "read_ok" else None
            assert r["type"] == "read_ok" or r["code"] == ABSENT, r
            assert value in possible[key], (key, node, value, possible[key])


async def test_uninitialised_node_and_eof(tmp_path) -> None:
    """Before init requests get 11; EOF on stdin makes the process exit 0."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(ADAPTER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdin.send_all(
            b'{"src":"c1","dest":"n1","body":{"type":"read","key":1,"msg_id":5}}\n'
        )
        await proc.stdin.aclose()
        out = b""
        with trio.fail_after(10):
            async for chunk in proc.stdout:
                out += chunk
            assert await proc.wait() == 0
        (line,) = out.decode().splitlines()
        body = json.loads(line)["body"]
        assert (body["type"], body["code"], body["in_reply_to"]) == ("error", UNAVAILABLE, 5)
    finally:
        proc.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await proc.wait()


def load_adapter() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("maelstrom_node", ADAPTER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_kv_machine() -> None:
    kv = load_adapter().KVMachine()
    cmd = {"op": "cas", "key": [1], "from": 0, "to": 1, "create_if_not_exists": True, "id": "r1"}
    kv.check_forwarded(json.dumps(cmd).encode())
    assert kv.request_id(json.dumps(cmd).encode()) == "r1"
    applied = kv.apply(json.dumps(cmd).encode(), 1, 0.0)
    assert (applied.request_id, applied.outcome) == ("r1", {"type": "cas_ok"})
    for bad in (b"nope", b"[]", b'{"op": "write", "key": 1, "id": "r2"}', b'{"op": "x", "id": ""}'):
        with pytest.raises(InvalidArgument):
            kv.check_forwarded(bad)
        assert kv.request_id(bad) == ""
        assert kv.apply(bad, 2, 0.0).request_id == ""  # a logged no-op, never a crash
    image = kv.dump()
    other = load_adapter().KVMachine()
    other.load(image, 0.0)
    assert other.read([1]) == {"type": "read_ok", "value": 1}
    assert kv.due(0.0) == []


class InProcessNet:
    """Adapter nodes in this process, stepped by hand: time stands still."""

    def __init__(self, node_ids: list[str]) -> None:
        adapter = load_adapter()
        self.nodes = {}
        self.outs = {}
        for nid in node_ids:
            send, receive = trio.open_memory_channel[str](math.inf)
            self.nodes[nid] = adapter.MaelstromNode(send)
            self.outs[nid] = receive
        self.blocked: set[tuple[str, str]] = set()
        self.replies: list[dict] = []
        for nid in node_ids:
            self.request(nid, {"type": "init", "node_id": nid, "node_ids": node_ids})

    def request(self, dest: str, body: dict) -> None:
        self.nodes[dest].handle_line(json.dumps({"src": "c1", "dest": dest, "body": body}).encode())
        self.deliver()

    def deliver(self) -> None:
        moved = True
        while moved:
            moved = False
            for nid, node in self.nodes.items():
                node.process_ready()
                while True:
                    try:
                        line = self.outs[nid].receive_nowait()
                    except trio.WouldBlock:
                        break
                    moved = True
                    msg = json.loads(line)
                    if msg["dest"] not in self.nodes:
                        self.replies.append(msg["body"])
                    elif (nid, msg["dest"]) not in self.blocked:
                        self.nodes[msg["dest"]].handle_line(line.encode())

    def tick_until(self, done: Callable[[], bool]) -> None:
        for _ in range(500):
            if done():
                return
            for node in self.nodes.values():
                node.tick()
            self.deliver()
        raise AssertionError("condition never reached")

    def leaders(self) -> set[str]:
        return {n for n, node in self.nodes.items() if node.replica.role.name == "LEADER"}


async def test_a_write_lost_with_its_leader_is_proposed_again(mock_clock) -> None:
    """Time stands still, so no request times out: the retry is the replica's."""
    net = InProcessNet(NODES)
    net.tick_until(lambda: len(net.leaders()) == 1)
    (old,) = net.leaders()
    rest = followers_of(old)
    net.blocked = {(a, b) for a in NODES for b in NODES if (a == old) != (b == old)}
    net.request(old, {"type": "write", "key": "x", "value": "retried", "msg_id": 1})
    net.tick_until(lambda: bool(net.leaders() & set(rest)) and old not in net.leaders())
    # The deposed leader knows no leader: definite 11, and it is never proposed.
    net.request(old, {"type": "write", "key": "x", "value": "never", "msg_id": 2})
    reply = net.replies[-1]
    assert (reply["in_reply_to"], reply["code"]) == (2, UNAVAILABLE), reply
    net.blocked = set()
    net.tick_until(lambda: any(r.get("in_reply_to") == 1 for r in net.replies))
    (reply,) = [r for r in net.replies if r.get("in_reply_to") == 1]
    assert reply["type"] == "write_ok", reply
    net.tick_until(lambda: len({n.replica.applied for n in net.nodes.values()}) == 1)
    for msg_id, node in enumerate(NODES, 3):
        net.request(node, {"type": "read", "key": "x", "msg_id": msg_id})
        assert net.replies[-1]["value"] == "retried", (node, net.replies[-1])
