"""Interpreter for the election scenario scripts in ``testdata/*.txt``.

The election layer over Raft, told as a story. The file format and the
``pytest --rewrite`` mechanism are those of the Raft scenarios
(``tests/raft/_scenario.py``, whose parser and renderer this reuses). A file is
a list of blocks separated by blank lines::

    # comments are kept
    command arg1 key=value
    ----
    expected output

Every node is the :class:`~trio_election.replica.Replica` the server runs, with
the real :class:`~trio_election.replica.Elections` machine, on the simulated
network and disks of :class:`trio_election.testing.Cluster`. Virtual time moves
only when a command says so: a tick is 100 ms, and ``[1.2s]`` stamps each line
that something happened at. The Raft election timeout is 10 to 20 ticks,
heartbeats go every tick, with PreVote and CheckQuorum. Node numbers in
commands (``1``) name nodes ``n1``; ``holder=`` is the client's node_id in the
election (``c1``).

Requests are what ``ClusterNode.execute`` does: the node submits the command
under a request id (``n2/1``) to its replica, which appends it (the Raft
leader) or forwards it to the leader it knows in a Raft PROP message (a
follower); the leader's replica checks a forwarded command again before it
appends it. The replica proposes it again every 2 election timeouts (20 ticks)
and at once when the leader changes, until an entry with that id is applied
(a later copy is skipped). The requesting node answers its client once IT
applied the entry; after 5 s (the server's ``request_timeout_s``) it gives up
(``Replica.forget``, UNAVAILABLE); a crash of the node loses the request.

Commands:
    cluster N [seed=S]     bootstrap n1..nN
    campaign I             node I campaigns (stabilize to finish the election)
    tick I [N]             N ticks of time pass; only node I's ticker fires;
                           nothing is delivered
    tick-all [N]           N ticks of time; every live node ticks; nothing is
                           delivered
    run N                  N ticks with a working network: each tick every
                           live node ticks, then the cluster stabilizes
    stabilize              handle Readies and deliver messages until quiet
                           (no time passes)
    process-ready I        handle the Readies of node I only
    deliver A->B           deliver the Raft messages in flight from A to B
    deliver-forwards       deliver only the forwarded proposals in flight
    drop-forwards          lose the forwarded proposals in flight
    partition 1,2 3        split the network (unlisted nodes: one more group)
    isolate I | heal | crash I | restart I
    acquire I election=E holder=H ttl=MS [value=V]
    renew I election=E holder=H [token=T]
    release I election=E holder=H [token=T]
                           a client's request, sent to node I
    holders                each node's view: role, applied index, and each
                           election's holder, token, TTL and local deadline
    requests               every request and what became of it
    raft-state             each node's role, term, leader, commit, applied
    expect-holder E H [token=T] [above=T] [on=1,2]
    expect-none E [on=1,2]
    expect-leader I        checks (on every live node by default); they
                           raise, so a violated one fails even with --rewrite
    check                  the invariants below, now

Output lines:
    ``n1 appends 7: Acquire e1 c1 ttl=3000ms (n1/1)``: the leader put the
        command into its log (not yet committed);
    ``7 Acquire e1 c1 ttl=3000ms (n1/1): granted c1 token=7 [n1 n2 n3]``: these
        nodes applied entry 7 with that result (one line for all that agree);
    ``n1 answers n1/1 to c1: ...``: the requesting node replies to its client.

Always checked (an :class:`InvariantViolation` fails the test, --rewrite or
not): the Raft invariants of the cluster; replicas that applied the same
index hold the same machine state; the fencing tokens of successive grants of
an election increase on every node; a request is applied at most once on each
node; and no early expiry: a leader proposes an Expire only once its clock is
``ttl`` past both the lease's last grant or renewal it applied and the moment
it became leader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.raft._scenario import command_handler, nid, run_file as run_scenario_file
from trio_election._errors import ElectionError
from trio_election.core import (
    Acquire,
    Command,
    EventKind,
    Expire,
    Limits,
    Outcome,
    Release,
    Renew,
)
from trio_election.core._codec import CodecError, decode_command, dump_machine, encode_command
from trio_election.raft import (
    EntryType,
    Message,
    MessageType,
    ProposalDropped,
    RaftError,
    Role,
    decode_message,
)
from trio_election.replica import Applied, Done, Elections, Work
from trio_election.testing import Cluster, InvariantViolation

TICK_MS = 100
#: The server's default ``request_timeout_s`` (5 s), in ticks.
REQUEST_TIMEOUT_TICKS = 50
_EPS = 1e-9


class ScenarioCheckFailed(Exception):
    """An ``expect-*`` check does not hold: the test fails, even with ``--rewrite``."""


def secs(t: float) -> str:
    return f"{t:.1f}s"


def decode(data: bytes) -> tuple[Command | None, str]:
    try:
        return decode_command(data)
    except CodecError:
        return None, ""


def describe_command(command: Command | None, rid: str = "") -> str:
    if command is None:
        return "(not a command)"
    if isinstance(command, Acquire):
        text = f"Acquire {command.election} {command.node_id} ttl={command.ttl_ms}ms"
        if command.value:
            text += f" value={command.value.decode('latin-1')}"
    elif isinstance(command, (Renew, Release)):
        token = f" token={command.fencing_token}" if command.fencing_token else ""
        text = f"{type(command).__name__} {command.election} {command.node_id}{token}"
    elif isinstance(command, Expire):
        text = (
            f"Expire {command.election} token={command.fencing_token} renewals={command.renewals}"
        )
    else:
        text = repr(command)
    return f"{text} ({rid})" if rid else text


def describe_outcome(command: Command, outcome: Outcome) -> str:
    if outcome.events:
        verbs = {
            EventKind.ELECTED: "granted",
            EventKind.RELEASED: "released",
            EventKind.EXPIRED: "expired",
        }
        parts = []
        for event in outcome.events:
            h = event.holder
            assert h is not None
            parts.append(
                f"{verbs.get(event.kind, event.kind.name)} {h.node_id} token={h.fencing_token}"
            )
        return ", ".join(parts)
    h = outcome.holder
    if outcome.success:
        assert h is not None
        verb = "refreshed" if isinstance(command, Acquire) else "renewed"
        return f"{verb} token={h.fencing_token}"
    if isinstance(command, Expire):
        if h is not None and h.fencing_token == command.fencing_token:
            return "no-op (renewed since it was proposed)"
        return "no-op (that lease is gone)"
    if h is None:
        return "refused (no holder)"
    return f"refused (held by {h.node_id} token={h.fencing_token})"


def describe_applied(command: Command | None, applied: Applied) -> str:
    if isinstance(applied.outcome, Outcome) and command is not None:
        return describe_outcome(command, applied.outcome)
    if applied.error is not None:
        return f"no-op ({type(applied.error).__name__}: {applied.error})"
    return "no-op"


# -- the machine on each node: the real Elections, watched ----------------------------


class WatchedElections(Elections):
    """The server's :class:`Elections`, reporting to the interpreter."""

    def __init__(self, interp: Interpreter, node: str) -> None:
        super().__init__()
        self.interp = interp
        self.node = node
        #: (election, token) -> when this replica last applied its grant or a renewal.
        self.renewed: dict[tuple[str, int], float] = {}
        self.last_grant: dict[str, int] = {}  # election -> token of its last grant here
        self.applied_rids: dict[str, int] = {}  # request id -> index applied at

    def apply(self, data: bytes, index: int, now: float) -> Applied:
        applied = super().apply(data, index, now)
        self.interp._applied(self, index, data, applied, now)
        return applied

    def load(self, image: bytes, now: float) -> None:
        super().load(image, now)  # a snapshot: every lease renewed at now
        self.renewed = {(h.election, h.fencing_token): now for h in self.machine.holders()}
        self.last_grant = {h.election: h.fencing_token for h in self.machine.holders()}

    def due(self, now: float) -> list[bytes]:
        due = super().due(now)
        for data in due:
            self.interp._due(self, data, now)
        return due

    def lead(self, now: float) -> None:
        super().lead(now)
        self.interp._leads(self, now)


