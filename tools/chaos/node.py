"""How the harness starts a node: ``python -m tools.chaos.node [--plant BUG] node ARGS``.

It is ``trio-election node ARGS``, which exits when the harness is gone (see
``orphan.py``), optionally with a bug planted first, to show that the checker
catches what it must:

* ``skip-refresh``: a node that becomes Raft leader does not give every held
  election a full TTL again (``Elections.lead`` does nothing). Renewals are
  answered by the leader off the log, so the new leader only knows the
  deadlines of the last grants: it expires elections whose holders are still
  renewing, and grants them to someone else while the holders still believe.
"""

from __future__ import annotations

import sys

from trio_election.cli._main import main
from trio_election.replica._elections import Elections

from .orphan import exit_with_parent


def _skip_refresh(self: Elections, now: float) -> None:
    del self, now


#: Bug name -> (the method of Elections it replaces, the replacement).
BUGS = {"skip-refresh": ("lead", _skip_refresh)}

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["--plant"]:
        name, replacement = BUGS[argv[1]]
        setattr(Elections, name, replacement)
        argv = argv[2:]
    exit_with_parent()
    sys.exit(main(argv))
