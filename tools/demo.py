#!/usr/bin/env python3
"""The trio-election demo: three clients contend for one election as things fail.

    python tools/demo.py        (or: just demo)

It starts a node and three clients, each a separate process running
``trio-election campaign production -- <work>``, watches the election, and tells
the story: who leads with which fencing token; the leader finishes and releases,
and the next candidate takes over at once; the next leader's machine dies
(SIGKILL, no goodbye) and the node hands the election on only after its TTL.
It checks as it goes that no two clients ever lead at once and that tokens only
go up, and cleans up every process it started, also on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile

import trio

from trio_election import EventKind, open_client

ELECTION = "production"
TTL = 2.0
WORK = (
    "import os, time\n"
    "token = os.environ['TRIO_ELECTION_FENCING_TOKEN']\n"
    "while True:\n"
    "    print(f'working as leader with fencing token {token}', flush=True)\n"
    "    time.sleep(0.7)\n"
)


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

    async def start(self, name: str, argv: list[str]) -> trio.Process:
        process = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.running[name] = process
        self.nursery.start_soon(self._echo, name, process)
        return process

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

    def kill_all(self) -> None:
        for name in list(self.running):
            try:
                self.signal(name, signal.SIGKILL)
            except ProcessLookupError:
                pass


async def wait_for_node(port: int) -> None:
    with trio.fail_after(20):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
            else:
                await stream.aclose()
                return


async def main() -> int:
    story = Story()
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    cli = [sys.executable, "-u", "-m", "trio_election"]
    holders: list[tuple[str, int]] = []
    elected = {name: trio.Event() for name in ("client-1", "client-2", "client-3")}
    async with trio.open_nursery() as nursery:
        procs = Processes(story, nursery)
        try:
            with tempfile.TemporaryDirectory(prefix="trio-election-demo-") as data_dir:
                story.say(
                    "demo", f"one node, three clients, one election ({ELECTION!r}), TTL {TTL:g} s"
                )
                await procs.start(
                    "node",
                    [
                        *cli,
                        "node",
                        "--listen",
                        endpoint,
                        "--data-dir",
                        data_dir,
                        "--log-level",
                        "warning",
                    ],
                )
                await wait_for_node(port)
                story.say("node", f"serving on {endpoint}, writing through to {data_dir}")
                async with open_client([endpoint]) as client:
                    watching = trio.Event()

                    async def watch() -> None:
                        async for event in client.watch(ELECTION):
                            leader = event.leader
                            if event.kind is EventKind.ELECTED:
                                assert leader is not None
                                if holders and holders[-1][0] != "":
                                    raise AssertionError(
                                        f"two leaders at once: {holders[-1]} and {leader}"
                                    )
                                if holders and leader.fencing_token <= holders[-1][1]:
                                    raise AssertionError("a fencing token went down")
                                holders.append((leader.node_id, leader.fencing_token))
                                story.say(
                                    "watch",
                                    f"elected {leader.node_id} with fencing token {leader.fencing_token}",
                                )
                                elected[leader.node_id].set()
                            elif event.kind is EventKind.NO_LEADER:
                                story.say("watch", "nobody leads yet")
                            else:
                                assert leader is not None
                                holders.append(("", leader.fencing_token))
                                story.say(
                                    "watch",
                                    f"{event.kind.name.lower()}: {leader.node_id} is no longer leader",
                                )
                            watching.set()

                    nursery.start_soon(watch)
                    await watching.wait()
                    work = os.path.join(data_dir, "work.py")
                    with open(work, "w") as file:
                        file.write(WORK)
                    for name in elected:
                        await procs.start(
                            name,
                            [
                                *cli,
                                "campaign",
                                ELECTION,
                                "--node-id",
                                name,
                                "--ttl",
                                str(TTL),
                                "--endpoints",
                                endpoint,
                                "--",
                                sys.executable,
                                "-u",
                                work,
                            ],
                        )
                        await trio.sleep(0.3)  # so they queue in this order

                    await elected["client-1"].wait()
                    await trio.sleep(2)
                    story.say(
                        "demo", "client-1 finishes and steps down (SIGTERM): it releases at once"
                    )
                    released_at = trio.current_time()
                    procs.signal("client-1", signal.SIGTERM)
                    await elected["client-2"].wait()
                    story.say(
                        "demo",
                        f"hand-over on release took {1000 * (trio.current_time() - released_at):.0f} ms",
                    )

                    await trio.sleep(2)
                    story.say(
                        "demo",
                        f"client-2's machine dies (SIGKILL): nobody releases; the node waits out the TTL ({TTL:g} s)",
                    )
                    lease = await client.get_leader(ELECTION)
                    assert lease is not None and lease.node_id == "client-2"
                    killed_at = trio.current_time()
                    procs.signal("client-2", signal.SIGKILL)
                    await elected["client-3"].wait()
                    waited = trio.current_time() - killed_at
                    story.say(
                        "demo",
                        f"client-3 took over {waited:.1f} s after the kill: client-2's lease had "
                        f"{lease.remaining:.1f} s left since its last heartbeat, and not a moment less",
                    )
                    if waited < lease.remaining:
                        raise AssertionError("the lease expired early")

                    await trio.sleep(1.5)
                    tokens = [token for name, token in holders if name]
                    story.say(
                        "demo",
                        f"leaders in turn: {', '.join(n for n, _ in holders if n)}; tokens {tokens} only went up",
                    )
                    story.say("demo", "never two leaders at once. Stopping everything.")
        finally:
            procs.kill_all()
            nursery.cancel_scope.cancel()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(trio.run(main))
    except KeyboardInterrupt:
        sys.exit(130)
