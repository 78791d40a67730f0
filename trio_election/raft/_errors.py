"""Exceptions raised by the Raft core.

Every error the core raises derives from :class:`RaftError`, so callers that
only want to log-and-continue can catch a single type.
"""

from __future__ import annotations


class RaftError(Exception):
    """Base class of every error raised by ``trio_election.raft``."""


class ProposalDropped(RaftError):
    """A proposal (or read/transfer request) could not be accepted.

    Raised when this node is not the leader, when there is no known leader,
    when a leadership transfer is in progress, or when another configuration
    change is still pending. The request had no effect; the caller may retry
    on the current leader (see :attr:`RawNode.status`).
    """


class StepError(RaftError):
    """A message handed to :meth:`RawNode.step` is not acceptable.

    Local-only message types (ticks, internal signals) must never come from
    the network; responses from peers we do not know are refused too, and so
    are terms and indexes no cluster reaches (``MAX_NETWORK_NUMBER``,
    ``MAX_TERM_STEP``).
    """


class StorageError(RaftError):
    """Base class of errors raised by :class:`Storage` implementations."""


class Compacted(StorageError):
    """The requested index precedes the storage's first index (it was compacted)."""


class Unavailable(StorageError):
    """The requested index is beyond the storage's last index."""


class SnapshotOutOfDate(StorageError):
    """A snapshot older than the current one was applied or created."""


class SnapshotTemporarilyUnavailable(StorageError):
    """The storage cannot produce a snapshot right now; the leader retries later."""


class CodecError(RaftError, ValueError):
    """Bytes given to a ``decode_*`` function are not a valid encoding."""
