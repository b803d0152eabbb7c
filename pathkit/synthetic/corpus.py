"""A text-only corpus written from the synthetic ground truth: what the tiny LLM reads before it sees an image.

Real assistants start from an LLM that has read a great deal of text (Vicuna, Llama-3, Qwen2); LLaVA-style
training then only has to map the image into a space that LLM already reasons in. The tiny preset's LLM is
random-init, so pathkit gives it that first step on a laptop: a few minutes of language-model training on
conversations generated here (see :mod:`pathkit.models.tiny_pretrain`). Each conversation is one of

* **context + question** (most of the corpus): the human turn is a tile caption or a slide report, a newline,
  then one of the questions the synthetic datasets ask (:func:`pathkit.synthetic.text.questions_for`,
  :func:`pathkit.synthetic.text.slide_questions`); the answer is its ground truth. The context sits exactly
  where the visual tokens will sit later (``<image>\\n{question}``), so the model learns to answer from what
  precedes the question, and the alignment stages only have to make the image say what a caption would;
* **description**: a describe-the-image instruction answered by a caption or a report (the model learns the
  sentences it will later be asked to write from an image).

Only text is generated: no image, no tile or slide of any dataset, so no held-out image is ever seen. The
labels, attributes and slide compositions are drawn fresh from ``seed``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pathkit.synthetic.slides import DIAGNOSES
from pathkit.synthetic.text import (
    CLASSES,
    caption_for,
    questions_for,
    report_for_slide,
    slide_questions,
)
from pathkit.synthetic.tissue import sample_attributes

DESCRIBE_PROMPTS = ("Describe the tissue in this image.", "Describe the findings in this image.",
                    "Write the pathology report for this whole-slide image.")


def slide_composition(diagnosis: str, rng: np.random.Generator) -> dict[str, float]:
    """Area fractions of a plausible slide with this diagnosis: its dominant classes large, a few others small."""
    fractions = {c: float(rng.uniform(0.5, 1.0)) for c in DIAGNOSES[diagnosis]}
    for c in CLASSES:
        if c not in fractions and rng.random() < 0.4:
            fractions[c] = float(rng.uniform(0.03, 0.25))
    total = sum(fractions.values())
    return {c: f / total for c, f in fractions.items()}


def text_conversations(n: int, seed: int = 0, slide_fraction: float = 0.25, describe_fraction: float = 0.15,
                       yes_no_fraction: float = 0.4) -> list[list[dict[str, Any]]]:
    """``n`` LLaVA-format conversations (one human and one gpt turn), deterministic for ``seed``.

    Args:
        n: how many.
        seed: draws labels, attributes, compositions and phrasings.
        slide_fraction: share of conversations about a slide report (the rest are about a tile caption).
        describe_fraction: share that are description requests; the rest are context + question.
        yes_no_fraction: of the questions about a tile, the share that are the tissue yes/no question (the
            hardest to answer from context: the asked class is named differently from the caption's); the
            rest are drawn evenly from the tile's other questions.
    """
    rng = np.random.default_rng(seed)
    diagnoses = list(DIAGNOSES)
    out: list[list[dict[str, Any]]] = []
    for i in range(n):
        if rng.random() < slide_fraction:
            diagnosis = diagnoses[int(rng.integers(len(diagnoses)))]
            context = report_for_slide(diagnosis, slide_composition(diagnosis, rng), rng)
            questions = slide_questions(diagnosis, int(rng.integers(0, 1000)), diagnoses)
            prompt = DESCRIBE_PROMPTS[2]
        else:
            label = CLASSES[int(rng.integers(len(CLASSES)))]
            attributes = sample_attributes(label, rng)
            context = caption_for(label, attributes, rng)
            questions = questions_for(label, attributes, rng, yes=bool(i % 2))
            prompt = DESCRIBE_PROMPTS[int(rng.integers(2))]
        if rng.random() < describe_fraction:
            turns = (prompt, context)
        else:
            if questions[0]["category"] == "tissue_yes_no" and rng.random() < yes_no_fraction:
                q = questions[0]
            else:
                q = questions[int(rng.integers(len(questions)))]
            turns = (f"{context}\n{q['text']}", q["answer"])
        out.append([{"from": "human", "value": turns[0]}, {"from": "gpt", "value": turns[1]}])
    return out
