"""Fixtures for the multi-process cluster tests: the ``cluster`` marker and fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from trio_election._bridge import asyncio_loop
from trio_election.testing.processes import Cluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cluster: starts real node processes on loopback (select with -m cluster, "
        "skip with -m 'not cluster'); runs by default",
    )


_CLUSTER = pytest.StashKey[Cluster]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """On failure, add every node's log to the report (shown with the failure)."""
    report = yield
    cluster = item.stash.get(_CLUSTER, None)
    if report.failed and cluster is not None:
        # The whole test, fixture teardown included, ran in the call phase:
        # every process is reaped and its log complete by now.
        report.sections.append(("node logs", cluster.logs()))
    return report


@pytest.fixture
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """A :class:`Cluster` under tmp_path; start members with ``await cluster.start()``.

    Opens the trio-asyncio loop the gRPC channels need (shared with the test).
    At teardown every node process is killed, however the test ended; a
    failing test's report carries the node logs.
    """
    cluster = Cluster(tmp_path)
    request.node.stash[_CLUSTER] = cluster
    try:
        async with asyncio_loop():
            yield cluster
    finally:
        await cluster.aclose()
