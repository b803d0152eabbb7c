"""Metrics against hand-computed values and the peer libraries (nltk, rouge-score, sklearn) called directly."""

from __future__ import annotations

import numpy as np
import pytest

from pathkit.eval import metrics as M

# answer, truth, pathkit default, llava_med, quilt, pa_llava   (None = the seed's code does not count it)
DISAGREE = [
    ("normal", "no", False, 1, 0, 0),          # LLaVA-Med: "no" is a substring of "normal"
    ("normal", "yes", False, None, 1, 0),      # LLaVA-Med drops it; Quilt: no "no"/"not" token -> yes
    ("not seen", "no", False, 1, 1, 0),        # Quilt's "not" rule; pathkit sees no yes/no word
    ("No.", "no", True, 1, 1, 1),              # everyone agrees
    ("Yes, it is.", "yes", True, 1, 1, 0),     # PA-LLaVA needs the exact string
    ("B) necrosis", "B", True, 0, None, 0),    # lettered choice: only pathkit reads the letter
    ("There is no tumor", "yes", False, None, 0, 0),
    ("no, it is not", "no", True, 1, 1, 0),
]


@pytest.mark.parametrize("answer,truth,default,llava_med,quilt,pa_llava", DISAGREE)
def test_closed_variants_where_they_disagree(answer, truth, default, llava_med, quilt, pa_llava):
    assert M.closed_correct(answer, truth) is default
    assert M.llava_med_closed_hit(answer, truth) == llava_med
    assert M.quilt_closed_hit(answer, truth) == quilt
    assert M.pa_llava_closed_hit(answer, truth) == pa_llava


def test_closed_accuracy_list_api_and_variant_table():
    answers = [a for a, *_ in DISAGREE]
    truths = [t for _, t, *_ in DISAGREE]
    assert M.closed_accuracy(answers, truths) == pytest.approx(4 / 8)
    hits = M.closed_variant_hits(answers, truths)
    llava = [h for h in hits["llava_med"] if h is not None]
    assert len(llava) == 6 and sum(llava) / len(llava) == pytest.approx(5 / 6)  # inflated by dropping items
    assert M.closed_accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        M.closed_accuracy(["yes"], [])


def test_option_letter_reading():
    assert M.read_option_letter("B") == "B"
    assert M.read_option_letter("(c) lymphocytes") == "C"
    assert M.read_option_letter("The answer is D.") == "D"
    assert M.read_option_letter("option a") == "A"
    assert M.read_option_letter("A tumour with necrosis") is None  # an article, not an option
    assert M.read_option_letter("necrosis") is None
    assert M.closed_correct("C: gland", "C) gland") and not M.closed_correct("adipose", "C")


def test_seed_normalisation_quirks():
    assert M.seed_normalize("The two nuclei, (large).") == "2 nuclei large"
    assert M.seed_normalize("x-ray") == "x ray"
    assert M.pa_llava_normalize("X-ray: No!") == "xray no"


def test_open_recall_by_hand():
    # "the" is dropped; tp counts candidate words present in the truth: 3; fn 0
    f1, p, r = M.token_f1_scores("the tumor cells are large", "large tumor cells")
    assert (p, r) == (pytest.approx(3 / 4), pytest.approx(1.0)) and f1 == pytest.approx(2 * 0.75 / 1.75)
    # the seeds' tp sums *candidate* counts: "tumor tumor" vs "tumor cells" -> tp 2, fn 1
    assert M.open_recall("tumor tumor", "tumor cells") == pytest.approx(2 / 3)
    assert M.open_recall("two nuclei", "2 nuclei") == 1.0  # number words to digits
    assert M.open_recall("", "tumor") == 0.0 and M.open_recall("stroma", "tumor") == 0.0
    assert M.exact_match("Tumour!", "tumour") == 1.0 and M.exact_match("a tumour", "tumour") == 0.0
    assert M.seed_exact_match("tumor cells cells", "tumor") == pytest.approx(1 / 3)


def test_bleu_matches_nltk_sentence_bleu_method4():
    from nltk import word_tokenize
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    ref, hyp = "The tumour shows large pleomorphic nuclei", "The tumour has large nuclei"
    got = M.bleu_scores(hyp, ref)
    r, h = word_tokenize(ref, preserve_line=True), word_tokenize(hyp, preserve_line=True)
    for n in range(1, 5):
        w = tuple([1.0 / n] * n + [0.0] * (4 - n))
        assert got[n - 1] == pytest.approx(sentence_bleu([r], h, weights=w,
                                                         smoothing_function=SmoothingFunction().method4))
    assert got[0] > got[3] > 0
    assert M.bleu_scores("", ref) == [0.0, 0.0, 0.0, 0.0]
    assert M.word_tokens("Cells are large. Nuclei are dark.") == ["Cells", "are", "large", ".", "Nuclei",
                                                                  "are", "dark", "."]


def test_rouge_l_matches_rouge_score_and_lcs_by_hand():
    from rouge_score import rouge_scorer

    assert M.rouge_l("a c d e", "a b c d") == pytest.approx(0.75)  # LCS 3: P = R = 3/4
    ref, hyp = "dense lymphocytic infiltrate around glands", "lymphocytes around the glands"
    direct = rouge_scorer.RougeScorer(["rougeL"]).score(ref, hyp)["rougeL"].fmeasure
    assert M.rouge_l(hyp, ref) == pytest.approx(direct)


def test_meteor_offline_or_clear_reason():
    reader, source = M.wordnet_reader()
    if reader is None:
        assert "wordnet" in source.lower() and M.meteor("a", "b") is None
        pytest.skip(source)
    from nltk.translate.meteor_score import single_meteor_score

    ref, hyp = "the tumour cells are large", "the neoplasm cells are big"
    assert M.meteor(hyp, ref) == pytest.approx(single_meteor_score(ref.split(), hyp.split(), wordnet=reader))
    # WordNet synonyms count ("sick" ~ "ill"; nltk matches synonyms after stemming, so pick unstemmed words)
    assert M.meteor("the patient is sick", "the patient is ill") > M.meteor("the patient is red",
                                                                          "the patient is ill")


def test_meteor_reason_when_no_wordnet(tmp_path):
    reader, reason = M.wordnet_reader(str(tmp_path / "no-wordnet-here"))
    if reader is not None:  # nltk's own wordnet data is installed: that wins, fine
        assert "nltk" in reason
    else:
        assert "wordnet-base" in reason


def test_bootstrap_ci_contains_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = rng.random(30) < 0.6
    large = rng.random(3000) < 0.6
    lo_s, hi_s = M.bootstrap_ci(small, n_boot=500)
    lo_l, hi_l = M.bootstrap_ci(large, n_boot=500)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 4
    assert M.bootstrap_ci([1.0]) is None
    s = M.summarize([1, 0, None, 1])
    assert s["value"] == pytest.approx(2 / 3) and s["n"] == 3 and s["n_dropped"] == 1


def test_zero_shot_classification_scores_by_hand():
    classes = ["tumor", "stroma", "necrosis"]
    texts = ["This is tumor tissue.", "stroma with some tumor", "I am not sure", "Necrosis."]
    labels = ["tumor", "tumor", "stroma", "necrosis"]
    preds = [M.match_label(t, classes) for t in texts]
    assert preds == ["tumor", "stroma", None, "necrosis"]
    s = M.classification_scores(preds, labels, classes)
    # per class F1: tumor P=1 R=1/2 -> 2/3; stroma P=0 R=0 -> 0; necrosis 1 -> macro (2/3 + 0 + 1) / 3
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0 + 1) / 3)
