#!/usr/bin/env python3
"""A Jepsen Maelstrom ``lin-kv`` node backed by the sans-IO Raft core.

    maelstrom test -w lin-kv --bin tools/maelstrom_node.py --node-count 3 \\
        --time-limit 20 --rate 50 --concurrency 4n --nemesis partition

Maelstrom runs one process per node and speaks JSON lines on stdin/stdout
(``{"src", "dest", "body"}``). After ``init`` (``node_id``, ``node_ids``) the
node bootstraps a :class:`~trio_election.replica.Replica` with every node id as
an initial voter (in-memory storage: ``lin-kv`` never restarts nodes) and serves:

* ``write {key, value}`` -> ``write_ok``;
* ``cas {key, from, to}`` -> ``cas_ok``, or error 22 (current value differs)
  or 20 (key absent); with ``create_if_not_exists`` an absent key is created;
* ``read {key}`` -> ``read_ok {value}``, or error 20 (key absent).

Design:

* **The cluster logic is** :class:`trio_election.replica.Replica`, the same
  one the server and the simulation run, here around a key-value machine
  (:class:`KVMachine`). Ticks, the Ready cycle, forwarding and retrying
  proposals, applying committed entries and ReadIndex bookkeeping are the
  replica's; this adapter keeps only Maelstrom's JSON lines, the map from
  request ids to client replies, and the error codes.
* **Writes and cas go through the log,** from any node: the node submits a
  JSON command carrying a unique request id (``Replica.submit``; a follower's
  goes to the leader it knows inside Raft's own messages, and is proposed
  again if lost, e.g. with a deposed leader). Every replica applies it to its
  dict, and the node that took the request answers with the result computed
  *at apply time* (``Done.applied``; so a cas is checked against the
  linearized state). With no known leader it answers error 11 at once.
* **Reads use ReadIndex** (Raft thesis §6.4), on any node: the node calls
  ``Replica.read`` (a follower's core forwards it to the leader), and serves
  the read from its own state machine once ``Done.reads`` says it has applied
  up to the confirmed index. Reads never touch the log.
* **Error codes follow Maelstrom's definite/indefinite split.** Code 11
  (temporarily unavailable) is *definite*: the checker takes the operation as
  never having happened. It is used only when that is certain: the request was
  never proposed (no leader known: the replica forgets it at once) and every
  read failure (reads have no effect). A submitted write/cas that gets no
  result within ``REQUEST_TIMEOUT`` is forgotten (no more retries), but a copy
  may already be in the log and commit later, so it gets code 0 (timeout,
  *indefinite*). Answering 11 there would let Maelstrom's linearizability
  checker report false anomalies when the entry commits afterwards.
* Raft messages between nodes travel as ``{"type": "raft", "data":
  base64(encode_message(msg))}`` with no reply.
* Non-standard extra: ``status`` -> ``status_ok {role, leader, term, commit,
  applied}`` for test drivers; Maelstrom never sends it.

Three Trio tasks share one :class:`MaelstromNode`: a stdin reader, a ticker
(``TICK_INTERVAL``, ``election_tick=10``, ``heartbeat_tick=1``) and the Ready
loop; a fourth writes stdout. Handling a Ready never awaits, so nothing can
tick/step/propose between ``ready()`` and ``advance()``. stdout carries only
protocol lines; logs go to stderr (level from ``MAELSTROM_LOG``, default INFO).
The process exits at EOF on stdin.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import math
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from trio_election._errors import ElectionError, InvalidArgument
from trio_election.raft import (
    CodecError,
    Config,
    MemoryStorage,
    Message,
    ProposalDropped,
    RaftError,
    decode_message,
    encode_message,
)
from trio_election.replica import Applied, Done, Replica

TICK_INTERVAL = 0.05
ELECTION_TICK = 10
HEARTBEAT_TICK = 1
REQUEST_TIMEOUT = 1.0

# Maelstrom error codes.
TIMEOUT = 0  # indefinite
NOT_SUPPORTED = 10
TEMPORARILY_UNAVAILABLE = 11  # definite
MALFORMED_REQUEST = 12
KEY_DOES_NOT_EXIST = 20
PRECONDITION_FAILED = 22

log = logging.getLogger("maelstrom_node")

Body = dict[str, Any]
Reply = Callable[[Body], None]

#: The fields of each command besides ``op`` and ``id``.
COMMAND_FIELDS = {"write": ("key", "value"), "cas": ("key", "from", "to")}


def error(code: int, text: str) -> Body:
    return {"type": "error", "code": code, "text": text}


class KVMachine:
    """The replicated state machine: a dict of JSON keys to JSON values.

    A command is a JSON object: ``{"op": "write", "key", "value", "id"}`` or
    ``{"op": "cas", "key", "from", "to", "id"}`` (optionally with
    ``"create_if_not_exists": true``), ``id`` being the request id it was
    proposed under. Its outcome is the client's reply body.
    """

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    @staticmethod
    def _key(key: Any) -> str:
        return json.dumps(key, sort_keys=True)

    @staticmethod
    def encode(cmd: Body) -> bytes:
        return json.dumps(cmd, separators=(",", ":")).encode()

    @staticmethod
    def decode(data: bytes) -> Body:
        """The command in ``data``; raises ``InvalidArgument`` if it is not one."""
        try:
            cmd = json.loads(data)
        except ValueError as exc:
            raise InvalidArgument("data", f"not JSON: {exc}") from None
        if not isinstance(cmd, dict) or not isinstance(cmd.get("id"), str):
            raise InvalidArgument("data", "not a JSON object with a string id")
        fields = COMMAND_FIELDS.get(cmd.get("op"))
        if fields is None:
            raise InvalidArgument("op", f"unknown command {cmd.get('op')!r}")
        missing = [f for f in fields if f not in cmd]
        if missing:
            raise InvalidArgument(missing[0], f"missing from {cmd['op']}")
        return cmd

    def read(self, key: Any) -> Body:
        k = self._key(key)
        if k not in self.data:
            return error(KEY_DOES_NOT_EXIST, f"key {key!r} does not exist")
        return {"type": "read_ok", "value": self.data[k]}

    def request_id(self, data: bytes) -> str:
        try:
            return str(self.decode(data)["id"])
        except InvalidArgument:
            return ""

    def apply(self, data: bytes, index: int, now: float) -> Applied:
        """Apply a committed write/cas command; the outcome is the reply body."""
        try:
            cmd = self.decode(data)
        except InvalidArgument as exc:
            log.error("entry %d applied as a no-op: %s", index, exc)
            return Applied()
        k = self._key(cmd["key"])
        if cmd["op"] == "cas":
            if k not in self.data:
                if not cmd.get("create_if_not_exists"):
                    reply = error(KEY_DOES_NOT_EXIST, f"key {cmd['key']!r} does not exist")
                    return Applied(cmd["id"], reply)
            elif self.data[k] != cmd["from"]:
                reply = error(
                    PRECONDITION_FAILED,
                    f"expected {cmd['from']!r}, current value is {self.data[k]!r}",
                )
                return Applied(cmd["id"], reply)
            self.data[k] = cmd["to"]
            return Applied(cmd["id"], {"type": "cas_ok"})
        self.data[k] = cmd["value"]
        return Applied(cmd["id"], {"type": "write_ok"})

    def dump(self) -> bytes:
        return json.dumps(self.data).encode()

    def load(self, image: bytes, now: float) -> None:
        self.data = json.loads(image)

    def due(self, now: float) -> list[bytes]:
        return []

    def abandoned(self, alive: Callable[[str], bool]) -> list[bytes]:
        return []  # nothing here belongs to a node

    def lead(self, now: float) -> None:
        pass

    def check_forwarded(self, data: bytes) -> None:
        self.decode(data)


@dataclass
class Pending:
    """A request waiting for a result; answered exactly once."""

    reply: Reply
    deadline: float
    key: Any = None  # reads


class MaelstromNode:
    """Maelstrom I/O around one :class:`~trio_election.replica.Replica`."""

    def __init__(self, out: trio.MemorySendChannel[str]) -> None:
        self._out = out
        self._msg_ids = itertools.count(1)
        self._req_ids = itertools.count(1)
        self._nonce = secrets.token_hex(4)  # makes request ids unique across processes
        self.node_id: str | None = None
        self.node_ids: list[str] = []
        self.replica: Replica | None = None
        self.storage = MemoryStorage()
        self.kv = KVMachine()
        self._proposals: dict[str, Pending] = {}  # request id -> request
        self._reads: dict[bytes, Pending] = {}  # read ctx -> request
        self._wake = trio.Event()

    # -- output ------------------------------------------------------------

    def send(self, dest: str, body: Body) -> None:
        body = {**body, "msg_id": next(self._msg_ids)}
        line = json.dumps({"src": self.node_id, "dest": dest, "body": body}, separators=(",", ":"))
        self._out.send_nowait(line + "\n")

    def _client_reply(self, src: str, msg_id: Any) -> Reply:
        def reply(body: Body) -> None:
            self.send(src, {**body, "in_reply_to": msg_id})

        return reply

    def wake(self) -> None:
        self._wake.set()

    # -- input -------------------------------------------------------------

    def handle_line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
            src, body = msg["src"], msg["body"]
            kind = body["type"]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring malformed line %r: %s", line[:200], exc)
            return
        try:
            self.handle(src, kind, body)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("malformed %s from %s: %r", kind, src, exc)
            if "msg_id" in body and kind != "raft":
                self._client_reply(src, body["msg_id"])(error(MALFORMED_REQUEST, str(exc)))
        self.wake()

    def handle(self, src: str, kind: str, body: Body) -> None:
        if kind == "init":
            self._init(src, body)
            return
        if self.replica is None:
            if kind != "raft":
                self._client_reply(src, body.get("msg_id"))(
                    error(TEMPORARILY_UNAVAILABLE, "node not initialised")
                )
            return
        if kind == "raft":
            self._step(src, body["data"])
        elif kind == "read":
            self._start_read(body["key"], self._client_reply(src, body["msg_id"]))
        elif kind in COMMAND_FIELDS:
            self._start_command(kind, body, self._client_reply(src, body["msg_id"]))
        elif kind == "status":
            st = self.replica.raw.status()
            self._client_reply(src, body.get("msg_id"))(
                {
                    "type": "status_ok",
                    "role": self.replica.role.name.lower(),
                    "leader": self.replica.leader,
                    "term": st.term,
                    "commit": st.commit,
                    "applied": self.replica.applied,
                }
            )
        elif "msg_id" in body:
            self._client_reply(src, body["msg_id"])(
                error(NOT_SUPPORTED, f"unsupported message type {kind!r}")
            )

    def _init(self, src: str, body: Body) -> None:
        if self.replica is not None:
            log.warning("duplicate init ignored")
        else:
            node_id = str(body["node_id"])
            node_ids = [str(n) for n in body["node_ids"]]
            config = Config(id=node_id, election_tick=ELECTION_TICK, heartbeat_tick=HEARTBEAT_TICK)
            replica = Replica(self.storage, self.kv, trio.current_time(), config)
            # Peer addresses are unused: Maelstrom routes by node id.
            replica.bootstrap({nid: nid for nid in node_ids})
            self.node_id, self.node_ids, self.replica = node_id, node_ids, replica
            log.info("%s initialised, cluster %s", self.node_id, self.node_ids)
        self._client_reply(src, body.get("msg_id"))({"type": "init_ok"})

    def _step(self, src: str, data: str) -> None:
        assert self.replica is not None
        try:
            msg = decode_message(base64.b64decode(data, validate=True))
        except (CodecError, ValueError) as exc:
            log.warning("undecodable raft message from %s: %s", src, exc)
            return
        try:
            self.replica.step(msg)
        except (RaftError, ElectionError) as exc:  # a refused forwarded proposal, too
            log.warning("step %s from %s: %s", msg.type, src, exc)

    def _start_read(self, key: Any, reply: Reply) -> None:
        assert self.replica is not None
        ctx = f"{self._nonce}:{next(self._req_ids)}".encode()
        try:
            self.replica.read(ctx)
        except ProposalDropped as exc:
            reply(error(TEMPORARILY_UNAVAILABLE, f"no leader: {exc}"))
            return
        self._reads[ctx] = Pending(reply, trio.current_time() + REQUEST_TIMEOUT, key)

    def _start_command(self, kind: str, body: Body, reply: Reply) -> None:
        assert self.replica is not None
        cmd: Body = {"op": kind, **{f: body[f] for f in COMMAND_FIELDS[kind]}}
        if kind == "cas" and body.get("create_if_not_exists"):
            cmd["create_if_not_exists"] = True
        cmd_id = f"{self.node_id}:{self._nonce}:{next(self._req_ids)}"
        cmd["id"] = cmd_id
        try:
            self.replica.submit(KVMachine.encode(cmd), cmd_id)
        except ProposalDropped as exc:
            self.replica.forget(cmd_id)  # never sent, and now never will be: definite
            reply(error(TEMPORARILY_UNAVAILABLE, f"no leader: {exc}"))
            return
        self._proposals[cmd_id] = Pending(reply, trio.current_time() + REQUEST_TIMEOUT)

    # -- time --------------------------------------------------------------

    def tick(self) -> None:
        if self.replica is None:
            return
        now = trio.current_time()
        self.replica.tick(now)
        self._expire(now)
        self.wake()

    def _expire(self, now: float) -> None:
        assert self.replica is not None
        for cmd_id in [i for i, p in self._proposals.items() if p.deadline <= now]:
            self.replica.forget(cmd_id)
            self._proposals.pop(cmd_id).reply(
                error(TIMEOUT, "timed out waiting for commit; the operation may or may not apply")
            )
        for ctx in [c for c, p in self._reads.items() if p.deadline <= now]:
            self.replica.forget_read(ctx)
            # A read has no effect: definite.
            self._reads.pop(ctx).reply(error(TEMPORARILY_UNAVAILABLE, "read timed out"))

    # -- Ready -------------------------------------------------------------

    def process_ready(self) -> None:
        """Handle every pending Ready: send, persist, send, apply."""
        replica = self.replica
        if replica is None:
            return
        now = trio.current_time()
        while replica.has_ready():
            work = replica.ready(now)
            if work.leader_changed:
                log.info("%s: %s, leader %s", self.node_id, replica.role, replica.leader)
            self._send_raft(work.messages)
            # persist ("durable" = in memory: lin-kv never restarts nodes)
            if work.snapshot is not None:
                self.storage.apply_snapshot(work.snapshot)
            if work.entries:
                self.storage.append(work.entries)
            if work.hard_state is not None:
                self.storage.set_hard_state(work.hard_state)
            self._send_raft(work.messages_after_persist)
            self._answer(replica.advance(work, now))

    def _send_raft(self, messages: tuple[Message, ...]) -> None:
        for m in messages:
            data = base64.b64encode(encode_message(m)).decode("ascii")
            self.send(m.to, {"type": "raft", "data": data})

    def _answer(self, done: Done) -> None:
        for a in done.applied:
            p = self._proposals.pop(a.request_id, None)
            if p is None:
                continue  # another node's request, or one that timed out
            if isinstance(a.outcome, dict):
                p.reply(a.outcome)
            else:  # the machine refused it: a no-op everywhere, so definite
                p.reply(error(MALFORMED_REQUEST, f"applied as a no-op: {a.error}"))
        for ctx in done.reads:
            p = self._reads.pop(ctx, None)
            if p is not None:
                p.reply(self.kv.read(p.key))

    # -- tasks -------------------------------------------------------------

    async def ready_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            self.process_ready()

    async def ticker(self) -> None:
        deadline = trio.current_time()
        while True:
            deadline += TICK_INTERVAL
            await trio.sleep_until(deadline)
            self.tick()

    async def reader(self, stream: trio.abc.ReceiveStream) -> None:
        buf = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                if buf.strip():
                    self.handle_line(buf)
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    self.handle_line(line)


async def _writer(lines: trio.MemoryReceiveChannel[str], stream: trio.abc.SendStream) -> None:
    async with lines:
        async for line in lines:
            batch = [line]
            while True:
                try:
                    batch.append(lines.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await stream.send_all("".join(batch).encode())


async def main() -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("MAELSTROM_LOG", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(message)s",
    )
    send, receive = trio.open_memory_channel[str](math.inf)
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    node = MaelstromNode(send)
    async with trio.open_nursery() as outer:
        outer.start_soon(_writer, receive, stdout)
        async with trio.open_nursery() as inner:
            inner.start_soon(node.ticker)
            inner.start_soon(node.ready_loop)
            await node.reader(stdin)
            log.info("stdin closed, exiting")
            node.process_ready()
            inner.cancel_scope.cancel()
        await send.aclose()  # the writer drains what is queued, then returns
    await stdin.aclose()
    await stdout.aclose()


if __name__ == "__main__":
    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass
