"""Evaluation metrics: one documented closed-set accuracy, the three seed variants beside it, open-ended scores.

**pathkit's closed accuracy (the default).** Normalise the answer (lowercase, punctuation to spaces), then read
either its first ``yes``/``no`` word (yes/no questions) or its option letter (lettered choices, e.g. ``"B"``,
``"(b)"``, ``"B) necrosis"``, ``"the answer is B"``) and compare with the ground truth. An answer with neither is
wrong. This is what a reader means by "the model said yes": ``"No, it is normal"`` is *no*; ``"normal"`` is
neither and therefore wrong.

**The seeds' variants**, re-implemented from their code so a model can be scored the way each paper did:

- ``llava_med`` (LLaVA-Med ``run_eval.py``): after the VQA normalisation, if the *substring* ``"yes"`` or
  ``"no"`` occurs anywhere in the prediction (so also in "normal", "not", "note", "nodule"), the item is a hit
  when the ground truth is a substring of the prediction. As coded, an item that contains yes/no but not the
  ground truth is **not counted at all** (it is never appended), which inflates the score; an item without
  yes/no counts as a miss. The variant reports how many items it kept.
- ``quilt`` (Quilt-LLaVA ``quilt_eval.py``, its "2 yes/no accuracy"): the prediction is *no* when any space-
  separated token is ``no``, ``No`` or ``not`` (so "not seen" is *no*), otherwise *yes* (so "normal" and silence
  are *yes*). Only yes/no ground truths are scored (the script asserts on anything else).
- ``pa_llava`` (PA-LLaVA ``VQAEval.py``): lowercase, delete ``, . ' ! ? " ( ) * # : ; ~``, then exact string
  equality ("No." equals "no", "no, it is not" does not).

**Open questions.** ``open_recall`` is LLaVA-Med's / Quilt's token recall (``calculate_f1score`` after their
``normalize_word``); ``exact_match`` is pathkit's (normalised strings equal); the seeds' oddly named "exact match"
is ``seed_exact_match``. BLEU-1..4 follow WSI-Bench's ``NLP_Metric.py`` (nltk ``word_tokenize``,
``sentence_bleu`` averaged over items, uniform weights over the first n grams, ``SmoothingFunction().method4``);
ROUGE-L F is Google's ``rouge-score``; METEOR is nltk's ``single_meteor_score`` (WordNet found offline, see
:func:`wordnet_reader`), else ``None`` with the reason.
"""

from __future__ import annotations

import math
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pathkit.paths import cache_dir

# Lazy imports: nltk (NLTK, ~3 s); rouge_score (rouge-score loads NLTK); sklearn (scikit-learn, ~1.4 s). They
# load inside the functions that need them, not when this module is imported.

# ---------------------------------------------------------------------------------------------------------
# pathkit's normalisation and closed-set reading
# ---------------------------------------------------------------------------------------------------------

YES_NO_SUFFIX = " Please choose from the following two options: [yes, no]"  # Quilt's suffix for closed questions
CHOICE_SUFFIX = "\nAnswer with the option's letter from the given choices directly."  # LLaVA-1.5's

_PUNCT = re.compile(r"[^\w\s]")
_LETTER_AT_START = re.compile(r"^\s*[\(\[]?([A-Za-z])(?:[\)\]\.:,]|\s*$)")
_LETTER_PHRASE = re.compile(
    r"\b(?:option|choice|answer(?:\s+is)?|answer:|correct\s+answer\s+is)\s*[:\-]?\s*[\(\[]?([A-Za-z])\b(?!')",
    re.IGNORECASE,
)
_LETTER_TRUTH = re.compile(r"^\s*[\(\[]?([A-Za-z])(?:[\)\]\.:]|\s*$)")


