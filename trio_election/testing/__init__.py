"""Test helpers for trio-election (importable by any test suite)."""

from ._credentials import (
    CertFiles as CertFiles,
    make_certs as make_certs,
    write_secret as write_secret,
)
from ._election_sim import (
    ElectionReplica as ElectionReplica,
    ElectionSimOptions as ElectionSimOptions,
    ElectionSimulation as ElectionSimulation,
)
from ._logs import wait_for_line as wait_for_line
from ._proxy import FreezableProxy as FreezableProxy
from ._raft_sim import (
    Cluster as Cluster,
    InvariantViolation as InvariantViolation,
    KVStateMachine as KVStateMachine,
    SimNode as SimNode,
    SimOptions as SimOptions,
    Simulation as Simulation,
)
from ._sweep import sweep as sweep

__all__ = [
    "CertFiles",
    "Cluster",
    "ElectionReplica",
    "ElectionSimOptions",
    "ElectionSimulation",
    "FreezableProxy",
    "InvariantViolation",
    "KVStateMachine",
    "SimNode",
    "SimOptions",
    "Simulation",
    "make_certs",
    "sweep",
    "wait_for_line",
    "write_secret",
]
