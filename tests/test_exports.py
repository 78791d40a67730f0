"""Each package exports its public names exactly once, and only names it has."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "trio_election",
    "trio_election.core",
    "trio_election.client",
    "trio_election.aio",
    "trio_election.sync",
    "trio_election.server",
    "trio_election.cli",
    "trio_election.raft",
    "trio_election.testing",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_each_public_name_once_and_each_exists(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
    for public in exported:
        assert hasattr(module, public), f"{name}.__all__ names {public}, which is missing"
    public_attrs = {
        attr
        for attr in vars(module)
        if not attr.startswith("_") and not isinstance(getattr(module, attr), type(importlib))
    }
    assert public_attrs <= set(exported), f"{name} has public names missing from __all__"


def test_client_names_are_reexported_at_the_top() -> None:
    import trio_election
    import trio_election.client

    for public in trio_election.client.__all__:
        assert getattr(trio_election, public) is getattr(trio_election.client, public)


@pytest.mark.parametrize("name", ["trio_election.aio", "trio_election.sync"])
def test_the_other_clients_have_the_trio_client_s_names(name: str) -> None:
    import trio_election.client

    module = importlib.import_module(name)
    assert sorted(module.__all__) == sorted(trio_election.client.__all__)
    for public in ("Attempt", "EventKind", "Leader", "LeaderEvent"):
        assert getattr(module, public) is getattr(trio_election.client, public)
