"""Where sweep runs execute: a local process pool, or Ray tasks (a local Ray, or a cluster).

Both engines take a list of ``execute_run`` keyword dicts and yield each run's status row as it finishes, so
the runner records results while the rest are still running. Ray is an optional extra
(``pip install "pathkit[sweep]"``) and is imported only when asked for.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from pathkit.io import one_line
from pathkit.sweep.execute import execute_run

# Lazy imports: ray (Ray, an optional extra that starts a runtime). They load inside the functions that need
# them, not when this module is imported.

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Pool workers die when the sweep process dies (SIGKILL included) rather than run on unwatched."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: workers then finish their run; the run lock keeps it safe
        pass


def run_local(jobs: list[dict[str, Any]], workers: int) -> Iterator[dict[str, Any]]:
    """Execute runs in ``workers`` processes; yield status rows in completion order."""
    if workers == 1:  # no pool: one process, and the simplest thing to debug
        for job in jobs:
            yield execute_run(**job)
        return
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold torch/zmq threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_die_with_parent) as pool:
        pending = {pool.submit(execute_run, **job): job for job in jobs}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    job = pending.pop(future)
                    yield _result_or_failure(future, job)
        finally:
            for future in pending:
                future.cancel()


def _result_or_failure(future, job: dict[str, Any]) -> dict[str, Any]:
    try:
        return future.result()
    except Exception as err:  # the worker process itself died (out of memory, killed): that run failed
        return {"run_id": os.path.basename(job["run_dir"]), "status": "failed",
                "error": f"worker died: {one_line(err)}", "seconds": None}


def run_ray(jobs: list[dict[str, Any]], num_cpus: float, num_gpus: float) -> Iterator[dict[str, Any]]:
    """Execute runs as Ray tasks, each asking for ``num_cpus`` CPUs and ``num_gpus`` GPUs (Ray started)."""
    import ray

    try:
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(execute_run)
        pending = {task.remote(**job): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as err:  # the worker died (ray.exceptions.WorkerCrashedError, ...)
                                yield {"run_id": os.path.basename(job["run_dir"]), "status": "failed",
                           "error": f"ray task failed: {one_line(err)}", "seconds": None}
    finally:  # the sweep stopped early (Ctrl-C, an error): runs not yet finished are cancelled
        for ref in pending:
            ray.cancel(ref, force=True)
