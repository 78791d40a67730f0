"""Commands and machine snapshots survive the trip through bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from trio_election.core import Acquire, CancelWait, ElectionMachine, Expire, Promote, Release, Renew
from trio_election.core._codec import (
    CodecError,
    decode_command,
    dump_machine,
    encode_command,
    load_machine,
)

names = st.text(min_size=1, max_size=20)
commands = st.one_of(
    st.builds(
        Acquire, names, names, st.integers(100, 10**6), st.binary(max_size=64), st.booleans(), names
    ),
    st.builds(Renew, names, names, st.integers(0, 2**64 - 1)),
    st.builds(Release, names, names, st.integers(0, 2**64 - 1)),
    st.builds(CancelWait, names, names),
    st.builds(Expire, names, st.integers(1, 2**64 - 1), st.integers(0, 10**9)),
    st.builds(Promote, names),
)


@given(commands, names)
def test_every_command_round_trips(command, request_id) -> None:
    assert decode_command(encode_command(command, request_id)) == (command, request_id)


@pytest.mark.parametrize(
    "data", [b"", b"garbage", b"[]", b'["?", "r"]', b'["a", "r", "e"]', b"\xff\xfe", b"{}"]
)
def test_garbage_is_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_command(data)


def test_snapshot_keeps_holders_queues_tokens_and_revision_and_renews_every_lease() -> None:
    machine = ElectionMachine()
    machine.apply(Acquire("a", "n1", 1000, b"\x00\xff"), 0.0)
    machine.apply(Acquire("a", "n2", 2000, b"", wait=True, waiter="w2"), 0.0)
    machine.apply(Acquire("b", "n3", 5000), 0.0)
    machine.apply(Release("b", "n3"), 0.0)
    data = dump_machine(machine)
    copy = load_machine(data, now=100.0)
    assert dump_machine(copy) == data
    holder = copy.holder("a")
    assert holder is not None and holder.value == b"\x00\xff"
    assert holder.deadline == pytest.approx(101.0)  # a full TTL from the load
    assert copy.waiting("a") == 1 and copy.holder("b") is None
    assert copy.last_token == machine.last_token and copy.revision == machine.revision
    # The queue still works after the trip: a release hands over to n2.
    outcome = copy.apply(Release("a", "n1"), 100.5)
    assert outcome.granted[0][0] == "w2"
    assert outcome.granted[0][1].fencing_token > holder.fencing_token


def test_garbage_snapshot_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        load_machine(b'{"last_token": 1}', 0.0)
