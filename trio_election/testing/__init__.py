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
from ._metrics import (
    METRICS_LINE as METRICS_LINE,
    MetricSamples as MetricSamples,
    http_get as http_get,
    scrape_metrics as scrape_metrics,
)
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
    "METRICS_LINE",
    "CertFiles",
    "Cluster",
    "ElectionReplica",
    "ElectionSimOptions",
    "ElectionSimulation",
    "FreezableProxy",
    "InvariantViolation",
    "KVStateMachine",
    "MetricSamples",
    "SimNode",
    "SimOptions",
    "Simulation",
    "http_get",
    "make_certs",
    "scrape_metrics",
    "sweep",
    "wait_for_line",
    "write_secret",
]
