"""``execute_run``: one sweep run, executed with papermill into its own run folder.

A run folder ``OUT/runs/<run-id>/`` holds::

    params.json        the run's parameters (notebook parameters and config overrides, flat)
    <notebook>.ipynb   the executed notebook (written by papermill, also when a cell fails)
    metrics.json       what the notebook recorded with ``pathkit.sweep.record``
    log.txt            the kernel's stdout and stderr
    status.json        written last: done or failed, the error line, seconds
    work/              the run's workdir; ``work/synthetic`` links to the sweep's shared data folder
    figures/           the run's figures

The folder is locked (``flock`` on ``.lock``) while a process works in it, so two sweeps never write the same
run folder: the second waits, then finds the run done. The lock goes away with its process, SIGKILL included.
A run without ``status.json`` never finished and runs again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pathkit.io import one_line, read_json, write_json

# Lazy imports: papermill (papermill, Jupyter's stack). They load inside the functions that need them, not
# when this module is imported.

STATUS_FILE = "status.json"
PARAMS_FILE = "params.json"
LOG_FILE = "log.txt"
# Folders of a pathkit workdir that hold prepared data every run may share (built once, read by all).
SHARED_DATA = ("synthetic",)
KERNEL_START_FAILED = "Kernel died before replying to kernel_info"
KERNEL_START_RETRIES = 2


@contextlib.contextmanager
def stderr_to(fh) -> Iterator[None]:
    """Point this process's stderr (file descriptor 2) at ``fh`` while a kernel starts and runs.

    The kernel papermill launches inherits it, so its own warnings land in the run's log, not in the
    terminal or, when a notebook runs the sweep, in that notebook's output.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fh.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (waits while another process holds it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def finished_status(run_dir: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The run's status when it finished successfully with exactly these parameters, else None."""
    status_path, params_path = run_dir / STATUS_FILE, run_dir / PARAMS_FILE
    if not (status_path.is_file() and params_path.is_file()):
        return None
    try:
        status, saved = read_json(status_path), read_json(params_path)
    except Exception:  # a damaged file means the run must be redone, not that the sweep stops
        return None
    return status if status.get("status") == "done" and saved == params else None


def link_shared_data(workdir: Path, data_dir: Path) -> None:
    """Point the run's ``workdir/synthetic`` (and other shared data folders) at the sweep's data folder."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in SHARED_DATA:
        target, link = data_dir / name, workdir / name
        target.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or not link.exists():
            link.unlink(missing_ok=True)
            link.symlink_to(target.resolve(), target_is_directory=True)


def execute_run(notebook: str, run_dir: str, params: dict[str, Any], inject: dict[str, Any],
                data_dir: str, timeout: float | None = None) -> dict[str, Any]:
    """Execute ``notebook`` for one run; return its status row (never raises for a failing notebook).

    Args:
        notebook: the notebook to execute.
        run_dir: the run folder (created).
        params: the run's identity (written to params.json and compared on re-runs).
        inject: the parameters papermill injects (notebook parameters; ``overrides`` as a dict).
        data_dir: the sweep's shared data folder.
        timeout: seconds per cell (None: no limit).
    """
    import papermill as pm

    notebook_path, run_path = Path(notebook), Path(run_dir)
    with run_lock(run_path):
        done = finished_status(run_path, params)
        if done is not None:  # another sweep finished it while we waited for the lock
            return {**done, "skipped": True}
        for stale in (STATUS_FILE, "metrics.json"):
            (run_path / stale).unlink(missing_ok=True)
        write_json(run_path / PARAMS_FILE, params)
        workdir = run_path / "work"
        link_shared_data(workdir, Path(data_dir))
        (run_path / "figures").mkdir(exist_ok=True)
        declared = pm.inspect_notebook(str(notebook_path))
        paths = {"workdir": str(workdir), "figures_dir": str(run_path / "figures"), "run_dir": str(run_path)}
        parameters = {**{k: v for k, v in paths.items() if k in declared}, **inject}
        started = time.time()
        t0 = time.perf_counter()
        error = None
        with open(run_path / LOG_FILE, "w", encoding="utf-8") as log, stderr_to(log):
            for attempt in range(1 + KERNEL_START_RETRIES):
                error = None
                try:
                    pm.execute_notebook(str(notebook_path), str(run_path / notebook_path.name),
                                        parameters=parameters, cwd=str(notebook_path.parent.resolve()),
                                        kernel_name="python3", language="python", progress_bar=False,
                                        log_output=False, stdout_file=log, stderr_file=log,
                                        execution_timeout=timeout)
                except pm.PapermillExecutionError as err:
                    evalue = (err.evalue or "").strip().splitlines()
                    error = f"cell {err.exec_count}: {err.ename}: {evalue[0] if evalue else ''}".rstrip(": ")
                except Exception as err:  # kernel died, timeout, unreadable notebook: the run failed, others go on
                    error = one_line(err)
                if not (error and KERNEL_START_FAILED in error and attempt < KERNEL_START_RETRIES):
                    break
                # Kernels started at the same moment by parallel runs can race for the same TCP ports; the
                # notebook never ran, so starting it again is safe.
                log.write(f"\nkernel failed to start ({error}); starting it again\n")
            if error:
                log.write(f"\nrun failed: {error}\n")
        status = {"run_id": run_path.name, "status": "failed" if error else "done", "error": error,
                  "seconds": round(time.perf_counter() - t0, 3), "started": started, "host": os.uname().nodename}
        write_json(run_path / STATUS_FILE, status)
        return status