class ElectionCluster(Cluster):
    """A :class:`Cluster` of :class:`WatchedElections` machines; a tick is TICK_MS.

    A forwarded proposal (PROP) is delivered through ``Replica.step``, as the
    server's transport does, so the leader's replica checks it first.
    """

    def __init__(self, interp: Interpreter, ids: list[str], seed: int) -> None:
        self._binding = ""
        self._interp = interp
        super().__init__(ids, seed=seed, sm_factory=lambda: WatchedElections(interp, self._binding))

    def time(self) -> float:
        return self.now * TICK_MS / 1000

    def add_node(self, nid: str, bootstrap: list[str] | None = None):  # noqa: ANN201
        self._binding = nid
        return super().add_node(nid, bootstrap)

    def restart(self, nid: str) -> None:
        self._binding = nid
        super().restart(nid)

    def deliver(self, f) -> bool:  # noqa: ANN001 - the harness's private _InFlight
        msg = decode_message(f.msg)
        if msg.type is not MessageType.PROP:
            return super().deliver(f)
        self.network.remove(f)
        dst = self.nodes.get(f.dst)
        if dst is None or not dst.alive or not self.connected(f.src, f.dst):
            self._interp._forward_lost(msg, "lost on the network")
            return False
        leads = dst.live().role is Role.LEADER
        try:
            dst.live().step(msg)
        except ElectionError as exc:
            self._interp._forward_lost(msg, f"refused by {f.dst}: {type(exc).__name__}: {exc}")
            return False
        if not leads:
            self._interp._forward_lost(msg, f"dropped by {f.dst}, which does not lead")
        self.check_invariants()
        return True


