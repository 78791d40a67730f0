#!/usr/bin/env python3
"""The trio-election demo: a three-node cluster, three clients, one election.

    python tools/demo.py        (or: just demo)

Three nodes form a Raft cluster; three clients, each a separate process running
``trio-election campaign production -- <work>`` through a different node,
contend for one election. The demo tells the story as it happens:

1. client-1 leads; it finishes and releases, and client-2 takes over at once;
2. client-2's machine dies (SIGKILL): the cluster hands the election to
   client-3 only once client-2's TTL has run out;
3. the Raft-leader node is killed (SIGKILL): the others elect a new Raft
   leader and client-3 keeps its leadership, with the same fencing token;
4. the killed node restarts from its data dir and catches up;
5. a fourth node joins through a member.

It checks as it goes that no two clients ever lead at once and that fencing
tokens only go up, and it cleans up every process it started, also on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from trio_election import EventKind, open_client
from trio_election.testing import CertFiles, make_certs

ELECTION = "production"
TTL = 4.0
WORK = (
    "import os, time\n"
    "token = os.environ['TRIO_ELECTION_FENCING_TOKEN']\n"
    "while True:\n"
    "    print(f'working as leader with fencing token {token}', flush=True)\n"
    "    time.sleep(1.5)\n"
)
CLI = [sys.executable, "-u", "-m", "trio_election"]


class Story:
    def __init__(self) -> None:
        self.start = trio.current_time()

    def say(self, who: str, text: str) -> None:
        print(f"[{trio.current_time() - self.start:5.1f}s] {who:<9} {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """Every process the demo starts, each in its own session so it dies whole."""

    def __init__(self, story: Story, nursery: trio.Nursery) -> None:
        self.story = story
        self.nursery = nursery
        self.running: dict[str, trio.Process] = {}

    async def start(self, name: str, argv: list[str], echo: bool = True) -> None:
        process = await trio.lowlevel.open_process(
            argv,
            stdout=subprocess.PIPE if echo else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if echo else subprocess.DEVNULL,
            start_new_session=True,
        )
        self.running[name] = process
        if echo:
            self.nursery.start_soon(self._echo, name, process)

    async def _echo(self, name: str, process: trio.Process) -> None:
        buffer = b""
        async for chunk in process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self.story.say(name, "| " + line.decode(errors="replace"))

    def signal(self, name: str, signum: int) -> None:
        process = self.running[name]
        if process.returncode is None:
            os.killpg(process.pid, signum)

    async def wait(self, name: str) -> None:
        await self.running[name].wait()

    def kill_all(self) -> None:
        for name in list(self.running):
            try:
                self.signal(name, signal.SIGKILL)
            except ProcessLookupError:
                pass


async def status(endpoint: str) -> dict | None:
    """The node's Cluster status, or None if it does not answer."""
    result = await trio.run_process(
        [*CLI, "status", "--json", "--timeout", "1", "--endpoints", endpoint],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return json.loads(result.stdout) if result.returncode == 0 else None


async def wait_for_leader(endpoints: dict[str, str], *, besides: str = "") -> str:
    """Poll (bounded) until every listed node names the same Raft leader."""
    with trio.fail_after(30):
        while True:
            views = [await status(e) for e in endpoints.values()]
            leaders = {v["leader"] for v in views if v}
            if all(views) and len(leaders) == 1 and "" not in leaders and besides not in leaders:
                return leaders.pop()
            await trio.sleep(0.2)


class Checker:
    """Follows the watch stream: never two leaders at once, tokens only up."""

    def __init__(self, story: Story) -> None:
        self.story = story
        self.holder: tuple[str, int] | None = None
        self.last_token = 0
        self.leaders: list[tuple[str, int]] = []
        self.elected: dict[str, trio.Event] = {}

    def event(self, kind: EventKind, node_id: str | None, token: int) -> None:
        if kind is EventKind.ELECTED:
            assert node_id is not None
            if self.holder == (node_id, token):
                return  # the watch reconnected and repeats the current state
            if self.holder is not None:
                raise AssertionError(f"two leaders at once: {self.holder} and {node_id}")
            if token <= self.last_token:
                raise AssertionError(f"fencing token went from {self.last_token} to {token}")
            self.holder, self.last_token = (node_id, token), token
            self.leaders.append((node_id, token))
            self.story.say("watch", f"elected {node_id} with fencing token {token}")
            self.elected.setdefault(node_id, trio.Event()).set()
        elif kind is EventKind.NO_LEADER:
            self.story.say("watch", "nobody leads yet")
        else:
            self.holder = None
            self.story.say("watch", f"{kind.name.lower()}: {node_id} is no longer leader")

    async def wait_elected(self, node_id: str) -> None:
        with trio.fail_after(30):
            await self.elected.setdefault(node_id, trio.Event()).wait()


async def main() -> int:
    story = Story()
    nodes = {f"n{i}": f"127.0.0.1:{free_port()}" for i in (1, 2, 3)}
    PEERS.update({n: f"127.0.0.1:{free_port()}" for n in (*nodes, "n4")})
    initial = ",".join(f"{n}={PEERS[n]}" for n in nodes)
    with tempfile.TemporaryDirectory(prefix="trio-election-demo-") as tmp:
        # Peers authenticate each other by mutual TLS, with certificates of
        # a CA made for this run.
        CERTS.update(make_certs(Path(tmp) / "certs", list(PEERS)))
        async with trio.open_nursery() as nursery:
            procs = Processes(story, nursery)
            try:
                await run_story(story, procs, nursery, nodes, initial, tmp)
            finally:
                procs.kill_all()
                nursery.cancel_scope.cancel()
    return 0


#: Each node's peer address, and its certificate of the run's CA.
PEERS: dict[str, str] = {}
CERTS: dict[str, CertFiles] = {}


def node_argv(node: str, address: str, tmp: str, *extra: str) -> list[str]:
    certs = CERTS[node]
    return [
        *CLI,
        "node",
        "--id",
        node,
        "--listen",
        address,
        "--peer-listen",
        PEERS[node],
        "--peer-cert",
        str(certs.cert),
        "--peer-key",
        str(certs.key),
        "--peer-ca",
        str(certs.ca),
        "--data-dir",
        os.path.join(tmp, node),
        "--log-level",
        "warning",
        *extra,
    ]


async def run_story(story, procs, nursery, nodes, initial, tmp) -> None:
    say = story.say
    say("demo", f"three nodes, three clients, one election ({ELECTION!r}), TTL {TTL:g} s")
    say("demo", "the nodes authenticate each other by mutual TLS on their peer ports")
    for node, address in nodes.items():
        await procs.start(node, node_argv(node, address, tmp, "--initial-cluster", initial))
    raft_leader = await wait_for_leader(nodes)
    say(
        "cluster",
        f"nodes {', '.join(f'{n} ({a})' for n, a in nodes.items())}: Raft leader {raft_leader}",
    )

    work = os.path.join(tmp, "work.py")
    with open(work, "w") as file:
        file.write(WORK)
    checker = Checker(story)
    async with open_client(list(nodes.values())) as client, trio.open_nursery() as watchers:
        watching = trio.Event()

        async def watch() -> None:
            async for event in client.watch(ELECTION):
                leader = event.leader
                checker.event(
                    event.kind,
                    leader.node_id if leader else None,
                    leader.fencing_token if leader else 0,
                )
                watching.set()

        watchers.start_soon(watch)
        await watching.wait()
        for i, node in enumerate(nodes, start=1):
            # Each client talks to its own node first, the others if it fails.
            endpoints = ",".join([nodes[node], *(a for n, a in nodes.items() if n != node)])
            await procs.start(
                f"client-{i}",
                [
                    *CLI,
                    "campaign",
                    ELECTION,
                    "--node-id",
                    f"client-{i}",
                    "--ttl",
                    str(TTL),
                    "--endpoints",
                    endpoints,
                    "--",
                    sys.executable,
                    "-u",
                    work,
                ],
            )
            await trio.sleep(0.5)  # so they queue in this order
        say("demo", "client-1 campaigns through n1, client-2 through n2, client-3 through n3")

        # 1. Hand-over on release.
        await checker.wait_elected("client-1")
        await trio.sleep(2)
        say("demo", "client-1 finishes and steps down (SIGTERM): it releases at once")
        released_at = trio.current_time()
        procs.signal("client-1", signal.SIGTERM)
        await checker.wait_elected("client-2")
        say(
            "demo", f"hand-over on release took {1000 * (trio.current_time() - released_at):.0f} ms"
        )

        # 2. Hand-over on expiry.
        await trio.sleep(2)
        lease = await client.get_leader(ELECTION)
        assert lease is not None and lease.node_id == "client-2"
        say(
            "demo",
            f"client-2's machine dies (SIGKILL): nobody releases; its lease has "
            f"{lease.remaining:.1f} s left",
        )
        killed_at = trio.current_time()
        procs.signal("client-2", signal.SIGKILL)
        await checker.wait_elected("client-3")
        waited = trio.current_time() - killed_at
        say("demo", f"client-3 took over {waited:.1f} s after the kill, once that lease ran out")
        if waited < lease.remaining:
            raise AssertionError("the lease expired early")

        # 3. The Raft leader dies; the holder keeps its leadership.
        await trio.sleep(2)
        raft_leader = await wait_for_leader(nodes)
        holder = await client.get_leader(ELECTION)
        say(
            "demo",
            f"the Raft leader {raft_leader} is killed (SIGKILL) while client-3 leads "
            f"with token {holder.fencing_token}",
        )
        procs.signal(raft_leader, signal.SIGKILL)
        await procs.wait(raft_leader)
        down_at = trio.current_time()
        survivors = {n: a for n, a in nodes.items() if n != raft_leader}
        new_leader = await wait_for_leader(survivors, besides=raft_leader)
        say(
            "cluster",
            f"{', '.join(survivors)} elected {new_leader} as Raft leader "
            f"(seen {trio.current_time() - down_at:.1f} s after the kill, polling status)",
        )
        await trio.sleep(TTL)  # more than a TTL: client-3 must have renewed through others
        after = await client.get_leader(ELECTION)
        assert after is not None
        if (after.node_id, after.fencing_token) != ("client-3", holder.fencing_token):
            raise AssertionError(f"the holder changed across the Raft-leader kill: {after}")
        say(
            "demo",
            f"a TTL later client-3 still leads with token {after.fencing_token}: "
            "its heartbeats moved to another node",
        )

        # 4. The killed node restarts from its data dir and catches up.
        await procs.start(raft_leader, node_argv(raft_leader, nodes[raft_leader], tmp))
        with trio.fail_after(30):
            while True:
                # The leader's commit index first, then ours: renewals keep
                # committing, and asked the other way round the target moves
                # on while we ask.
                theirs = await status(nodes[new_leader])
                mine = await status(nodes[raft_leader])
                if mine and theirs and mine["applied_index"] >= theirs["commit_index"] > 0:
                    break
                await trio.sleep(0.2)
        say(
            "cluster",
            f"{raft_leader} restarted from its data dir and caught up to index "
            f"{mine['applied_index']}",
        )

        # 5. A fourth node joins through a member.
        follower = next(n for n in survivors if n != new_leader)
        n4 = f"127.0.0.1:{free_port()}"
        await procs.start("n4", node_argv("n4", n4, tmp, "--join", PEERS[follower]))
        with trio.fail_after(30):
            while (
                (view := await status(n4)) is None or len(view["members"]) < 4 or not view["leader"]
            ):
                await trio.sleep(0.2)
        say(
            "cluster",
            f"n4 joined through {follower}: members "
            f"{', '.join(m['id'] for m in view['members'])}, Raft leader {view['leader']}",
        )

        await trio.sleep(1)
        say(
            "demo",
            f"leaders in turn: {', '.join(n for n, _ in checker.leaders)}; "
            f"tokens {[t for _, t in checker.leaders]} only went up",
        )
        say("demo", "never two leaders at once. Stopping everything.")
        watchers.cancel_scope.cancel()


if __name__ == "__main__":
    try:
        sys.exit(trio.run(main))
    except KeyboardInterrupt:
        sys.exit(130)
