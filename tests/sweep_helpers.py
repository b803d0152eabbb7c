"""The probe notebook the sweep tests execute: a parameters cell and one record call.

It records ``score = 10 * x + seed`` and the learning rate its Config ends up with after ``overrides``, so every
number a sweep collects has an independent expected value. ``sleep`` makes a run last; ``fail_if`` makes it fail
while that file exists.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

PROBE_PARAMETERS = """\
x = 1
seed = 0
sleep = 0.0
fail_if = ""          # fail while this file exists
workdir = "."
figures_dir = "."
run_dir = None
overrides = {}"""

PROBE_BODY = """\
import time
from pathlib import Path

import pathkit.sweep
from pathkit.config import Config

cfg, = pathkit.sweep.apply_overrides(Config.from_name("tiny"), overrides)
time.sleep(sleep)
assert not (fail_if and Path(fail_if).exists()), "asked to fail"
pathkit.sweep.record(run_dir, score=10 * x + seed, temperature=cfg.clip.init_temperature,
                     shared_data=Path(workdir, "synthetic").is_symlink())"""


def write_notebook(path: Path, parameters: str, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)
    return path
