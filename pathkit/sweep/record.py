"""``record``: a notebook's headline results, written to its run folder and shown in the notebook.

A sweep injects ``run_dir`` into every run's parameters cell; the notebook ends with one call such as
``record(run_dir, closed_accuracy=acc, seconds=t)``. The values are merged into ``run_dir/metrics.json``
(atomically, so a killed kernel never leaves half a file) and displayed as a small table, so the executed
notebook shows them too. Without a ``run_dir`` (a plain tutorial run) the values are only displayed.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

from pathkit.io import PathkitError, read_json, write_json

# Lazy imports: IPython (IPython, only inside a notebook). They load inside the functions that need them, not
# when this module is imported.

METRICS_FILE = "metrics.json"


def _plain(name: str, value: Any) -> Any:
    """A JSON-safe scalar: numpy/torch numbers become Python numbers; anything else is a clear error."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None  # NaN/inf are not JSON; a missing value says it
    raise PathkitError(f"record({name}=...): a metric must be a number, string, bool or None, "
                       f"got {type(value).__name__}")


def record(run_dir: str | Path | None = None, **metrics: Any) -> dict[str, Any]:
    """Record headline metrics of this run into ``run_dir/metrics.json`` and display them.

    Args:
        run_dir: the run folder a sweep injected (None: display only).
        **metrics: name=value scalars; a later call with the same name replaces the value.

    Returns:
        every metric recorded in ``run_dir`` so far (or just these when ``run_dir`` is None).
    """
    if not metrics:
        raise PathkitError("record(): name at least one metric, e.g. record(run_dir, accuracy=0.9)")
    values = {name: _plain(name, value) for name, value in metrics.items()}
    if run_dir is not None:
        path = Path(run_dir) / METRICS_FILE
        previous = read_json(path) if path.is_file() else {}
        values = {**previous, **values}
        write_json(path, values)
    _show(values)
    return values


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The metrics a run recorded (empty when it recorded none)."""
    path = Path(run_dir) / METRICS_FILE
    return read_json(path) if path.is_file() else {}


def _show(values: dict[str, Any]) -> None:
    text = "recorded: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in values.items())
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        print(text)
        return
    if get_ipython() is None:
        print(text)
        return
    # A JSON bundle too, so tools reading the executed notebook find the numbers without parsing text.
    display({"text/plain": text, "application/json": values}, raw=True)
