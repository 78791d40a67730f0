"""One cluster member's logic without I/O, shared by the node, the simulation and Maelstrom.

See :mod:`trio_election.replica._replica` for the theory of operation.
"""

from ._elections import Elections as Elections
from ._replica import (
    Applied as Applied,
    Done as Done,
    Machine as Machine,
    Replica as Replica,
    Work as Work,
)

__all__ = ["Applied", "Done", "Elections", "Machine", "Replica", "Work"]
