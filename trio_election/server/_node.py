"""One node's runtime: the election machine, its clock, disk, expiry and watchers.

The gRPC handlers call the synchronous methods here directly (one thread, no
awaits inside a read-modify-write), and await only to wait: for the disk, for a
campaign to be granted, for the next watch event. Two Trio tasks run beside
them: the expiry driver, asleep in a cancel scope whose deadline is the next
lease deadline, and the flusher, which writes each batch of changes in one
SQLite transaction (group commit).

Ordering duty: a grant is reported (reply, campaign wake-up, watch event) only
after the batch that contains it is on disk, so a restarted node never forgets
a holder it told anyone about, nor repeats a fencing token. Renewals are not
written: a recovered lease gets its full TTL anyway.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import trio

from .._bridge import Waiter
from .._errors import Unavailable
from ..core import Acquire, Command, ElectionMachine, Holder, Limits, Outcome, Renew
from ._config import NodeConfig
from ._hub import Hub, HubClient
from ._store import LeaseStore

log = logging.getLogger("trio_election.node")


class Node(HubClient):
    """The state and background work of one single node.

    Create it, then ``await nursery.start(node.run)``; handlers may call it once
    ``run`` has started.
    """

    #: Renewals finish at once here: no use answering a stream's concurrently.
    pipelined = False

    def __init__(self, config: NodeConfig, clock: Callable[[], float] = trio.current_time) -> None:
        self.config = config
        self.limits = Limits(config.max_ttl_ms)
        self.clock = clock
        self.machine = ElectionMachine()
        self.closing = False
        self._store: LeaseStore | None = None
        self._dirty: dict[str, None] = {}
        self._after_flush: list[Callable[[], None]] = []
        self._flush_wanted = trio.Event()
        self.hub = Hub()
        self._expiry_scope: trio.CancelScope | None = None

    # -- lifetime -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover state, then drive expiry and the disk until cancelled."""
        now = self.clock()
        if self.config.data_dir is None:
            # Nothing on disk says whom we granted before a restart, so wait
            # out the longest TTL, and seed tokens from the wall clock so they
            # keep going up across restarts (unless it steps back).
            seed = time.time_ns() // 1000
            grace = now + self.config.max_ttl_ms / 1000 if self.config.start_grace else -math.inf
            self.machine = ElectionMachine(last_token=seed, grace_until=grace)
            log.info(
                "in memory: tokens seeded from the wall clock (%d us); %s",
                seed,
                f"grants start in {self.config.max_ttl_ms / 1000:g} s (start-up grace)"
                if self.config.start_grace
                else "no start-up grace (unsafe)",
            )
        else:
            self._store = await trio.to_thread.run_sync(LeaseStore, self.config.data_dir)
            last_token, holders = await trio.to_thread.run_sync(self._store.load)
            self.machine = ElectionMachine(last_token=last_token)
            self.machine.restore(holders, self.clock())
            log.info(
                "data dir %s: recovered %d holders (each renewed now), token high-water %d",
                self.config.data_dir,
                len(holders),
                last_token,
            )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._expire_loop)
                if self._store is not None:
                    nursery.start_soon(self._flush_loop)
                nursery.start_soon(self._serving_after_grace)
                task_status.started()
        finally:
            if self._store is not None:
                with trio.CancelScope(shield=True):
                    if self._dirty:
                        await self._flush()
                    self._store.close()

    def begin_close(self) -> None:
        """End every waiting Campaign and Watch: the node is shutting down."""
        self.closing = True
        self.report_serving(False)
        self.hub.close()

    async def _serving_after_grace(self) -> None:
        # Health says SERVING only once grants are possible.
        self.report_serving(False)
        while self.machine.in_grace(self.clock()):
            await trio.sleep_until(self.machine.grace_until)
        if not self.closing:
            self.report_serving(True)

    # -- commands -----------------------------------------------------------

    def apply(self, command: Command) -> Outcome:
        """Apply one command now; effects that need the disk wait for the flush.

        Raises:
            Unavailable: during the start-up grace, or while shutting down.
        """
        if self.closing:
            raise Unavailable("the node is shutting down")
        outcome = self.machine.apply(command, self.clock())
        if outcome.persist:
            self._dirty[command.election] = None
            self._after(lambda: self.report(outcome))
        elif outcome.superseded:
            self.report(outcome)
        if outcome.persist or isinstance(command, Acquire):
            self._reschedule()
        return outcome

    async def execute(self, command: Command) -> Outcome:
        """Apply ``command``; return once its effects are durable."""
        outcome = self.apply(command)
        if outcome.persist:
            await self.synced()
        return outcome

    async def renew(self, command: Renew) -> Outcome:
        """A renewal: applied here at once (it needs no disk write)."""
        return await self.execute(command)

    async def renew_many(self, commands: list[Renew]) -> list[Outcome]:
        """Renewals, answered together."""
        return [await self.execute(command) for command in commands]

    def submit(self, command: Command) -> None:
        """Apply ``command`` without waiting for anything (clean-up paths)."""
        if not self.closing:
            self.apply(command)

    async def read(self, election: str) -> Holder | None:
        """The holder of ``election``, as far as the disk knows it."""
        if self._dirty or self._after_flush:
            await self.synced()  # never report a grant a crash could forget
        return self.machine.holder(election)

    async def synced(self) -> None:
        """Return once everything applied so far is on disk."""
        if self._store is None:
            return
        waiter = Waiter()
        self._after(waiter.set)
        await waiter.wait()

    # -- internals ----------------------------------------------------------

    def _after(self, callback: Callable[[], None]) -> None:
        if self._store is None:
            callback()
        else:
            self._after_flush.append(callback)
            self._flush_wanted.set()

    def _reschedule(self) -> None:
        if self._expiry_scope is not None:
            self._expiry_scope.deadline = self.machine.next_deadline()

    async def _expire_loop(self) -> None:
        while True:
            with trio.CancelScope(deadline=self.machine.next_deadline()) as scope:
                self._expiry_scope = scope
                await trio.sleep_forever()
            self._expiry_scope = None
            for command in self.machine.due(self.clock()):
                if not self.closing:
                    self.apply(command)

    async def _flush_loop(self) -> None:
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            await self._flush()

    async def _flush(self) -> None:
        assert self._store is not None
        dirty, self._dirty = self._dirty, {}
        after, self._after_flush = self._after_flush, []
        changes = [(election, self.machine.holder(election)) for election in dirty]
        # A failed write leaves grants in memory that the disk does not know:
        # the exception ends the node (fail-stop) rather than serve on.
        await trio.to_thread.run_sync(self._store.write, self.machine.last_token, changes)
        for callback in after:
            callback()
