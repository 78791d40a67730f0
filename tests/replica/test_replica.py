"""The replica on its own: one node, driven by hand as a runtime drives it."""

from __future__ import annotations

import random

import pytest

from trio_election._errors import InvalidArgument, PermissionDenied
from trio_election.core import Acquire, Expire
from trio_election.core._codec import encode_command
from trio_election.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    encode_conf_change,
)
from trio_election.replica import Done, Elections, Replica, _replica


def single_node() -> tuple[Replica, MemoryStorage]:
    storage = MemoryStorage()
    replica = Replica(storage, Elections(), 0.0, Config(id="n1", rng=random.Random(1)))
    replica.bootstrap({"n1": "127.0.0.1:1"})
    drain(replica, storage)  # the bootstrap membership is applied first
    replica.raw.campaign()
    drain(replica, storage)
    assert replica.leader == "n1"
    return replica, storage


def drain(replica: Replica, storage: MemoryStorage, now: float = 0.0) -> list[Done]:
    """What a runtime does: send (nowhere here), persist, advance."""
    done = []
    while replica.has_ready():
        work = replica.ready(now)
        if work.snapshot is not None:
            storage.apply_snapshot(work.snapshot)
        storage.append(work.entries)
        if work.hard_state is not None:
            storage.set_hard_state(work.hard_state)
        done.append(replica.advance(work, now))
    return done


def applied_ids(done: list[Done]) -> list[str]:
    return [a.request_id for d in done for a in d.applied]


def grant(election: str, request_id: str) -> bytes:
    return encode_command(Acquire(election, "w1", 5000), request_id)


def test_a_request_id_is_applied_once_however_often_it_is_logged() -> None:
    replica, storage = single_node()
    replica.submit(grant("e", "n1/b/1"), "n1/b/1")
    replica.raw.propose(grant("e", "n1/b/1"))  # a retried copy that made it into the log too
    assert applied_ids(drain(replica, storage)) == ["n1/b/1"]


def test_a_request_id_is_forgotten_only_past_the_dedupe_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_replica, "DEDUPE_ENTRIES", 3)
    replica, storage = single_node()
    for n in range(5):
        replica.raw.propose(grant(f"e{n}", f"r{n}"))
    drain(replica, storage)
    replica.raw.propose(grant("e9", "r4"))  # within the window: skipped
    replica.raw.propose(grant("e9", "r0"))  # long past it: applied again
    assert applied_ids(drain(replica, storage)) == ["r0"]


def test_a_forwarded_proposal_is_checked_as_a_client_call() -> None:
    replica, _ = single_node()
    replica.members["n2"] = "127.0.0.1:2"

    def forwarded(data: bytes, kind: EntryType = EntryType.NORMAL) -> Message:
        entry = Entry(term=0, index=0, type=kind, data=data)
        return Message(MessageType.PROP, to="n1", from_="n2", entries=(entry,))

    with pytest.raises(PermissionDenied, match="Expire"):
        replica.step(forwarded(encode_command(Expire("e", 1, 0), "")))
    with pytest.raises(InvalidArgument, match="data"):
        replica.step(forwarded(b"not a command"))
    with pytest.raises(InvalidArgument, match="not a membership change"):
        replica.step(forwarded(b"\xff", EntryType.CONF_CHANGE))


@pytest.mark.parametrize(
    "address",
    [b"", b"a", b"a:", b":1", b"a:0", b"a:65536", b"a:\xc2\xb2", b"\xff:1"],
    ids=["empty", "no_port", "empty_port", "no_host", "port_0", "port_65536", "digit_2", "latin1"],
)
def test_a_member_is_added_only_at_an_address_its_peers_can_connect_to(address: bytes) -> None:
    """Every member connects to a member added: an address it cannot read
    would stop each one as it applied the change (found by tests/cluster/test_fuzz_peer.py)."""
    replica, storage = single_node()
    change = ConfChange(ConfChangeType.ADD_NODE, "n2", address)
    with pytest.raises(InvalidArgument, match="^address: "):
        replica.propose_conf_change(change)
    entry = Entry(term=0, index=0, type=EntryType.CONF_CHANGE, data=encode_conf_change(change))
    with pytest.raises(InvalidArgument, match="^address: "):
        replica.step(Message(MessageType.PROP, to="n1", from_="n1", entries=(entry,)))
    drain(replica, storage)
    assert replica.members == {"n1": "127.0.0.1:1"}


@pytest.mark.parametrize(
    "address", ["127.0.0.1:2", "node-2.example:50052", "[::1]:2", "http://h:2"]
)
def test_a_member_at_host_port_is_added(address: str) -> None:
    replica, storage = single_node()
    replica.propose_conf_change(ConfChange(ConfChangeType.ADD_NODE, "n2", address.encode()))
    drain(replica, storage)
    assert replica.members == {"n1": "127.0.0.1:1", "n2": address}


def test_a_member_logged_with_an_address_that_is_not_utf8_is_applied() -> None:
    """A change logged before addresses were checked is applied, not fatal."""
    replica, storage = single_node()
    replica.raw.propose_conf_change(ConfChange(ConfChangeType.ADD_NODE, "n2", b"\xff:1"))
    drain(replica, storage)
    assert replica.members == {"n1": "127.0.0.1:1", "n2": "\ufffd:1"}
