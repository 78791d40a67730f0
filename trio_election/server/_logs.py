"""The node's log lines: plain text (the default) or one JSON object a line.

``--log-format json`` gives each line ``ts`` (UTC, ISO 8601), ``level``,
``logger`` and ``message``, and where known ``node_id`` and ``term`` (a
cluster member's) and ``election`` (a line about one election: its log call
passes ``extra={"election": name}``), and ``exc`` for a traceback.

Which node a line is about comes from a context variable that ``serve`` sets
for everything it starts (Trio tasks, worker threads and the asyncio
handlers inherit it), so several nodes in one process each stamp their own
lines; :class:`NodeFields` reads it as a record is logged.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class LogContext:
    """What the lines of one node say about it.

    Attributes:
        node_id: The node's ``--id`` (None for a single node).
        term: Returns the current Raft term (None for a single node).
    """

    node_id: str | None = None
    term: Callable[[], int] | None = None


#: The node the current task belongs to; ``serve`` sets it.
current_node: contextvars.ContextVar[LogContext | None] = contextvars.ContextVar(
    "trio_election_log_context", default=None
)


@contextlib.asynccontextmanager
async def node_logging(
    node_id: str | None, term: Callable[[], int] | None = None
) -> AsyncIterator[None]:
    """Stamp the lines of everything started inside with this node's id and term.

    An async context manager so that it can open in the same ``async with``
    as the asyncio loop, which must start inside it.
    """
    token = current_node.set(LogContext(node_id, term))
    try:
        yield
    finally:
        current_node.reset(token)


class NodeFields(logging.Filter):
    """Stamp each record with ``node_id`` and ``term`` of the node it comes from.

    Args:
        default: What to say of a line logged outside any node's context (the
            command line's own lines, such as the signal that stops it).
    """

    def __init__(self, default: LogContext | None = None) -> None:
        super().__init__()
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        context = current_node.get() or self.default
        if context is not None:
            if context.node_id is not None and not hasattr(record, "node_id"):
                record.node_id = context.node_id
            if context.term is not None and not hasattr(record, "term"):
                try:
                    record.term = context.term()
                except Exception:  # noqa: BLE001 - a log line must never fail for it
                    pass
        return True


#: Record attributes copied into a JSON line when a record has them.
_FIELDS = ("node_id", "term", "election")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, message, and what is known."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in _FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


#: The plain-text line (the default).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, log_format: str = "text", node_id: str | None = None) -> None:
    """Log to stderr at ``level`` as ``text`` (the default) or ``json``, whose
    lines name ``node_id`` where no node's context says otherwise."""
    if log_format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        handler.addFilter(NodeFields(LogContext(node_id)))
        logging.basicConfig(level=level.upper(), handlers=[handler])
    else:
        logging.basicConfig(level=level.upper(), format=TEXT_FORMAT)
