"""Codec: round trips (hypothesis) and strict rejection of garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from trio_election.raft import (
    CodecError,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    decode_conf_change,
    decode_message,
    encode_conf_change,
    encode_message,
)

u64 = st.integers(min_value=0, max_value=2**64 - 1)
ids = st.text(min_size=0, max_size=12)
node_ids = st.text(min_size=1, max_size=12)
blobs = st.binary(max_size=64)

entries = st.builds(Entry, term=u64, index=u64, type=st.sampled_from(list(EntryType)), data=blobs)
snapshots = st.builds(
    Snapshot,
    metadata=st.builds(
        SnapshotMetadata,
        index=u64,
        term=u64,
        conf_state=st.builds(ConfState, voters=st.lists(node_ids, max_size=5).map(tuple)),
    ),
    data=blobs,
)
messages = st.builds(
    Message,
    type=st.sampled_from(list(MessageType)),
    to=ids,
    from_=ids,
    term=u64,
    log_term=u64,
    index=u64,
    entries=st.lists(entries, max_size=4).map(tuple),
    commit=u64,
    snapshot=st.none() | snapshots,
    reject=st.booleans(),
    reject_hint=u64,
    context=blobs,
)
conf_changes = st.builds(
    ConfChange, type=st.sampled_from(list(ConfChangeType)), node_id=node_ids, context=blobs
)


@given(messages)
def test_message_round_trip(m: Message) -> None:
    assert decode_message(encode_message(m)) == m


@given(conf_changes)
def test_conf_change_round_trip(cc: ConfChange) -> None:
    assert decode_conf_change(encode_conf_change(cc)) == cc


@given(st.binary(max_size=200))
def test_garbage_raises_only_codec_error(b: bytes) -> None:
    for decode in (decode_message, decode_conf_change):
        try:
            decode(b)
        except CodecError:
            pass


@given(messages, st.data())
def test_truncated_or_extended_input_is_rejected(m: Message, data: st.DataObject) -> None:
    wire = encode_message(m)
    cut = data.draw(st.integers(min_value=0, max_value=len(wire) - 1))
    with pytest.raises(CodecError):
        decode_message(wire[:cut])
    with pytest.raises(CodecError, match="trailing"):
        decode_message(wire + b"\x00")


def test_encoding_is_compact() -> None:
    hb = Message(type=MessageType.HEARTBEAT, to="n2", from_="n1", term=7, commit=1234)
    assert len(encode_message(hb)) <= 20


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"", "truncated"),
        (b"\x02\x03\x00", "version"),
        (b"\x01\xff\x00", "message type"),
        (b"\x01\x03\x80", "flags"),
        (b"\x01\x03\x00\x02\xff\xfe", "UTF-8"),
        (b"\x01\x03\x00" + b"\xff" * 11, "varint"),
        (b"\x01\x03\x00\x00\x00" + b"\x00" * 5 + b"\x00" + b"\xff\xff\xff\x0f", "count"),
    ],
)
def test_specific_garbage(wire: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        decode_message(wire)


def test_conf_change_garbage() -> None:
    with pytest.raises(CodecError, match="conf change type"):
        decode_conf_change(b"\x01\x09\x02n4\x00")
    with pytest.raises(CodecError, match="empty node id"):
        decode_conf_change(b"\x01\x00\x00\x00")
    with pytest.raises(CodecError, match="expected bytes"):
        decode_conf_change("n1")  # type: ignore[arg-type]


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)
