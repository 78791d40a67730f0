"""Compact binary encoding of messages and conf changes (stdlib only).

Wire format (all integers are unsigned LEB128 varints unless noted; ``str``
and ``bytes`` are a varint length followed by that many bytes, strings in
UTF-8)::

    message    := 0x01 type:u8 flags:u8 to:str from:str term log_term index
                  commit reject_hint context:bytes n_entries:varint entry*
                  [snapshot if flags & 2]
    flags      := bit 0 reject, bit 1 has snapshot; other bits must be 0
    entry      := type:u8 term index data:bytes
    snapshot   := index term n_voters:varint voter:str* data:bytes
    confchange := 0x01 type:u8 node_id:str context:bytes

Decoding is strict because its input comes from the network: unknown
versions or enum values, truncated input, over-long varints, invalid UTF-8
and trailing bytes all raise :class:`CodecError`.
"""

from __future__ import annotations

from ._errors import CodecError
from ._types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)

_VERSION = 1
_FLAG_REJECT = 1
_FLAG_SNAPSHOT = 2
_MAX_UINT = (1 << 64) - 1


def _put_uint(out: bytearray, n: int) -> None:
    if n < 0 or n > _MAX_UINT:
        raise CodecError(f"integer {n} out of range for encoding")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _put_bytes(out: bytearray, b: bytes) -> None:
    _put_uint(out, len(b))
    out += b


def _put_str(out: bytearray, s: str) -> None:
    _put_bytes(out, s.encode("utf-8"))


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        if not isinstance(buf, bytes | bytearray | memoryview):
            raise CodecError(f"expected bytes, got {type(buf).__name__}")
        self.buf = bytes(buf)
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise CodecError("truncated input")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def uint(self) -> int:
        n = 0
        for shift in range(0, 70, 7):
            b = self.byte()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                if n > _MAX_UINT:
                    raise CodecError("varint overflows 64 bits")
                return n
        raise CodecError("varint too long")

    def raw(self) -> bytes:
        n = self.uint()
        if n > len(self.buf) - self.pos:
            raise CodecError(f"length {n} exceeds remaining input")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def str(self) -> str:
        try:
            return self.raw().decode("utf-8")
        except UnicodeDecodeError as e:
            raise CodecError(f"invalid UTF-8 in string: {e}") from None

    def count(self, min_item_size: int) -> int:
        # Reject counts that cannot possibly fit in the remaining input, so
        # garbage cannot make us allocate huge lists.
        n = self.uint()
        if n * min_item_size > len(self.buf) - self.pos:
            raise CodecError(f"count {n} exceeds remaining input")
        return n

    def enum(self, cls, what: str):  # type: ignore[no-untyped-def]
        v = self.byte()
        try:
            return cls(v)
        except ValueError:
            raise CodecError(f"unknown {what} {v}") from None

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise CodecError(f"{len(self.buf) - self.pos} trailing bytes")


def encode_message(msg: Message) -> bytes:
    """Serialize ``msg`` for the network."""
    out = bytearray((_VERSION, int(msg.type)))
    flags = (_FLAG_REJECT if msg.reject else 0) | (_FLAG_SNAPSHOT if msg.snapshot else 0)
    out.append(flags)
    _put_str(out, msg.to)
    _put_str(out, msg.from_)
    for n in (msg.term, msg.log_term, msg.index, msg.commit, msg.reject_hint):
        _put_uint(out, n)
    _put_bytes(out, msg.context)
    _put_uint(out, len(msg.entries))
    for e in msg.entries:
        out.append(int(e.type))
        _put_uint(out, e.term)
        _put_uint(out, e.index)
        _put_bytes(out, e.data)
    if msg.snapshot is not None:
        md = msg.snapshot.metadata
        _put_uint(out, md.index)
        _put_uint(out, md.term)
        _put_uint(out, len(md.conf_state.voters))
        for v in md.conf_state.voters:
            _put_str(out, v)
        _put_bytes(out, msg.snapshot.data)
    return bytes(out)


def decode_message(data: bytes) -> Message:
    """Parse bytes produced by :func:`encode_message`.

    Raises:
        CodecError: ``data`` is not a valid encoding.
    """
    r = _Reader(data)
    if r.byte() != _VERSION:
        raise CodecError("unknown message encoding version")
    mtype = r.enum(MessageType, "message type")
    flags = r.byte()
    if flags & ~(_FLAG_REJECT | _FLAG_SNAPSHOT):
        raise CodecError(f"unknown flags {flags:#x}")
    to = r.str()
    from_ = r.str()
    term, log_term, index, commit, reject_hint = (r.uint() for _ in range(5))
    context = r.raw()
    entries = []
    for _ in range(r.count(4)):
        etype = r.enum(EntryType, "entry type")
        entries.append(Entry(term=r.uint(), index=r.uint(), type=etype, data=r.raw()))
    snapshot = None
    if flags & _FLAG_SNAPSHOT:
        sindex = r.uint()
        sterm = r.uint()
        voters = tuple(r.str() for _ in range(r.count(1)))
        md = SnapshotMetadata(index=sindex, term=sterm, conf_state=ConfState(voters=voters))
        snapshot = Snapshot(metadata=md, data=r.raw())
    r.end()
    return Message(
        type=mtype,
        to=to,
        from_=from_,
        term=term,
        log_term=log_term,
        index=index,
        entries=tuple(entries),
        commit=commit,
        snapshot=snapshot,
        reject=bool(flags & _FLAG_REJECT),
        reject_hint=reject_hint,
        context=context,
    )


def encode_conf_change(cc: ConfChange) -> bytes:
    """Serialize a :class:`ConfChange` (the data of a ``CONF_CHANGE`` entry)."""
    out = bytearray((_VERSION, int(cc.type)))
    _put_str(out, cc.node_id)
    _put_bytes(out, cc.context)
    return bytes(out)


def decode_conf_change(data: bytes) -> ConfChange:
    """Parse bytes produced by :func:`encode_conf_change`.

    Raises:
        CodecError: ``data`` is not a valid encoding.
    """
    r = _Reader(data)
    if r.byte() != _VERSION:
        raise CodecError("unknown conf change encoding version")
    cctype = r.enum(ConfChangeType, "conf change type")
    node_id = r.str()
    context = r.raw()
    r.end()
    if not node_id:
        raise CodecError("empty node id in conf change")
    return ConfChange(type=cctype, node_id=node_id, context=context)
