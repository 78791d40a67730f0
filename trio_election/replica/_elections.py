"""The election machine as a :class:`~trio_election.replica.Machine`.

Entries are ``encode_command`` bytes (a command and the request id it was
proposed under); snapshots are ``dump_machine`` images, restored with every
lease renewed at the restoring node's ``now``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .._errors import ElectionError, InvalidArgument, Unavailable
from ..core import CancelWait, Command, ElectionMachine, Limits, Renew
from ..core._codec import CodecError, decode_command, dump_machine, encode_command, load_machine
from ._replica import Applied

log = logging.getLogger("trio_election.replica")

#: The longest request id a forwarded proposal may carry.
MAX_REQUEST_ID = 256


class Elections:
    """An :class:`~trio_election.core.ElectionMachine` behind the ``Machine`` protocol."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.machine = ElectionMachine()
        self.limits = limits or Limits()
        self._decoded: tuple[bytes, Command, str] | None = None

    def request_id(self, data: bytes) -> str:
        try:
            command, request_id = decode_command(data)
        except CodecError:
            return ""
        self._decoded = (data, command, request_id)  # for the apply() that follows
        return request_id

    def apply(self, data: bytes, index: int, now: float) -> Applied:
        decoded, self._decoded = self._decoded, None
        if decoded is not None and decoded[0] is data:
            _, command, request_id = decoded
        else:
            try:
                command, request_id = decode_command(data)
            except CodecError as exc:
                log.error("entry %d applied as a no-op: %s", index, exc)
                return Applied()
        try:
            outcome = self.machine.apply(command, now, index)
        except Exception as exc:  # noqa: BLE001 - the same no-op on every replica
            log.error("entry %d (%r) applied as a no-op: %r", index, command, exc)
            error = exc if isinstance(exc, ElectionError) else Unavailable(str(exc))
            return Applied(request_id, None, error)
        return Applied(request_id, outcome)

    def dump(self) -> bytes:
        return dump_machine(self.machine)

    def load(self, image: bytes, now: float) -> None:
        self.machine = load_machine(image, now)

    def due(self, now: float) -> list[bytes]:
        return [encode_command(command, "") for command in self.machine.due(now)]

    def abandoned(self, alive: Callable[[str], bool]) -> list[bytes]:
        # A waiter id starts with the id of the node that carries its call
        # (``Hub``: ``node/boot/n``): a Campaign whose node is gone leaves.
        return [
            encode_command(CancelWait(election, waiter), "")
            for election, waiter in self.machine.waiters()
            if not alive(waiter.partition("/")[0])
        ]

    def lead(self, now: float) -> None:
        # We cannot know when the old leader last renewed each lease.
        self.machine.refresh_all(now)
        log.info("this node leads; every lease gets its full TTL from now")

    def renews_off_log(self, request: object) -> bool:
        return isinstance(request, Renew) and self.machine.renews_off_log(request)

    def renew(self, request: object, arrived: float) -> Applied:
        assert isinstance(request, Renew)
        return Applied("", self.machine.renew_confirmed(request, arrived))

    def check_forwarded(self, data: bytes) -> None:
        try:
            command, request_id = decode_command(data)
        except CodecError as exc:
            raise InvalidArgument("data", str(exc)) from None
        if len(request_id) > MAX_REQUEST_ID:
            raise InvalidArgument("data", f"the request id is over {MAX_REQUEST_ID} characters")
        self.limits.command(command)
