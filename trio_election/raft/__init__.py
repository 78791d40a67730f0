"""Sans-IO Raft consensus core, modelled on etcd-io/raft.

The core replicates opaque ``bytes`` and does no I/O: drive a
:class:`RawNode` with ticks and messages, and handle its :class:`Ready`
(persist, then send, then apply, then ``advance``).
"""

from ._codec import (
    decode_conf_change as decode_conf_change,
    decode_message as decode_message,
    encode_conf_change as encode_conf_change,
    encode_message as encode_message,
)
from ._config import Config as Config
from ._errors import (
    CodecError as CodecError,
    Compacted as Compacted,
    ProposalDropped as ProposalDropped,
    RaftError as RaftError,
    SnapshotOutOfDate as SnapshotOutOfDate,
    SnapshotTemporarilyUnavailable as SnapshotTemporarilyUnavailable,
    StepError as StepError,
    StorageError as StorageError,
    Unavailable as Unavailable,
)
from ._progress import ProgressState as ProgressState
from ._rawnode import PeerStatus as PeerStatus, RawNode as RawNode, Ready as Ready, Status as Status
from ._storage import MemoryStorage as MemoryStorage, Storage as Storage
from ._types import (
    ConfChange as ConfChange,
    ConfChangeType as ConfChangeType,
    ConfState as ConfState,
    Entry as Entry,
    EntryType as EntryType,
    HardState as HardState,
    Message as Message,
    MessageType as MessageType,
    ReadState as ReadState,
    Role as Role,
    Snapshot as Snapshot,
    SnapshotMetadata as SnapshotMetadata,
    SoftState as SoftState,
    describe_entry as describe_entry,
    describe_message as describe_message,
)

__all__ = [
    "CodecError",
    "Compacted",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryStorage",
    "Message",
    "MessageType",
    "PeerStatus",
    "ProgressState",
    "ProposalDropped",
    "RaftError",
    "RawNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMetadata",
    "SnapshotOutOfDate",
    "SnapshotTemporarilyUnavailable",
    "SoftState",
    "Status",
    "StepError",
    "Storage",
    "StorageError",
    "Unavailable",
    "decode_conf_change",
    "decode_message",
    "describe_entry",
    "describe_message",
    "encode_conf_change",
    "encode_message",
]