# -- requests ------------------------------------------------------------------------


@dataclass
class Request:
    rid: str
    node: str
    incarnation: int
    command: Command
    deadline: int  # tick
    result: str = ""  # once answered (or given up)


@dataclass
class _ApplyLine:
    index: int
    text: str
    nodes: list[str] = field(default_factory=list)


# -- the interpreter -----------------------------------------------------------------


class Interpreter:
    def __init__(self) -> None:
        self.cluster: ElectionCluster | None = None
        self.out: list[str] = []
        self._events: list[str | _ApplyLine] = []
        self._apply_lines: dict[tuple[int, str], _ApplyLine] = {}
        self.requests: dict[str, Request] = {}
        self._seq: dict[str, int] = {}
        self._results: dict[tuple[str, str], str] = {}  # (node, rid) -> result text
        self._committing: dict[str, list[tuple[int, bytes]]] = {}  # node -> Ready's entries
        self._applied_now: dict[str, set[int]] = {}
        self.roles: dict[str, Role] = {}
        self.leader_since: dict[str, float] = {}
        self.state_at: dict[int, bytes] = {}  # index -> machine image after applying it
        self.limits = Limits()

    @property
    def c(self) -> ElectionCluster:
        assert self.cluster is not None, "cluster first"
        return self.cluster

    def emit(self, s: str) -> None:
        self.out.append(s)

    def event(self, s: str) -> None:
        self._events.append(s)

    def _group(self, index: int, text: str, node: str) -> None:
        line = self._apply_lines.get((index, text))
        if line is None:
            line = self._apply_lines[(index, text)] = _ApplyLine(index, text)
            # Entries in log order: before a later one some node applied first.
            at = next(
                (
                    i
                    for i, ev in enumerate(self._events)
                    if isinstance(ev, _ApplyLine) and ev.index > index
                ),
                len(self._events),
            )
            self._events.insert(at, line)
        line.nodes.append(node)

    def _flush(self) -> None:
        if not self._events:
            return
        stamp = f"[{secs(self.c.time())}]"
        for ev in self._events:
            if isinstance(ev, _ApplyLine):
                self.emit(f"{stamp} {ev.text} [{' '.join(ev.nodes)}]")
            else:
                self.emit(f"{stamp} {ev}")
        self._events = []
        self._apply_lines = {}

    def run(self, command: str) -> str:
        self.out = []
        handler, rest = command_handler(self, command)
        try:
            handler(rest)
        except (RaftError, ElectionError) as e:
            if self.cluster is not None:
                self._flush()
            self.emit(f"error: {type(e).__name__}: {e}")
        if self.cluster is not None:
            self._flush()
        return "\n".join(line.rstrip() for line in self.out if line.strip())

    # -- hooks: machines ----------------------------------------------------------------

    def _applied(
        self, m: WatchedElections, index: int, data: bytes, applied: Applied, now: float
    ) -> None:
        command, rid = decode(data)
        if rid:
            if rid in m.applied_rids:
                raise InvariantViolation(
                    f"{m.node} applies request {rid} twice: at {m.applied_rids[rid]} and {index}"
                )
            m.applied_rids[rid] = index
        outcome = applied.outcome
        if isinstance(outcome, Outcome) and command is not None:
            for ev in outcome.events:
                h = ev.holder
                assert h is not None
                key = (h.election, h.fencing_token)
                if ev.kind is EventKind.ELECTED:
                    last = m.last_grant.get(h.election, 0)
                    if h.fencing_token <= last:
                        raise InvariantViolation(
                            f"{m.node}: grant of {h.election} at {index} has token "
                            f"{h.fencing_token}, not above the previous grant's {last}"
                        )
                    m.last_grant[h.election] = h.fencing_token
                    m.renewed[key] = now
                else:
                    m.renewed.pop(key, None)
            h = outcome.holder
            if (
                isinstance(command, (Acquire, Renew))
                and outcome.success
                and h is not None
                and h.node_id == command.node_id
            ):
                m.renewed[(h.election, h.fencing_token)] = now
        state = dump_machine(m.machine)
        known = self.state_at.setdefault(index, state)
        if known != state:
            raise InvariantViolation(
                f"replicas diverge: {m.node} after index {index} has {state!r}, "
                f"another replica had {known!r}"
            )
        result = describe_applied(command, applied)
        self._results[(m.node, rid)] = result
        self._applied_now.setdefault(m.node, set()).add(index)
        self._group(index, f"{index} {describe_command(command, rid)}: {result}", m.node)

    def _due(self, m: WatchedElections, data: bytes, now: float) -> None:
        command, _ = decode(data)
        if not isinstance(command, Expire):
            return
        holder = m.machine.holder(command.election)
        if holder is None or holder.fencing_token != command.fencing_token:
            raise InvariantViolation(f"{m.node} proposes {command} for a lease it does not have")
        renewed = m.renewed.get((command.election, command.fencing_token))
        since = self.leader_since.get(m.node)
        if renewed is None or since is None:
            raise InvariantViolation(f"{m.node}: no record of {command}'s lease or leadership")
        if now < max(renewed, since) + holder.ttl_ms / 1000 - _EPS:
            raise InvariantViolation(
                f"early expiry: {m.node} proposes {command} at {secs(now)}, but it applied "
                f"the last grant/renewal at {secs(renewed)} and leads since {secs(since)}, "
                f"ttl {holder.ttl_ms} ms"
            )
        self.event(
            f"{m.node}: {command.election} token={command.fencing_token} is due (last "
            f"grant/renewal applied here at {secs(renewed)}, leader since {secs(since)}, "
            f"ttl {holder.ttl_ms}ms)"
        )

    def _leads(self, m: WatchedElections, now: float) -> None:
        self.leader_since[m.node] = now
        term = self.c.nodes[m.node].raw()._raft.term
        leases = sorted(m.machine.holders(), key=lambda h: h.election)
        if not leases:
            self.event(f"{m.node} becomes leader (term {term})")
            return
        desc = ", ".join(
            f"{h.election} {h.node_id} token={h.fencing_token} deadline={secs(h.deadline)}"
            for h in leases
        )
        self.event(f"{m.node} becomes leader (term {term}); every lease gets its full TTL: {desc}")

    # -- hooks: the cluster -------------------------------------------------------------

    def _on_ready(self, node: str, work: Work) -> None:
        replica = self.c.nodes[node].live()
        before = self.roles.get(node, Role.FOLLOWER)
        self.roles[node] = replica.role
        if before is Role.LEADER and replica.role is not Role.LEADER:
            self.leader_since.pop(node, None)
            self.event(
                f"{node} steps down (term {replica.raw._raft.term}, "
                f"leader {replica.leader or 'unknown'})"
            )
        disk = self.c.nodes[node].disk
        if work.entries and work.entries[0].index <= disk.last_index():
            # These replace entries of this node's log (never committed ones).
            lo = max(work.entries[0].index, disk.first_index())
            terms = {e.index: e.term for e in work.entries}
            for old in disk.entries(lo, disk.last_index() + 1):
                if old.data and old.type is EntryType.NORMAL and terms.get(old.index) != old.term:
                    self.event(
                        f"{node} drops its uncommitted entry {old.index} (term {old.term}): "
                        f"{describe_command(*decode(old.data))}"
                    )
        if replica.role is Role.LEADER:
            for e in work.entries:
                if e.type is EntryType.NORMAL and e.data:
                    self.event(f"{node} appends {e.index}: {describe_command(*decode(e.data))}")
        for m in (*work.messages, *work.messages_after_persist):
            if m.type is MessageType.PROP:
                for e in m.entries:
                    _, rid = decode(e.data)
                    self.event(f"{node} forwards {rid or 'a proposal'} to {m.to}")
        self._committing[node] = [
            (e.index, e.data)
            for e in work.ready.committed_entries
            if e.type is EntryType.NORMAL and e.data
        ]
        self._applied_now[node] = set()

    def _on_done(self, node: str, done: Done) -> None:
        applied = self._applied_now.pop(node, set())
        for index, data in self._committing.pop(node, []):
            if index not in applied:
                command, rid = decode(data)
                m = self._machine(node)
                first = m.applied_rids.get(rid)
                text = f"{index} {describe_command(command, rid)}: skipped (applied at {first})"
                self._group(index, text, node)
        sn = self.c.nodes[node]
        for a in done.applied:
            req = self.requests.get(a.request_id)
            if req is not None and not req.result and req.node == node:
                if req.incarnation == sn.incarnation:
                    self._answer(req, self._results.get((node, a.request_id), "?"))

    def _forward_lost(self, msg: Message, why: str) -> None:
        for e in msg.entries:
            _, rid = decode(e.data)
            self.event(f"forward of {rid or 'a proposal'} {msg.from_}->{msg.to} {why}")

    def _answer(self, req: Request, result: str) -> None:
        req.result = f"{result} (at {secs(self.c.time())})"
        client = getattr(req.command, "node_id", "?")
        self.event(f"{req.node} answers {req.rid} to {client}: {result}")

    # -- time, the network, requests --------------------------------------------------

    def _live(self) -> list[str]:
        return [n for n in sorted(self.c.nodes) if self.c.nodes[n].alive]

    def _time_step(self, nodes: list[str]) -> None:
        c = self.c
        c.now += 1
        for node in nodes:
            if c.nodes[node].alive:
                c.tick(node)
        for req in self.requests.values():
            sn = c.nodes[req.node]
            if req.result or not sn.alive or sn.incarnation != req.incarnation:
                continue
            if c.now >= req.deadline:
                sn.live().forget(req.rid)
                self._answer(req, "Unavailable (the command did not commit within 5 s)")

    def _stabilize(self, only: set[str] | None = None) -> None:
        c = self.c
        for _ in range(10_000):
            progressed = False
            for node in sorted(c.nodes):
                if only is None or node in only:
                    while c.handle_ready(node) is not None:
                        progressed = True
            if only is None and c.network:
                c.deliver_all()
                progressed = True
            if not progressed:
                return
        raise InvariantViolation("cluster did not stabilize")

    def _request(self, args: list[str], make: Callable[[dict[str, str]], Command]) -> None:
        node = nid(args[0])
        opts = dict(a.split("=", 1) for a in args[1:])
        sn = self.c.nodes[node]
        replica = sn.live()
        command = self.limits.command(make(opts))  # as the gRPC service checks it
        self._seq[node] = self._seq.get(node, 0) + 1
        rid = f"{node}/{self._seq[node]}"
        self.requests[rid] = Request(
            rid, node, sn.incarnation, command, self.c.now + REQUEST_TIMEOUT_TICKS
        )
        self.event(f"{node} submits {describe_command(command, rid)}")
        try:
            replica.submit(encode_command(command, rid), rid)
        except ProposalDropped:
            self.event(f"{node} knows no leader: {rid} is proposed again on a later tick")

    def _machine(self, node: str) -> WatchedElections:
        sm = self.c.nodes[node].sm
        assert isinstance(sm, WatchedElections)
        return sm

    # -- commands: the cluster ---------------------------------------------------------

    def cmd_cluster(self, args: list[str]) -> None:
        n = int(args[0])
        opts = dict(a.split("=", 1) for a in args[1:])
        ids = [f"n{i}" for i in range(1, n + 1)]
        self.cluster = ElectionCluster(self, ids, int(opts.get("seed", 0)))
        self.cluster.on_ready = self._on_ready
        self.cluster.on_done = self._on_done
        self._stabilize()  # the bootstrap Readies
        self.emit(f"bootstrapped {' '.join(ids)}")

    def cmd_campaign(self, args: list[str]) -> None:
        self.c.nodes[nid(args[0])].raw().campaign()

    def cmd_tick(self, args: list[str]) -> None:
        node = nid(args[0])
        for _ in range(int(args[1]) if len(args) > 1 else 1):
            self._time_step([node])
            self._flush()

    def cmd_tick_all(self, args: list[str]) -> None:
        for _ in range(int(args[0]) if args else 1):
            self._time_step(self._live())
            self._flush()

    def cmd_run(self, args: list[str]) -> None:
        for _ in range(int(args[0]) if args else 1):
            self._time_step(self._live())
            self._stabilize()
            self._flush()

    def cmd_stabilize(self, args: list[str]) -> None:
        self._stabilize()

    def cmd_process_ready(self, args: list[str]) -> None:
        self._stabilize({nid(a) for a in args})

    def cmd_deliver(self, args: list[str]) -> None:
        a, b = args[0].split("->")
        n = self.c.deliver_all(nid(a), nid(b))
        self.emit(f"delivered {n} messages")

    def _forwards(self) -> list:
        return [f for f in self.c.network if decode_message(f.msg).type is MessageType.PROP]

    def cmd_deliver_forwards(self, args: list[str]) -> None:
        batch = self._forwards()
        delivered = sum(self.c.deliver(f) for f in batch)
        self.emit(f"delivered {delivered} of {len(batch)} forwards")

    def cmd_drop_forwards(self, args: list[str]) -> None:
        batch = self._forwards()
        if not batch:
            self.emit("no forwards in flight")
        for f in batch:
            self.c.lose(f)
            self._forward_lost(decode_message(f.msg), "dropped")

    def cmd_partition(self, args: list[str]) -> None:
        self.c.partition(*[[nid(x) for x in a.split(",")] for a in args])

    def cmd_isolate(self, args: list[str]) -> None:
        self.c.isolate(nid(args[0]))

    def cmd_heal(self, args: list[str]) -> None:
        self.c.heal()

    def cmd_crash(self, args: list[str]) -> None:
        for a in args:
            node = nid(a)
            self.c.crash(node)
            self.roles.pop(node, None)
            self.leader_since.pop(node, None)
            for req in self.requests.values():
                if req.node == node and not req.result:
                    req.result = f"lost with {node} (at {secs(self.c.time())})"
                    self.event(f"{req.rid} is lost with {node}")

    def cmd_restart(self, args: list[str]) -> None:
        for a in args:
            node = nid(a)
            self.c.restart(node)
            self.roles.pop(node, None)
            self.leader_since.pop(node, None)

    # -- commands: clients ------------------------------------------------------------

    def cmd_acquire(self, args: list[str]) -> None:
        self._request(
            args,
            lambda o: Acquire(
                o["election"], o["holder"], int(o["ttl"]), o.get("value", "").encode()
            ),
        )

    def cmd_renew(self, args: list[str]) -> None:
        self._request(args, lambda o: Renew(o["election"], o["holder"], int(o.get("token", 0))))

    def cmd_release(self, args: list[str]) -> None:
        self._request(args, lambda o: Release(o["election"], o["holder"], int(o.get("token", 0))))

    # -- commands: views and checks -----------------------------------------------------

    def cmd_holders(self, args: list[str]) -> None:
        self.emit(f"t={secs(self.c.time())}")
        for node in sorted(self.c.nodes):
            sn = self.c.nodes[node]
            if not sn.alive:
                self.emit(f"{node} down")
                continue
            head = f"{node} {sn.live().role.name.lower()} applied={sn.applied}:"
            leases = sorted(self._machine(node).machine.holders(), key=lambda h: h.election)
            if not leases:
                self.emit(f"{head} no holder")
            for h in leases:
                self.emit(
                    f"{head} {h.election} {h.node_id} token={h.fencing_token} ttl={h.ttl_ms}ms "
                    f"deadline={secs(h.deadline)}"
                )

    def cmd_requests(self, args: list[str]) -> None:
        if not self.requests:
            self.emit("no requests")
        for req in self.requests.values():
            self.emit(f"{req.rid} {describe_command(req.command)}: {req.result or 'pending'}")

    def cmd_raft_state(self, args: list[str]) -> None:
        for node in sorted(self.c.nodes):
            sn = self.c.nodes[node]
            if not sn.alive:
                self.emit(f"{node}: down")
                continue
            st = sn.raw().status()
            self.emit(
                f"{node}: {st.role} Term:{st.term} Lead:{st.leader} "
                f"Commit:{st.commit} Applied:{st.applied} Last:{st.last_index}"
            )

    def _on(self, opts: dict[str, str]) -> list[str]:
        if "on" in opts:
            return [nid(x) for x in opts["on"].split(",")]
        return self._live()

    def cmd_expect_holder(self, args: list[str]) -> None:
        election, holder = args[0], args[1]
        opts = dict(a.split("=", 1) for a in args[2:])
        for node in self._on(opts):
            h = self._machine(node).machine.holder(election)
            where = f"{node}: expected {election} held by {holder}"
            if h is None or h.node_id != holder:
                got = "nobody" if h is None else f"{h.node_id} token={h.fencing_token}"
                raise ScenarioCheckFailed(f"{where}, but it is held by {got}")
            if "token" in opts and h.fencing_token != int(opts["token"]):
                raise ScenarioCheckFailed(f"{where} with token {opts['token']}: {h}")
            if "above" in opts and h.fencing_token <= int(opts["above"]):
                raise ScenarioCheckFailed(f"{where} with a token above {opts['above']}: {h}")
        self.emit("ok")

    def cmd_expect_none(self, args: list[str]) -> None:
        election = args[0]
        opts = dict(a.split("=", 1) for a in args[1:])
        for node in self._on(opts):
            h = self._machine(node).machine.holder(election)
            if h is not None:
                raise ScenarioCheckFailed(f"{node}: expected {election} free: {h}")
        self.emit("ok")

    def cmd_expect_leader(self, args: list[str]) -> None:
        want, lead = nid(args[0]), self.c.leader()
        if lead != want:
            raise ScenarioCheckFailed(f"expected the Raft leader {want}, it is {lead}")
        self.emit("ok")

    def cmd_check(self, args: list[str]) -> None:
        c = self.c
        c.check_invariants()
        for node in self._live():
            known = self.state_at.get(c.nodes[node].applied)
            state = dump_machine(self._machine(node).machine)
            if known is not None and known != state:
                raise InvariantViolation(f"{node} differs from the other replicas")
        self.emit("ok")


def run_file(path: Path, rewrite: bool) -> None:
    run_scenario_file(path, rewrite, Interpreter)
