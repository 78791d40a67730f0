"""The bench's child processes (nodes of either system), and what it reads of them.

Every child is started through one ``Processes``, which stops them all; each
child also gets SIGKILL if the bench itself dies (``PR_SET_PDEATHSIG``), so
nothing outlives a Ctrl-C or a crash of the bench.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")
STARTED = time.monotonic()


def progress(message: str) -> None:
    """One line on stderr, with the time since the bench started."""
    print(f"[bench {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14, 15 of proc(5)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _die_with_parent() -> None:
    """A preexec_fn: the child gets SIGKILL when the bench exits (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Child:
    """One started process and its log."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.log: IO[bytes] = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            args,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 2000) -> str:
        self.log.seek(0)
        return f"--- pid {self.pid}:\n{self.log.read().decode(errors='replace')[-chars:]}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.alive():
            self.proc.send_signal(sig)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Processes:
    """The nodes of one system: slot ``i`` holds node ``i``'s current process."""

    def __init__(self) -> None:
        self.slots: list[Child | None] = []
        self.gone: list[Child] = []

    def start(self, i: int, args: list[str]) -> Child:
        """Start node ``i`` (again, after ``kill``)."""
        while len(self.slots) <= i:
            self.slots.append(None)
        if self.slots[i] is not None:
            raise RuntimeError(f"node {i} is running")
        self.slots[i] = Child(args)
        return self.slots[i]

    def kill(self, i: int) -> Child:
        """SIGKILL node ``i`` and reap it; its log is kept for ``logs``."""
        child = self.slots[i]
        assert child is not None
        self.slots[i] = None
        child.stop(signal.SIGKILL)
        self.gone.append(child)
        return child

    def running(self) -> list[Child]:
        return [c for c in self.slots if c is not None]

    def pids(self) -> list[int]:
        return [c.pid for c in self.running()]

    def cpu(self) -> float:
        """CPU seconds used so far by the running nodes, summed."""
        return sum(cpu_seconds(pid) for pid in self.pids())

    def rss(self) -> list[int]:
        return [rss_bytes(pid) for pid in self.pids()]

    def check(self, name: str) -> None:
        """Fail with the logs if a node has exited by itself."""
        for child in self.running():
            if not child.alive():
                code = child.proc.returncode
                raise RuntimeError(f"a {name} node exited ({code}):\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(c.tail() for c in [*self.running(), *self.gone])

    def stop(self) -> None:
        for child in self.running():
            child.stop()
        for child in [*self.running(), *self.gone]:
            child.log.close()
        self.slots, self.gone = [], []
