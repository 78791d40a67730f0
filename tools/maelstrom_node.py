#!/usr/bin/env python3
"""A Jepsen Maelstrom ``lin-kv`` node backed by the sans-IO Raft core.

    maelstrom test -w lin-kv --bin tools/maelstrom_node.py --node-count 3 \\
        --time-limit 20 --rate 50 --concurrency 4n --nemesis partition

Maelstrom runs one process per node and speaks JSON lines on stdin/stdout
(``{"src", "dest", "body"}``). After ``init`` (``node_id``, ``node_ids``) the
node bootstraps a :class:`~trio_election.raft.RawNode` with every node id as an
initial voter (in-memory storage: ``lin-kv`` never restarts nodes) and serves:

* ``write {key, value}`` -> ``write_ok``;
* ``cas {key, from, to}`` -> ``cas_ok``, or error 22 (current value differs)
  or 20 (key absent); with ``create_if_not_exists`` an absent key is created;
* ``read {key}`` -> ``read_ok {value}``, or error 20 (key absent).

Design:

* **Writes and cas go through the log.** The leader proposes a JSON command
  carrying a unique request id; every replica applies it to its dict, and the
  node that proposed it answers with the result computed *at apply time*
  (so a cas is checked against the linearized state).
* **Reads use ReadIndex** (Raft thesis §6.4), on any node: the node calls
  ``read_index`` (a follower's core forwards it to the leader), and serves the
  read from its own state machine once it has applied up to the returned
  index. Reads never touch the log.
* **Followers forward writes/cas** to the leader they know of, as a
  node-to-node ``fwd`` message, and relay the leader's ``fwd_reply`` to the
  client. With no known leader they answer error 11 at once; a leader never
  re-forwards (a forwarded request that reaches a non-leader gets 11).
* **Error codes follow Maelstrom's definite/indefinite split.** Code 11
  (temporarily unavailable) is *definite*: the checker takes the operation as
  never having happened. It is used only when that is certain: the request was
  never proposed (no leader, not the leader), every read failure (reads have
  no effect), or a proposal whose log index was taken by another entry at
  apply time. A proposed (or forwarded) write/cas that gets no result within
  ``REQUEST_TIMEOUT`` may still commit later, so it gets code 0 (timeout,
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

from trio_election.raft import (
    CodecError,
    Config,
    EntryType,
    MemoryStorage,
    ProposalDropped,
    RaftError,
    RawNode,
    Ready,
    Role,
    decode_conf_change,
    decode_message,
    encode_message,
)

TICK_INTERVAL = 0.05
ELECTION_TICK = 10
HEARTBEAT_TICK = 1
REQUEST_TIMEOUT = 1.0
# A follower waits a little longer than the leader's own timeout, so that the
# leader's answer (possibly a timeout) usually reaches it first.
FORWARD_TIMEOUT = 1.2

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


def error(code: int, text: str) -> Body:
    return {"type": "error", "code": code, "text": text}


class KVStore:
    """The replicated state machine: a dict of JSON keys to JSON values."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    @staticmethod
    def _key(key: Any) -> str:
        return json.dumps(key, sort_keys=True)

    def read(self, key: Any) -> Body:
        k = self._key(key)
        if k not in self.data:
            return error(KEY_DOES_NOT_EXIST, f"key {key!r} does not exist")
        return {"type": "read_ok", "value": self.data[k]}

    def apply(self, cmd: Body) -> Body:
        """Apply a committed write/cas command; return the client's reply body."""
        k = self._key(cmd["key"])
        if cmd["op"] == "write":
            self.data[k] = cmd["value"]
            return {"type": "write_ok"}
        if cmd["op"] == "cas":
            if k not in self.data:
                if not cmd.get("create_if_not_exists"):
                    return error(KEY_DOES_NOT_EXIST, f"key {cmd['key']!r} does not exist")
            elif self.data[k] != cmd["from"]:
                return error(
                    PRECONDITION_FAILED,
                    f"expected {cmd['from']!r}, current value is {self.data[k]!r}",
                )
            self.data[k] = cmd["to"]
            return {"type": "cas_ok"}
        return error(NOT_SUPPORTED, f"unknown command {cmd['op']!r}")


@dataclass
class Pending:
    """A request waiting for a result; answered exactly once."""

    reply: Reply
    deadline: float
    timeout_code: int
    timeout_text: str
    key: Any = None  # reads
    read_index: int | None = None  # reads, once the ReadState arrived
    log_index: int | None = None  # proposals


