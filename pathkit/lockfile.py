"""``requirements.lock``: the project's pins, written by ``make lock`` and read by the packaging tests.

The lock is a requirements-style list, one ``name==version`` per line, of every package the CPU install holds,
solved by ``uv pip compile`` from ``pyproject.toml``'s ranges with torch pinned to its CPU build. It names no
index URL and no host, so ``pip install -c requirements.lock -e ".[dev,viewer]"`` installs from whatever index
pip is set to (an institution's mirror included). ``uv.lock`` / ``pylock.toml`` record download URLs and are not
used.

torch's CUDA-only dependencies (``nvidia-*``, ``triton``, ``cuda-*``) are dropped from the solver's output: the CPU
build of torch does not require them, and on a GPU machine pip resolves the ones its CUDA build names.
``environment.yml`` is rewritten from the same pins, so conda users get the same versions.

    python -m pathkit.lockfile SOLVED.txt --out requirements.lock --environment environment.yml
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from pathkit.io import PathkitError, atomic_write_text

CUDA_ONLY = re.compile(r"^(nvidia-.*|triton|cuda-.*)$")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*$")

LOCK_HEADER = """\
# requirements.lock: every package of pathkit's CPU install at one version (make lock rebuilds it; do not edit).
# Install: pip install -c requirements.lock -e ".[dev,viewer]"  (make install / tutorial / test do this).
# Solved by `uv pip compile` for Python 3.11 from pyproject.toml's ranges with torch pinned to its CPU build;
# torch's CUDA-only dependencies (nvidia-*, triton, cuda-*) are left out (README: "On a GPU").
"""

ENV_HEADER = """\
# Conda environment equivalent to `pip install -c requirements.lock -e ".[dev,viewer]"` (written by make lock).
# conda resolves python; pip installs pathkit and every package at the version pinned in requirements.lock.
name: pathkit
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
      - -c requirements.lock
      - -e ".[dev,viewer]"
"""


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: str | Path) -> dict[str, str]:
    """``{canonical name: version}`` from a requirements-style file (comments and options skipped)."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        match = PIN.match(line)
        if match is None:
            raise PathkitError(f"{path}:{number}: not a name==version pin: {raw.strip()!r}")
        pins[canonical(match.group(1))] = match.group(2)
    return pins


def write_lock(solved: str | Path, out: str | Path, environment: str | Path | None = None) -> dict[str, str]:
    """Keep the solver's pins minus torch's CUDA-only packages; write the lock (and environment.yml)."""
    pins = {name: version for name, version in read_pins(solved).items() if not CUDA_ONLY.match(name)}
    if "torch" not in pins:
        raise PathkitError(f"{solved}: no torch pin; the lock must carry the CPU torch pin")
    lines = [f"{name}=={pins[name]}" for name in sorted(pins)]
    atomic_write_text(out, LOCK_HEADER + "\n".join(lines) + "\n")
    if environment is not None:
        atomic_write_text(environment, ENV_HEADER + "".join(f"      - {line}\n" for line in lines))
    return pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("solved", help="uv pip compile output")
    parser.add_argument("--out", default="requirements.lock")
    parser.add_argument("--environment", default=None, help="environment.yml to rewrite with the same pins")
    args = parser.parse_args(argv)
    pins = write_lock(args.solved, args.out, args.environment)
    print(f"{args.out}: {len(pins)} packages pinned (torch=={pins['torch']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
