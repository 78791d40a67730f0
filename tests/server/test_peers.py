"""The peer senders of a cluster member (server/_peers.py)."""

from __future__ import annotations

import logging

import pytest
import trio

from trio_election.server._peers import Peers
from trio_election.server._security import PeerAuth


async def test_a_member_logged_at_an_address_that_is_not_host_port_is_not_sent_to(
    caplog: pytest.LogCaptureFixture,
):
    """Logged before addresses were checked: the node goes on without it."""
    async with trio.open_nursery() as nursery:
        peers = Peers(
            "n1",
            PeerAuth(insecure=True),
            nursery,
            unreachable=lambda peer: None,
            snapshot_status=lambda peer, delivered: None,
            removed=lambda peer: None,
        )
        peers.update({"n1": "127.0.0.1:1", "n2": "not an address"})
        assert peers.channel("n2") is None
        nursery.cancel_scope.cancel()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "peer n2 at 'not an address': not sending to it: endpoints: 'not an address' is not "
        "HOST:PORT"
    ]
