"""Packaging: the lock pins the whole CPU install (torch at its CPU build) and every install uses it, the installed
versions are the locked ones, environment.yml carries the same pins, no torchvision/timm, ruff clean."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_no_torchvision_or_timm_installed():
    installed = {(d.metadata["Name"] or "").lower() for d in metadata.distributions()}
    assert "torchvision" not in installed, "torchvision breaks transformers imports with the CPU torch"
    assert "timm" not in installed, "timm drags torchvision in; keep it an optional extra"


def _lock() -> dict[str, str]:
    from pathkit.lockfile import read_pins

    return read_pins(REPO / "requirements.lock")


def test_lock_pins_cpu_torch_names_no_host_and_every_install_uses_it():
    text = (REPO / "requirements.lock").read_text()
    assert _lock()["torch"] == "2.13.0"
    assert "://" not in text and "--index-url" not in text and "--extra-index-url" not in text
    makefile = (REPO / "Makefile").read_text()
    assert "LOCK := requirements.lock" in makefile and "-c $(LOCK)" in makefile
    for target in ("tutorial: $(STAMP)", "test: $(STAMP)", "install: $(STAMP)"):
        assert target in makefile  # each installs through $(STAMP), which installs from the lock
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert not (REPO / "uv.lock").exists() and not (REPO / "pylock.toml").exists()  # they record URLs


def test_lock_covers_every_dependency_and_pyproject_keeps_ranges():
    from pathkit.lockfile import canonical

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + project["optional-dependencies"]["dev"] + \
        project["optional-dependencies"]["viewer"]
    lock = _lock()
    missing = [r for r in wanted if canonical(_name(r)) not in lock]
    assert not missing, f"in pyproject.toml but not in requirements.lock (run make lock): {missing}"
    pinned = [r for r in project["dependencies"] if "==" in r]
    assert not pinned, f"pyproject.toml keeps ranges (pip install pathkit into any env); pinned: {pinned}"


@pytest.mark.skipif(os.environ.get("PATHKIT_UNLOCKED") == "1", reason="make test-latest runs unlocked on purpose")
def test_installed_versions_are_the_locked_ones():
    """The environment the tests run in is the locked one: a package at another version is drift."""
    from pathkit.lockfile import canonical

    lock = _lock()
    off = {}
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"] or "")
        if name in lock and dist.version.split("+")[0] != lock[name]:
            off[name] = (dist.version, lock[name])
    assert not off, f"installed (version, locked) differ: {off}; reinstall with make install or run make lock"
    import torch

    assert torch.__version__.startswith("2.13.0")


def test_environment_yml_carries_the_lock():
    from pathkit.lockfile import read_pins

    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"] if isinstance(d, str))
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-c requirements.lock" in pip_section
    assert '-e ".[dev,viewer]"' in pip_section
    pins = [r for r in pip_section if not r.startswith("-")]
    tmp = REPO / ".pytest_cache" / "env-pins.txt"
    tmp.parent.mkdir(exist_ok=True)
    tmp.write_text("\n".join(pins) + "\n")
    assert read_pins(tmp) == _lock(), "environment.yml and requirements.lock differ: run make lock"
    for optional in ("timm", "torchvision"):
        assert optional not in _lock()


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    out = subprocess.run([ruff, "check", "pathkit", "tests", "benchmarks"], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout[-3000:]


def test_import_pathkit_is_cheap():
    code = ("import sys, pathkit, pathkit.cli; "
            "print(sorted(m for m in ('torch', 'openslide', 'av', 'napari') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
