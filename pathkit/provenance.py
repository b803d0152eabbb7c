"""Where a number was measured: the machine and the versions of the packages that move numbers.

Every benchmark JSON under ``figures/`` carries ``machine_record()`` and the pytest header prints it, so a number
in the README can name the CPU and the torch / transformers / peft / lightning / numpy it came from. Float results
of training differ between CPUs and library builds (summation order), so a learning number without these is not
reproducible.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

PACKAGES = ("torch", "transformers", "peft", "lightning", "numpy")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None when absent), read from metadata without importing it."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def gpu_name() -> str | None:
    """The first CUDA device's name when torch is already imported and sees one (never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return None


def machine_record() -> dict:
    """``{"cpu", "cpus", "gpu", "platform", "python", "versions": {...}}`` for a benchmark or learning JSON."""
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "gpu": gpu_name(), "platform": platform.platform(),
            "python": platform.python_version(), "versions": package_versions()}


def one_line() -> str:
    """The record as one line: ``CPU (N cores); torch 2.13.0+cpu, transformers 5.25.0, ...``."""
    rec = machine_record()
    versions = ", ".join(f"{k} {v}" for k, v in rec["versions"].items())
    gpu = f", GPU {rec['gpu']}" if rec["gpu"] else ""
    return f"{rec['cpu']} ({rec['cpus']} cores{gpu}); python {rec['python']}; {versions}"
