"""Starting or joining Ray, for the runs a sweep and the slide batches of ``pathkit tile|extract --engine ray``
hand to it. Ray is optional (``pip install "pathkit[sweep]"``) and starts a runtime, so it loads only here, when
called."""

from __future__ import annotations

import os

from pathkit.io import PathkitError

# Lazy imports: ray (Ray, an optional extra that starts a runtime). They load inside the functions that need
# them, not when this module is imported.


def start_ray(address: str | None, num_cpus: int | None = None):
    """Join the Ray cluster at ``address``, or start a local Ray with this machine's cores.

    Returns True when this call started Ray (so the caller shuts it down).
    """
    try:
        import ray
    except ImportError as err:
        raise PathkitError('--engine ray: Ray is not installed (pip install "pathkit[sweep]")') from err
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    return True