def normalize_text(text: Any) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed: ``"No, it's NOT."`` -> ``"no it s not"``."""
    return " ".join(_PUNCT.sub(" ", str(text).lower()).split())


def truth_kind(truth: Any) -> str:
    """``"yesno"`` for a yes/no ground truth, ``"letter"`` for an option letter (``"B"``, ``"B) ..."``), else
    ``"text"``."""
    norm = normalize_text(truth)
    if norm in ("yes", "no"):
        return "yesno"
    if _LETTER_TRUTH.match(str(truth)):
        return "letter"
    return "text"


def truth_letter(truth: Any) -> str | None:
    m = _LETTER_TRUTH.match(str(truth))
    return m.group(1).upper() if m else None


def read_yes_no(answer: Any) -> str | None:
    """The first ``yes`` or ``no`` word of the answer after normalisation, or None."""
    for word in normalize_text(answer).split():
        if word in ("yes", "no"):
            return word
    return None


def read_option_letter(answer: Any, letters: str = "ABCDEFGH") -> str | None:
    """The option letter an answer picks: a leading ``"B"``, ``"(b)"``, ``"B)"``, ``"B."``, ``"B: ..."``, or
    a phrase like ``"option B"``/``"the answer is (b)"``. A leading article (``"A tumour"``) is not a letter."""
    text = str(answer).strip()
    allowed = set(letters.upper())
    m = _LETTER_AT_START.match(text)
    if m and m.group(1).upper() in allowed:
        return m.group(1).upper()
    for m in _LETTER_PHRASE.finditer(text):
        if m.group(1).upper() in allowed:
            return m.group(1).upper()
    return None


def closed_correct(answer: Any, truth: Any) -> bool:
    """pathkit's default closed-set rule for one item (see the module docstring)."""
    kind = truth_kind(truth)
    if kind == "yesno":
        return read_yes_no(answer) == normalize_text(truth)
    if kind == "letter":
        return read_option_letter(answer) == truth_letter(truth)
    return normalize_text(answer) == normalize_text(truth)


def closed_accuracy(answers: Sequence[str], truths: Sequence[str]) -> float:
    """Fraction of closed questions answered correctly under pathkit's default rule (0.0 for no items)."""
    if len(answers) != len(truths):
        raise ValueError(f"closed_accuracy: {len(answers)} answers but {len(truths)} truths")
    if not answers:
        return 0.0
    return sum(closed_correct(a, t) for a, t in zip(answers, truths)) / len(answers)


# ---------------------------------------------------------------------------------------------------------
# The seeds' VQA normalisation (LLaVA-Med / Quilt ``normalize_word``), quirks included
# ---------------------------------------------------------------------------------------------------------

_SEED_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
               ",", "?", "!"]
_SEED_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_SEED_ARTICLES = {"a", "an", "the"}
# The seeds' period rule, lookahead typo included: a "." not followed by a digit is removed. They pass
# re.UNICODE (= 32) as the positional *count* of Pattern.sub, so at most 32 periods are removed.
_SEED_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_SEED_DIGIT_COMMA = re.compile(r"(\d)(\,)(\d)")
# A few contractions the VQA table restores (the table maps apostrophe-less spellings back; only entries that
# can occur after the seeds' punctuation handling matter, and those are the common negations below).
_SEED_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't",
    "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't",
    "isnt": "isn't", "mightnt": "mightn't", "mustnt": "mustn't", "neednt": "needn't", "shouldnt": "shouldn't",
    "wasnt": "wasn't", "werent": "weren't", "wont": "won't", "wouldnt": "wouldn't", "thats": "that's",
    "theres": "there's", "whats": "what's", "youre": "you're", "theyre": "they're",
}


def seed_normalize(text: Any) -> str:
    """LLaVA-Med / Quilt ``normalize_word``: VQA punctuation rules, number words to digits, no articles,
    contractions, commas removed."""
    token = str(text)
    out = token
    for p in _SEED_PUNCT:
        if (p + " " in token or " " + p in token) or _SEED_DIGIT_COMMA.search(token) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    token = _SEED_PERIOD.sub("", out, 32)
    words = []
    for word in token.lower().split():
        word = _SEED_NUMBERS.get(word, word)
        if word not in _SEED_ARTICLES:
            words.append(_SEED_CONTRACTIONS.get(word, word))
    return " ".join(words).replace(",", "")


