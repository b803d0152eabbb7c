"""Answer an evaluation questions file with a trained model, in LLaVA's answer format, resumably.

Each finished answer is appended (flushed, fsynced) to the output journal; a rerun skips question_ids already
answered, so a killed run resumes where it stopped and never writes a question twice. Images are resolved
relative to the questions file; an ``.h5``/``.pt``/``.csv`` image is a slide feature file (WSI-LLaVA, CLAM,
TRIDENT, WSI-Bench, SlideChat) and is passed as ``slide_features``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from pathkit.instruct.client import ChatClient
from pathkit.io import FailureLog, JsonlAppender, PathkitError, iter_jsonl
from pathkit.models.vlm import VisionLanguageModel
from pathkit.train.data import FeatureLoader
from pathkit.wsi.features import FEATURE_SUFFIXES

# Lazy imports: torch (the model stack, seconds to import). They load inside the functions that need them, not
# when this module is imported.

ANSWER_FIELDS = ("question_id", "prompt", "text", "answer_id", "model_id", "metadata")


def answered_ids(out_jsonl: str | Path) -> set[str]:
    """question_ids already in an answers journal (a torn last line is ignored)."""
    path = Path(out_jsonl)
    if not path.exists():
        return set()
    return {str(row["question_id"]) for _, row in iter_jsonl(path, strict=False) if "question_id" in row}


def resolve_image(image: Any, base: Path) -> Path | None:
    """An image path relative to the questions file (absolute paths kept); None for text-only questions."""
    if image in (None, ""):
        return None
    if isinstance(image, list):
        image = image[0] if image else None
        if image is None:
            return None
    path = Path(str(image))
    return path if path.is_absolute() else base / path


def load_visual(path: Path | None) -> tuple[str, Any]:
    """``("image", PIL.Image)``, ``("slide", (features (N, D) float32, coords (N, 2) int64))`` or
    ``("none", None)``. Slide files without coordinates get :func:`pathkit.train.data.coords_or_grid`'s grid."""
    if path is None:
        return "none", None
    if not path.exists():
        raise PathkitError(f"{path}: image not found")
    if path.suffix.lower() in FEATURE_SUFFIXES:
        loaded = FeatureLoader()(str(path))  # as training reads it: a file without coords gets a grid
        return "slide", (loaded["features"], loaded["coords"])

    try:
        with Image.open(path) as im:
            return "image", im.convert("RGB")
    except OSError as err:
        raise PathkitError(f"{path}: cannot read image ({err})") from err


class ServedChatModel:
    """A model behind an OpenAI-compatible endpoint (``pathkit serve``, vLLM) with ``VisionLanguageModel.answer``'s
    interface: each question is one chat request, greedy (temperature 0), sent concurrently so the server can
    batch them. Images travel as PNG data URLs (lossless); a slide travels as its feature file's absolute path,
    which the server accepts only under its ``--image-root``. The API key comes from the environment only."""

    sends_paths = True  # slides are named, not loaded here

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 timeout: float = 600.0):
        self.client = ChatClient(base_url, model, api_key_env=api_key_env, concurrency=concurrency,
                                 timeout=timeout, max_attempts=3)

    @staticmethod
    def _image_url(image: Any) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    def _ask(self, prompt: str, url: str | None, max_new_tokens: int) -> str:
        content: Any = prompt
        if url is not None:
            content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": prompt}]
        reply = self.client.chat([{"role": "user", "content": content}], temperature=0, max_tokens=max_new_tokens)
        return reply.text

    def answer(self, questions: list[str], images: list[Any] | None = None, slide_features: list[Any] | None = None,
               slide_coords=None, max_new_tokens: int = 32) -> list[str]:
        if images is not None:
            urls = [self._image_url(im) for im in images]
        elif slide_features is not None:
            urls = [str(Path(p).resolve()) for p in slide_features]
        else:
            urls = [None] * len(questions)
        with ThreadPoolExecutor(max_workers=max(1, min(len(questions), self.client.concurrency))) as pool:
            return list(pool.map(lambda qu: self._ask(qu[0], qu[1], max_new_tokens), zip(questions, urls)))


