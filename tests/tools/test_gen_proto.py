"""The committed generated modules match proto/ (tools/gen_proto.py --check)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _gen_proto():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "tools" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_proto", module)
    spec.loader.exec_module(module)
    return module


def test_generated_code_matches_the_proto(capsys) -> None:
    assert _gen_proto().main(["--check"]) == 0, capsys.readouterr().err


def test_check_reports_drift(tmp_path, monkeypatch, capsys) -> None:
    gen = _gen_proto()
    for path in (ROOT / "trio_election" / "_generated").rglob("*.py"):
        target = tmp_path / path.relative_to(ROOT / "trio_election" / "_generated")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    (tmp_path / "v1" / "election_pb2.py").write_text("# edited by hand\n")
    monkeypatch.setattr(gen, "OUT", tmp_path)
    assert gen.main(["--check"]) == 1
    assert "drift: trio_election/_generated/v1/election_pb2.py" in capsys.readouterr().err
