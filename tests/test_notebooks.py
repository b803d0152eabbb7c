"""Every numbered notebook executes with papermill at the tiny preset, in order, sharing one workdir.

A notebook added later is picked up without editing this file.
"""

from __future__ import annotations

import json

import pytest

from pathkit.notebooks import list_notebooks, run_notebook

NOTEBOOKS = list_notebooks()


@pytest.mark.notebooks
@pytest.mark.timeout(1800)  # 07 trains two recipes and, on a fresh machine, builds tiny-pretrained once (minutes)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, session_dir):
    out = run_notebook(path, session_dir / "executed", preset="tiny", seed=0,
                       workdir=session_dir / "runs", figures_dir=session_dir / "figures")
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] if c["cell_type"] == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_has_parameters_and_teaches(path):
    nb = json.loads(path.read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    source = "".join(tagged[0]["source"])
    for name in ("preset", "seed", "workdir", "figures_dir"):
        assert f"{name} =" in source, f"{path.name}: parameters cell lacks {name}"
    markdown = [c for c in nb["cells"] if c["cell_type"] == "markdown"]
    words = sum(len("".join(c["source"]).split()) for c in markdown)
    assert words >= 150, f"{path.name}: markdown should teach the paper's idea ({words} words)"
    for c in nb["cells"]:  # notebooks are committed unexecuted: no outputs, no secrets
        if c["cell_type"] == "code":
            assert not c.get("outputs"), f"{path.name}: commit notebooks without outputs"
            assert "sk-" not in "".join(c["source"]), f"{path.name}: looks like an API key in a cell"
