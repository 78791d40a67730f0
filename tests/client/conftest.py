"""Fixtures for the client tests: an in-memory node on port 0 inside the test's Trio run."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from trio_election.server import NodeConfig, serve


@pytest.fixture
async def node_port(nursery: trio.Nursery) -> AsyncIterator[int]:
    """The port of a fresh in-memory node (no start-up grace: a new node has no past)."""
    port = await nursery.start(serve, NodeConfig(port=0, data_dir=None, start_grace=False))
    yield port
