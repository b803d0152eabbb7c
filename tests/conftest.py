"""Shared fixtures. Tests are fast on a 2-core CPU; GPU tests skip without CUDA, viewer tests without X."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_report_header(config):
    """The machine and package versions, so a failing learning number can be read against them."""
    from pathkit.provenance import one_line

    return f"pathkit measured on: {one_line()}"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    has_display = bool(os.environ.get("DISPLAY"))
    for item in items:
        if item.get_closest_marker("gpu") and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if item.get_closest_marker("viewer") and not has_display:
            item.add_marker(pytest.mark.skip(reason="needs an X display (run under xvfb-run)"))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    """A folder shared by the whole test session (e.g. notebooks reuse earlier notebooks' outputs)."""
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny-model tests on one torch thread.

    Tiny models do thousands of small ops; on a shared 2-core machine two OpenMP threads per op spin and were
    measured 15-30x slower than one. Opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
