"""Experiment records: the run directory's files, comparison, the experiment log.

Importable without JAX (and without matplotlib/tensorboardX until they are
needed), so a training loop in any framework can use it.
"""

from jaxlm.tracking.compare import compare_runs
from jaxlm.tracking.records import METRIC_COLUMNS, STATUSES
from jaxlm.tracking.runs import NotARunError, RunRecord, load_run
from jaxlm.tracking.seed_api import ExperimentConfig, ExperimentLogger, compare_experiments
from jaxlm.tracking.tracker import ExperimentTracker

__all__ = [
    "METRIC_COLUMNS",
    "STATUSES",
    "ExperimentConfig",
    "ExperimentLogger",
    "ExperimentTracker",
    "NotARunError",
    "RunRecord",
    "compare_experiments",
    "compare_runs",
    "load_run",
]
