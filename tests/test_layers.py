"""pathkit's packages import downwards only: config and io (and ray_runtime, which starts Ray); synthetic / wsi /
video; models; curate / instruct (and workdir, which writes the tutorial's data as files, feature files made by a
tile encoder among them); train; eval (and data, the importers of public data sets); viz, the CLI, the model
server and the project's tooling (notebooks, fingerprints, lock file, provenance). No exceptions: where a lower
layer runs a higher one's code (slide batches run a tile encoder), the caller passes it in. Read from the source
(every ``import`` statement, inside functions too), so a lazy import that points upwards is caught as well.
tests/test_imports.py checks that imports sit at the top and that every module imports alone (no cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "pathkit"
LAYERS = [("config", "io", "paths", "ray_runtime"), ("synthetic", "wsi", "video"), ("models",),
          ("curate", "instruct", "workdir"), ("train",), ("eval", "data"),
          ("viz", "cli", "serve", "notebooks", "sweep", "provenance", "fingerprints", "lockfile")]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        if rel.name == "commands" or rel.parts == ("cli",) or rel.parts == ("__init__",) or rel.name == "__main__":
            continue  # the CLI layer: command modules may import anything
        yield ".".join(rel.parts), path


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pathkit":
            parts = node.module.split(".")
            if len(parts) > 1:
                yield parts[1], node.lineno
            else:
                yield from ((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "pathkit" and len(parts) > 1:
                    yield parts[1], node.lineno


def _upward_imports():
    found = []
    for name, path in _modules():
        mine = name.split(".")[0]
        if mine not in LAYER:
            found.append(f"pathkit/{name}.py: package {mine!r} has no layer in tests/test_layers.py")
            continue
        for target, line in _imports(path):
            if target in LAYER and LAYER[target] > LAYER[mine]:
                found.append(f"pathkit/{name}.py:{line} imports pathkit.{target} (layer {LAYER[target]} above "
                             f"{LAYER[mine]})")
    return found


def test_packages_import_only_lower_layers():
    assert _upward_imports() == []


def test_training_never_imports_the_synthetic_data():
    bad = [f"pathkit/{name}.py:{line}" for name, path in _modules() if name.startswith("train.")
           for target, line in _imports(path) if target in ("synthetic", "workdir")]
    assert bad == [], "training reads only files: " + ", ".join(bad)


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The rule is live: a model module that imported the trainer would be reported."""
    fake = tmp_path / "pathkit"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "bad.py").write_text("def f():\n    from pathkit.train.runner import run_recipe\n")
    monkeypatch.setattr(__import__(__name__), "PKG", fake)
    assert _upward_imports() == ["pathkit/models.bad.py:2 imports pathkit.train (layer 4 above 2)"]
