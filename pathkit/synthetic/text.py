"""Captions, questions and slide reports written from the ground truth of synthetic tissue.

Because every tile's class and attributes are known, every sentence here is true by construction, so a
model's answer can be scored exactly. Question styles follow the seed benchmarks:

* closed yes/no, with Quilt-VQA's option suffix ``"Please choose from the following two options: [yes, no]"``
  and a lowercase ``yes``/``no`` answer (Quilt marks a question CLOSED when its answer is yes or no);
* closed lettered choice, WSI-Bench style: options inline as ``A) ... B) ... C) ... D) ...``, answer one letter;
* open: the answer is a class name (``tumor``) or a short phrase (``grade 2``).

``yes`` is a parameter of :func:`questions_for` so a dataset builder can alternate it and make chance 0.5.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pathkit.synthetic.tissue import CLASSES

YES_NO_SUFFIX = " Please choose from the following two options: [yes, no]"
LETTERS = "ABCD"
SLIDE_LETTERS = "ABCDEFGH"

# How each class is named in running text, and what it looks like.
NOUNS: dict[str, str] = {
    "tumor": "tumor", "stroma": "stroma", "lymphocytes": "lymphocytes", "necrosis": "necrosis",
    "gland": "gland", "adipose": "adipose",
}
MORPHOLOGY: dict[str, tuple[str, ...]] = {
    "tumor": ("crowded, enlarged, pleomorphic and hyperchromatic nuclei",
              "sheets of atypical cells with large irregular dark nuclei",
              "malignant cells with a high nuclear-to-cytoplasmic ratio and coarse chromatin"),
    "stroma": ("wavy pink collagen fibres with scattered spindle-shaped nuclei",
               "fibrous stroma of eosinophilic bundles and sparse elongated fibroblast nuclei",
               "loose to dense collagenous tissue with thin spindle cells aligned along the fibres"),
    "lymphocytes": ("dense sheets of small, round, dark lymphocyte nuclei",
                    "a lymphoid infiltrate of monotonous small round cells with scant cytoplasm",
                    "closely packed small hyperchromatic round nuclei typical of lymphocytes"),
    "necrosis": ("pink granular debris with nuclear dust (karyorrhexis)",
                 "eosinophilic necrotic material with fragmented and pyknotic nuclei",
                 "amorphous granular debris and scattered nuclear fragments without viable cells"),
    "gland": ("glands whose columnar nuclei ring central white lumina",
              "glandular structures lined by a single layer of epithelium around open lumina",
              "round to oval lumina surrounded by radially oriented epithelial nuclei"),
    "adipose": ("large empty polygonal fat cells with thin pink membranes",
                "mature adipocytes forming clear vacuoles separated by delicate septa",
                "adipose tissue of large clear cells with flattened peripheral nuclei"),
}
# How a yes/no question names a class ("Does this image show glandular tissue?").
_ASKED: dict[str, str] = {
    "tumor": "tumor tissue", "stroma": "stroma", "lymphocytes": "a lymphocytic infiltrate",
    "necrosis": "necrosis", "gland": "glandular tissue", "adipose": "adipose tissue",
}
_OPENERS = (
    "This H&E-stained section shows {noun_phrase}.",
    "The image shows {noun_phrase}.",
    "Histopathology image of {noun_phrase}.",
    "H&E image of {noun_phrase}.",
    "This field is composed of {noun_phrase}.",
)
_NOUN_PHRASES: dict[str, tuple[str, ...]] = {
    "tumor": ("tumor tissue", "a carcinoma (tumor)", "malignant tumor cells"),
    "stroma": ("stroma", "fibrous stroma", "collagenous stroma"),
    "lymphocytes": ("lymphocytes", "a dense lymphocytic infiltrate", "lymphoid tissue rich in lymphocytes"),
    "necrosis": ("necrosis", "necrotic tissue", "an area of necrosis"),
    "gland": ("gland tissue", "benign glands", "glandular epithelium"),
    "adipose": ("adipose tissue", "fat (adipose tissue)", "mature adipose tissue"),
}


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(0, len(options)))]


def density_word(nuclear_density: float) -> str:
    """Words for the nuclear area fraction: low (< 0.1), moderate (< 0.35) or high."""
    return "low" if nuclear_density < 0.1 else "moderate" if nuclear_density < 0.35 else "high"


def caption_for(label: str, attributes: dict[str, Any], rng: np.random.Generator) -> str:
    """A two-to-three sentence caption naming the tissue, its morphology and its attributes."""
    if label not in CLASSES:
        raise ValueError(f"label={label!r}: must be one of {CLASSES}")
    sentences = [_pick(rng, _OPENERS).format(noun_phrase=_pick(rng, _NOUN_PHRASES[label]))]
    sentences.append(f"{_pick(rng, ('It shows', 'We see', 'The field shows', 'Features include'))} "
                     f"{_pick(rng, MORPHOLOGY[label])}.")
    density = attributes.get("nuclear_density")
    if label == "tumor":
        grade = attributes.get("grade")
        mitoses = ("Mitotic figures are present." if attributes.get("mitoses")
                   else "No mitotic figures are seen.")
        sentences.append(f"The features suggest a grade {grade} tumor. {mitoses}")
    elif density is not None and label != "adipose":
        sentences.append(f"Nuclear density is {density_word(float(density))}.")
    return " ".join(sentences)


def _yes_no(text: str, answer: bool, category: str) -> dict[str, Any]:
    return {"text": text + YES_NO_SUFFIX, "answer": "yes" if answer else "no", "answer_type": "CLOSED",
            "category": category}


def choice_question(label: str, rng: np.random.Generator, classes: tuple[str, ...] = CLASSES
                    ) -> dict[str, Any]:
    """Four lettered options (the right class and three others, shuffled); the answer is a letter."""
    others = [c for c in classes if c != label]
    options = [label] + [others[i] for i in rng.permutation(len(others))[:3]]
    options = [options[i] for i in rng.permutation(len(options))]
    inline = " ".join(f"{LETTERS[i]}) {NOUNS[o]}" for i, o in enumerate(options))
    stem = _pick(rng, ("Which tissue type is shown in this image?", "What kind of tissue is this?",
                       "Which of the following best describes this image?"))
    return {"text": f"{stem} {inline}. Answer with the option's letter.",
            "answer": LETTERS[options.index(label)], "answer_type": "CLOSED", "category": "tissue_choice",
            "options": options}


def questions_for(label: str, attributes: dict[str, Any], rng: np.random.Generator, yes: bool,
                  classes: tuple[str, ...] = CLASSES) -> list[dict[str, Any]]:
    """Questions with ground-truth answers about one tile.

    Returns dicts with ``text``, ``answer``, ``answer_type`` (CLOSED/OPEN) and ``category``:
    ``tissue_yes_no`` (asks about the true class when ``yes``, else about another class), ``tissue_choice``,
    ``tissue_open``, ``morphology_open`` (a morphology sentence), and for tumour ``mitoses_yes_no``
    (answer from ``attributes["mitoses"]``) and
    ``grade_open``. Balance of yes/no across a dataset is the caller's job (alternate ``yes``; alternate
    ``mitoses`` when sampling tumour tiles).
    """
    if label not in CLASSES:
        raise ValueError(f"label={label!r}: must be one of {CLASSES}")
    asked = label if yes else _pick(rng, [c for c in classes if c != label])
    stem = _pick(rng, ("Does this image show {}?", "Is this {}?", "Is {} the main tissue shown here?"))
    out = [_yes_no(stem.format(_ASKED[asked]), asked == label, "tissue_yes_no")]
    out.append(choice_question(label, rng, classes))
    out.append({"text": _pick(rng, ("What type of tissue is shown in this image?",
                                    "What tissue is this? Answer with one word.",
                                    "Name the tissue type in this image.")),
                "answer": label, "answer_type": "OPEN", "category": "tissue_open"})
    out.append({"text": _pick(rng, ("Describe the main histological features in this image.",
                                    "What morphology do you see?")),
                "answer": _pick(rng, MORPHOLOGY[label]), "answer_type": "OPEN", "category": "morphology_open"})
    if label == "tumor":
        out.append(_yes_no(_pick(rng, ("Are mitotic figures present?", "Do you see mitoses in this image?")),
                           bool(attributes.get("mitoses")), "mitoses_yes_no"))
        out.append({"text": "What is the histologic grade of this tumor?",
                    "answer": f"grade {attributes.get('grade')}", "answer_type": "OPEN", "category": "grade_open"})
    return out


def report_for_slide(diagnosis: str, class_fractions: dict[str, float], rng: np.random.Generator,
                     attributes: dict[str, dict[str, Any]] | None = None) -> str:
    """A short pathology report for a synthetic slide: diagnosis, composition and morphology.

    Args:
        diagnosis: the slide-level diagnosis (free text chosen by the slide generator, e.g.
            ``"invasive carcinoma"``); it is stated verbatim in the first sentence.
        class_fractions: fraction of the tissue area per class in ``CLASSES`` (need not sum to 1; classes
            below 2% are not mentioned). Listed from largest to smallest.
        rng: picks phrasings (deterministic per seed).
        attributes: optional per-class attributes (``sample_attributes`` output) of the regions; a tumour
            entry adds its grade and mitoses to the report.

    Example: ``"Diagnosis: invasive carcinoma. The tissue consists mainly of tumor (55%), with stroma (30%)
    and necrosis (15%). Tumor: crowded, enlarged ... nuclei. ... The tumor is grade 3; mitotic figures are
    present."``
    """
    present = sorted(((c, f) for c, f in class_fractions.items() if f >= 0.02 and c in CLASSES),
                     key=lambda cf: -cf[1])
    sentences = [f"Diagnosis: {diagnosis}."]
    if present:
        main, rest = present[0], present[1:]
        composition = f"The tissue consists mainly of {NOUNS[main[0]]} ({main[1]:.0%})"
        if rest:
            composition += ", with " + ", ".join(f"{NOUNS[c]} ({f:.0%})" for c, f in rest[:-1])
            composition += (" and " if len(rest) > 1 else "") + f"{NOUNS[rest[-1][0]]} ({rest[-1][1]:.0%})"
        sentences.append(composition + ".")
        for c, _ in present:
            sentences.append(f"{NOUNS[c].capitalize()}: {_pick(rng, MORPHOLOGY[c])}.")
    tumor = (attributes or {}).get("tumor")
    if tumor and tumor.get("grade"):
        mit = "mitotic figures are present" if tumor.get("mitoses") else "no mitotic figures are seen"
        sentences.append(f"The tumor is grade {tumor['grade']}; {mit}.")
    return " ".join(sentences)


def diagnosis_choice(diagnosis: str, diagnoses: list[str]) -> tuple[str, str]:
    """(question, answer letter): the slide diagnosis among ``diagnoses``, options in that fixed order."""
    if diagnosis not in diagnoses:
        raise ValueError(f"diagnosis={diagnosis!r}: must be one of {diagnoses}")
    options = " ".join(f"{SLIDE_LETTERS[i]}) {d}" for i, d in enumerate(diagnoses))
    return (f"What is the diagnosis of this slide? {options}. Answer with the option's letter.",
            SLIDE_LETTERS[diagnoses.index(diagnosis)])


def slide_questions(diagnosis: str, index: int, diagnoses: list[str]) -> list[dict[str, Any]]:
    """WSI-Bench-style questions about one slide: the lettered diagnosis (``diagnosis_choice``), a yes/no about
    one diagnosis (yes on even ``index``, else one of the others in turn) and the open diagnosis."""
    text, letter = diagnosis_choice(diagnosis, diagnoses)
    asked = diagnosis if index % 2 == 0 else \
        diagnoses[(diagnoses.index(diagnosis) + 1 + index // 2 % (len(diagnoses) - 1)) % len(diagnoses)]
    return [
        {"text": text, "answer": letter, "answer_type": "CLOSED", "category": "diagnosis_choice"},
        {"text": f"Is this slide consistent with {asked}? Please answer yes or no.",
         "answer": "yes" if asked == diagnosis else "no", "answer_type": "CLOSED", "category": "diagnosis_yes_no"},
        {"text": "What is the diagnosis of this slide?", "answer": diagnosis, "answer_type": "OPEN",
         "category": "diagnosis_open"},
    ]
