"""Commands and machine state as bytes, for the Raft log and its snapshots.

JSON with short keys: the cost is a few microseconds a command, the format is
easy to inspect in a damaged log, and ``value`` (arbitrary bytes) travels as
latin-1 text, which maps each byte to one code point and back.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import MISSING, fields
from typing import Any

from ._machine import ElectionMachine, _Lease
from ._types import Acquire, CancelWait, Command, Expire, Promote, Release, Renew

_TAGS: dict[type, str] = {
    Acquire: "a",
    Renew: "h",
    Release: "r",
    CancelWait: "c",
    Expire: "x",
    Promote: "p",
}
_TYPES = {tag: kind for kind, tag in _TAGS.items()}
# How each field travels: bytes as latin-1 text (see the module docstring).
_WIRE = {"str": str, "int": int, "bytes": str, "bool": bool}
# Per command: (field name, annotation) in order, and how many are required.
_SHAPES = {
    kind: (
        [(f.name, f.type) for f in fields(kind)],
        sum(1 for f in fields(kind) if f.default is MISSING),
    )
    for kind in _TAGS
}


class CodecError(ValueError):
    """Raised when bytes are not a command or snapshot this version wrote."""


def _fields(command: Command) -> list[Any]:
    values = [getattr(command, name) for name in command.__slots__]
    return [v.decode("latin-1") if isinstance(v, bytes) else v for v in values]


def encode_command(command: Command, request_id: str = "") -> bytes:
    """Encode ``command``; ``request_id`` lets the proposer find its result."""
    return json.dumps(
        [_TAGS[type(command)], request_id, *_fields(command)], separators=(",", ":")
    ).encode()


def decode_command(data: bytes) -> tuple[Command, str]:
    """Decode what :func:`encode_command` wrote: ``(command, request_id)``.

    Every field must have its type (an int is no bool, a name no number): a
    log entry someone forged decodes to a command the machine can apply
    without surprise, or not at all.

    Raises:
        CodecError: ``data`` is not a command of this version.
    """
    try:
        tag, request_id, *values = json.loads(data)
        kind = _TYPES[tag]
        shape, required = _SHAPES[kind]
        if type(request_id) is not str or not required <= len(values) <= len(shape):
            raise ValueError(f"{kind.__name__} with {len(values)} fields")
        args = []
        for (name, annotation), value in zip(shape, values, strict=False):
            if type(value) is not _WIRE[annotation]:
                raise ValueError(f"{kind.__name__}.{name} is a {type(value).__name__}")
            args.append(value.encode("latin-1") if annotation == "bytes" else value)
        return kind(*args), request_id
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise CodecError(f"not a command: {exc}") from None


def dump_machine(machine: ElectionMachine) -> bytes:
    """The replicated state of ``machine`` (not the local deadlines)."""
    state = {
        "last_token": machine.last_token,
        "revision": machine.revision,
        "leases": [
            [
                e,
                lease.node_id,
                lease.token,
                lease.ttl_ms,
                lease.value.decode("latin-1"),
                lease.renewals,
                lease.owner,
            ]
            for e, lease in machine._leases.items()
        ],
        "queues": {e: [_fields(c) for c in queue] for e, queue in machine._queues.items()},
    }
    return json.dumps(state, separators=(",", ":")).encode()


def load_machine(data: bytes, now: float) -> ElectionMachine:
    """A machine from :func:`dump_machine`, every lease renewed at ``now``."""
    try:
        state = json.loads(data)
        machine = ElectionMachine(last_token=state["last_token"])
        machine.revision = state["revision"]
        for election, node_id, token, ttl_ms, value, renewals, *owner in state["leases"]:
            machine._leases[election] = _Lease(
                node_id,
                token,
                ttl_ms,
                value.encode("latin-1"),
                renewals,
                -math.inf,
                owner=owner[0] if owner else "",
            )
        for election, commands in state["queues"].items():
            machine._queues[election] = deque(
                Acquire(e, n, t, v.encode("latin-1"), w, i, *owner)
                for e, n, t, v, w, i, *owner in commands
            )
    except (ValueError, KeyError, TypeError) as exc:
        raise CodecError(f"not a machine snapshot: {exc}") from None
    machine.refresh_all(now)
    return machine
