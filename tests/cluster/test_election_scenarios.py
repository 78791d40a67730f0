"""Election scenario tests: scripts in testdata/*.txt (see _election_scenario.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._election_scenario import run_file

TESTDATA = Path(__file__).parent / "testdata"


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.txt")), ids=lambda p: p.stem)
def test_scenario(path: Path, request: pytest.FixtureRequest) -> None:
    run_file(path, rewrite=request.config.getoption("--rewrite"))
