"""Refreshing a command's output until Ctrl-C (``status --watch``).

Three ways to show each refresh: on a terminal the screen is redrawn in place
(cursor home, each line cleared to its end, the rest of the screen cleared);
piped, each refresh is printed whole after a blank line, so a log keeps them
all; with --json each refresh is one JSON line. SIGINT and SIGTERM end the
watch between or during refreshes with exit status 0: they arrive through
Trio's signal receiver, not as a KeyboardInterrupt in the middle of a call.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from .._util import unwrap_single_exception

#: Cursor home; clear to the end of the line; clear to the end of the screen.
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


class Shown(Protocol):
    """What a refresh gives: text for people, data for --json, an exit status."""

    text: str
    data: dict[str, Any]
    code: int


class Screen:
    """Where the refreshes go (see the module docstring)."""

    def __init__(self, args: argparse.Namespace, interval: float) -> None:
        self.json = args.json
        self.tty = not args.json and sys.stdout.isatty()
        self.interval = interval
        self.shown = 0

    def show(self, refresh: Shown) -> None:
        self.shown += 1
        if self.json:
            print(json.dumps({"time": round(time.time(), 3), **refresh.data}), flush=True)
            return
        header = f"every {self.interval:g} s, at {time.strftime('%H:%M:%S')} (Ctrl-C stops)"
        lines = [header, *refresh.text.splitlines()]
        if self.tty:
            clear = "\x1b[2J" if self.shown == 1 else ""
            body = "".join(f"{line}{CLEAR_LINE}\n" for line in lines)
            sys.stdout.write(f"{clear}{HOME}{body}{CLEAR_BELOW}")
            sys.stdout.flush()
        else:
            print("\n".join(lines) if self.shown == 1 else "\n" + "\n".join(lines), flush=True)


async def refresh_until_stopped(
    args: argparse.Namespace,
    refresh: Callable[[], Awaitable[Shown]],
    *,
    interval: float,
    count: int | None = None,
) -> int:
    """Show ``refresh()`` every ``interval`` seconds until SIGINT or SIGTERM (exit
    status 0), or after ``count`` refreshes (the last one's exit status)."""
    screen = Screen(args, interval)
    code, interrupted = 0, False
    with (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        unwrap_single_exception(),
    ):
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                nonlocal interrupted
                async for _ in signals:
                    interrupted = True
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            while count is None or screen.shown < count:
                if screen.shown:
                    await trio.sleep(interval)
                shown = await refresh()
                screen.show(shown)
                code = shown.code
            nursery.cancel_scope.cancel()
    return 0 if interrupted else code
