"""The election state machine, sans-IO: no clock, no network, no disk."""

from ._limits import (
    DEFAULT_MAX_TTL_MS as DEFAULT_MAX_TTL_MS,
)
from ._limits import (
    MAX_MAX_TTL_MS as MAX_MAX_TTL_MS,
    MAX_NAME_BYTES as MAX_NAME_BYTES,
)
from ._limits import (
    MAX_VALUE_BYTES as MAX_VALUE_BYTES,
)
from ._limits import (
    MIN_TTL_MS as MIN_TTL_MS,
)
from ._limits import (
    Limits as Limits,
)
from ._machine import ElectionMachine as ElectionMachine
from ._types import (
    Acquire as Acquire,
)
from ._types import (
    CancelWait as CancelWait,
)
from ._types import (
    Command as Command,
)
from ._types import (
    Event as Event,
)
from ._types import (
    EventKind as EventKind,
)
from ._types import (
    Expire as Expire,
)
from ._types import (
    Holder as Holder,
)
from ._types import (
    Outcome as Outcome,
)
from ._types import (
    Promote as Promote,
)
from ._types import (
    Release as Release,
)
from ._types import (
    Renew as Renew,
)

__all__ = [
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