def _answer_batch(model: Any, prompts: list[str], kinds: list[str], visuals: list[Any],
                  max_new_tokens: int) -> list[str]:
    """Call ``model.answer`` for one batch of one visual kind."""
    kind = kinds[0]
    if kind == "slide" and getattr(model, "sends_paths", False):
        return list(model.answer(prompts, slide_features=visuals, max_new_tokens=max_new_tokens))
    if kind == "slide":
        return list(model.answer(prompts, slide_features=[f for f, _ in visuals],
                                 slide_coords=[c for _, c in visuals], max_new_tokens=max_new_tokens))
    if kind == "image":
        return list(model.answer(prompts, images=visuals, max_new_tokens=max_new_tokens))
    return list(model.answer(prompts, max_new_tokens=max_new_tokens))


def generate_answers(model_dir: str | Path | None, questions_jsonl: str | Path, out_jsonl: str | Path,
                     batch_size: int = 8, max_new_tokens: int = 32, model: Any = None,
                     model_id: str | None = None, failures_path: str | Path | None = None,
                     progress: bool = True,
                     on_batch: Callable[[int], None] | None = None, base_url: str | None = None,
                     api_key_env: str = "OPENAI_API_KEY") -> dict[str, Any]:
    """Answer every question not yet in ``out_jsonl``; batched greedy decoding through ``model.answer``.

    Args:
        model_dir: a ``VisionLanguageModel.save_pretrained`` folder or an HF LLaVA folder (ignored when ``model``
            is given); with ``base_url``, the name of the served model.
        base_url: an OpenAI-compatible endpoint (``pathkit serve``, vLLM) that answers instead of a local model
            (:class:`ServedChatModel`); the key, if any, is read from ``api_key_env``.
        questions_jsonl: evaluation questions (``question_id``, ``image``, ``text``, ...).
        out_jsonl: the answers journal (LLaVA format); appended to, never rewritten.
        model: an already loaded model with ``.answer(prompts, images=..., max_new_tokens=...)``.
        failures_path: where per-question failures are written (default ``<out>.failures.jsonl``).
        on_batch: called with the number of answers written after each batch (tests stop runs with it).

    Returns ``{"answered", "skipped", "failed", "out"}``; failures are in ``failures.jsonl`` and the caller
    exits non-zero when any question failed.
    """
    questions_jsonl = Path(questions_jsonl)
    out_jsonl = Path(out_jsonl)
    if model is None and base_url is not None:
        if model_dir is None:
            raise PathkitError("generate_answers: with base_url, model_dir names the served model")
        model = ServedChatModel(base_url, str(model_dir), api_key_env=api_key_env, concurrency=batch_size)
        model_id = model_id or str(model_dir)
    if model is None:
        if model_dir is None:
            raise PathkitError("generate_answers: give model_dir or model")

        model = VisionLanguageModel.from_pretrained(model_dir)
        if hasattr(model, "eval"):
            model.eval()
    if model_id is None and model_dir is not None:
        path = Path(model_dir).resolve()
        # F's layout train/<recipe>/<stage>/model: name the model by recipe/stage, not "model"
        model_id = f"{path.parent.parent.name}/{path.parent.name}" if path.name == "model" else path.name
    model_id = model_id or type(model).__name__
    failures = FailureLog(failures_path or out_jsonl.with_name(out_jsonl.stem + ".failures.jsonl"))
    done = answered_ids(out_jsonl)
    todo: list[tuple[int, dict[str, Any]]] = []
    for lineno, row in iter_jsonl(questions_jsonl):
        for key in ("question_id", "text"):
            if key not in row:
                raise PathkitError(f"{questions_jsonl}:{lineno}: missing field '{key}'")
        if str(row["question_id"]) not in done:
            todo.append((lineno, row))
    skipped = len(done)
    base = questions_jsonl.parent
    answered = 0

    no_grad = contextlib.nullcontext()
    try:
        import torch

        no_grad = torch.inference_mode()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    bar = tqdm(total=len(todo), desc="answers", disable=not progress)
    with JsonlAppender(out_jsonl) as journal, no_grad:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            loaded: list[tuple[dict[str, Any], str, Any]] = []
            for lineno, row in chunk:
                try:
                    path = resolve_image(row.get("image"), base)
                    if getattr(model, "sends_paths", False) and path is not None and path.suffix in (".h5", ".hdf5"):
                        if not path.exists():
                            raise PathkitError(f"{path}: slide feature file not found")
                        kind, visual = "slide", path
                    else:
                        kind, visual = load_visual(path)
                    loaded.append((row, kind, visual))
                except PathkitError as err:
                    failures.add(f"{questions_jsonl}:{lineno} question_id={row['question_id']}", err)
            # one call per visual kind so images and slides never share a batch
            for kind in ("image", "slide", "none"):
                group = [(r, v) for r, k, v in loaded if k == kind]
                if not group:
                    continue
                prompts = [str(r["text"]) for r, _ in group]
                try:
                    texts = _answer_batch(model, prompts, [kind] * len(group), [v for _, v in group],
                                          max_new_tokens)
                except Exception as err:  # a model failure on a batch: record each question, go on
                    for r, _ in group:
                        failures.add(f"question_id={r['question_id']}", err)
                    continue
                for (row, _), text in zip(group, texts):
                    journal.append(_answer_row(row, text, model_id))
                    answered += 1
            bar.update(len(chunk))
            if on_batch is not None:
                on_batch(answered)
    bar.close()
    failures.write()
    return {"answered": answered, "skipped": skipped, "failed": len(failures), "out": str(out_jsonl),
            "failures": failures}


