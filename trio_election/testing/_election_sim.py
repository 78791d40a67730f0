"""Deterministic simulation of the election machine replicated by Raft, for tests.

:class:`ElectionSimulation` runs, on top of the Raft harness of
``_raft_sim.py``, the :class:`~trio_election.replica.Replica` that a cluster
node runs, with the same :class:`~trio_election.replica.Elections` machine,
plus simulated clients:

* every node's machine is an :class:`ElectionReplica`: the real
  ``Elections`` with the checker's records around it (it sees each entry
  applied, each expiry the replica proposes, each snapshot restored);
* virtual time: ``seconds = tick * tick_s``, one clock for nodes and clients;
* the replica itself refreshes every lease when it becomes leader, and
  proposes the expiries that are due on each of its ticks, as it does in
  the server;
* a client command goes to any node; the node submits it to its replica,
  which proposes it (the Raft leader) or forwards it to the leader it knows
  in Raft's own messages (a follower), again until it is applied, and
  answers the client once IT applied the entry carrying its request id (or
  gives up after a timeout). Requests and replies are delayed, reordered,
  lost and (requests) duplicated; the Raft network, which carries the
  forwards, has its own faults (see :class:`~trio_election.testing.SimOptions`);
* a renewal that reaches a node the replica takes for the Raft leader is
  answered off the log (``Replica.renew``: after a quorum round), as
  ``ClusterNode.renew`` does; elsewhere it is proposed. A client's renewals
  stay on one node until one fails (as the client library's KeepAlive stream
  does), and that node is often one that believes it leads, a deposed
  leader included;
* each client keeps its own view of leadership (docs/design.md promise 4)
  with the client library's own :class:`~trio_election.client._belief.Belief`:
  it believes it holds its election from a successful grant until
  ``send time of the last successful heartbeat + ttl - margin``, or until it
  releases or a heartbeat is refused. A Campaign grant is believed only once
  a heartbeat sent after it succeeded (as the client library does).

Checked after every step (``InvariantViolation``, message with the seed):

* at most one client believes it holds an election at any virtual instant;
* fencing tokens of successive grants of an election strictly increase, on
  every node (applied outcomes) and as clients receive them;
* replicas agree: equal ``dump_machine`` bytes at equal applied index;
* no early expiry: the leader proposes an Expire only when its ``now`` is at
  least ``ttl`` after both the lease's last grant/renewal it applied or
  answered (off the log: from the renewal's arrival) and the moment it became
  leader; and no node applies a grant replacing an expired
  lease before ``ttl`` after the send time of that lease's last successful
  heartbeat (or grant);
* acknowledged grants are not forgotten: every node that applied the grant's
  index still has the holder, unless a later committed entry ended it;
* plus every Raft invariant of the underlying :class:`Cluster`.

``mutation`` (option) deliberately breaks one rule, so tests can prove that
the checks catch it; see :data:`MUTATIONS`.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from trio_election._errors import Superseded
from trio_election.client._belief import Belief
from trio_election.core import (
    Acquire,
    CancelWait,
    Command,
    ElectionMachine,
    EventKind,
    Expire,
    Holder,
    Outcome,
    Release,
    Renew,
)
from trio_election.core._codec import decode_command, dump_machine, encode_command
from trio_election.raft import ProposalDropped, Role
from trio_election.replica import Applied, Done, Elections, Work
from trio_election.server._hub import Hub, HubClient

from ._raft_sim import Cluster, InvariantViolation, SimOptions, Simulation

#: Deliberate bugs an :class:`ElectionSimulation` can inject, to test the checks.
#:
#: * ``no_refresh``: a new Raft leader skips ``refresh_all``.
#: * ``receive_time``: clients count from a reply's receive time, not the send time.
#: * ``negative_margin``: clients keep believing ``ttl / 5`` past their deadline.
#: * ``follower_expire``: followers apply their own ``due()`` expiries locally.
#: * ``stale_release``: a client believes a grant of a token that it released
#:   before (a re-acquisition by the same node_id while its Release is in flight
#:   is a refresh that keeps the token, and the Release then ends it).
#: * ``trust_campaign``: a Campaign grant is believed from its receipt, without a
#:   confirming heartbeat.
MUTATIONS = frozenset(
    {
        "no_refresh",
        "receive_time",
        "negative_margin",
        "follower_expire",
        "stale_release",
        "trust_campaign",
    }
)

_EPS = 1e-9  # float slack for "at the same instant"


@dataclass
class ElectionSimOptions:
    """Client behaviour and client-network faults of an :class:`ElectionSimulation`.

    Times are in ticks unless named ``_ms``.
    """

    raft: SimOptions = field(default_factory=SimOptions)
    ticks: int = 400
    tick_s: float = 0.05
    clients: int = 4
    elections: int = 1
    ttl_ms: tuple[int, ...] = (500, 1000)
    act: float = 0.3  # chance per tick that an idle client tries to take its election
    campaign: float = 0.4  # share of attempts that Campaign instead of TryBecomeLeader
    refresh: float = 0.15  # share of a holder's renewals sent as TryBecomeLeader
    # share of renewal streams opened to a node that believes it is the Raft
    # leader (a deposed one too), where renewals are answered off the log
    renew_at_leader: float = 0.6
    release: float = 0.02  # chance per tick that a holder releases
    read: float = 0.05  # chance per tick that a client reads its election through a node
    stall: float = 0.03  # chance per tick that a client stops sending for a while
    max_stall: int = 60
    crash_all: float = 0.0  # chance per tick that every node crashes at once
    net_drop: float = 0.03
    net_delay: float = 0.3
    max_net_delay: int = 4
    slow: float = 0.05  # chance that a message takes up to max_slow_delay ticks
    max_slow_delay: int = 30
    duplicate: float = 0.02  # chance that a client request arrives twice
    request_timeout: int = 40  # a node's wait for its entry to apply
    client_timeout: int = 50  # a client's wait for any reply
    campaign_timeout: int = 100  # a Campaign call's deadline
    mutation: str | None = None

    def __post_init__(self) -> None:
        if self.mutation is not None and self.mutation not in MUTATIONS:
            raise ValueError(f"unknown mutation {self.mutation!r}")


class ElectionReplica:
    """One simulated node's machine: the real :class:`Elections`, watched.

    Every call goes to the ``Elections`` the server uses; around it the
    checker keeps its own records. ``renewed`` is the check's record (not the
    machine's deadlines) of when this replica last applied a grant or renewal
    of each lease (or restored it from a snapshot), on the node's clock.
    """

    def __init__(self, sim: ElectionSimulation, nid: str) -> None:
        self.sim = sim
        self.nid = nid
        self.elections = Elections()
        self.renewed: dict[tuple[str, int], float] = {}
        self.last_grant: dict[str, int] = {}  # election -> last token granted here
        self.ended: dict[str, Holder] = {}  # election -> the lease last expired here

    @property
    def machine(self) -> ElectionMachine:
        return self.elections.machine

    def request_id(self, data: bytes) -> str:
        return self.elections.request_id(data)

    def apply(self, data: bytes, index: int, now: float) -> Applied:
        return self.sim._apply(self, index, data, now)

    def dump(self) -> bytes:
        return self.elections.dump()

    def load(self, image: bytes, now: float) -> None:
        self.elections.load(image, now)
        self.renewed = {(h.election, h.fencing_token): now for h in self.machine.holders()}
        self.last_grant = {h.election: h.fencing_token for h in self.machine.holders()}
        self.ended = {}
        self.sim._restored(self)

    def due(self, now: float) -> list[bytes]:
        due = self.elections.due(now)
        for data in due:
            command, _ = decode_command(data)
            if isinstance(command, Expire):
                self.sim._check_expire_proposal(self.nid, self, command, now)
        return due

    def abandoned(self, alive: Callable[[str], bool]) -> list[bytes]:
        return self.elections.abandoned(alive)

    def lead(self, now: float) -> None:
        if self.sim.eopts.mutation != "no_refresh":
            self.elections.lead(now)

    def check_forwarded(self, data: bytes) -> None:
        self.elections.check_forwarded(data)

    def renews_off_log(self, request: object) -> bool:
        return self.elections.renews_off_log(request)

    def renew(self, request: object, arrived: float) -> Applied:
        return self.elections.renew(request, arrived)


@dataclass
class _NodeState:
    """What a node holds in memory only (lost by a crash)."""

    incarnation: int
    #: The node's Campaign bookkeeping: the server's own Hub and HubClient.
    calls: _NodeCalls
    role: Role = Role.FOLLOWER
    leader: str | None = None
    leader_since: float | None = None
    seq: int = 0
    pending: dict[str, tuple[str, int, int]] = field(
        default_factory=dict
    )  # rid -> client, creq, until
    #: The Campaign calls this node carries, as their handlers hold them.
    waiters: dict[str, _CampaignCall] = field(default_factory=dict)
    reads: dict[bytes, tuple[str, int, int]] = field(default_factory=dict)  # election, floor, until
    #: Renewals the replica answers off the log: rid -> client, creq, until, arrived.
    renewals: dict[str, tuple[str, int, int, float]] = field(default_factory=dict)


class _CampaignCall:
    """A Campaign call, as its gRPC handler waits on it: the Hub sets or fails it."""

    def __init__(self, sim: ElectionSimulation, nid: str) -> None:
        self.sim, self.nid = sim, nid
        self.client, self.creq, self.until, self.election = "", 0, 0, ""
        self.done = False

    def set(self, value: Holder | None = None) -> None:
        if not self.done:
            self.done = True
            self.sim._reply(self.nid, self.client, self.creq, True, value, False)

    def fail(self, exc: BaseException) -> None:
        if not self.done:
            self.done = True
            # Superseded is an answer ("you are not it"); anything else an error.
            error = not isinstance(exc, Superseded)
            self.sim._reply(self.nid, self.client, self.creq, False, None, error)


class _NodeCalls(HubClient):
    """One node's Hub, behind the same HubClient the server's nodes use."""

    def __init__(self, sim: ElectionSimulation, nid: str, incarnation: int) -> None:
        self.sim, self.nid = sim, nid
        self.hub = Hub(prefix=f"{nid}/{incarnation}/c", call=lambda: _CampaignCall(sim, nid))

    @property
    def machine(self) -> ElectionMachine:
        return self.sim._replica(self.nid).machine

    def submit(self, command: Command) -> None:
        self.sim._submit_cleanup(self.nid, command)


@dataclass
class _Msg:
    at: int
    seq: int
    kind: str  # "req" client->node, "reply" node->client
    src: str
    dst: str
    body: tuple


@dataclass
class _Period:
    """One stretch of time during which a client believed it held an election."""

    client: str
    election: str
    token: int
    start: float
    end: float  # the belief deadline while open, the actual end once closed
    open: bool = True


@dataclass
class _Request:
    creq: int
    kind: str  # "try", "campaign", "hb", "refresh"
    sent: float
    until: int  # tick


class _Client:
    def __init__(self, sim: ElectionSimulation, cid: str, election: str, ttl_ms: int) -> None:
        self.sim = sim
        self.id = cid
        self.election = election
        self.ttl_ms = ttl_ms
        self.ttl = ttl_ms / 1000
        # The client library's own rule (Belief), with its default margin.
        margin = -self.ttl / 5 if sim.eopts.mutation == "negative_margin" else None
        self.belief = Belief(self.ttl, margin)
        self.holding = False
        self.confirming: tuple[int, float] | None = None  # campaign grant: token, campaign sent
        self.token = 0
        self.period: _Period | None = None
        self.req: _Request | None = None
        self.creq = 0
        self.next_tick = 0  # no new request before this tick
        self.stalled_until = 0
        self.released: set[int] = set()  # tokens this client ever released
        self.renew_node: str | None = None  # where its renewals go, until one fails

    # -- belief -------------------------------------------------------------

    def believes(self, now: float) -> bool:
        return self.period is not None and now < self.period.end - _EPS

    def update(self, now: float) -> None:
        """Lose leadership once the client-side deadline has passed."""
        if self.period is not None and now >= self.period.end - _EPS:
            self._close(self.period.end)

    def _close(self, at: float) -> None:
        self.belief.lose()
        if self.period is not None:
            self.period.end = min(self.period.end, at)
            self.period.open = False
            self.period = None
        self.holding = False
        self.confirming = None

    def _hold(self, token: int, basis: float, now: float) -> None:
        """A grant/renewal sent at ``basis`` succeeded (reply received at ``now``)."""
        if self.sim.eopts.mutation == "receive_time":
            basis = now
        if self.period is not None and self.period.token != token:
            self._close(now)
        deadline = self.belief.confirmed(basis)
        if self.period is not None:
            self.period.end = max(self.period.end, deadline)
        elif now < deadline - _EPS:
            self.period = self.sim._open_period(self, token, now, deadline)
        self.holding = self.period is not None
        self.token = token

    # -- actions ------------------------------------------------------------

    def act(self) -> None:
        sim, rng, eo = self.sim, self.sim.rng, self.sim.eopts
        tick, now = sim.cluster.now, sim.clock()
        self.update(now)
        if self.req is not None and tick >= self.req.until:
            self._abandon()
        if tick < self.stalled_until:
            return
        if rng.random() < eo.stall:
            self.stalled_until = tick + rng.randrange(1, eo.max_stall + 1)
            return
        if rng.random() < eo.read:
            sim._send_read(self)
        if self.holding and rng.random() < eo.release:
            self._release(self.token)
            self._close(now)  # stops believing when it decides to release
            self.req = None
            self.next_tick = tick + rng.randrange(1, 20)
            return
        if self.req is not None or tick < self.next_tick:
            return
        if self.holding:
            if rng.random() < eo.refresh:
                cmd: Command = Acquire(self.election, self.id, self.ttl_ms, b"")
                self._request("refresh", cmd, tick)
            else:
                self._request("hb", Renew(self.election, self.id, self.token), tick)
        elif self.confirming is None and rng.random() < eo.act:
            if rng.random() < eo.campaign:
                cmd = Acquire(self.election, self.id, self.ttl_ms, self.id.encode(), wait=True)
                self._request("campaign", cmd, tick, eo.campaign_timeout + 10)
            else:
                cmd = Acquire(self.election, self.id, self.ttl_ms, self.id.encode())
                self._request("try", cmd, tick)

    def _release(self, token: int) -> None:
        # A Release may land after a later re-acquisition by the same node_id,
        # which is a refresh that keeps the token: a reply granting a token we
        # ever released proves nothing (even once the Release was answered,
        # the grant's reply may be older news), so it is never believed.
        self.creq += 1
        self.released.add(token)
        self.sim._send_request(self, self.creq, Release(self.election, self.id, token))

    def _request(self, kind: str, cmd: Command, tick: int, timeout: int | None = None) -> None:
        eo = self.sim.eopts
        limit = eo.client_timeout if timeout is None else timeout
        self.creq += 1
        self.req = _Request(self.creq, kind, self.sim.clock(), tick + limit)
        self.sim._send_request(self, self.creq, cmd)

    def _abandon(self) -> None:
        assert self.req is not None
        self.renew_node = None
        if self.req.kind in ("hb", "refresh") and self.confirming is not None:
            self.confirming = None
        self.req = None
        self.next_tick = self.sim.cluster.now + self.sim.rng.randrange(1, 4)

    def _doubt(self, token: int) -> bool:
        return token in self.released and self.sim.eopts.mutation != "stale_release"

    def on_reply(self, creq: int, ok: bool, holder: Holder | None, error: bool) -> None:
        sim = self.sim
        tick, now = sim.cluster.now, sim.clock()
        self.update(now)
        req = self.req
        if req is None or req.creq != creq:
            return  # a reply to an abandoned or duplicated request
        self.req = None
        interval = max(1, int(self.ttl / 3 / sim.eopts.tick_s))
        mine = holder is not None and holder.node_id == self.id
        if error:
            # No answer: try again soon (a holder keeps believing until its deadline).
            self.next_tick = tick + sim.rng.randrange(1, 4)
            self.renew_node = None
            if req.kind in ("hb", "refresh") and self.confirming is not None:
                self.confirming = None
            return
        if req.kind == "campaign":
            if ok and mine and self._doubt(holder.fencing_token):
                self._release(holder.fencing_token)
                self.next_tick = tick + sim.rng.randrange(1, 10)
                return
            if ok and mine:
                sim._client_got_grant(self, holder)
                if sim.eopts.mutation == "trust_campaign":
                    self._hold(holder.fencing_token, now, now)
                    self.next_tick = tick + interval
                    return
                # Believe nothing yet: confirm with a heartbeat first.
                self.confirming = (holder.fencing_token, req.sent)
                self.token = holder.fencing_token
                self._request("hb", Renew(self.election, self.id, self.token), tick)
            else:
                self.next_tick = tick + sim.rng.randrange(1, 10)
            return
        if ok and mine and self._doubt(holder.fencing_token):
            # Granted a token that our own earlier Release may end (or ended):
            # do not believe it; release it again, so the next grant is new.
            self._close(now)
            self._release(holder.fencing_token)
            self.next_tick = tick + sim.rng.randrange(1, 10)
            return
        if ok and mine:
            if req.kind in ("try", "refresh"):
                sim._client_got_grant(self, holder)
            if req.kind == "hb" and holder.fencing_token != self.token:
                raise sim._violation(
                    f"{self.id}: heartbeat for token {self.token} answered with "
                    f"token {holder.fencing_token}"
                )
            if req.kind == "hb" and not self.holding and self.confirming is None:
                return  # lost in the meantime: a late success changes nothing
            if req.kind == "refresh" and not self.holding:
                return  # a released/lost client does not get back in by a refresh
            self.confirming = None
            self._hold(holder.fencing_token, req.sent, now)
            self.next_tick = tick + interval
        else:
            # Refused: someone else holds it (or nobody); leadership is lost now.
            self._close(now)
            self.next_tick = tick + sim.rng.randrange(1, 10)


class _ElectionCluster(Cluster):
    """A Cluster whose nodes run :class:`ElectionReplica` and report crashes."""

    def __init__(self, sim: ElectionSimulation, ids: list[str], **kwargs: object) -> None:
        self._sim = sim
        self._tick_s = sim.eopts.tick_s
        self._binding = ""
        super().__init__(
            ids,
            sm_factory=lambda: ElectionReplica(sim, self._binding),
            **kwargs,  # type: ignore[arg-type]
        )

    def time(self) -> float:
        return self.now * self._tick_s

    def add_node(self, nid: str, bootstrap: list[str] | None = None):  # noqa: ANN201
        self._binding = nid
        sn = super().add_node(nid, bootstrap)
        self._sim._node_started(nid)
        return sn

    def restart(self, nid: str) -> None:
        self._binding = nid
        super().restart(nid)
        self._sim._node_started(nid)

    def crash(self, nid: str) -> None:
        super().crash(nid)
        self._sim._node_crashed(nid)


class ElectionSimulation(Simulation):
    """Election machines on a simulated Raft cluster, with clients; reproducible by seed."""

    def __init__(self, seed: int, opts: ElectionSimOptions | None = None) -> None:
        self.seed = seed
        self.eopts = eo = opts or ElectionSimOptions()
        # ``opts`` holds the Raft faults, as in the base class (no KV traffic).
        o = self.opts = eo.raft
        o.propose = o.read = 0.0
        self.rng = random.Random(seed)
        # -- node-local (volatile) state and the checker's records --------
        self.node_state: dict[str, _NodeState] = {}
        self.incarnations: dict[str, int] = {}
        self.app_net: list[_Msg] = []
        self._msg_seq = 0
        self.state_at: dict[int, bytes] = {}  # index -> dump_machine after applying it
        self.grant_at: dict[int, tuple[str, int, str]] = {}  # index -> election, token, holder
        self.token_index: dict[tuple[str, int], int] = {}  # (election, token) -> grant index
        self.ended_at: dict[tuple[str, int], int] = {}  # (election, token) -> ending index
        self.last_send: dict[tuple[str, int], float] = {}  # lease -> last heartbeat send time
        self.rid_sent: dict[str, tuple[str, float]] = {}  # request id -> client, send time
        self.acked: dict[tuple[str, int], int] = {}  # grants acknowledged to clients
        self.periods: dict[str, list[_Period]] = {}
        self.stats = {
            "grants": 0,
            "expired": 0,
            "released": 0,
            "periods": 0,
            "leaders": 0,
            "reads": 0,
            "renewed_off_log": 0,
        }
        self.cluster = _ElectionCluster(
            self,
            [f"n{i}" for i in range(1, o.nodes + 1)],
            seed=seed,
            pre_vote=o.pre_vote,
            check_quorum=o.check_quorum,
            max_entries_per_msg=o.max_entries_per_msg,
            max_inflight_msgs=o.max_inflight_msgs,
        )
        self.cluster.on_ready = self._on_ready
        self.cluster.on_done = self._on_done
        self._n = 0
        self._next_id = o.nodes + 1
        crng = random.Random(f"{seed}/clients")
        self.clients = [
            _Client(self, f"c{i}", f"e{i % eo.elections}", crng.choice(eo.ttl_ms))
            for i in range(1, eo.clients + 1)
        ]
        self.quiet = False  # no new client requests (while settling)

    def clock(self) -> float:
        """The virtual clock, in seconds (every node and client reads it)."""
        return self.cluster.now * self.eopts.tick_s

    def _violation(self, what: str) -> InvariantViolation:
        return InvariantViolation(
            f"seed {self.seed}, tick {self.cluster.now} (t={self.clock():.2f}s"
            f"{', mutation ' + self.eopts.mutation if self.eopts.mutation else ''}): {what}"
        )

    # -- node lifecycle --------------------------------------------------

    def _node_started(self, nid: str) -> None:
        inc = self.incarnations.get(nid, -1) + 1
        self.incarnations[nid] = inc
        self.node_state[nid] = _NodeState(inc, _NodeCalls(self, nid, inc))
        if hasattr(self, "cluster"):  # not while the cluster is being built
            self._check_acked_on(nid)

    def _node_crashed(self, nid: str) -> None:
        # Role, pending requests and campaign waiters are gone; their clients
        # time out.
        inc = self.node_state[nid].incarnation
        self.node_state[nid] = _NodeState(inc, _NodeCalls(self, nid, inc))

    def _on_ready(self, nid: str, work: Work) -> None:
        if not work.leader_changed:
            return
        st = self.node_state[nid]
        replica = self.cluster.nodes[nid].live()
        was_leader = st.role is Role.LEADER
        st.leader, st.role = replica.leader, replica.role
        if st.role is Role.LEADER and not was_leader:
            # The replica refreshed every lease (Elections.lead) as it said so.
            st.leader_since = self.clock()
            self.stats["leaders"] += 1
        elif st.role is not Role.LEADER:
            st.leader_since = None

    def _on_done(self, nid: str, done: Done) -> None:
        """Answer the requests this node carries, as ClusterNode does from a Done."""
        for applied in done.applied:
            if applied.outcome is not None:
                self._answer(nid, applied.request_id, applied.outcome)
            elif applied.error is not None:
                self._fail(nid, applied.request_id)
        st, sn = self.node_state[nid], self.cluster.nodes[nid]
        for rid, renewed in done.renewed:
            self._answer_renewal(nid, rid, renewed.outcome)
        for rid in done.renewals_lost:
            call = st.renewals.pop(rid, None)
            if call is not None:
                self._reply(nid, call[0], call[1], False, None, True)
        for ctx in done.reads:
            read = st.reads.pop(ctx, None)
            if read is None:
                continue
            election, floor, _ = read
            if sn.applied < floor:
                raise self._violation(
                    f"stale read of {election} on {nid}: answered at applied index "
                    f"{sn.applied}, but a grant at index {floor} was acknowledged before the "
                    "read was sent (linearizable reads)"
                )
            self.stats["reads"] += 1

    def _answer_renewal(self, nid: str, rid: str, outcome: Outcome) -> None:
        """A renewal the leader answered off the log: record it as the checks
        need it (a deadline moved on this node only), then reply."""
        call = self.node_state[nid].renewals.pop(rid, None)
        if outcome.success:
            h = outcome.holder
            key = (h.election, h.fencing_token)
            rep = self._replica(nid)
            arrived = call[3] if call is not None else self.clock()
            rep.renewed[key] = max(rep.renewed.get(key, -math.inf), arrived)
            sent = self.rid_sent.get(rid)
            if sent is not None and sent[0] == h.node_id:
                self.last_send[key] = max(self.last_send.get(key, -math.inf), sent[1])
            self.stats["renewed_off_log"] += 1
        if call is not None:
            self._reply(nid, call[0], call[1], outcome.success, outcome.holder, False)

    def _replica(self, nid: str) -> ElectionReplica:
        sm = self.cluster.nodes[nid].sm
        assert isinstance(sm, ElectionReplica)
        return sm

    # -- expiries ----------------------------------------------------------------

    def _follower_expiry(self, nid: str) -> None:
        """The ``follower_expire`` mutation: a follower expires leases by itself."""
        rep = self._replica(nid)
        if self.node_state[nid].role is not Role.LEADER:
            now = self.clock()
            for cmd in rep.machine.due(now):
                rep.machine.apply(cmd, now, 0)

    def _check_expire_proposal(
        self, nid: str, rep: ElectionReplica, cmd: Expire, now: float
    ) -> None:
        holder = rep.machine.holder(cmd.election)
        if holder is None or holder.fencing_token != cmd.fencing_token:
            raise self._violation(f"{nid} proposes {cmd} for a lease it does not have")
        ttl = holder.ttl_ms / 1000
        renewed = rep.renewed.get((cmd.election, cmd.fencing_token))
        if renewed is None:
            raise self._violation(f"{nid}: no record of when {cmd} was granted/renewed")
        since = self.node_state[nid].leader_since
        floor = max(renewed, since if since is not None else math.inf)
        if now < floor + ttl - _EPS:
            raise self._violation(
                f"early expiry: leader {nid} proposes {cmd} at {now:.3f}s, but it applied "
                f"the last renewal at {renewed:.3f}s and leads since {since}s, ttl "
                f"{ttl:g}s (docs/design.md promise 3)"
            )

    # -- applying entries ---------------------------------------------------------

    def _apply(self, rep: ElectionReplica, index: int, data: bytes, now: float) -> Applied:
        nid = rep.nid
        applied = rep.elections.apply(data, index, now)
        if applied.outcome is None:
            raise self._violation(f"{nid}: entry {index} applied as a no-op: {applied.error!r}")
        outcome = applied.outcome
        assert isinstance(outcome, Outcome)
        command, rid = decode_command(data)
        first = index not in self.state_at
        # -- the check's own record of renewals, and fencing tokens ------------
        for event in outcome.events:
            h = event.holder
            assert h is not None
            key = (h.election, h.fencing_token)
            if event.kind is EventKind.ELECTED:
                last = rep.last_grant.get(h.election, 0)
                if h.fencing_token <= last:
                    raise self._violation(
                        f"{nid}: grant of {h.election} at index {index} has token "
                        f"{h.fencing_token}, not above the previous grant's {last}"
                    )
                rep.last_grant[h.election] = h.fencing_token
                rep.renewed[key] = now
                self._check_replacement(nid, rep, h, index, now)
                if first:
                    self.grant_at[index] = (h.election, h.fencing_token, h.node_id)
                    self.token_index[key] = index
                    self.stats["grants"] += 1
                    sent = self.rid_sent.get(rid)
                    if (
                        isinstance(command, Acquire)
                        and not command.wait
                        and sent is not None
                        and sent[0] == h.node_id
                    ):
                        self.last_send[key] = sent[1]
                elif self.grant_at.get(index) != (h.election, h.fencing_token, h.node_id):
                    raise self._violation(
                        f"{nid} granted {key} to {h.node_id} at index {index}, another "
                        f"replica granted {self.grant_at.get(index)}"
                    )
            else:
                rep.renewed.pop(key, None)
                if event.kind is EventKind.EXPIRED:
                    rep.ended[h.election] = h
                else:
                    rep.ended.pop(h.election, None)
                if first:
                    self.ended_at[key] = index
                    self.stats["expired" if event.kind is EventKind.EXPIRED else "released"] += 1
        if (
            isinstance(command, (Renew, Acquire))
            and outcome.success
            and not outcome.events
            and outcome.holder is not None
            and outcome.holder.node_id == command.node_id
        ):
            h = outcome.holder
            key = (h.election, h.fencing_token)
            rep.renewed[key] = now
            sent = self.rid_sent.get(rid)
            if first and sent is not None and sent[0] == h.node_id:
                self.last_send[key] = max(self.last_send.get(key, -math.inf), sent[1])
        # -- replicas agree ---------------------------------------------------------
        state = dump_machine(rep.machine)
        if first:
            self.state_at[index] = state
        elif self.state_at[index] != state:
            raise self._violation(
                f"replicas diverge: {nid} after index {index} has {state!r}, another "
                f"replica had {self.state_at[index]!r}"
            )
        return applied

    def _check_replacement(
        self, nid: str, rep: ElectionReplica, granted: Holder, index: int, now: float
    ) -> None:
        """No grant before ``ttl`` after the expired holder's last heartbeat was sent."""
        old = rep.ended.pop(granted.election, None)
        if old is None:
            return
        sent = self.last_send.get((old.election, old.fencing_token))
        if sent is not None and now < sent + old.ttl_ms / 1000 - _EPS:
            raise self._violation(
                f"{nid} applies a grant of {granted.election} to {granted.node_id} (index "
                f"{index}) at {now:.3f}s, but {old.node_id}'s lease (token "
                f"{old.fencing_token}, ttl {old.ttl_ms} ms) was last renewed by a heartbeat "
                f"sent at {sent:.3f}s (docs/design.md promise 3)"
            )

    def _restored(self, rep: ElectionReplica) -> None:
        sn = self.cluster.nodes.get(rep.nid)
        if sn is None:
            return
        index = sn.disk.snapshot().metadata.index
        state = dump_machine(rep.machine)
        known = self.state_at.setdefault(index, state)
        if known != state:
            raise self._violation(
                f"{rep.nid} restored a snapshot at {index} that differs from the state "
                f"replicas had there: {state!r} vs {known!r}"
            )

    # -- answering clients --------------------------------------------------------

    def _answer(self, nid: str, rid: str, outcome: Outcome) -> None:
        st = self.node_state[nid]
        call = st.pending.pop(rid, None)
        if call is not None:
            client, creq, _ = call
            self._reply(nid, client, creq, outcome.success, outcome.holder, False)
        # As ClusterNode: the Hub wakes or fails the Campaigns this node
        # carries, and gives back grants to those whose call is gone.
        st.calls.report(outcome)

    def _reply(
        self, nid: str, client: str, creq: int, ok: bool, holder: Holder | None, error: bool
    ) -> None:
        self._net(nid, client, "reply", (creq, ok, holder, error))

    def _fail(self, nid: str, rid: str) -> None:
        st = self.node_state[nid]
        sn = self.cluster.nodes[nid]
        if sn.alive:
            sn.live().forget(rid)
        call = st.pending.pop(rid, None)
        if call is not None:
            self._reply(nid, call[0], call[1], False, None, True)
        campaign = st.waiters.pop(rid, None)
        if campaign is not None:
            # As the Campaign handler on an error or its deadline: answer with
            # the error, and leave the queue (HubClient.end_campaign).
            campaign.fail(TimeoutError())
            st.calls.end_campaign(campaign.election, rid)

    # -- the client-facing network ------------------------------------------------

    def _net(self, src: str, dst: str, kind: str, body: tuple, copies: int = 1) -> None:
        rng, eo, c = self.rng, self.eopts, self.cluster
        for _ in range(copies):
            if rng.random() < eo.net_drop:
                continue
            delay = 0
            if rng.random() < eo.slow:
                delay = rng.randrange(1, eo.max_slow_delay + 1)
            elif rng.random() < eo.net_delay:
                delay = rng.randrange(1, eo.max_net_delay + 1)
            self._msg_seq += 1
            self.app_net.append(_Msg(c.now + delay, self._msg_seq, kind, src, dst, body))

    def _send_request(self, client: _Client, creq: int | None, cmd: Command) -> None:
        node = self.rng.choice(sorted(self.cluster.nodes))
        if isinstance(cmd, Renew):
            # As the client library's one KeepAlive stream: the same node
            # until a renewal fails.
            if client.renew_node is not None:
                node = client.renew_node
            elif self.rng.random() < self.eopts.renew_at_leader:
                leaders = [
                    nid
                    for nid, st in sorted(self.node_state.items())
                    if st.role is Role.LEADER and self.cluster.nodes[nid].alive
                ]
                if leaders:
                    node = self.rng.choice(leaders)
            client.renew_node = node
        copies = 2 if self.rng.random() < self.eopts.duplicate else 1
        self._net(client.id, node, "req", (creq, cmd, self.clock()), copies)

    def _deliver_app(self) -> bool:
        c = self.cluster
        due = [m for m in self.app_net if m.at <= c.now]
        if not due:
            return False
        self.app_net = [m for m in self.app_net if m.at > c.now]
        self.rng.shuffle(due)
        clients = {cl.id: cl for cl in self.clients}
        for m in due:
            if m.kind == "reply":
                creq, ok, holder, error = m.body
                if creq is not None:
                    clients[m.dst].on_reply(creq, ok, holder, error)
                continue
            sn = c.nodes.get(m.dst)
            if sn is None or not sn.alive:
                continue
            if m.kind == "req":
                self._on_request(m.dst, m.src, *m.body)
            elif m.kind == "read":
                self._on_read(m.dst, *m.body)
        return True

    def _on_request(
        self, nid: str, client: str, creq: int | None, cmd: Command, sent: float
    ) -> None:
        st = self.node_state[nid]
        st.seq += 1
        rid = f"{nid}/{st.incarnation}/{st.seq}"
        if isinstance(cmd, Acquire) and cmd.wait:
            # As the Campaign handler: the Hub names the waiter (and the
            # request, here); nobody waits for a call whose reply is dropped.
            rid, campaign = st.calls.new_campaign()
            cmd = Acquire(cmd.election, cmd.node_id, cmd.ttl_ms, cmd.value, True, rid)
            if creq is None:
                st.calls.hub.forget_campaign(rid)
            else:
                campaign.client, campaign.creq = client, creq
                campaign.until = self.cluster.now + self.eopts.campaign_timeout
                campaign.election = cmd.election
                st.waiters[rid] = campaign
        elif isinstance(cmd, Renew):
            # As ClusterNode.renew: the Raft leader answers off the log.
            self.rid_sent[rid] = (client, sent)
            now = self.clock()
            if self.cluster.nodes[nid].live().renew(rid, cmd, now):
                if creq is not None:
                    until = self.cluster.now + self.eopts.request_timeout
                    st.renewals[rid] = (client, creq, until, now)
                return
            if creq is not None:
                st.pending[rid] = (client, creq, self.cluster.now + self.eopts.request_timeout)
        elif creq is not None:
            st.pending[rid] = (client, creq, self.cluster.now + self.eopts.request_timeout)
        self.rid_sent[rid] = (client, sent)
        self._submit(nid, encode_command(cmd, rid), rid)

    def _send_read(self, client: _Client) -> None:
        """GetCurrentLeader through a random node; the checker notes the last
        grant acknowledged to any client before it was sent."""
        node = self.rng.choice(sorted(self.cluster.nodes))
        floor = max(self.acked.values(), default=0)
        self._net(client.id, node, "read", (client.election, floor))

    def _on_read(self, nid: str, election: str, floor: int) -> None:
        """A linearizable read, as ClusterNode.read does it (ReadIndex)."""
        st = self.node_state[nid]
        st.seq += 1
        ctx = f"{nid}/{st.incarnation}/r{st.seq}".encode()
        st.reads[ctx] = (election, floor, self.cluster.now + self.eopts.request_timeout)
        try:
            self.cluster.nodes[nid].live().read(ctx)
        except ProposalDropped:
            del st.reads[ctx]  # no leader known: answered UNAVAILABLE

    def _submit(self, nid: str, data: bytes, rid: str) -> None:
        """Submit to the node's replica: it proposes on the leader, or forwards
        to the leader it knows in Raft's messages, and retries until applied."""
        with contextlib.suppress(ProposalDropped):  # retried on its ticks (with a rid)
            self.cluster.nodes[nid].live().submit(data, rid)

    def _submit_cleanup(self, nid: str, command: Command) -> None:
        """As ``ClusterNode.submit``: retried until applied, for a bounded time."""
        st = self.node_state[nid]
        st.seq += 1
        rid = f"{nid}/{st.incarnation}/{st.seq}"
        with contextlib.suppress(ProposalDropped):
            self.cluster.nodes[nid].live().submit(
                encode_command(command, rid), rid, self.eopts.request_timeout
            )

    def _timeouts(self) -> None:
        tick = self.cluster.now
        for nid, st in self.node_state.items():
            if not self.cluster.nodes[nid].alive:
                continue
            for rid, (_, _, until) in list(st.pending.items()):
                if tick >= until:
                    self._fail(nid, rid)
            for waiter, campaign in list(st.waiters.items()):
                if campaign.done:
                    del st.waiters[waiter]
                elif tick >= campaign.until:
                    self._fail(nid, waiter)
            for rid, (client, creq, until, _) in list(st.renewals.items()):
                if tick >= until:
                    del st.renewals[rid]
                    self._reply(nid, client, creq, False, None, True)
            for ctx, (_, _, until) in list(st.reads.items()):
                if tick >= until:
                    del st.reads[ctx]
                    self.cluster.nodes[nid].live().forget_read(ctx)

    # -- client-side checks --------------------------------------------------------

    def _client_got_grant(self, client: _Client, holder: Holder) -> None:
        key = (holder.election, holder.fencing_token)
        index = self.token_index.get(key)
        if index is None or self.grant_at[index][2] != client.id:
            raise self._violation(
                f"{client.id} was told it holds {key}, which no committed entry granted it"
            )
        self.acked[key] = index

    def _open_period(self, client: _Client, token: int, now: float, deadline: float) -> _Period:
        periods = self.periods.setdefault(client.election, [])
        for other in self.clients:
            if other is not client and other.election == client.election:
                other.update(now)
                if other.believes(now):
                    raise self._violation(
                        f"two holders of {client.election}: {client.id} (token {token}) "
                        f"believes it holds it from {now:.3f}s while {other.id} (token "
                        f"{other.period.token}) believes it until {other.period.end:.3f}s "
                        "(docs/design.md promises 1 and 4)"
                    )
        for p in periods:
            if p.token > token or (p.token == token and p.client != client.id):
                raise self._violation(
                    f"fencing tokens of {client.election} go down: {client.id} holds "
                    f"{token} from {now:.3f}s after {p.client} held {p.token} from "
                    f"{p.start:.3f}s (docs/design.md promise 2)"
                )
        period = _Period(client.id, client.election, token, now, deadline)
        periods.append(period)
        self.stats["periods"] += 1
        return period

    def _check_acked_on(self, nid: str) -> None:
        """Acknowledged grants are there (or ended by a committed entry) on ``nid``."""
        sn = self.cluster.nodes[nid]
        if not sn.alive:
            return
        machine = self._replica(nid).machine
        for (election, token), index in self.acked.items():
            if index > sn.applied:
                continue
            ended = self.ended_at.get((election, token))
            holder = machine.holder(election)
            has = holder is not None and holder.fencing_token == token
            if ended is not None and ended <= sn.applied:
                if has:
                    raise self._violation(
                        f"{nid} still has {(election, token)}, ended at index {ended}"
                    )
            elif not has:
                raise self._violation(
                    f"{nid} applied up to {sn.applied} and forgot the acknowledged grant "
                    f"{(election, token)} of index {index} (holder now {holder})"
                )

    # -- one virtual tick -----------------------------------------------------------

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
                c.tick(nid)  # the leader's replica proposes the expiries that are due
            if self.eopts.mutation == "follower_expire":
                self._follower_expiry(nid)
        if rng.random() < self.eopts.crash_all:
            for nid in self.ids:
                if c.nodes[nid].alive:
                    c.crash(nid)
        if rng.random() < o.partition:
            members = self._shuffled(self.ids)
            c.partition(members[: rng.randrange(1, len(members))])
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
        if not self.quiet:
            for client in self._shuffled_clients():
                client.act()
        for _ in range(4):
            delivered = self._deliver_app()
            self._pump()
            if not delivered and not any(m.at <= c.now for m in self.app_net):
                break
        self._timeouts()
        self.check()

    def _shuffled_clients(self) -> list[_Client]:
        xs = list(self.clients)
        self.rng.shuffle(xs)
        return xs

    def check(self) -> None:
        """The per-step checks (the event-driven ones run as events happen)."""
        now = self.clock()
        for client in self.clients:
            client.update(now)
        for nid in self.ids:
            self._check_acked_on(nid)

    # -- whole runs -------------------------------------------------------------------

    def run(self) -> None:
        """Run ``opts.ticks`` faulty ticks, then settle and check convergence."""
        for _ in range(self.eopts.ticks):
            self.step()
        self.settle()

    def settle(self, max_ticks: int = 800) -> None:
        """Heal, restart everyone, stop faults and clients; require convergence.

        Then every replica must hold the same state, and every acknowledged
        grant must be there or ended by a committed entry.
        """
        c, o = self.cluster, self.opts
        eo = self.eopts
        c.heal()
        for nid in self.ids:
            if not c.nodes[nid].alive:
                c.restart(nid)
        saved_raft = (o.drop, o.duplicate, o.crash, o.crash_in_ready, o.partition, o.delay)
        saved_net = (eo.net_drop, eo.slow, eo.duplicate, eo.stall)
        o.drop = o.duplicate = o.crash = o.crash_in_ready = o.partition = o.delay = 0.0
        saved_lc, o.leader_crash = o.leader_crash, 0.0
        eo.net_drop = eo.slow = eo.duplicate = eo.stall = 0.0
        self.quiet = True
        try:
            marker, attempt, since = b"", 0, 0
            for _ in range(max_ticks):
                self.step()
                lead = c.leader()
                if lead is None or self.node_state[lead].role is not Role.LEADER:
                    continue
                since += 1
                if marker not in c.acked and (not marker or since > 50):
                    attempt += 1
                    candidate = encode_command(CancelWait("", f"settle{attempt}"), "settle")
                    if c.propose(lead, candidate):
                        marker, since = candidate, 0
                    continue
                if marker in c.acked and self._converged():
                    break
            else:
                raise self._violation(
                    f"no convergence after healing (leader={c.leader()}, {self.describe()})"
                )
        finally:
            o.drop, o.duplicate, o.crash, o.crash_in_ready, o.partition, o.delay = saved_raft
            o.leader_crash = saved_lc
            eo.net_drop, eo.slow, eo.duplicate, eo.stall = saved_net
            self.quiet = False
        states = {nid: dump_machine(self._replica(nid).machine) for nid in self.voters()}
        if len(set(states.values())) != 1:
            raise self._violation(f"replicas differ after settling: {states}")
        for nid in self.voters():
            self._check_acked_on(nid)