def _unigrams(text: str) -> Counter:
    return Counter(text.lower().strip().split())


# ---------------------------------------------------------------------------------------------------------
# The three seed variants of closed accuracy, per item. None = the seed's code does not count the item.
# ---------------------------------------------------------------------------------------------------------


def llava_med_closed_hit(answer: Any, truth: Any) -> int | None:
    """LLaVA-Med ``run_eval.py``: substring yes/no test; an item with yes/no but without the truth is dropped."""
    pred = seed_normalize(str(answer).lower())
    gt = seed_normalize(str(truth).lower())
    if "yes" in pred or "no" in pred:
        return 1 if gt in pred else None
    return 0


def quilt_closed_hit(answer: Any, truth: Any, anchor: str | None = None) -> int | None:
    """Quilt-LLaVA ``quilt_eval.py`` (second yes/no accuracy): "no"/"not" token rule; yes/no truths only.

    ``anchor``: the seed truncates the prediction to the character length of an anchor model's answer; pass
    it to reproduce that (the anchor file was never shipped, so the default is no truncation).
    """
    pred = seed_normalize(str(answer).lower())
    gt = seed_normalize(str(truth).lower())
    if anchor is not None:
        pred = pred[: len(seed_normalize(anchor.lower()))]
    if gt not in ("yes", "no"):
        return None
    words = pred.replace(",", "").split(" ")
    said = "no" if ("No" in words or "not" in words or "no" in words) else "yes"
    return int(said == gt)


_PA_LLAVA_PUNCT = re.compile(r"([,.'!?\"()*#:;~])")


def pa_llava_normalize(text: Any) -> str:
    """PA-LLaVA ``pre_answer``: lowercase, delete ``,.'!?"()*#:;~``, normalise x-ray."""
    out = _PA_LLAVA_PUNCT.sub("", str(text).lower()).replace(" \t", " ")
    return out.replace("x ray", "xray").replace("x-ray", "xray").replace(" - ", "-")


def pa_llava_closed_hit(answer: Any, truth: Any) -> int:
    """PA-LLaVA ``VQAEval.py``: exact match after its normalisation."""
    return int(pa_llava_normalize(answer) == pa_llava_normalize(truth))


SEED_CLOSED_VARIANTS: dict[str, Callable[[Any, Any], int | None]] = {
    "llava_med": llava_med_closed_hit,
    "quilt": quilt_closed_hit,
    "pa_llava": pa_llava_closed_hit,
}


def closed_variant_hits(answers: Sequence[str], truths: Sequence[str]) -> dict[str, list[int | None]]:
    """Per-item hits under pathkit's default (``"pathkit"``) and each seed variant (None = not counted)."""
    out: dict[str, list[int | None]] = {"pathkit": [int(closed_correct(a, t)) for a, t in zip(answers, truths)]}
    for name, fn in SEED_CLOSED_VARIANTS.items():
        out[name] = [fn(a, t) for a, t in zip(answers, truths)]
    return out


# ---------------------------------------------------------------------------------------------------------
# Open questions: token recall (LLaVA-Med / Quilt), exact match, BLEU, ROUGE-L, METEOR
# ---------------------------------------------------------------------------------------------------------


