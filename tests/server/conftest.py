"""Fixtures for the server tests; the helpers they return live in ``_support.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_election._bridge import asyncio_loop
from trio_election.server import NodeConfig, serve

from ._support import Client, RunningNode, StartNode


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[StartNode]:
    """``await start_node(**NodeConfig fields)`` -> a RunningNode on port 0.

    Defaults: a data dir under tmp_path (``data_dir=None`` for in memory) and no
    start-up grace unless asked for (``start_grace=True``).
    """
    nodes: list[RunningNode] = []

    async with asyncio_loop(), trio.open_nursery() as nursery:

        async def start(**overrides: Any) -> RunningNode:
            config = replace(
                NodeConfig(port=0, data_dir=tmp_path / "data", start_grace=False), **overrides
            )
            scope = trio.CancelScope()
            stopped = trio.Event()

            async def run(task_status: trio.TaskStatus[int]) -> None:
                try:
                    with scope:
                        await serve(config, task_status=task_status)
                finally:
                    stopped.set()

            port = await nursery.start(run)
            node = RunningNode(config, port, scope, stopped)
            nodes.append(node)
            return node

        yield start

        for node in nodes:
            for client in node.clients:
                client.close()
        for node in nodes:
            await node.stop()
        nursery.cancel_scope.cancel()


@pytest.fixture
async def node(start_node: StartNode) -> RunningNode:
    """An in-memory node without start-up grace: no disk, no worker threads."""
    return await start_node(data_dir=None)


@pytest.fixture
def client(node: RunningNode) -> Client:
    return node.client()
