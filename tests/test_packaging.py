"""Packaging: constraints pin torch, no torchvision/timm installed, environment.yml matches pyproject, ruff clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_no_torchvision_or_timm_installed():
    installed = {(d.metadata["Name"] or "").lower() for d in metadata.distributions()}
    assert "torchvision" not in installed, "torchvision breaks transformers imports with the CPU torch"
    assert "timm" not in installed, "timm drags torchvision in; keep it an optional extra"


def test_constraints_pin_torch_and_every_install_uses_them():
    assert "torch==2.13.0" in (REPO / "constraints.txt").read_text().split()
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()
    import torch

    assert torch.__version__.startswith("2.13.0")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"] if isinstance(d, str))
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-c constraints.txt" in pip_section
    assert '-e ".[dev,viewer]"' in pip_section
    listed = {_name(r) for r in pip_section if not r.startswith("-")}
    assert listed == wanted, f"missing in environment.yml: {wanted - listed}; extra: {listed - wanted}"
    for optional in ("timm", "torchvision"):
        assert optional not in wanted


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
