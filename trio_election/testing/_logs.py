"""Waiting for a node process to say something, for tests that run real processes."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path


def wait_for_line(
    log: Path, pattern: str, process: subprocess.Popen, timeout: float = 30.0
) -> re.Match[str]:
    """Poll ``log`` (at most ``timeout`` seconds) for a line matching ``pattern``.

    Raises:
        AssertionError: the process exited first, or no such line came in time
            (with the log, so a failing test shows what the node said).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text())
        if match:
            return match
        assert process.poll() is None, f"exited with {process.returncode}:\n{log.read_text()}"
        time.sleep(0.02)
    raise AssertionError(f"no line matching {pattern!r} within {timeout:g} s:\n{log.read_text()}")
