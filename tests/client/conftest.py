"""Fixtures for the client tests: an in-memory node on port 0 inside the
test's Trio run, or a node in a process of its own (for the asyncio and
blocking clients, which run outside it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from _node_process import node_process

from trio_election.server import NodeConfig, serve


@pytest.fixture
async def node_port(nursery: trio.Nursery) -> AsyncIterator[int]:
    """The port of a fresh in-memory node (no start-up grace: a new node has no past)."""
    port = await nursery.start(serve, NodeConfig(port=0, data_dir=None, start_grace=False))
    yield port


@pytest.fixture
def node(tmp_path: Path) -> Iterator[int]:
    """The client port of a node process (``_node_process.node_process``)."""
    with node_process(tmp_path) as port:
        yield port
