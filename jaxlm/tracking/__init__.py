"""Experiment records: the run directory's files. Importable without JAX."""

from jaxlm.tracking.tracker import METRIC_COLUMNS, ExperimentTracker

__all__ = ["METRIC_COLUMNS", "ExperimentTracker"]