def token_f1_scores(answer: Any, truth: Any) -> tuple[float, float, float]:
    """LLaVA-Med/Quilt ``calculate_f1score`` -> ``(f1, precision, recall)`` over unigram counts.

    Both strings get ``normalize_word`` twice, as in the seeds (once by the caller, once inside). tp sums the
    *candidate* counts of shared words, fn the reference counts of reference words absent from the candidate.
    """
    cand = _unigrams(seed_normalize(seed_normalize(str(answer).lower())))
    ref = _unigrams(seed_normalize(seed_normalize(str(truth).lower())))
    if not cand or not ref:
        return 0.0, 0.0, 0.0
    tp = sum(c for w, c in cand.items() if w in ref)
    fp = sum(c for w, c in cand.items() if w not in ref)
    fn = sum(c for w, c in ref.items() if w not in cand)
    if tp == 0:
        return 0.0, 0.0, 0.0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall), precision, recall


def open_recall(answer: Any, truth: Any) -> float:
    """LLaVA-Med / Quilt "recall" for one open question (the number their PathVQA tables report)."""
    return token_f1_scores(answer, truth)[2]


def exact_match(answer: Any, truth: Any) -> float:
    """pathkit's exact match: 1.0 when the normalised strings are equal."""
    return float(normalize_text(answer) == normalize_text(truth))


def seed_exact_match(answer: Any, truth: Any) -> float:
    """The seeds' ``calculate_exactmatch``: distinct reference words found in the candidate / candidate tokens."""
    cand = _unigrams(seed_normalize(seed_normalize(str(answer).lower())))
    ref = _unigrams(seed_normalize(seed_normalize(str(truth).lower())))
    total = sum(cand.values())
    return 0.0 if total == 0 else sum(1 for w in ref if w in cand) / total


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def word_tokens(text: str) -> list[str]:
    """nltk ``word_tokenize`` (WSI-Bench's tokenizer). Without nltk's punkt data (not downloadable here) the
    sentences are split at ``.!?`` + space and each is tokenised with ``preserve_line=True`` (same Treebank
    rules, only the sentence splitter differs)."""
    import nltk

    try:
        return nltk.word_tokenize(text)
    except LookupError:
        tokens: list[str] = []
        for sentence in _SENTENCE_END.split(text.strip()):
            if sentence:
                tokens.extend(nltk.word_tokenize(sentence, preserve_line=True))
        return tokens