def _answer_row(question: dict[str, Any], text: str, model_id: str) -> dict[str, Any]:
    return {"question_id": question["question_id"], "prompt": question["text"], "text": str(text).strip(),
            "answer_id": uuid.uuid4().hex, "model_id": model_id, "metadata": {}}


def answers_in_order(out_jsonl: str | Path, question_ids: Sequence[Any]) -> list[str]:
    """Answer texts in the order of ``question_ids`` ("" for a missing one)."""
    by_id = {str(r["question_id"]): r.get("text", "") for _, r in iter_jsonl(out_jsonl, strict=False)}
    return [by_id.get(str(q), "") for q in question_ids]


# ------------------------------------------------------------------------------------------------ in memory


def answer_questions(model: Any, questions: list[dict[str, Any]], cfg: Any, batch_size: int | None = None
                     ) -> list[str]:
    """Greedy answers of an in-memory ``model`` to questions whose ``image`` is an absolute image path or slide
    feature file (or absent), in order: the same loading and ``model.answer`` calls as :func:`generate_answers`,
    in chunks of ``cfg.eval.batch_size`` with ``cfg.eval.max_new_tokens``."""
    import torch

    batch_size = batch_size or cfg.eval.batch_size
    model.eval()
    answers: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(questions), batch_size):
            chunk = questions[start:start + batch_size]
            loaded = [load_visual(resolve_image(q.get("image"), Path("."))) for q in chunk]
            out: list[str | None] = [None] * len(chunk)
            for kind in ("image", "slide", "none"):  # one call per visual kind, answers put back in order
                where = [i for i, (k, _) in enumerate(loaded) if k == kind]
                if where:
                    texts = _answer_batch(model, [str(chunk[i]["text"]) for i in where], [kind] * len(where),
                                          [loaded[i][1] for i in where], cfg.eval.max_new_tokens)
                    for i, text in zip(where, texts):
                        out[i] = text
            answers.extend(str(a) for a in out)
    return answers
