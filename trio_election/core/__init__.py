"""The election state machine, sans-IO: no clock, no network, no disk."""

from ._limits import (
    CLIENT_COMMANDS as CLIENT_COMMANDS,
    DEFAULT_MAX_TTL_MS as DEFAULT_MAX_TTL_MS,
    MAX_MAX_TTL_MS as MAX_MAX_TTL_MS,
    MAX_NAME_BYTES as MAX_NAME_BYTES,
    MAX_VALUE_BYTES as MAX_VALUE_BYTES,
    MIN_TTL_MS as MIN_TTL_MS,
    Limits as Limits,
)
from ._machine import ElectionMachine as ElectionMachine
from ._types import (
    Acquire as Acquire,
    CancelWait as CancelWait,
    Command as Command,
    Event as Event,
    EventKind as EventKind,
    Expire as Expire,
    Holder as Holder,
    Outcome as Outcome,
    Promote as Promote,
    Release as Release,
    Renew as Renew,
)

__all__ = [
    "CLIENT_COMMANDS",
    "DEFAULT_MAX_TTL_MS",
    "MAX_MAX_TTL_MS",
    "MAX_NAME_BYTES",
    "MAX_VALUE_BYTES",
    "MIN_TTL_MS",
    "Acquire",
    "CancelWait",
    "Command",
    "ElectionMachine",
    "Event",
    "EventKind",
    "Expire",
    "Holder",
    "Limits",
    "Outcome",
    "Promote",
    "Release",
    "Renew",
]
