"""The Trio client library: calls, watches, and leadership that cancels your work.

The names are imported when first used, so that the asyncio and blocking
clients, which share this package's sans-IO core (``_core``, ``_belief``,
``_types``), can be imported without Trio and trio-asyncio: importing
trio-asyncio replaces ``asyncio.new_event_loop`` and would move every asyncio
program that imports this library onto a Trio-hosted loop.
"""

import importlib
import typing

from ._types import (
    Attempt as Attempt,
    EventKind as EventKind,
    Leader as Leader,
    LeaderEvent as LeaderEvent,
)

if typing.TYPE_CHECKING:
    from ._client import Client as Client, open_client as open_client
    from ._leadership import Leadership as Leadership

#: The names that need Trio, and the module each comes from.
_TRIO_NAMES = {"Client": "._client", "open_client": "._client", "Leadership": "._leadership"}

__all__ = ["Attempt", "Client", "EventKind", "Leader", "LeaderEvent", "Leadership", "open_client"]


def __getattr__(name: str) -> typing.Any:
    module = _TRIO_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
