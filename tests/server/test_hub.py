"""The hub's part in Campaigns whose call is gone (``server/_hub.py``)."""

from __future__ import annotations

import pytest
import trio_asyncio

from trio_election._bridge import asyncio_loop
from trio_election._errors import Unavailable
from trio_election.core import Holder, Outcome
from trio_election.server._hub import Hub


def holder(node_id: str = "w1") -> Holder:
    return Holder("e", node_id, 7, 5000, b"", 0.0)


async def test_a_grant_to_a_campaign_whose_call_is_gone_is_handed_back() -> None:
    async with asyncio_loop():
        hub = Hub(prefix="n1/b2/")
        live, waiter = hub.new_campaign()
        gone, _ = hub.new_campaign()
        assert hub.forget_campaign(gone)  # its call ended; its CancelWait is on its way
        # Granted to the live call: it is told. Granted to the gone one, to one
        # of this node's earlier runs, or to another node's: only the first two
        # are this node's to give back.
        for waiter_id, orphan in [
            (live, False),
            (gone, True),
            ("n1/old/3", True),
            ("n2/b9/1", False),
        ]:
            granted = holder()
            assert hub.report(Outcome(True, granted, granted=((waiter_id, granted),))) == (
                [granted] if orphan else []
            )
        assert await trio_asyncio.aio_as_trio(waiter.wait)(1) == holder()


async def test_a_campaign_the_leader_took_out_of_the_queue_is_told_to_retry() -> None:
    async with asyncio_loop():
        hub = Hub(prefix="n1/b2/")
        waiter_id, waiter = hub.new_campaign()
        assert hub.report(Outcome(True, None, cancelled=(waiter_id,))) == []
        with pytest.raises(Unavailable, match="retry"):
            await trio_asyncio.aio_as_trio(waiter.wait)(1)
