"""Deduplication: planted near-duplicate captions found with the real MiniLM model, distinct ones kept; the
blocked search equals the N x N brute force for every block size; perceptual-hash image duplicates."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pathkit.curate.dedup import (
    dedup_captions,
    dedup_images,
    exact_duplicates,
    image_duplicates,
    near_duplicates,
    near_duplicates_bruteforce,
    phash,
)

DISTINCT = [
    "Sheets of atypical epithelial cells with frequent mitoses and central necrosis.",
    "Mature adipose tissue composed of large empty fat cells with thin septa.",
    "A lymph node with reactive germinal centres and a preserved sinus pattern.",
    "Dense collagenous stroma with scattered spindle-shaped fibroblasts.",
    "Glands lined by columnar cells with basal nuclei and abundant mucin.",
    "Squamous epithelium showing keratin pearls and intercellular bridges.",
    "Granulomas with multinucleated giant cells and caseous necrosis in the lung.",
    "Liver parenchyma with steatosis and portal inflammation.",
    "The kidney biopsy shows glomeruli with thickened basement membranes.",
    "Skin with a melanocytic lesion composed of nests at the junction.",
]
PLANTED = {  # near-duplicate -> index of the original in DISTINCT
    "Sheets of atypical epithelial cells with frequent mitoses and necrosis in the centre.": 0,
    "Mature adipose tissue made of large empty fat cells with thin septa.": 1,
    "Lymph node with reactive germinal centers and preserved sinus pattern here.": 2,
    "Here we see glands lined by columnar cells with basal nuclei and abundant mucin.": 4,
}


def test_planted_near_and_exact_duplicates_found_distinct_kept():
    texts = DISTINCT + list(PLANTED) + ["  GLANDS lined by columnar cells, with basal nuclei and abundant mucin!! "]
    ids = [f"c{i}" for i in range(len(texts))]
    keep, report = dedup_captions(texts, ids, threshold=0.9)
    assert keep == list(range(len(DISTINCT)))  # every distinct caption kept, every planted copy removed
    by_index = {r["index"]: r for r in report}
    for j, text in enumerate(PLANTED, start=len(DISTINCT)):
        assert by_index[j]["reason"] == "near" and by_index[j]["duplicate_of"] == f"c{PLANTED[text]}"
        assert by_index[j]["similarity"] >= 0.9
    assert by_index[len(texts) - 1]["reason"] == "exact" and by_index[len(texts) - 1]["duplicate_of"] == "c4"
    keep_strict, _ = dedup_captions(texts, ids, threshold=0.999)  # a stricter threshold keeps paraphrases
    assert len(keep_strict) == len(texts) - 1


def test_exact_duplicates_normalise_case_space_punctuation():
    assert exact_duplicates(["A b.", "a   B", "a c", "A, B!"]) == {1: 0, 3: 0}


@pytest.mark.parametrize("block", [1, 3, 16, 64, 500])
def test_blocked_equals_bruteforce(block):
    rng = np.random.default_rng(block)
    base = rng.normal(size=(150, 384)).astype(np.float32)
    copies = base[rng.integers(0, 150, 60)] + rng.normal(scale=rng.uniform(0.05, 1.0, (60, 1)), size=(60, 384))
    emb = np.concatenate([base, copies.astype(np.float32)])[rng.permutation(210)]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    counts = []
    for threshold in (0.8, 0.9, 0.95):
        ref = near_duplicates_bruteforce(emb, threshold)
        counts.append(len(ref))
        got = near_duplicates(emb, threshold, block_size=block)
        assert got.keys() == ref.keys() and 0 < len(ref) <= 60
        assert all(got[k][0] == ref[k][0] and abs(got[k][1] - ref[k][1]) < 1e-5 for k in ref)
    assert counts[0] > counts[1] > counts[2]  # the threshold decides borderline copies


def _tissue_like(rng, size=128):
    x = rng.random((size // 8, size // 8, 3))
    img = np.kron(x, np.ones((8, 8, 1)))
    return (img * 255).astype(np.uint8)


def test_image_phash_duplicates(tmp_path):
    rng = np.random.default_rng(0)
    originals = [_tissue_like(rng) for _ in range(6)]
    paths = []
    for i, img in enumerate(originals):
        Image.fromarray(img).save(tmp_path / f"o{i}.png")
        paths.append(tmp_path / f"o{i}.png")
    Image.fromarray(originals[2]).resize((256, 256)).save(tmp_path / "resized.png")  # a rescaled copy
    Image.fromarray(originals[4]).save(tmp_path / "recompressed.jpg", quality=70)  # a re-encoded copy
    paths += [tmp_path / "resized.png", tmp_path / "recompressed.jpg"]
    keep, report = dedup_images(paths, [p.name for p in paths])
    assert keep == list(range(6))
    assert {(r["id"], r["duplicate_of"]) for r in report} == {("resized.png", "o2.png"), ("recompressed.jpg", "o4.png")}
    hashes = [phash(p) for p in paths]
    assert image_duplicates(hashes, 6, block_size=2) == image_duplicates(hashes, 6, block_size=4096)


def test_cli_dedup_writes_output_and_report(tmp_path):
    texts = DISTINCT[:4] + list(PLANTED)[:2]
    records = [{"id": f"r{i}", "conversations": [{"from": "human", "value": "Describe."},
                                                 {"from": "gpt", "value": t}]} for i, t in enumerate(texts)]
    (tmp_path / "in.json").write_text(json.dumps(records))
    proc = subprocess.run([sys.executable, "-m", "pathkit.cli", "curate", "dedup", str(tmp_path / "in.json"),
                           "--threshold", "0.9", "--out", str(tmp_path / "out.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in json.loads((tmp_path / "out.json").read_text())] == ["r0", "r1", "r2", "r3"]
    removed = [json.loads(x) for x in (tmp_path / "out.removed.jsonl").read_text().splitlines()]
    assert [(r["id"], r["duplicate_of"], r["reason"]) for r in removed] == [("r4", "r0", "near"), ("r5", "r1", "near")]
    bad = subprocess.run([sys.executable, "-m", "pathkit.cli", "curate", "dedup", str(tmp_path / "in.json"),
                          "--threshold", "1.5", "--out", str(tmp_path / "x.json")], capture_output=True, text=True)
    assert bad.returncode == 2 and "--threshold" in bad.stderr


MIXED = DISTINCT + list(PLANTED) + ["short", "", "a much longer caption about glands " * 60]  # > 256 tokens


def test_threaded_embedder_same_vectors_in_input_order_and_restores_threads():
    import torch

    from pathkit.curate.dedup import caption_embedder

    threads = torch.get_num_threads()
    serial = caption_embedder(workers=1, batch_size=64)(MIXED)  # one batch stream
    threaded = caption_embedder(workers=2, batch_size=3)(MIXED)  # length-sorted batches of 3 on 2 threads
    assert torch.get_num_threads() == threads
    np.testing.assert_allclose(threaded, serial, atol=1e-5)
    reversed_ = caption_embedder(workers=2, batch_size=3)(MIXED[::-1])
    np.testing.assert_allclose(reversed_[::-1], serial, atol=1e-5)  # rows follow the input order


@pytest.mark.slow  # imports sentence-transformers (the reference), tens of seconds on a busy machine
def test_fast_embedder_matches_sentence_transformers():
    from pathkit.curate.dedup import caption_embedder

    reference = caption_embedder(backend="sentence-transformers")(MIXED)
    for workers, batch_size in ((None, 32), (1, 5), (2, 4)):
        fast = caption_embedder(workers=workers, batch_size=batch_size)(MIXED)
        assert fast.shape == (len(MIXED), 384)
        assert np.min(np.sum(fast * reference, axis=1)) > 0.999  # cosine to the peer library, every caption
        np.testing.assert_allclose(fast, reference, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
