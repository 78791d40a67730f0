"""Deterministic in-process simulation of a Raft cluster, for tests.

* :class:`Cluster` holds N :class:`SimNode`\\ s, a simulated network and
  simulated disks, and offers explicit primitives (tick, deliver, handle a
  Ready, crash, restart, partition, ...). Scenario tests drive it by hand.
  Each node is the :class:`~trio_election.replica.Replica` the server runs;
  the cluster does what the server's runtime does around it (time, the
  network, the disk), so every seeded run exercises the shipped code.
* :class:`Simulation` drives a :class:`Cluster` randomly from one seed:
  message loss, duplication, reordering and delay, partitions, crashes at
  any point of Ready handling, restarts, snapshots and client traffic.

Disk model: each node's :class:`MemoryStorage` *is* its disk. A Ready's
snapshot, entries and hard state are written to it as one fsynced batch;
anything the node holds only in memory (the replica itself, an unhandled
Ready, unsent messages) is lost by :meth:`Cluster.crash`. Restarting builds a
fresh replica from the disk (which restores its machine and members from the
disk's snapshot).

After every step the cluster checks Raft's safety properties (see
:meth:`Cluster.check_invariants`) and raises :class:`InvariantViolation`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from trio_election.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    RawNode,
    Ready,
    Role,
    decode_message,
    encode_message,
)
from trio_election.raft._errors import RaftError
from trio_election.replica import Applied, Done, Machine, Replica, Work


def sim_address(node_id: str) -> bytes:
    """The address a simulated member is added at: messages go by id, but a
    replica refuses to log a member no peer could connect to."""
    return f"{node_id}.sim:1".encode()


class KVStateMachine:
    """A tiny state machine: ``b"k=v"`` sets a key; every command is logged.

    ``log`` keeps every applied ``(index, data)`` so tests can compare
    replicas; empty commands (leader no-ops) are not passed to ``apply``.
    """

    def __init__(self) -> None:
        self.kv: dict[str, str] = {}
        self.log: list[tuple[int, bytes]] = []

    def apply(self, data: bytes, index: int, now: float) -> Applied:
        self.log.append((index, data))
        key, sep, value = data.decode("utf-8", "replace").partition("=")
        if sep:
            self.kv[key] = value
        return Applied("", len(self.log))

    def dump(self) -> bytes:
        return json.dumps({"kv": self.kv, "log": [[i, d.hex()] for i, d in self.log]}).encode()

    def load(self, image: bytes, now: float) -> None:
        obj = json.loads(image)
        self.kv = dict(obj["kv"])
        self.log = [(i, bytes.fromhex(d)) for i, d in obj["log"]]

    def request_id(self, data: bytes) -> str:
        return ""  # every KV command is applied, duplicates too (the checks expect it)

    def due(self, now: float) -> list[bytes]:
        return []

    def abandoned(self, alive: Callable[[str], bool]) -> list[bytes]:
        return []

    def lead(self, now: float) -> None:
        pass

    def check_forwarded(self, data: bytes) -> None:
        pass


class InvariantViolation(AssertionError):
    """A Raft safety property does not hold."""


@dataclass
class SimNode:
    """One simulated server: a durable disk, and a replica that a crash loses."""

    id: str
    disk: MemoryStorage
    sm: Machine
    replica: Replica | None = None
    incarnation: int = 0
    bootstrap: list[str] | None = None  # initial members, if this is one
    #: The hard state as of the last fsynced write (None: never written).
    synced_hard_state: HardState | None = None

    @property
    def alive(self) -> bool:
        return self.replica is not None

    def raw(self) -> RawNode:
        return self.live().raw

    def live(self) -> Replica:
        if self.replica is None:
            raise RaftError(f"{self.id} is down")
        return self.replica

    @property
    def applied(self) -> int:
        return self.replica.applied if self.replica is not None else 0

    @property
    def conf_state(self) -> ConfState:
        return self.replica.conf_state if self.replica is not None else ConfState()


@dataclass
class _InFlight:
    msg: bytes  # messages cross the network encoded, exercising the codec
    deliver_at: int
    seq: int
    src: str
    dst: str


class Cluster:
    """Nodes + network + disks with invariant checking. Deterministic given ``seed``."""

    def __init__(
        self,
        ids: Iterable[str],
        *,
        seed: int = 0,
        election_tick: int = 10,
        heartbeat_tick: int = 1,
        pre_vote: bool = True,
        check_quorum: bool = True,
        max_entries_per_msg: int = 64,
        max_inflight_msgs: int = 256,
        sm_factory: Callable[[], Machine] = KVStateMachine,
        bootstrap: bool = True,
    ) -> None:
        self.seed = seed
        self.cfg = dict(
            election_tick=election_tick,
            heartbeat_tick=heartbeat_tick,
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            max_entries_per_msg=max_entries_per_msg,
            max_inflight_msgs=max_inflight_msgs,
        )
        self.sm_factory = sm_factory
        self.nodes: dict[str, SimNode] = {}
        self.network: list[_InFlight] = []
        self.now = 0
        self._seq = 0
        self.groups: dict[str, int] = {}  # partition group per node; absent = 0
        self.blocked: set[tuple[str, str]] = set()  # one-way link cuts
        # -- invariant bookkeeping --
        self.leaders: dict[int, str] = {}  # term -> leader
        # (index, term) -> (type, data, previous term) of every entry seen in
        # any log: two entries with one index and term must always be equal.
        self._entries: dict[tuple[int, int], tuple[int, bytes, int]] = {}
        # node -> shape of its log when last checked (unchanged: skip it)
        self._checked: dict[str, tuple[object, ...]] = {}
        self.committed: dict[int, Entry] = {}  # every index ever known committed
        # index -> a term by which it was committed (the term of the node that
        # first reported it committed: at least the term of the committing leader)
        self.commit_terms: dict[int, int] = {}
        self.acked: dict[bytes, int] = {}  # client command -> index it was applied at
        self.pending_proposals: set[bytes] = set()
        self.read_results: list[tuple[str, bytes, int, int]] = []
        self._read_floor: dict[bytes, int] = {}
        self.on_ready: Callable[[str, Work], None] | None = None
        self.on_done: Callable[[str, Done], None] | None = None
        self.on_deliver: Callable[[Message], None] | None = None
        ids = list(ids)
        for i in ids:
            self.add_node(i, bootstrap=ids if bootstrap else None)

    # -- membership of the simulation ------------------------------------

    def _config(self, nid: str, incarnation: int, applied: int = 0) -> Config:
        rng = random.Random(f"{self.seed}/{nid}/{incarnation}")
        return Config(id=nid, rng=rng, applied=applied, **self.cfg)  # type: ignore[arg-type]

    def time(self) -> float:
        """The clock the replicas read (seconds; here one a tick)."""
        return float(self.now)

    def add_node(self, nid: str, bootstrap: list[str] | None = None) -> SimNode:
        """Create a server with an empty disk (bootstrapped with ``bootstrap`` peers)."""
        sn = SimNode(id=nid, disk=MemoryStorage(), sm=self.sm_factory(), bootstrap=bootstrap)
        self.nodes[nid] = sn
        self._start(sn)
        return sn

    def _start(self, sn: SimNode) -> None:
        # The replica restores its machine and members from the disk's
        # snapshot, and tells Raft where to resume applying.
        sn.replica = Replica(sn.disk, sn.sm, self.time(), self._config(sn.id, sn.incarnation))
        if sn.bootstrap and sn.disk.last_index() == 0:
            # New, or crashed before the bootstrap Ready was persisted: an
            # initial member must bootstrap again (otherwise it would rebuild
            # its membership from whatever entries a leader sends it).
            sn.replica.bootstrap({member: member for member in sn.bootstrap})

    def crash(self, nid: str) -> None:
        """Lose everything ``nid`` holds in memory, and its unsynced writes
        (the disk's synced state survives)."""
        sn = self.nodes[nid]
        sn.replica = None
        if sn.synced_hard_state is not None and sn.disk.hard_state != sn.synced_hard_state:
            sn.disk.set_hard_state(sn.synced_hard_state)

    def restart(self, nid: str) -> None:
        """Start ``nid`` again from its disk."""
        sn = self.nodes[nid]
        if sn.alive:
            self.crash(nid)
        sn.incarnation += 1
        sn.sm = self.sm_factory()
        self._start(sn)

    # -- network ------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Split nodes into groups; unlisted nodes form one more group."""
        self.groups = {}
        for g, members in enumerate(groups, start=1):
            for m in members:
                self.groups[m] = g

    def isolate(self, nid: str) -> None:
        self.partition([nid])

    def heal(self) -> None:
        self.groups = {}
        self.blocked = set()

    def connected(self, a: str, b: str) -> bool:
        return self.groups.get(a, 0) == self.groups.get(b, 0) and (a, b) not in self.blocked

    def send(self, m: Message, delay: int = 0) -> None:
        self._seq += 1
        wire = encode_message(m)
        self.network.append(_InFlight(wire, self.now + delay, self._seq, m.from_, m.to))

    def deliver(self, f: _InFlight) -> bool:
        """Deliver one in-flight message (removing it); False if it was lost."""
        self.network.remove(f)
        dst = self.nodes.get(f.dst)
        msg = decode_message(f.msg)
        if dst is None or not dst.alive or not self.connected(f.src, f.dst):
            if msg.type == MessageType.SNAP:
                self._report_snapshot(msg, False)
            return False
        if self.on_deliver is not None:
            self.on_deliver(msg)
        try:
            dst.live().step(msg)  # the replica checks a forwarded proposal first
        except RaftError:
            return False
        if msg.type == MessageType.SNAP:
            self._report_snapshot(msg, True)
        self.check_invariants()
        return True

    def lose(self, f: _InFlight) -> None:
        """Drop an in-flight message, as a lossy network would.

        A lost snapshot is reported to its sender: a real transport streams
        snapshots and knows when that fails (``RawNode.report_snapshot``).
        """
        self.network.remove(f)
        msg = decode_message(f.msg)
        if msg.type == MessageType.SNAP:
            self._report_snapshot(msg, False)

    def _report_snapshot(self, msg: Message, ok: bool) -> None:
        src = self.nodes.get(msg.from_)
        if src is not None and src.alive:
            src.raw().report_snapshot(msg.to, ok)

    def deliver_all(self, src: str | None = None, dst: str | None = None) -> int:
        """Deliver (in FIFO order) every in-flight message matching src/dst."""
        batch = [
            f
            for f in self.network
            if (src is None or f.src == src) and (dst is None or f.dst == dst)
        ]
        for f in batch:
            self.deliver(f)
        return len(batch)

    def drop(self, src: str | None = None, dst: str | None = None) -> int:
        """Discard in-flight messages matching src/dst."""
        keep = [
            f
            for f in self.network
            if not ((src is None or f.src == src) and (dst is None or f.dst == dst))
        ]
        gone = [f for f in self.network if f not in keep]
        for f in gone:
            self.lose(f)
        return len(gone)

    # -- Ready handling --------------------------------------------------

    def persist(self, sn: SimNode, rd: Ready | Work) -> None:
        """Write ``rd``'s durable parts to the disk: one fsynced batch, or,
        when only the commit index moved (``must_sync`` False, as the server
        then writes without an fsync), a write that a crash loses."""
        if rd.snapshot is not None:
            sn.disk.apply_snapshot(rd.snapshot)
        if rd.entries:
            sn.disk.append(rd.entries)
        if rd.hard_state is not None:
            old = sn.disk.hard_state.commit
            sn.disk.set_hard_state(rd.hard_state)
            self._record_committed(sn, old, rd.hard_state.commit)
        if rd.must_sync:
            sn.synced_hard_state = sn.disk.hard_state

    def _check_ready(self, sn: SimNode, rd: Ready) -> None:
        """Before the replica applies ``rd``: each entry once, agreeing with the commits."""
        applied = sn.applied
        for e in rd.committed_entries:
            self._check_committed_entry(sn.id, e)
            if e.index <= applied:
                raise InvariantViolation(f"{sn.id} applied {e.index} twice")
            applied = e.index
        for rs in rd.read_states:
            floor = self._read_floor.pop(rs.ctx, 0)
            if rs.index < floor:
                raise InvariantViolation(
                    f"{sn.id}: read {rs.ctx!r} got index {rs.index} < {floor}, the last "
                    "acknowledged write when the read was issued (stale read)"
                )

    def _record_done(self, sn: SimNode, rd: Ready, done: Done) -> None:
        for e in rd.committed_entries:
            if e.type == EntryType.CONF_CHANGE or not e.data:
                continue
            if e.data in self.pending_proposals:
                self.pending_proposals.discard(e.data)
                self.acked[e.data] = e.index
            elif e.data in self.acked and self.acked[e.data] != e.index:
                raise InvariantViolation(f"command {e.data!r} applied at two indexes")
        for ctx in done.reads:
            self.read_results.append((sn.id, ctx, sn.applied, self.now))

    def handle_ready(self, nid: str, crash_at: str | None = None) -> Ready | None:
        """Run one Ready cycle on ``nid`` as the server's runtime does.

        Send what may go at once, persist, send what waited for the write,
        then ``advance``. ``crash_at`` injects a crash: ``"before-persist"``
        (the first messages went, the batch never reaches the disk),
        ``"after-persist"`` (the messages that wait for the write are never
        sent) or ``"after-send"`` (nothing applied).
        """
        sn = self.nodes[nid]
        if not sn.alive or not sn.live().has_ready():
            return None
        replica = sn.live()
        work = replica.ready(self.time())
        rd = work.ready
        if self.on_ready is not None:
            self.on_ready(nid, work)
        for m in work.messages:
            self.send(m)
        if crash_at == "before-persist":
            self.crash(nid)
            return rd
        self.persist(sn, work)
        if crash_at == "after-persist":
            self.crash(nid)
            return rd
        for m in work.messages_after_persist:
            self.send(m)
        if crash_at == "after-send":
            self.crash(nid)
            return rd
        self._check_ready(sn, rd)
        done = replica.advance(work, self.time())
        self._record_done(sn, rd, done)
        if self.on_done is not None:
            self.on_done(nid, done)
        self.check_invariants()
        return rd

    def handle_all_ready(self) -> bool:
        progressed = False
        for nid in sorted(self.nodes):
            while self.handle_ready(nid) is not None:
                progressed = True
        return progressed

    def stabilize(self, max_rounds: int = 10_000) -> None:
        """Handle Readies and deliver messages until nothing is left to do."""
        for _ in range(max_rounds):
            progressed = self.handle_all_ready()
            if self.network:
                self.deliver_all()
                progressed = True
            if not progressed:
                return
        raise InvariantViolation("cluster did not stabilize")

    # -- client-ish helpers ----------------------------------------------

    def tick(self, nid: str, n: int = 1) -> None:
        for _ in range(n):
            self.nodes[nid].live().tick(self.time())
        self.check_invariants()

    def leader(self) -> str | None:
        """The live leader with the highest term, if any."""
        best: tuple[int, str] | None = None
        for sn in self.nodes.values():
            if sn.alive and sn.raw()._raft.role == Role.LEADER:
                t = sn.raw()._raft.term
                if best is None or t > best[0]:
                    best = (t, sn.id)
        return best[1] if best else None

    def propose(self, nid: str, data: bytes) -> bool:
        """Propose ``data`` on ``nid``; track it so an ack can be checked later."""
        sn = self.nodes[nid]
        if sn.raw()._raft.role != Role.LEADER:
            return False  # (a replica would forward it; these tests propose on a leader)
        try:
            sn.live().submit(data)
        except ProposalDropped:
            return False
        self.pending_proposals.add(data)
        return True

    def read(self, nid: str, ctx: bytes) -> bool:
        """Issue a ReadIndex on ``nid``; the answer must cover all acked writes."""
        try:
            self.nodes[nid].live().read(ctx)
        except ProposalDropped:
            return False
        self._read_floor[ctx] = max(self.acked.values(), default=0)
        return True

    def propose_conf_change(self, nid: str, cc: ConfChange) -> bool:
        try:
            self.nodes[nid].live().propose_conf_change(cc)
        except (ProposalDropped, RaftError):
            return False
        return True

    # -- invariants --------------------------------------------------------

    def _record_committed(self, sn: SimNode, old: int, new: int) -> None:
        if new <= old:
            return
        log = sn.raw()._raft.log
        lo = max(old + 1, log.first_index())
        for e in log.slice(lo, new + 1):
            self._check_committed_entry(sn.id, e)

    def _check_committed_entry(self, nid: str, e: Entry) -> None:
        known = self.committed.get(e.index)
        if known is None:
            self.committed[e.index] = e
            sn = self.nodes.get(nid)
            if sn is not None and sn.alive:
                self.commit_terms[e.index] = sn.raw()._raft.term
        elif known != e:
            raise InvariantViolation(
                f"{nid}: committed entry {e.index} is {e.term}/{e.data!r} but "
                f"{known.term}/{known.data!r} was committed before (state machine safety)"
            )

    def check_invariants(self) -> None:
        """Check election safety, log matching and leader completeness."""
        seen = self._entries
        for sn in self.nodes.values():
            if not sn.alive:
                continue
            r = sn.raw()._raft
            if r.role == Role.LEADER:
                prev = self.leaders.get(r.term)
                if prev is None:
                    self.leaders[r.term] = sn.id
                    self._check_leader_completeness(sn)
                elif prev != sn.id:
                    raise InvariantViolation(
                        f"two leaders in term {r.term}: {prev} and {sn.id} (election safety)"
                    )
            # Log matching over the uncommitted tails (committed prefixes are
            # checked against self.committed as they commit), against every
            # entry any log has held, so a node whose log is as it was when
            # last checked needs no second look.
            log = r.log
            last = log.last_index()
            shape = (
                log.storage,
                log.unstable.offset,
                len(log.unstable.entries),
                last,
                log.term_or_zero(last),
                log.committed,
            )
            if self._checked.get(sn.id) == shape:
                continue
            self._checked[sn.id] = shape
            lo = max(log.committed, log.first_index())
            prev_term = log.term_or_zero(lo - 1)
            for e in log.slice(lo, last + 1):
                val = (int(e.type), e.data, prev_term)
                if seen.setdefault((e.index, e.term), val) != val:
                    raise InvariantViolation(
                        f"log matching violated at {e.term}/{e.index} on {sn.id}"
                    )
                prev_term = e.term

    def _check_leader_completeness(self, sn: SimNode) -> None:
        log = sn.raw()._raft.log
        term = sn.raw()._raft.term
        first = log.first_index()
        for idx, e in self.committed.items():
            if idx < first:
                continue
            if self.commit_terms.get(idx, 0) >= term:
                # Committed in this term or a later one: only leaders of later
                # terms must have it. (A candidate can win an older term once
                # a newer leader committed, when votes arrive late.)
                continue
            if idx > log.last_index() or log.slice(idx, idx + 1)[0] != e:
                raise InvariantViolation(
                    f"new leader {sn.id} (term {sn.raw()._raft.term}) lacks committed "
                    f"entry {e.term}/{idx} (leader completeness)"
                )

    def check_replicas_agree(self) -> None:
        """Every pair of state machines agrees on their common applied prefix."""
        logs = [(sn.id, getattr(sn.sm, "log", None)) for sn in self.nodes.values()]
        logs = [(i, lg) for i, lg in logs if lg is not None]
        for i, (a, la) in enumerate(logs):
            for b, lb in logs[i + 1 :]:
                n = min(len(la), len(lb))
                if la[:n] != lb[:n]:
                    raise InvariantViolation(f"state machines of {a} and {b} diverge")

    def check_acked_survive(self, members: Iterable[str], caught_up_only: bool = False) -> None:
        """Every acknowledged command is applied, at its index, on ``members``.

        With ``caught_up_only``, nodes that have not applied that far yet are
        not required to have it.
        """
        for nid in members:
            sn = self.nodes[nid]
            applied = dict(getattr(sn.sm, "log", []))
            for data, idx in self.acked.items():
                if caught_up_only and sn.applied < idx:
                    continue
                if applied.get(idx) != data:
                    raise InvariantViolation(
                        f"acknowledged command {data!r} at {idx} missing on {nid}"
                    )


@dataclass
class SimOptions:
    """Fault rates of a :class:`Simulation` (probabilities per event)."""

    nodes: int = 3
    ticks: int = 300
    drop: float = 0.05
    duplicate: float = 0.03
    max_delay: int = 3
    delay: float = 0.2
    crash: float = 0.004
    restart: float = 0.05
    crash_in_ready: float = 0.01
    partition: float = 0.01
    heal: float = 0.05
    propose: float = 0.3
    read: float = 0.05
    snapshot_every: int = 20
    membership: float = 0.0  # chance per tick of proposing an add/remove
    transfer: float = 0.005  # chance per tick of a leadership transfer
    leader_crash: float = 0.0  # chance per tick of crashing the leader (figure 8 style)
    min_voters: int = 3
    max_voters: int = 5
    pre_vote: bool = True
    check_quorum: bool = True
    max_entries_per_msg: int = 8
    max_inflight_msgs: int = 4


class Simulation:
    """Randomized fault injection over a :class:`Cluster`, reproducible by seed."""

    def __init__(self, seed: int, opts: SimOptions | None = None) -> None:
        self.seed = seed
        self.opts = opts = opts or SimOptions()
        self.rng = random.Random(seed)
        self.cluster = Cluster(
            [f"n{i}" for i in range(1, opts.nodes + 1)],
            seed=seed,
            pre_vote=opts.pre_vote,
            check_quorum=opts.check_quorum,
            max_entries_per_msg=opts.max_entries_per_msg,
            max_inflight_msgs=opts.max_inflight_msgs,
        )
        self._n = 0
        self._next_id = opts.nodes + 1

    @property
    def ids(self) -> list[str]:
        """Every server of the simulation, including added and removed ones."""
        return list(self.cluster.nodes)

    def voters(self) -> list[str]:
        """The membership as the current leader sees it (or the initial one)."""
        lead = self.cluster.leader()
        if lead is None:
            return [f"n{i}" for i in range(1, self.opts.nodes + 1)]
        return list(self.cluster.nodes[lead].raw().status().voters)

    def _maybe_change_membership(self, lead: str) -> None:
        c, rng, o = self.cluster, self.rng, self.opts
        voters = c.nodes[lead].raw().status().voters
        if len(voters) > o.min_voters and (len(voters) >= o.max_voters or rng.random() < 0.5):
            victim = rng.choice(sorted(voters))
            c.propose_conf_change(lead, ConfChange(ConfChangeType.REMOVE_NODE, victim))
        else:
            new = f"n{self._next_id}"
            self._next_id += 1
            c.add_node(new)  # starts empty; catches up once added
            c.propose_conf_change(lead, ConfChange(ConfChangeType.ADD_NODE, new, sim_address(new)))

    # -- one virtual tick ----------------------------------------------------

    def step(self) -> None:
        """Advance virtual time by one tick, injecting faults."""
        c, rng, o = self.cluster, self.rng, self.opts
        c.now += 1
        for nid in self._shuffled(self.ids):
            sn = c.nodes[nid]
            if not sn.alive:
                if rng.random() < o.restart:
                    c.restart(nid)
                continue
            if rng.random() < o.crash:
                c.crash(nid)
                continue
            if rng.random() < 0.9:  # imperfect clocks: a node sometimes misses a tick
                c.tick(nid)
        if rng.random() < o.partition:
            members = self._shuffled(self.ids)
            cut = rng.randrange(1, len(members))
            c.partition(members[:cut])
        elif c.groups and rng.random() < o.heal:
            c.heal()
        lead = c.leader()
        if lead is not None and rng.random() < o.leader_crash:
            c.crash(lead)
            lead = None
        if lead is not None and rng.random() < o.membership:
            self._maybe_change_membership(lead)
        if lead is not None and rng.random() < o.transfer:
            voters = c.nodes[lead].raw().status().voters
            if voters:
                c.nodes[lead].raw().transfer_leadership(rng.choice(sorted(voters)))
        if lead is not None and rng.random() < o.propose:
            self._n += 1
            c.propose(lead, f"k{self._n % 7}=v{self._n}".encode())
        if lead is not None and rng.random() < o.read:
            self._n += 1
            c.read(lead, f"r{self._n}".encode())
        self._pump()

    def _pump(self) -> None:
        c, rng, o = self.cluster, self.rng, self.opts
        for _ in range(50):
            progressed = False
            for nid in self._shuffled(self.ids):
                sn = c.nodes[nid]
                while sn.alive and sn.raw().has_ready():
                    crash_at = None
                    if rng.random() < o.crash_in_ready:
                        crash_at = rng.choice(("before-persist", "after-persist", "after-send"))
                    rd = c.handle_ready(nid, crash_at)
                    progressed = True
                    if rd is not None and crash_at is None:
                        self._fanout(rd)
                        self._maybe_snapshot(sn)
            due = [f for f in c.network if f.deliver_at <= c.now]
            rng.shuffle(due)  # reordering
            for f in due:
                progressed = True
                if rng.random() < o.drop:
                    c.lose(f)
                    continue
                if rng.random() < o.duplicate:
                    c._seq += 1
                    at = c.now + rng.randrange(o.max_delay + 1)
                    c.network.append(_InFlight(f.msg, at, c._seq, f.src, f.dst))
                c.deliver(f)
            if not progressed:
                break

    def _fanout(self, rd: Ready) -> None:
        """Give freshly sent messages a random delay (in place)."""
        c, rng, o = self.cluster, self.rng, self.opts
        sent = len(rd.messages) + len(rd.messages_after_persist)
        if not sent:
            return
        for f in c.network[-sent:]:
            if rng.random() < o.delay:
                f.deliver_at = c.now + rng.randrange(1, o.max_delay + 1)

    def _maybe_snapshot(self, sn: SimNode) -> None:
        o = self.opts
        if not o.snapshot_every or not sn.alive:
            return
        disk = sn.disk
        if sn.applied - disk.first_index() + 1 < o.snapshot_every:
            return
        if sn.applied <= disk.snapshot().metadata.index:
            return
        index, conf_state, image = sn.live().snapshot_image()
        disk.create_snapshot(index, conf_state, image)
        sn.live().snapshotted(index)
        # The snapshot's write is fsynced, and makes what was written before
        # it durable too (as a later SQLite commit does in the server).
        sn.synced_hard_state = disk.hard_state
        # Keep a few entries so slightly lagging followers need no snapshot.
        keep = self.rng.randrange(0, 5)
        if sn.applied - keep > disk.first_index():
            disk.compact(sn.applied - keep)

    def _shuffled(self, xs: list[str]) -> list[str]:
        ys = list(xs)
        self.rng.shuffle(ys)
        return ys

    # -- whole runs ---------------------------------------------------------

    def run(self) -> None:
        """Run ``opts.ticks`` faulty ticks, then heal and check convergence."""
        for _ in range(self.opts.ticks):
            self.step()
        self.settle()

    def settle(self, max_ticks: int = 600) -> None:
        """Heal the network, restart everyone, and require full convergence."""
        c = self.cluster
        o = self.opts
        c.heal()
        for nid in self.ids:
            if not c.nodes[nid].alive:
                c.restart(nid)
        saved = (
            o.drop,
            o.duplicate,
            o.crash,
            o.crash_in_ready,
            o.partition,
            o.delay,
            o.leader_crash,
        )
        o.drop = o.duplicate = o.crash = o.crash_in_ready = o.partition = o.delay = 0.0
        o.leader_crash = 0.0
        try:
            # A no-op write through the final leader proves it can commit; retry
            # it since a leader change can discard an uncommitted proposal.
            marker, attempt, since = b"", 0, 0
            for _ in range(max_ticks):
                self.step()
                lead = c.leader()
                if lead is None:
                    continue
                since += 1
                if marker not in c.acked and (not marker or since > 50):
                    attempt += 1
                    candidate = f"final-{self.seed}-{attempt}".encode()
                    if c.propose(lead, candidate):
                        marker, since = candidate, 0
                    continue
                if marker in c.acked and self._converged():
                    break
            else:
                raise InvariantViolation(
                    f"no convergence after healing (leader={c.leader()}, "
                    f"pending={len(c.pending_proposals)}, {self.describe()})"
                )
        finally:
            o.drop, o.duplicate, o.crash, o.crash_in_ready, o.partition, o.delay = saved[:6]
            o.leader_crash = saved[6]
        c.check_replicas_agree()
        c.check_acked_survive(self.voters())

    def describe(self) -> str:
        """One line per node: role, term, commit, applied, and leader progress."""
        out = []
        for nid in self.ids:
            sn = self.cluster.nodes[nid]
            if not sn.alive:
                out.append(f"{nid}: down")
                continue
            st = sn.raw().status()
            line = (
                f"{nid}: {st.role} term={st.term} lead={st.leader} commit={st.commit} "
                f"applied={st.applied} last={st.last_index} voters={','.join(st.voters)}"
            )
            if st.progress:
                line += " progress=" + str(sn.raw()._raft.trk.progress)
            out.append(line)
        return "; ".join(out)

    def _converged(self) -> bool:
        c = self.cluster
        target = max(c.committed, default=0)
        return all(c.nodes[i].applied >= target for i in self.voters())
