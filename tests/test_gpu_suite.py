"""The GPU suite waits for the day a GPU is lent: check now, on the CPU, that every step's command line is one
its benchmark accepts (flags, choices and types through the script's own argparse), so that day is not spent on
a typo. Nothing is run: parsing stops right after the arguments are read."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_suite  # noqa: E402


class _Parsed(Exception):
    pass


def _parse_only(monkeypatch, argv: list[str]) -> argparse.Namespace:
    """Run a benchmark script as __main__ with ``argv`` until its parser has read them; return what it read."""
    real = argparse.ArgumentParser.parse_args
    seen = {}

    def parse_args(self, args=None, namespace=None):
        seen["ns"] = real(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(_Parsed):
        runpy.run_path(str(REPO / argv[0]), run_name="__main__")
    return seen["ns"]


@pytest.mark.parametrize("step", sorted(gpu_suite.STEPS))
def test_every_step_is_a_command_its_benchmark_accepts(step, monkeypatch):
    budget, command = gpu_suite.STEPS[step]
    assert 0 < budget <= 120
    if command[1] == "-m":  # the GPU tests: pytest must know the marker it selects
        assert command[2:5] == ["pytest", "-q", "-m"] and command[5] == "gpu"
        assert "gpu:" in (REPO / "pyproject.toml").read_text()
        return
    args = _parse_only(monkeypatch, command[1:])
    assert getattr(args, "device", "cuda") == "cuda"


def test_a_wrong_flag_is_caught(monkeypatch):
    """The check is live: a flag the benchmark does not have makes argparse exit."""
    with pytest.raises(SystemExit):
        _parse_only(monkeypatch, ["benchmarks/bench_serve.py", "--no-such-flag", "1"])


def test_the_budgets_fit_ten_minutes():
    assert sum(budget for budget, _ in gpu_suite.STEPS.values()) <= 570
