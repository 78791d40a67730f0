"""Limits on client input, checked once at the edge (docs/design.md, "Bad input")."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .._errors import InvalidArgument, PermissionDenied
from ._types import Acquire, CancelWait, Command, Release, Renew

MAX_NAME_BYTES = 256
MAX_VALUE_BYTES = 4096
MIN_TTL_MS = 100
DEFAULT_MAX_TTL_MS = 60_000
MAX_MAX_TTL_MS = 24 * 3600 * 1000
#: Commands a client may cause; the others (Expire, Promote) only the node
#: that drives expiry (the single node, or the Raft leader) originates.
CLIENT_COMMANDS = (Acquire, Renew, Release, CancelWait)
# C0 and C1 control characters and DEL, refused in names.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits one node enforces; ``max_ttl_ms`` comes from ``--max-ttl``."""

    max_ttl_ms: int = DEFAULT_MAX_TTL_MS

    def __post_init__(self) -> None:
        if not MIN_TTL_MS <= self.max_ttl_ms <= MAX_MAX_TTL_MS:
            raise ValueError(
                f"max TTL must be between {MIN_TTL_MS} ms and {MAX_MAX_TTL_MS} ms "
                f"(24 h), not {self.max_ttl_ms} ms"
            )

    def name(self, field: str, value: str) -> str:
        """Check an election name or node_id: 1..256 UTF-8 bytes, no control characters."""
        if not value:
            raise InvalidArgument(field, "must not be empty")
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_NAME_BYTES:
            raise InvalidArgument(field, f"is {size} bytes, the limit is {MAX_NAME_BYTES}")
        if (control := _CONTROL.search(value)) is not None:
            code, position = ord(control.group()), control.start()
            raise InvalidArgument(
                field, f"has a control character (U+{code:04X}) at position {position}"
            )
        return value

    def ttl(self, field: str, ttl_ms: int) -> int:
        """Check a TTL in milliseconds against ``MIN_TTL_MS .. max_ttl_ms``."""
        if not MIN_TTL_MS <= ttl_ms <= self.max_ttl_ms:
            raise InvalidArgument(
                field,
                f"{ttl_ms} ms is outside {MIN_TTL_MS} ms .. {self.max_ttl_ms} ms (--max-ttl)",
            )
        return ttl_ms

    def value(self, field: str, value: bytes) -> bytes:
        """Check an opaque holder value: at most 4 KiB."""
        if len(value) > MAX_VALUE_BYTES:
            raise InvalidArgument(field, f"is {len(value)} bytes, the limit is {MAX_VALUE_BYTES}")
        return value

    def command(self, command: Command) -> Command:
        """Check every field of a client command, as a forwarded proposal must be.

        A follower checked it already; the Raft leader checks again, since
        nothing that reaches the log may skip validation.

        Raises:
            PermissionDenied: not a command a client may cause.
            InvalidArgument: a field breaks a limit.
        """
        if not isinstance(command, CLIENT_COMMANDS):
            raise PermissionDenied(
                f"command: {type(command).__name__} is originated only by the Raft leader"
            )
        self.name("election", command.election)
        if isinstance(command, CancelWait):
            self.name("waiter", command.waiter)
            return command
        self.name("node_id", command.node_id)
        if len(command.owner) > 64:
            raise InvalidArgument("owner", f"is {len(command.owner)} characters, the limit is 64")
        if isinstance(command, Acquire):
            self.ttl("ttl_ms", command.ttl_ms)
            self.value("value", command.value)
            if command.wait:
                self.name("waiter", command.waiter)
        elif not 0 <= command.fencing_token < 2**64:
            raise InvalidArgument("fencing_token", f"{command.fencing_token} is out of range")
        return command