class MaelstromNode:
    """Protocol handling and the Raft Ready loop of one node."""

    def __init__(self, out: trio.MemorySendChannel[str]) -> None:
        self._out = out
        self._msg_ids = itertools.count(1)
        self._req_ids = itertools.count(1)
        self._nonce = secrets.token_hex(4)  # makes request ids unique across processes
        self.node_id: str | None = None
        self.node_ids: list[str] = []
        self.raft: RawNode | None = None
        self.storage = MemoryStorage()
        self.kv = KVStore()
        self.applied = 0
        self._proposals: dict[str, Pending] = {}  # command id -> request
        self._proposed_at: dict[int, str] = {}  # log index -> command id
        self._reads: dict[bytes, Pending] = {}  # read_index ctx -> request
        self._forwards: dict[int, Pending] = {}  # fwd_id -> client request
        self._wake = trio.Event()
        self._last_soft: tuple[Role, str | None] | None = None

    # -- output ------------------------------------------------------------

    def send(self, dest: str, body: Body) -> None:
        body = {**body, "msg_id": next(self._msg_ids)}
        line = json.dumps({"src": self.node_id, "dest": dest, "body": body}, separators=(",", ":"))
        self._out.send_nowait(line + "\n")

    def _client_reply(self, src: str, msg_id: Any) -> Reply:
        def reply(body: Body) -> None:
            self.send(src, {**body, "in_reply_to": msg_id})

        return reply

    def _forward_reply(self, src: str, fwd_id: int) -> Reply:
        def reply(body: Body) -> None:
            self.send(src, {"type": "fwd_reply", "fwd_id": fwd_id, "reply": body})

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
            if "msg_id" in body and kind not in ("raft", "fwd", "fwd_reply"):
                self._client_reply(src, body["msg_id"])(error(MALFORMED_REQUEST, str(exc)))
        self.wake()

    def handle(self, src: str, kind: str, body: Body) -> None:
        if kind == "init":
            self._init(src, body)
            return
        if self.raft is None:
            if kind not in ("raft", "fwd", "fwd_reply"):
                self._client_reply(src, body.get("msg_id"))(
                    error(TEMPORARILY_UNAVAILABLE, "node not initialised")
                )
            return
        if kind == "raft":
            self._step(src, body["data"])
        elif kind in ("read", "write", "cas"):
            self._client_request(src, kind, body)
        elif kind == "fwd":
            reply = self._forward_reply(src, body["fwd_id"])
            req = body["req"]
            self._start_command(req["type"], req, reply, may_forward=False)
        elif kind == "fwd_reply":
            pending = self._forwards.pop(body["fwd_id"], None)
            if pending is not None:
                pending.reply(body["reply"])
        elif kind == "status":
            st = self.raft.status()
            self._client_reply(src, body.get("msg_id"))(
                {
                    "type": "status_ok",
                    "role": st.role.name.lower(),
                    "leader": st.leader,
                    "term": st.term,
                    "commit": st.commit,
                    "applied": self.applied,
                }
            )
        elif "msg_id" in body:
            self._client_reply(src, body["msg_id"])(
                error(NOT_SUPPORTED, f"unsupported message type {kind!r}")
            )

    def _init(self, src: str, body: Body) -> None:
        if self.raft is not None:
            log.warning("duplicate init ignored")
        else:
            self.node_id = str(body["node_id"])
            self.node_ids = [str(n) for n in body["node_ids"]]
            config = Config(
                id=self.node_id,
                election_tick=ELECTION_TICK,
                heartbeat_tick=HEARTBEAT_TICK,
            )
            config.validate()
            self.raft = RawNode(config, self.storage)
            self.raft.bootstrap(self.node_ids)
            log.info("%s initialised, cluster %s", self.node_id, self.node_ids)
        self._client_reply(src, body.get("msg_id"))({"type": "init_ok"})

    def _step(self, src: str, data: str) -> None:
        assert self.raft is not None
        try:
            msg = decode_message(base64.b64decode(data, validate=True))
        except (CodecError, ValueError) as exc:
            log.warning("undecodable raft message from %s: %s", src, exc)
            return
        try:
            self.raft.step(msg)
        except RaftError as exc:
            log.warning("step %s from %s: %s", msg.type, src, exc)

    def _client_request(self, src: str, kind: str, body: Body) -> None:
        reply = self._client_reply(src, body["msg_id"])
        if kind == "read":
            self._start_read(body["key"], reply)
        else:
            self._start_command(kind, body, reply, may_forward=True)

    def _start_read(self, key: Any, reply: Reply) -> None:
        assert self.raft is not None
        ctx = f"{self._nonce}:{next(self._req_ids)}".encode()
        try:
            self.raft.read_index(ctx)
        except ProposalDropped as exc:
            reply(error(TEMPORARILY_UNAVAILABLE, f"no leader: {exc}"))
            return
        self._reads[ctx] = Pending(
            reply=reply,
            deadline=trio.current_time() + REQUEST_TIMEOUT,
            timeout_code=TEMPORARILY_UNAVAILABLE,  # a read has no effect: definite
            timeout_text="read timed out",
            key=key,
        )

    def _start_command(self, kind: str, body: Body, reply: Reply, *, may_forward: bool) -> None:
        assert self.raft is not None
        if kind == "write":
            cmd: Body = {"op": "write", "key": body["key"], "value": body["value"]}
        elif kind == "cas":
            cmd = {"op": "cas", "key": body["key"], "from": body["from"], "to": body["to"]}
            if body.get("create_if_not_exists"):
                cmd["create_if_not_exists"] = True
        else:
            reply(error(NOT_SUPPORTED, f"cannot forward {kind!r}"))
            return
        cmd_id = f"{self.node_id}:{self._nonce}:{next(self._req_ids)}"
        cmd["id"] = cmd_id
        try:
            self.raft.propose(json.dumps(cmd, separators=(",", ":")).encode())
        except ProposalDropped as exc:
            leader = self.raft.status().leader
            if may_forward and leader is not None and leader != self.node_id:
                self._forward(leader, kind, body, reply)
            else:
                reply(error(TEMPORARILY_UNAVAILABLE, f"not the leader: {exc}"))
            return
        # propose() appends at last_index + 1: remember where, to fail the
        # request definitely if a different entry gets applied there.
        index = self.raft.status().last_index
        self._proposals[cmd_id] = Pending(
            reply=reply,
            deadline=trio.current_time() + REQUEST_TIMEOUT,
            timeout_code=TIMEOUT,
            timeout_text="timed out waiting for commit; the operation may or may not apply",
            log_index=index,
        )
        self._proposed_at[index] = cmd_id

    def _forward(self, leader: str, kind: str, body: Body, reply: Reply) -> None:
        fwd_id = next(self._req_ids)
        req = {k: v for k, v in body.items() if k not in ("msg_id", "in_reply_to")}
        req["type"] = kind
        self._forwards[fwd_id] = Pending(
            reply=reply,
            deadline=trio.current_time() + FORWARD_TIMEOUT,
            timeout_code=TIMEOUT,
            timeout_text=f"no answer from leader {leader}; the operation may or may not apply",
        )
        self.send(leader, {"type": "fwd", "fwd_id": fwd_id, "req": req})

    # -- time --------------------------------------------------------------

    def tick(self) -> None:
        if self.raft is None:
            return
        self.raft.tick()
        self._expire(trio.current_time())
        self.wake()

    def _expire(self, now: float) -> None:
        for table in (self._proposals, self._reads, self._forwards):
            expired = [k for k, p in table.items() if p.deadline <= now]
            for k in expired:
                p = table.pop(k)  # type: ignore[attr-defined]
                if p.log_index is not None:
                    self._proposed_at.pop(p.log_index, None)
                p.reply(error(p.timeout_code, p.timeout_text))

    # -- Ready -------------------------------------------------------------

    def process_ready(self) -> None:
        """Handle every pending Ready: persist, send, apply, advance."""
        raft = self.raft
        if raft is None:
            return
        while raft.has_ready():
            rd = raft.ready()
            if rd.soft_state is not None:
                soft = (rd.soft_state.role, rd.soft_state.leader)
                if soft != self._last_soft:
                    log.info(
                        "%s: %s, leader %s", self.node_id, rd.soft_state.role, rd.soft_state.leader
                    )
                    self._last_soft = soft
            # 1. persist ("durable" = in memory: lin-kv never restarts nodes)
            if rd.snapshot is not None:
                self.storage.apply_snapshot(rd.snapshot)
            if rd.entries:
                self.storage.append(rd.entries)
            if rd.hard_state is not None:
                self.storage.set_hard_state(rd.hard_state)
            # 2. send
            for m in rd.messages:
                data = base64.b64encode(encode_message(m)).decode("ascii")
                self.send(m.to, {"type": "raft", "data": data})
            # 3. apply
            self._apply(rd)
            # 4. acknowledge
            raft.advance(rd)

    def _apply(self, rd: Ready) -> None:
        assert self.raft is not None
        if rd.snapshot is not None:
            # Never produced here (no compaction), but handle it for completeness.
            self.kv.data = json.loads(rd.snapshot.data) if rd.snapshot.data else {}
            self.applied = rd.snapshot.metadata.index
        for e in rd.committed_entries:
            self.applied = e.index
            if e.type == EntryType.CONF_CHANGE:
                self.raft.apply_conf_change(decode_conf_change(e.data))
                continue
            cmd_id = None
            result = None
            if e.data:
                cmd = json.loads(e.data)
                cmd_id = cmd["id"]
                result = self.kv.apply(cmd)
            proposed = self._proposed_at.pop(e.index, None)
            if proposed is not None and proposed != cmd_id:
                # Our entry at this index was overwritten by another leader's:
                # it can no longer commit anywhere, so the failure is definite.
                p = self._proposals.pop(proposed, None)
                if p is not None:
                    p.reply(error(TEMPORARILY_UNAVAILABLE, "leadership changed; not applied"))
            if cmd_id is not None and result is not None:
                p = self._proposals.pop(cmd_id, None)
                if p is not None:
                    p.reply(result)
        for rs in rd.read_states:
            p = self._reads.get(rs.ctx)
            if p is not None:
                p.read_index = rs.index
        self._serve_reads()

    def _serve_reads(self) -> None:
        ready = [
            ctx
            for ctx, p in self._reads.items()
            if p.read_index is not None and p.read_index <= self.applied
        ]
        for ctx in ready:
            p = self._reads.pop(ctx)
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
