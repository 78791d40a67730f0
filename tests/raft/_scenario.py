"""Interpreter for the scenario scripts in ``testdata/*.txt``.

Modelled on etcd-io/raft's datadriven interaction tests. A file is a list of
blocks separated by blank lines::

    # comments are kept
    command arg1 key=value
    ----
    expected output

Node numbers in commands (``1``) name nodes ``n1``. ``pytest --rewrite``
rewrites the expected outputs with the actual ones.

Commands:
    add-nodes N [pre-vote=false] [check-quorum=false] [max-inflight=K]
        [max-entries=K]    first use: bootstrap nodes 1..N; later: add N
                           brand-new empty nodes (to be added by conf change)
    campaign I | tick I [N] | tick-election I | tick-heartbeat I | tick-all N
    stabilize [I ...]      handle Readies and deliver messages until quiet
    process-ready I        handle one Ready of node I
    deliver-msgs [I]       deliver the queued messages (to node I)
    drop A->B | drop all   discard queued messages
    partition 1,2 3        split the network (unlisted nodes: one more group)
    isolate I | heal
    propose I DATA | propose-many I N PREFIX | propose-conf-change I add|remove J
    read-index I CTX | transfer-leadership I J | report-unreachable I J
    crash I | restart I | compact I INDEX
    raft-state | raft-log I | log-terms | status I | sm I | read-results
    log-level quiet|full   quiet: stabilize prints a one-line summary
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trio_election.raft import (
    ConfChange,
    ConfChangeType,
    ProposalDropped,
    RaftError,
    Role,
    decode_message,
    describe_entry,
    describe_message,
)
from trio_election.replica import Work
from trio_election.testing import Cluster


@dataclass
class Block:
    comments: list[str]
    command: str
    expected: str


def parse(text: str) -> tuple[list[Block], list[str]]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    comments: list[str] = []
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line.startswith("#"):
            comments.append(line)
            i += 1
            continue
        command = line.strip()
        i += 1
        if i >= len(lines) or lines[i] != "----":
            raise ValueError(f"expected '----' after command {command!r}")
        i += 1
        out: list[str] = []
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        blocks.append(Block(comments, command, "\n".join(out)))
        comments = []
    return blocks, comments


def render(blocks: list[Block], trailing: list[str]) -> str:
    parts = []
    for b in blocks:
        head = "\n".join([*b.comments, b.command, "----"])
        parts.append(head + ("\n" + b.expected if b.expected else ""))
    text = "\n\n".join(parts) + "\n"
    if trailing:
        text += "\n" + "\n".join(trailing) + "\n"
    return text


def nid(tok: str) -> str:
    return tok if tok.startswith("n") else f"n{tok}"


class Interpreter:
    def __init__(self) -> None:
        self.cluster: Cluster | None = None
        self.out: list[str] = []
        self.quiet = False
        self.next_id = 1

    @property
    def c(self) -> Cluster:
        assert self.cluster is not None, "add-nodes first"
        return self.cluster

    def emit(self, s: str) -> None:
        self.out.append(s)

    def run(self, command: str) -> str:
        self.out = []
        handler, rest = command_handler(self, command)
        try:
            handler(rest)
        except (RaftError, AssertionError) as e:
            self.emit(f"error: {type(e).__name__}: {e}")
        return "\n".join(line.rstrip() for line in self.out if line.strip())

    # -- tracing -------------------------------------------------------------

    def _on_ready(self, node: str, work: Work) -> None:
        rd = work.ready
        if self.quiet:
            return
        self.emit(f"> {node} handling Ready")
        if rd.soft_state is not None:
            self.emit(f"  {rd.soft_state.role} Lead:{rd.soft_state.leader}")
        if rd.hard_state is not None:
            hs = rd.hard_state
            self.emit(f"  HardState Term:{hs.term} Vote:{hs.vote} Commit:{hs.commit}")
        if rd.entries:
            self.emit("  Entries:")
            for e in rd.entries:
                self.emit(f"  {describe_entry(e)}")
        if rd.snapshot is not None:
            md = rd.snapshot.metadata
            self.emit(
                f"  Snapshot Index:{md.index} Term:{md.term} "
                f"Voters:({','.join(md.conf_state.voters)})"
            )
        if rd.committed_entries:
            self.emit("  CommittedEntries:")
            for e in rd.committed_entries:
                self.emit(f"  {describe_entry(e)}")
        if rd.messages or rd.messages_after_persist:
            self.emit("  Messages:")
            for m in (*rd.messages, *rd.messages_after_persist):
                self.emit(f"  {describe_message(m)}")
        for rs in rd.read_states:
            self.emit(f"  ReadState Index:{rs.index} Ctx:{rs.ctx.decode()}")

    def _deliver_to(self, dst: str | None = None) -> tuple[int, Counter[str]]:
        c = self.c
        stats: Counter[str] = Counter()
        targets = sorted({f.dst for f in c.network}) if dst is None else [dst]
        n = 0
        for t in targets:
            batch = [f for f in c.network if f.dst == t]
            if not batch:
                continue
            if not self.quiet:
                self.emit(f"> {t} receiving messages")
            for f in batch:
                m = decode_message(f.msg)
                ok = c.deliver(f)
                n += 1
                stats[str(m.type) + (" rejected" if m.reject else "")] += 1
                if not self.quiet:
                    suffix = "" if ok else "  (dropped)"
                    self.emit(f"  {describe_message(m)}{suffix}")
        return n, stats

    # -- commands ------------------------------------------------------------

    def cmd_add_nodes(self, args: list[str]) -> None:
        n = int(args[0])
        opts = dict(a.split("=", 1) for a in args[1:])
        ids = [f"n{self.next_id + i}" for i in range(n)]
        self.next_id += n
        if self.cluster is None:
            self.cluster = Cluster(
                ids,
                seed=int(opts.get("seed", 0)),
                pre_vote=opts.get("pre-vote", "true") == "true",
                check_quorum=opts.get("check-quorum", "true") == "true",
                max_inflight_msgs=int(opts.get("max-inflight", 256)),
                max_entries_per_msg=int(opts.get("max-entries", 64)),
                election_tick=int(opts.get("election", 10)),
            )
            self.cluster.on_ready = self._on_ready
            self.emit(f"bootstrapped {' '.join(ids)}")
        else:
            for i in ids:
                self.c.add_node(i)
            self.emit(f"added empty {' '.join(ids)}")

    def cmd_campaign(self, args: list[str]) -> None:
        self.c.nodes[nid(args[0])].raw().campaign()

    def cmd_tick(self, args: list[str]) -> None:
        self.c.tick(nid(args[0]), int(args[1]) if len(args) > 1 else 1)

    def cmd_tick_all(self, args: list[str]) -> None:
        """Tick every live node N times (all clocks advance together)."""
        for _ in range(int(args[0]) if args else 1):
            for node in sorted(self.c.nodes):
                if self.c.nodes[node].alive:
                    self.c.tick(node)

    def cmd_tick_heartbeat(self, args: list[str]) -> None:
        r = self.c.nodes[nid(args[0])].raw()._raft
        self.c.tick(nid(args[0]), r.heartbeat_timeout)

    def cmd_tick_election(self, args: list[str]) -> None:
        node = nid(args[0])
        r = self.c.nodes[node].raw()._raft
        if r.role != Role.LEADER and r.promotable():
            # Exactly enough ticks for this node's randomized timeout to fire.
            n = max(1, r.randomized_election_timeout - r.election_elapsed)
        else:
            n = r.election_timeout
        self.c.tick(node, n)

    def cmd_stabilize(self, args: list[str]) -> None:
        only = {nid(a) for a in args}
        total: Counter[str] = Counter()
        delivered = 0
        for _ in range(10_000):
            progressed = False
            for node in sorted(self.c.nodes):
                if only and node not in only:
                    continue
                while self.c.handle_ready(node) is not None:
                    progressed = True
            for t in sorted({f.dst for f in self.c.network}):
                if only and t not in only:
                    continue
                n, stats = self._deliver_to(t)
                delivered += n
                total += stats
                progressed = progressed or n > 0
            if not progressed:
                break
        if self.quiet:
            rejected = sum(v for k, v in total.items() if k.endswith("rejected"))
            self.emit(f"ok ({delivered} msgs delivered, {rejected} rejections)")

    def cmd_process_ready(self, args: list[str]) -> None:
        for a in args:
            self.c.handle_ready(nid(a))

    def cmd_deliver_msgs(self, args: list[str]) -> None:
        if not args:
            self._deliver_to(None)
        for a in args:
            self._deliver_to(nid(a))

    def cmd_drop(self, args: list[str]) -> None:
        if args[0] == "all":
            n = self.c.drop()
        else:
            a, b = args[0].split("->")
            n = self.c.drop(nid(a), nid(b))
        self.emit(f"dropped {n} messages")

    def cmd_partition(self, args: list[str]) -> None:
        groups = [[nid(x) for x in a.split(",")] for a in args]
        self.c.partition(*groups)

    def cmd_isolate(self, args: list[str]) -> None:
        self.c.isolate(nid(args[0]))

    def cmd_heal(self, args: list[str]) -> None:
        self.c.heal()

    def cmd_propose(self, args: list[str]) -> None:
        try:
            self.c.nodes[nid(args[0])].raw().propose(args[1].encode())
            self.c.pending_proposals.add(args[1].encode())
            self.emit("ok")
        except ProposalDropped as e:
            self.emit(f"dropped: {e}")

    def cmd_propose_many(self, args: list[str]) -> None:
        node, n, prefix = nid(args[0]), int(args[1]), args[2]
        ok = sum(self.c.propose(node, f"{prefix}{i}".encode()) for i in range(n))
        self.emit(f"proposed {ok}/{n}")

    def cmd_propose_conf_change(self, args: list[str]) -> None:
        kind = {"add": ConfChangeType.ADD_NODE, "remove": ConfChangeType.REMOVE_NODE}[args[1]]
        try:
            self.c.nodes[nid(args[0])].raw().propose_conf_change(ConfChange(kind, nid(args[2])))
            self.emit("ok")
        except ProposalDropped as e:
            self.emit(f"dropped: {e}")

    def cmd_read_index(self, args: list[str]) -> None:
        if self.c.read(nid(args[0]), args[1].encode()):
            self.emit("ok")
        else:
            self.emit("dropped")

    def cmd_transfer_leadership(self, args: list[str]) -> None:
        try:
            self.c.nodes[nid(args[0])].raw().transfer_leadership(nid(args[1]))
        except ProposalDropped as e:
            self.emit(f"dropped: {e}")

    def cmd_report_unreachable(self, args: list[str]) -> None:
        self.c.nodes[nid(args[0])].raw().report_unreachable(nid(args[1]))

    def cmd_crash(self, args: list[str]) -> None:
        for a in args:
            self.c.crash(nid(a))

    def cmd_restart(self, args: list[str]) -> None:
        for a in args:
            self.c.restart(nid(a))

    def cmd_compact(self, args: list[str]) -> None:
        sn = self.c.nodes[nid(args[0])]
        index = int(args[1])
        assert index <= sn.applied, f"cannot compact at {index} > applied {sn.applied}"
        # The snapshot is of the current applied state; the log is cut at index.
        if sn.applied > sn.disk.snapshot().metadata.index:
            applied, conf_state, image = sn.live().snapshot_image()
            sn.disk.create_snapshot(applied, conf_state, image)
            sn.live().snapshotted(applied)
            sn.synced_hard_state = sn.disk.hard_state  # an fsynced write
        sn.disk.compact(index)
        self.emit(f"{sn.id}: snapshot+compact at {index}, first index {sn.disk.first_index()}")

    def cmd_log_level(self, args: list[str]) -> None:
        self.quiet = args[0] == "quiet"

    def cmd_raft_state(self, args: list[str]) -> None:
        for node in sorted(self.c.nodes):
            sn = self.c.nodes[node]
            if not sn.alive:
                self.emit(f"{node}: down")
                continue
            st = sn.raw().status()
            voter = "Voter" if node in st.voters else "NonMember"
            self.emit(
                f"{node}: {st.role} ({voter}) Term:{st.term} Lead:{st.leader} "
                f"Commit:{st.commit} Applied:{st.applied} Last:{st.last_index}"
            )

    def cmd_raft_log(self, args: list[str]) -> None:
        sn = self.c.nodes[nid(args[0])]
        if sn.alive:
            log = sn.raw()._raft.log
            first, ents = log.first_index(), log.all_entries()
        else:
            first = sn.disk.first_index()
            ents = sn.disk.entries(first, sn.disk.last_index() + 1)
            self.emit("(down; durable log)")
        if first > 1:
            self.emit(f"(compacted up to {first - 1})")
        if not ents:
            self.emit("(empty)")
        for e in ents:
            self.emit(describe_entry(e))

    def cmd_log_terms(self, args: list[str]) -> None:
        """Run-length encoded terms of every node's log (compact for long logs)."""
        for node in sorted(self.c.nodes):
            sn = self.c.nodes[node]
            if sn.alive:
                log = sn.raw()._raft.log
                ents = log.all_entries()
                first, commit = log.first_index(), log.committed
            else:
                first = sn.disk.first_index()
                ents = sn.disk.entries(first, sn.disk.last_index() + 1)
                commit = sn.disk.hard_state.commit
            runs: list[list[int]] = []
            for e in ents:
                if runs and runs[-1][0] == e.term:
                    runs[-1][1] += 1
                else:
                    runs.append([e.term, 1])
            body = " ".join(f"t{t}x{n}" for t, n in runs) or "-"
            self.emit(f"{node}: [{first}..] {body} (commit {commit})")

    def cmd_status(self, args: list[str]) -> None:
        st = self.c.nodes[nid(args[0])].raw().status()
        self.emit(
            f"{st.id}: {st.role} term={st.term} vote={st.vote} lead={st.leader} "
            f"commit={st.commit} applied={st.applied} last={st.last_index} "
            f"voters=({','.join(st.voters)})"
            + (f" transferee={st.lead_transferee}" if st.lead_transferee else "")
        )
        for p, ps in st.progress.items():
            extra = " paused" if ps.paused else ""
            extra += f" inflight={ps.inflight}" if ps.inflight else ""
            extra += "" if ps.recent_active else " inactive"
            self.emit(f"  {p}: {ps.state} match={ps.match} next={ps.next}{extra}")

    def cmd_sm(self, args: list[str]) -> None:
        sn = self.c.nodes[nid(args[0])]
        log = getattr(sn.sm, "log", [])
        self.emit(f"{sn.id} applied={sn.applied}: " + " ".join(f"{i}:{d.decode()}" for i, d in log))

    def cmd_read_results(self, args: list[str]) -> None:
        for node, ctx, index, _ in self.c.read_results:
            self.emit(f"{node} read {ctx.decode()} at index {index}")
        self.c.read_results.clear()

    def cmd_check_invariants(self, args: list[str]) -> None:
        self.c.check_invariants()
        self.c.check_replicas_agree()
        self.c.check_acked_survive(self.c.nodes, caught_up_only=True)
        self.emit("ok")


def command_handler(interp: object, command: str) -> tuple[Callable[[list[str]], None], list[str]]:
    """The ``cmd_NAME`` method of ``interp`` for one command line, and its arguments."""
    name, *rest = shlex.split(command)
    handler = getattr(interp, "cmd_" + name.replace("-", "_"), None)
    if handler is None:
        raise ValueError(f"unknown command {name!r}")
    return handler, rest


def run_file(path: Path, rewrite: bool, interpreter: Callable[[], Any] | None = None) -> None:
    """Run one scenario file with a fresh ``interpreter()`` (this module's by default)."""
    blocks, trailing = parse(path.read_text())
    interp = (interpreter or Interpreter)()
    failures = []
    for b in blocks:
        actual = interp.run(b.command)
        if actual != b.expected:
            failures.append((b, b.expected, actual))
            b.expected = actual
    if rewrite:
        path.write_text(render(blocks, trailing))
        return
    if failures:
        b, expected, actual = failures[0]
        raise AssertionError(
            f"{path.name}: command {b.command!r} output differs "
            f"({len(failures)} block(s) differ; run pytest --rewrite and review the diff)\n"
            f"--- expected\n{expected}\n--- actual\n{actual}"
        )
