"""Instruction-data throughput: generation against the loopback server, and caption deduplication at scale.

1. Generation (``pathkit.instruct.generate`` + ``ChatClient`` + the real ``openai`` client) against the local
   OpenAI-compatible server with a fixed per-request latency (default 50 ms, a stand-in for a model), at
   concurrency 1, 8, 32: items/s beside the ideal ``concurrency / latency``.
2. Deduplication of N synthetic captions (default 20,000; ``--captions 100000`` for the full run) with planted
   exact and near copies: the whole ``dedup_captions`` (exact pass + MiniLM embeddings + blocked similarity
   search) against its baseline, embedding alone on the same captions (sampled before the run, and measured
   inside it, which is robust to load swings on a shared machine), beside the previous embedder setup (one
   stream of batches of 128 on all intra-op threads); plus the blocked search alone. Peak memory (RSS above
   the level after loading the model) is compared with N x 384 float32; planted exact/near pairs found.
   ``--merge`` keeps the sections of an existing output that a run skips (marked ``from_previous_run``).

Writes ``figures/instruct.json`` and ``figures/instruct.png``. ``--device cuda`` embeds on a GPU.

    .venv/bin/python benchmarks/bench_instruct.py                      # a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_instruct.py --captions 100000    # the full dedup run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pathkit.provenance import machine_record  # noqa: E402

FIGURES = REPO / "figures"


# ------------------------------------------------------------------------------------------ generation
def bench_generation(n_items: int, latency: float, levels: list[int]) -> dict:
    from pathkit.instruct.client import ChatClient
    from pathkit.instruct.generate import generate_records, row_to_item
    from pathkit.instruct.local_server import serve
    from pathkit.instruct.prompts import get_prompt

    template = get_prompt("quilt_detailed_description")
    items = [row_to_item({"id": f"i{i}", "caption": f"Sheets of atypical cells with necrosis, case {i}.",
                          "facts": {"diagnosis": "adenocarcinoma"}}, i, Path("."), "bench") for i in range(n_items)]
    results = []
    with serve(latency=latency) as server, tempfile.TemporaryDirectory() as tmp:
        for conc in levels:
            client = ChatClient(server.base_url, "bench", concurrency=conc, cache_dir=None, timeout=30)
            server.reset_counts()
            t0 = time.perf_counter()
            rows = generate_records(items, template, client, Path(tmp) / f"journal_{conc}.jsonl",
                                    concurrency=conc, progress=False)
            seconds = time.perf_counter() - t0
            ok = sum(r["status"] == "ok" for r in rows.values())
            rate = ok / seconds
            ideal = conc / latency
            results.append({"concurrency": conc, "items": ok, "requests": server.request_count,
                            "seconds": round(seconds, 3), "items_per_s": round(rate, 2),
                            "ideal_items_per_s": round(ideal, 2), "efficiency": round(rate / ideal, 3)})
            print(f"generation c={conc:3d}: {rate:7.1f} items/s (ideal {ideal:.0f}, {rate / ideal:.0%})", flush=True)
    with serve(latency=0.0) as server, tempfile.TemporaryDirectory() as tmp:  # the CPU ceiling of this machine
        client = ChatClient(server.base_url, "bench", concurrency=8, cache_dir=None, timeout=30)
        t0 = time.perf_counter()
        generate_records(items, template, client, Path(tmp) / "journal.jsonl", concurrency=8, progress=False)
        ceiling = n_items / (time.perf_counter() - t0)
    print(f"generation ceiling (server answers at once, c=8): {ceiling:.1f} items/s", flush=True)
    base = results[0]["items_per_s"]
    for r in results:
        r["speedup_vs_c1"] = round(r["items_per_s"] / base, 2)
    return {"latency_s": latency, "prompt": template.kind, "levels": results,
            "ceiling_items_per_s_zero_latency_c8": round(ceiling, 1)}


# ------------------------------------------------------------------------------------------ dedup
OPENERS = ("Here we see", "This field shows", "Note the", "The section contains", "Observe", "There is",
           "At high power,", "In this biopsy,", "On the left,", "Centrally,")
ADJ = ("atypical", "pleomorphic", "hyperchromatic", "crowded", "small", "large", "spindle", "round", "enlarged",
       "vacuolated", "eosinophilic", "basophilic", "clear", "necrotic", "reactive", "dysplastic")
NOUNS = ("epithelial cells", "glands", "lymphocytes", "fibroblasts", "nuclei", "plasma cells", "macrophages",
         "tumour cells", "hepatocytes", "keratinocytes", "adipocytes", "vessels", "crypts", "follicles", "ducts")
FINDINGS = ("mitoses", "necrosis", "haemorrhage", "fibrosis", "mucin", "keratin pearls", "calcification",
            "granulomas", "apoptotic bodies", "desmoplasia", "inflammation", "oedema", "hyalinisation")
PLACES = ("stroma", "mucosa", "submucosa", "dermis", "capsule", "margin", "lamina propria", "periphery",
          "centre of the lesion", "lymph node", "serosa", "perineural space")
GRADES = ("grade 1", "grade 2", "grade 3", "well differentiated", "moderately differentiated",
          "poorly differentiated", "benign", "malignant", "in situ", "invasive")


def synthetic_captions(n: int, seed: int = 0, exact_frac: float = 0.05, near_frac: float = 0.05
                       ) -> tuple[list[str], dict[int, int]]:
    """n pathology-like captions, mostly distinct, with planted exact/near copies: (texts, {copy: original})."""
    rng = random.Random(seed)
    n_planted = int(n * (exact_frac + near_frac))
    base = []
    for _ in range(n - n_planted):
        base.append(f"{rng.choice(OPENERS)} {rng.choice(ADJ)} {rng.choice(NOUNS)} with {rng.choice(FINDINGS)} "
                    f"and {rng.choice(ADJ)} {rng.choice(NOUNS)} in the {rng.choice(PLACES)}; "
                    f"{rng.choice(GRADES)}, {rng.randint(1, 40)} per high-power field, "
                    f"{rng.choice(FINDINGS)} near the {rng.choice(PLACES)}.")
    texts = list(base)
    planted = {}
    for k in range(n_planted):
        j = rng.randrange(len(base))
        src = base[j]
        copy = src.upper().replace(";", ",") if k < n * exact_frac else "As you can see, " + src
        planted[len(texts)] = j
        texts.append(copy)
    order = list(range(len(texts)))
    rng.shuffle(order)
    pos = {old: new for new, old in enumerate(order)}
    shuffled = [texts[i] for i in order]
    return shuffled, {pos[c]: pos[o] for c, o in planted.items()}


class PeakRSS:
    """Sample this process's RSS every 20 ms; ``peak`` in bytes."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _embed_rate(embed, sample: list[str]) -> tuple[float, float]:
    """(captions per wall second, captions per CPU second of this process) for one pass over ``sample``."""
    t0, c0 = time.perf_counter(), time.process_time()
    embed(sample)
    return len(sample) / (time.perf_counter() - t0), len(sample) / max(1e-9, time.process_time() - c0)


