"""``pathkit export``: a pathkit model folder as an HF LLaVA folder, or as a pathkit folder when LLaVA's layout
cannot hold the model (PA-LLaVA's scale-invariant connector, slide models), with the reason in one line."""

from __future__ import annotations

from pathlib import Path

from pathkit.io import PathkitError
from pathkit.models.hf_llava import export_hf_llava, hf_llava_unsupported
from pathkit.models.vlm import VisionLanguageModel

FORMATS = ("hf-llava", "pathkit")


def export_model(model_dir: str | Path, out_dir: str | Path, fmt: str = "hf-llava") -> tuple[str, str | None]:
    """Export ``model_dir`` to ``out_dir``; returns (the format written, why not hf-llava or None).

    ``hf-llava`` writes :func:`pathkit.models.hf_llava.export_hf_llava`'s folder when the model fits it and a
    pathkit folder (LoRA merged) otherwise; ``pathkit`` always writes a pathkit folder with LoRA merged."""
    if fmt not in FORMATS:
        raise PathkitError(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise PathkitError(f"{out_dir}: --out must differ from the model folder")
    model = VisionLanguageModel.from_pretrained(model_dir).eval()
    reason = hf_llava_unsupported(model) if fmt == "hf-llava" else None
    if fmt == "hf-llava" and reason is None:
        export_hf_llava(model, out_dir, source=str(model_dir))
        return "hf-llava", None
    model.save_pretrained(out_dir, merge=True)
    return "pathkit", reason
