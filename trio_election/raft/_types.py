"""Plain data exchanged between the Raft core, its storage and the network.

Everything here is an immutable value (``frozen=True, slots=True``) so that a
:class:`Message` or :class:`Entry` can be shared between the core, the
transport and the application without defensive copies.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class EntryType(enum.IntEnum):
    """What an :class:`Entry`'s ``data`` holds."""

    NORMAL = 0  #: opaque application command (empty data: a leader's no-op)
    CONF_CHANGE = 1  #: an encoded :class:`ConfChange`


class ConfChangeType(enum.IntEnum):
    """Single-server membership change kinds."""

    ADD_NODE = 0
    REMOVE_NODE = 1


class Role(enum.IntEnum):
    """The role a node currently plays."""

    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3

    def __str__(self) -> str:
        return "State" + self.name.title().replace("_", "")


class MessageType(enum.IntEnum):
    """Message kinds; names follow etcd-io/raft's ``pb.MessageType``."""

    HUP = 0  #: local: start an election
    BEAT = 1  #: local: leader should broadcast heartbeats
    PROP = 2  #: local: propose entries
    APP = 3  #: AppendEntries
    APP_RESP = 4
    VOTE = 5  #: RequestVote
    VOTE_RESP = 6
    SNAP = 7  #: InstallSnapshot
    HEARTBEAT = 8
    HEARTBEAT_RESP = 9
    UNREACHABLE = 10  #: local: transport could not reach a peer
    SNAP_STATUS = 11  #: local: result of sending a snapshot
    CHECK_QUORUM = 12  #: local: leader checks it heard from a quorum
    TRANSFER_LEADER = 13
    TIMEOUT_NOW = 14  #: leader tells the transferee to campaign right now
    READ_INDEX = 15
    READ_INDEX_RESP = 16
    PRE_VOTE = 17
    PRE_VOTE_RESP = 18

    def __str__(self) -> str:
        return "Msg" + "".join(p.title() for p in self.name.split("_"))


#: Message types that are only ever created locally and must not arrive
#: from the network (``RawNode.step`` refuses them). PROP may: a follower
#: forwards its proposals to the leader (``RawNode.propose(forward=True)``).
LOCAL_MESSAGE_TYPES = frozenset(
    {
        MessageType.HUP,
        MessageType.BEAT,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
        MessageType.CHECK_QUORUM,
    }
)

#: Responses: the sender must be a known peer for these to mean anything.
RESPONSE_MESSAGE_TYPES = frozenset(
    {
        MessageType.APP_RESP,
        MessageType.VOTE_RESP,
        MessageType.HEARTBEAT_RESP,
        MessageType.UNREACHABLE,
        MessageType.PRE_VOTE_RESP,
    }
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. ``index`` starts at 1; ``term`` is the leader's term."""

    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ConfState:
    """The cluster membership: the voters, sorted for determinism."""

    voters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    """Where a snapshot sits in the log and which membership it includes."""

    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A point-in-time image of the state machine, replacing log[1..index]."""

    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    data: bytes = b""

    @property
    def is_empty(self) -> bool:
        """Whether this is the zero snapshot (index 0)."""
        return self.metadata.index == 0


@dataclass(frozen=True, slots=True)
class HardState:
    """State that must be durable before any message depending on it is sent.

    ``vote`` is ``None`` when this node has not voted in ``term``.
    """

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth telling the application about (not persisted)."""

    leader: str | None = None
    role: Role = Role.FOLLOWER


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A single-server membership change, proposed via ``propose_conf_change``.

    ``context`` is opaque to Raft; applications use it to carry e.g. the new
    node's network address.
    """

    type: ConfChangeType
    node_id: str
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class ReadState:
    """Answer to ``read_index``: reads are linearizable once ``applied >= index``."""

    index: int
    ctx: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """A Raft message. Field meanings follow etcd-io/raft's ``pb.Message``.

    * ``index``/``log_term``: for APP, the entry preceding ``entries``; for
      votes, the candidate's last entry; for APP_RESP, the acknowledged index
      (or the rejected one when ``reject``).
    * ``reject_hint``/``log_term`` on a rejected APP_RESP: the follower's guess
      of the last index/term at which its log may match the leader's.
    * ``context``: read-index ctx on heartbeats and read messages, or
      ``b"transfer"`` on votes cast for a leadership transfer.
    """

    type: MessageType
    to: str = ""
    from_: str = ""
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    snapshot: Snapshot | None = None
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""


def describe_entry(e: Entry) -> str:
    """Render an entry as ``term/index Type data`` (used by tests and logs)."""
    kind = "EntryNormal" if e.type == EntryType.NORMAL else "EntryConfChange"
    if e.type == EntryType.CONF_CHANGE:
        from ._codec import decode_conf_change

        try:
            cc = decode_conf_change(e.data)
            body = f"{cc.type.name} {cc.node_id}"
        except Exception:  # pragma: no cover - only for display
            body = repr(e.data)
        return f"{e.term}/{e.index} {kind} {body}"
    return f"{e.term}/{e.index} {kind} {_show_bytes(e.data)}"


def _show_bytes(b: bytes) -> str:
    try:
        return '"' + b.decode("ascii") + '"' if b.isascii() else repr(b)
    except UnicodeDecodeError:  # pragma: no cover
        return repr(b)


def describe_message(m: Message) -> str:
    """Render a message in the compact style of etcd-io/raft's interaction tests."""
    parts = [f"{m.from_}->{m.to} {m.type} Term:{m.term}"]
    t = m.type
    if t in (MessageType.APP, MessageType.VOTE, MessageType.PRE_VOTE):
        parts.append(f"Log:{m.log_term}/{m.index}")
    elif t == MessageType.APP_RESP or t == MessageType.READ_INDEX_RESP:
        parts.append(f"Log:{m.log_term}/{m.index}")
    if m.commit:
        parts.append(f"Commit:{m.commit}")
    if m.reject:
        parts.append(f"Rejected (Hint: {m.reject_hint})")
    if m.context:
        parts.append(f"Context:{_show_bytes(m.context)}")
    if m.entries:
        parts.append("Entries:[" + ", ".join(describe_entry(e) for e in m.entries) + "]")
    if m.snapshot is not None:
        md = m.snapshot.metadata
        voters = ",".join(md.conf_state.voters)
        parts.append(f"Snapshot: Index:{md.index} Term:{md.term} Voters:({voters})")
    return " ".join(parts)