def bleu_scores(answer: str, truth: str) -> list[float]:
    """BLEU-1..4 of one answer as WSI-Bench computes them (sentence BLEU, smoothing method 4)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    ref, hyp = word_tokens(str(truth)), word_tokens(str(answer))
    smooth = SmoothingFunction().method4
    out = []
    for n in range(1, 5):
        weights = tuple(1.0 / n for _ in range(n)) + tuple(0.0 for _ in range(4 - n))
        try:
            out.append(float(sentence_bleu([ref], hyp, weights=weights, smoothing_function=smooth)))
        except (ZeroDivisionError, ValueError):  # empty hypothesis
            out.append(0.0)
    return out


@lru_cache(maxsize=1)
def _rouge_l_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(answer: str, truth: str) -> float:
    """ROUGE-L F-measure (Google ``rouge-score``; reference = truth)."""
    return float(_rouge_l_scorer().score(str(truth), str(answer))["rougeL"].fmeasure)


# WordNet's 45 lexicographer files in id order (lexnames(5WN)); nltk needs this index, Debian omits it.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_LEX_POS = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
DEBIAN_WORDNET = Path("/usr/share/wordnet")
_WORDNET_FILES = ("data.adj", "data.adv", "data.noun", "data.verb", "index.adj", "index.adv", "index.noun",
                  "index.verb", "adj.exc", "adv.exc", "noun.exc", "verb.exc")


@lru_cache(maxsize=4)
def wordnet_reader(debian_dir: str = str(DEBIAN_WORDNET)) -> tuple[Any, str]:
    """An nltk WordNet reader found offline, and where it came from; ``(None, reason)`` when there is none.

    Order: nltk's own ``corpora/wordnet`` data if installed; else Princeton WordNet 3.0 from the Debian package
    ``wordnet-base`` (``/usr/share/wordnet``), copied once into ``cache_dir()/nltk_data`` (nltk refuses paths
    outside its data path) with the ``lexnames`` index written beside it.
    """
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return wordnet, "nltk_data wordnet"
    except (LookupError, OSError):
        pass
    src = Path(debian_dir)
    if not all((src / f).exists() for f in _WORDNET_FILES):
        return None, (f"WordNet data not found (no nltk 'wordnet' corpus, no {src}); install the Debian package "
                      "wordnet-base (apt-get install wordnet-base) to get METEOR")
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    data_root = cache_dir() / "nltk_data"
    dst = data_root / "corpora" / "wordnet30"
    if not (dst / "lexnames").exists():
        dst.mkdir(parents=True, exist_ok=True)
        for name in _WORDNET_FILES:
            shutil.copyfile(src / name, dst / name)
        lines = "".join(f"{i:02d}\t{n}\t{_LEX_POS[n.split('.')[0]]}\n" for i, n in enumerate(_LEXNAMES))
        (dst / "lexnames").write_text(lines)
    if str(data_root) not in nltk.data.path:
        nltk.data.path.append(str(data_root))

    class _WordNet30(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):  # this *is* WordNet 3.0: no mapping (needs index.sense)
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed for METEOR
        return _WordNet30(str(dst), None), f"WordNet 3.0 from {src} (Debian wordnet-base)"


def meteor(answer: str, truth: str) -> float | None:
    """nltk ``single_meteor_score`` on word tokens (WSI-Bench), or None when no WordNet is available."""
    reader, _ = wordnet_reader()
    if reader is None:
        return None
    from nltk.translate.meteor_score import single_meteor_score

    return float(single_meteor_score(word_tokens(str(truth)), word_tokens(str(answer)), wordnet=reader))


# ---------------------------------------------------------------------------------------------------------
# Zero-shot classification and confidence intervals
# ---------------------------------------------------------------------------------------------------------


def match_label(text: str, classes: Sequence[str]) -> str | None:
    """The class named earliest in a generated text (whole words, case-insensitive), or None."""
    norm = f" {normalize_text(text)} "
    best, best_pos = None, math.inf
    for cls in classes:
        pos = norm.find(f" {normalize_text(cls)} ")
        if 0 <= pos < best_pos:
            best, best_pos = cls, pos
    return best


def classification_scores(predictions: Sequence[str | None], labels: Sequence[str],
                          classes: Sequence[str] | None = None) -> dict[str, float]:
    """Zero-shot classification accuracy and macro-F1 (sklearn); an unmatched prediction (None) is wrong."""
    from sklearn.metrics import accuracy_score, f1_score

    classes = list(classes) if classes is not None else sorted(set(labels))
    preds = [p if p is not None else "<none>" for p in predictions]
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, labels=classes, average="macro", zero_division=0)),
        "n": len(labels),
    }


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                 statistic: Callable[[Any], float] | None = None) -> tuple[float, float] | None:
    """Percentile bootstrap ``(low, high)`` interval of the mean (or ``statistic``) of per-item values.

    Returns None for fewer than two items or ``n_boot == 0``.
    """
    vals = np.asarray([v for v in values if v is not None], dtype=float)
    if len(vals) < 2 or n_boot <= 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(vals), size=(n_boot, len(vals)))
    samples = vals[idx]
    stats = samples.mean(axis=1) if statistic is None else np.array([statistic(s) for s in samples])
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def summarize(values: Sequence[float | None], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``{"value", "ci95", "n"}`` for per-item values; None items are not counted (``n_dropped`` says how many)."""
    kept = [float(v) for v in values if v is not None]
    out: dict[str, Any] = {"value": (sum(kept) / len(kept)) if kept else None, "n": len(kept)}
    ci = bootstrap_ci(kept, n_boot=n_boot, seed=seed)
    out["ci95"] = list(ci) if ci is not None else None
    if len(kept) != len(values):
        out["n_dropped"] = len(values) - len(kept)
    return out
