"""Experiment sweeps: papermill-parameterised notebooks over a grid, on a local pool or Ray.

``record`` (in a notebook) writes a run's headline metrics; ``apply_overrides`` applies a notebook's
``overrides`` to its Config and recipes; ``run_sweep`` executes a :class:`SweepSpec`. Light to import: papermill,
pandas and Ray load only when a sweep runs.
"""

from pathkit.sweep.overrides import apply_overrides
from pathkit.sweep.record import read_metrics, record

__all__ = ["apply_overrides", "read_metrics", "record"]
