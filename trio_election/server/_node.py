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
written: a recovered lease gets its full TTL anyway; but a renewal, refresh or
read of an election whose change is not on disk yet waits for it too.

When the disk refuses a batch (full, or an I/O error) the node keeps the batch
and retries it, and until a write succeeds it acknowledges nothing that needs
the disk: the callers waiting for the batch get UNAVAILABLE naming the data
dir, new grants and releases are refused with the same sentence, and health
says NOT_SERVING. Renewals of what is on disk go on, so holders keep their
leases through a full disk. Nothing it could not persist is ever acknowledged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable

import trio

from .._bridge import Waiter
from .._errors import Unavailable
from ..core import Acquire, Command, ElectionMachine, Holder, Limits, Outcome, Release, Renew
from ._config import NodeConfig
from ._hub import Hub, HubClient
from ._store import LeaseStore, StorageFailure

log = logging.getLogger("trio_election.node")
# Pauses between tries of a batch the disk refused.
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0


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
        self._flushing: dict[str, None] = {}  # the batch being written
        self._after_flush: list[Callable[[], None]] = []
        self._sync_waiters: list[Waiter] = []
        self._flush_wanted = trio.Event()
        #: Why the last write failed, until one succeeds (None: the disk is fine).
        self.storage_failure: str | None = None
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
            self._store = await trio.to_thread.run_sync(
                LeaseStore, self.config.data_dir, self.on_write
            )
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
                    if self._dirty or self._flushing:
                        await self._flush()  # what it cannot write was never acknowledged
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
        if not self.closing and self.storage_failure is None:
            self.report_serving(True)

    # -- commands -----------------------------------------------------------

    def apply(self, command: Command) -> Outcome:
        """Apply one command now; effects that need the disk wait for the flush.

        Raises:
            Unavailable: during the start-up grace, or while shutting down.
        """
        if self.closing:
            raise Unavailable("the node is shutting down")
        if self.storage_failure is not None and isinstance(command, (Acquire, Release)):
            raise Unavailable(self._refusing())
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
        unsynced = command.election in self._dirty or command.election in self._flushing
        outcome = self.apply(command)
        if outcome.persist or unsynced:
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
            # A Release the disk refuses (see apply): the lease expires instead.
            with contextlib.suppress(Unavailable):
                self.apply(command)

    async def read(self, election: str) -> Holder | None:
        """The holder of ``election``, as far as the disk knows it."""
        if election in self._dirty or election in self._flushing:
            await self.synced()  # never report a grant a crash could forget
        return self.machine.holder(election)

    async def synced(self) -> None:
        """Return once everything applied so far is on disk.

        Raises:
            Unavailable: the batch could not be written (it is retried).
        """
        if self._store is None:
            return
        waiter = Waiter()
        self._sync_waiters.append(waiter)
        self._flush_wanted.set()
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
        pause = RETRY_MIN_S
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            if await self._flush():
                pause = RETRY_MIN_S
            else:
                # Try the same batch again after a pause (or at once with more to write).
                with trio.move_on_after(pause):
                    await self._flush_wanted.wait()
                self._flush_wanted.set()
                pause = min(pause * 2, RETRY_MAX_S)

    async def _flush(self) -> bool:
        """Write what changed; False if the disk refused it (then it is kept for the next try)."""
        assert self._store is not None
        self._flushing, self._dirty = {**self._flushing, **self._dirty}, {}
        after, self._after_flush = self._after_flush, []
        waiters, self._sync_waiters = self._sync_waiters, []
        changes = [(election, self.machine.holder(election)) for election in self._flushing]
        try:
            await trio.to_thread.run_sync(self._store.write, self.machine.last_token, changes)
        except StorageFailure as exc:
            self._after_flush = after + self._after_flush
            if self.storage_failure is None:
                log.error("%s; refusing grants and releases until a write succeeds", exc)
                self.report_serving(False)
            self.storage_failure = str(exc)
            for waiter in waiters:
                waiter.fail(Unavailable(self._refusing()))
            return False
        self._flushing = {}
        if self.storage_failure is not None:
            log.warning("the data dir is writable again: serving grants and releases")
            self.storage_failure = None
            if not self.closing and not self.machine.in_grace(self.clock()):
                self.report_serving(True)
        for callback in after:
            callback()
        for waiter in waiters:
            waiter.set()
        return True

    def _refusing(self) -> str:
        return f"{self.storage_failure}; this node refuses writes until it can write"