def bench_dedup(n: int, threshold: float, block: int, device: str, embed_sample: int, batch_size: int = 32,
                workers: int | None = None, progress: bool = False) -> dict:
    import psutil
    import torch

    from pathkit.curate.dedup import caption_embedder, dedup_captions, normalize_caption

    texts, planted = synthetic_captions(n)
    t0 = time.perf_counter()
    embed = caption_embedder(device=device, batch_size=batch_size, workers=workers)
    embed(["warm-up caption about glands"] * 8)
    load_s = time.perf_counter() - t0
    threads = torch.get_num_threads()

    # baseline: embedding alone on a random sample, side by side with the previous configuration (one stream
    # of length-sorted batches of 128 with every core as an intra-op thread), alternated so both see the same load
    sample = random.Random(1).sample(texts, min(embed_sample, n))
    single = caption_embedder(device=device, batch_size=128, workers=1)
    rates: dict[str, list[tuple[float, float]]] = {"workers": [], "single_stream": []}
    for _ in range(2):
        rates["workers"].append(_embed_rate(embed, sample[: len(sample) // 2]))
        rates["single_stream"].append(_embed_rate(single, sample[len(sample) // 2:]))
    embed_rate = float(np.mean([r[0] for r in rates["workers"]]))
    single_rate = float(np.mean([r[0] for r in rates["single_stream"]]))
    print(f"dedup: embedding alone {embed_rate:.1f} captions/s (previous single-stream configuration "
          f"{single_rate:.1f}, {embed_rate / single_rate:.2f}x; {len(sample)} captions, {threads} threads)", flush=True)

    # the whole pipeline (exact pass + embeddings + blocked search), peak memory above the post-load level
    embed_seconds = [0.0]

    def timed_embed(batch):  # the embedding share of the whole run, measured inside it (robust to load swings)
        t = time.perf_counter()
        out = embed(batch)
        embed_seconds[0] += time.perf_counter() - t
        return out

    load_before = os.getloadavg()[0]
    with PeakRSS() as mem:
        rss_before = mem.peak
        t0 = time.perf_counter()
        keep, report = dedup_captions(texts, threshold=threshold, block_size=block, embed=timed_embed,
                                      progress=progress)
        full_s = time.perf_counter() - t0
    removed = {r["index"]: r for r in report}
    # ground truth: each planted copy (or its original, whichever came later in the shuffled order) must go
    exact_pairs = {c: o for c, o in planted.items() if normalize_caption(texts[c]) == normalize_caption(texts[o])}
    near_pairs = {c: o for c, o in planted.items() if c not in exact_pairs}

    root = {c: o for c, o in planted.items()}  # a copy's group is its original (copies of one original match)

    def found(pairs: dict[int, int]) -> int:
        """Pairs where the copy or the original was removed as a duplicate of its own group (two copies of one
        original are exact duplicates of each other, whatever their kind)."""
        return sum(any(i in removed and root.get(removed[i]["duplicate_of"], removed[i]["duplicate_of"]) == o
                       for i in (c, o)) for c, o in pairs.items())

    in_pairs = set(planted) | set(planted.values())
    incidental = [r for r in report if r["index"] not in in_pairs]
    n_unique = n - sum(r["reason"] == "exact" for r in report)
    inside_rate = n_unique / embed_seconds[0]
    peak_mib = (mem.peak - rss_before) / 2**20
    print(f"dedup N={n}: whole dedup {n / full_s:.1f} captions/s = {n / full_s / embed_rate:.2f}x the embedding-alone "
          f"rate; embedding took {embed_seconds[0] / full_s:.1%} of the run; {len(report)} removed; planted exact "
          f"{found(exact_pairs)}/{len(exact_pairs)}, near {found(near_pairs)}/{len(near_pairs)}, "
          f"incidental {len(incidental)}; peak +{peak_mib:.0f} MiB (N x 384 float32 = {n * 384 * 4 / 2**20:.0f} MiB)",
          flush=True)
    return {"captions": n, "threshold": threshold, "block_size": block, "device": device,
            "torch_threads": threads, "embed_batch_size": batch_size,
            "embed_workers": workers if workers is not None else (threads if device == "cpu" else 1),
            "model_load_s": round(load_s, 2), "rss_after_model_load_mib": round(rss_before / 2**20, 1),
            "embed_only": {"captions": len(sample), "captions_per_s": round(embed_rate, 1),
                           "captions_per_cpu_s": round(float(np.mean([r[1] for r in rates["workers"]])), 1),
                           "rounds_captions_per_s": [round(r[0], 1) for r in rates["workers"]]},
            "embed_only_previous_single_stream": {
                "batch_size": 128, "workers": 1, "intra_op_threads": threads,
                "captions_per_s": round(single_rate, 1),
                "captions_per_cpu_s": round(float(np.mean([r[1] for r in rates["single_stream"]])), 1),
                "rounds_captions_per_s": [round(r[0], 1) for r in rates["single_stream"]],
                "speedup_of_workers": round(embed_rate / single_rate, 2)},
            "dedup": {"seconds": round(full_s, 2), "captions_per_s": round(n / full_s, 1),
                      "fraction_of_embedding_rate": round(n / full_s / embed_rate, 3),
                      "embedding_seconds_inside": round(embed_seconds[0], 2),
                      "embedding_captions_per_s_inside": round(inside_rate, 1),
                      "embedding_share_of_time": round(embed_seconds[0] / full_s, 4),
                      "load_average_1min_before": round(load_before, 2),
                      "load_average_1min_after": round(os.getloadavg()[0], 2),
                      "cpu_count": psutil.cpu_count(),
                      "removed": len(report), "removed_exact": sum(r["reason"] == "exact" for r in report),
                      "removed_near": sum(r["reason"] == "near" for r in report),
                      "planted_pairs": len(planted), "planted_exact": len(exact_pairs),
                      "planted_near": len(near_pairs),
                      "planted_exact_found": found(exact_pairs),
                      "planted_near_found": found(near_pairs),
                      "planted_pairs_found": round(sum(c in removed or o in removed for c, o in planted.items())
                                                   / max(1, len(planted)), 4),
                      "removed_outside_planted_pairs": len(incidental),
                      "removed_outside_planted_examples": [
                          {"text": texts[r["index"]], "duplicate_of": texts[r["duplicate_of"]],
                           "similarity": r["similarity"]} for r in incidental[:3]],
                      "peak_rss_above_start_mib": round(peak_mib, 1)},
            "embeddings_mib": round(n * 384 * 4 / 2**20, 1),
            "peak_over_embeddings": round(peak_mib / (n * 384 * 4 / 2**20), 2)}


def bench_search(n: int, threshold: float, block: int, seed: int = 0) -> dict:
    """The blocked similarity search alone on N random unit vectors with 5% planted near copies.

    Random vectors are nearly all distinct, the worst case for the search (every item stays a key).
    """
    from pathkit.curate.dedup import near_duplicates

    rng = np.random.default_rng(seed)
    n_copies = n // 20
    with PeakRSS() as mem:
        rss0 = mem.peak
        emb = rng.standard_normal((n, 384), dtype=np.float32)  # (N, 384)
        src = rng.integers(0, n - n_copies, n_copies)
        emb[n - n_copies:] = emb[src] + 0.1 * rng.standard_normal((n_copies, 384), dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        t0 = time.perf_counter()
        dups = near_duplicates(emb, threshold, block)
        seconds = time.perf_counter() - t0
    found = sum(i in dups for i in range(n - n_copies, n)) / n_copies
    print(f"search N={n}: {n / seconds:.0f} captions/s, {seconds:.1f} s, planted found {found:.3f}, "
          f"peak +{(mem.peak - rss0) / 2**20:.0f} MiB (N x 384 float32 = {n * 384 * 4 / 2**20:.0f} MiB; "
          f"an N x N float32 matrix would be {n * n * 4 / 2**30:.1f} GiB)", flush=True)
    return {"vectors": n, "seconds": round(seconds, 2), "captions_per_s": round(n / seconds, 1),
            "planted": n_copies, "planted_found": round(found, 4), "block_size": block,
            "peak_rss_above_start_mib": round((mem.peak - rss0) / 2**20, 1),
            "embeddings_mib": round(n * 384 * 4 / 2**20, 1), "full_matrix_gib": round(n * n * 4 / 2**30, 1)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if "generation" in result:
        g = result["generation"]["levels"]
        c = [r["concurrency"] for r in g]
        axes[0].plot(c, [r["items_per_s"] for r in g], "o-", label="measured")
        axes[0].plot(c, [r["ideal_items_per_s"] for r in g], "k--", label="ideal: concurrency / latency")
        axes[0].axhline(result["generation"]["ceiling_items_per_s_zero_latency_c8"], color="tab:red", ls=":",
                        label="CPU ceiling (0 ms server, c=8)")
        axes[0].set_xscale("log", base=2)
        axes[0].set_yscale("log")
        axes[0].set_xlabel("concurrency")
        axes[0].set_ylabel("items / s")
        axes[0].set_title(f"Generation vs loopback server ({result['generation']['latency_s'] * 1000:.0f} ms/request)")
        axes[0].legend()
    if "dedup" in result or "search" in result:
        names, rates, colors = [], [], []
        if "dedup" in result:
            d = result["dedup"]
            if "embed_only_previous_single_stream" in d:
                names.append(f"embed alone\n1 stream x\n{d['torch_threads']} threads")
                rates.append(d["embed_only_previous_single_stream"]["captions_per_s"])
                colors.append("lightgrey")
            names += [f"embed alone\n{d.get('embed_workers', 1)} workers\n(baseline)", f"whole dedup\nN={d['captions']:,}"]
            rates += [d["embed_only"]["captions_per_s"], d["dedup"]["captions_per_s"]]
            colors += ["grey", "tab:blue"]
            if "embedding_captions_per_s_inside" in d["dedup"]:  # the same run's embedding rate (same load)
                names.append(f"its embedding\n({d['dedup']['embedding_share_of_time']:.0%} of the run)")
                rates.append(d["dedup"]["embedding_captions_per_s_inside"])
                colors.append("tab:cyan")
        if "search" in result:
            sr = result["search"]
            names.append(f"search alone\nN={sr['vectors']:,}" + ("\n(earlier run)" if "from_previous_run" in sr else ""))
            rates.append(sr["captions_per_s"])
            colors.append("tab:orange")
        axes[1].bar(names, rates, color=colors)
        axes[1].set_ylabel("captions / s")
        axes[1].tick_params(axis="x", labelsize=8)
        axes[1].set_yscale("log")
        mem = []
        if "dedup" in result:
            mem.append(f"dedup peak +{result['dedup']['dedup']['peak_rss_above_start_mib']:.0f} MiB "
                       f"(N x 384: {result['dedup']['embeddings_mib']:.0f} MiB)")
        if "search" in result:
            mem.append(f"search peak +{result['search']['peak_rss_above_start_mib']:.0f} MiB "
                       f"(N x 384: {result['search']['embeddings_mib']:.0f} MiB)")
        axes[1].set_title(f"Deduplication on {result['machine']['cpu_count']} CPUs\n" + "\n".join(mem), fontsize=9)
        for i, r in enumerate(rates):
            axes[1].text(i, r, f"{r:,.0f}", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=320, help="generation items per concurrency level")
    parser.add_argument("--latency", type=float, default=0.05, help="server seconds per request")
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels")
    parser.add_argument("--captions", type=int, default=5000, help="captions through the whole dedup (embedding-bound)")
    parser.add_argument("--embed-sample", type=int, default=1000, help="captions for the embedding-alone baseline")
    parser.add_argument("--search-n", type=int, default=100000, help="vectors for the blocked search alone")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--device", default="cpu", help="embedding device (cpu or cuda)")
    parser.add_argument("--embed-batch", type=int, default=32, help="captions per MiniLM forward")
    parser.add_argument("--workers", type=int, default=None,
                        help="embedding threads, each with one intra-op thread (default: torch's thread count)")
    parser.add_argument("--progress", action="store_true", help="progress bar for the whole dedup")
    parser.add_argument("--merge", action="store_true",
                        help="keep the sections of an existing --out file that this run skips")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--skip-dedup", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--out", default=str(FIGURES / "instruct.json"))
    args = parser.parse_args(argv)
    import torch

    result: dict = {"machine": {**machine_record(), "platform": platform.platform(), "python": sys.version.split()[0],
                                "cpu_count": os.cpu_count(), "torch": torch.__version__,
                                "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
                                "load_average_at_start": list(os.getloadavg())}}
    if not args.skip_generation:
        result["generation"] = bench_generation(args.items, args.latency, [int(x) for x in args.levels.split(",")])
    if not args.skip_dedup:
        result["dedup"] = bench_dedup(args.captions, args.threshold, args.block, args.device, args.embed_sample,
                                      args.embed_batch, args.workers, args.progress)
    if not args.skip_search:
        result["search"] = bench_search(args.search_n, args.threshold, args.block)
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    out = Path(args.out)
    if args.merge and out.exists():  # sections not rerun keep their numbers, and say from which machine state
        previous = json.loads(out.read_text())
        for name in ("generation", "dedup", "search"):
            if name not in result and name in previous:
                result[name] = previous[name]
                result[name].setdefault("from_previous_run", {"machine": previous.get("machine", {})})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
