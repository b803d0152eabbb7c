"""``pathkit eval ...``: answer a benchmark with a trained model, score answers, convert benchmark files."""

from __future__ import annotations

from pathlib import Path

import typer

eval_app = typer.Typer(help="Evaluate models: answer questions, score answers, convert benchmark files.",
                       no_args_is_help=True)


@eval_app.command("answers")
def answers_cmd(
    model_dir: str = typer.Argument(..., help="a pathkit model folder or an HF LLaVA folder; with --base-url, "
                                              "the served model's name"),
    questions: Path = typer.Argument(..., help="questions JSONL (question_id, image, text, answer, answer_type)"),
    out: Path = typer.Option(..., "--out", help="answers JSONL (LLaVA format); resumed if it exists"),
    batch_size: int = typer.Option(8, help="questions per greedy generate call (with --base-url: in flight)"),
    max_new_tokens: int = typer.Option(32, help="tokens generated per answer"),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint that answers instead of a "
                                                         "local model (pathkit serve, vLLM), e.g. http://127.0.0.1:8000/v1"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="environment variable holding the endpoint's key"),
) -> None:
    """Answer every question with greedy decoding; rerun to resume (answered question_ids are skipped)."""
    from pathkit.eval.answers import generate_answers
    from pathkit.io import PathkitError

    if base_url is None and not Path(model_dir).is_dir():
        raise PathkitError(f"{model_dir}: model folder not found")
    res = generate_answers(model_dir, questions, out, batch_size=batch_size, max_new_tokens=max_new_tokens,
                           base_url=base_url, api_key_env=api_key_env)
    typer.echo(f"answered {res['answered']}, already done {res['skipped']}, failed {res['failed']} -> {out}")
    if res["failed"]:
        raise PathkitError(res["failures"].summary("question"))


@eval_app.command("score")
def score_cmd(
    answers: Path = typer.Option(..., "--answers", help="answers JSONL (question_id, text)"),
    questions: Path = typer.Option(..., "--questions", help="questions JSONL with ground-truth answers"),
    out: Path = typer.Option(..., "--out", help="metrics JSON"),
    bootstrap: int = typer.Option(1000, help="bootstrap resamples for the 95% intervals (0: none)"),
    seed: int = typer.Option(0, help="bootstrap seed"),
) -> None:
    """Closed accuracy (pathkit + the seeds' variants), open recall, exact match, BLEU, ROUGE-L, METEOR."""
    from pathkit.eval.score import score_files

    res = score_files(answers, questions, out, n_boot=bootstrap, seed=seed, progress=True)

    def fmt(m):
        return "n/a" if m["value"] is None else f"{m['value']:.3f}"

    variants = ", ".join(f"{k} {fmt(v)}" for k, v in res["closed_accuracy_variants"].items())
    typer.echo(f"closed {res['n_closed']}: accuracy {fmt(res['closed_accuracy'])} ({variants}); "
               f"open {res['n_open']}: recall {fmt(res['open_recall'])}, BLEU-4 {fmt(res['bleu_4'])} -> {out}")


@eval_app.command("convert")
def convert_cmd(
    benchmark: str = typer.Argument(..., help="pathvqa, quilt_vqa, quilt_vqa_red, pmc_vqa, wsi_bench, slake, "
                                              "vqa_rad, mmmu_med"),
    source: Path = typer.Argument(..., help="the downloaded file (JSON, JSONL, CSV or parquet)"),
    out: Path = typer.Option(..., "--out", help="questions JSONL in pathkit's evaluation format"),
    image_root: Path = typer.Option(None, help="folder the benchmark's image paths are relative to"),
) -> None:
    """Convert a downloaded benchmark file to the evaluation questions format (closed questions get options)."""
    from pathkit.eval.loaders import load_benchmark, write_questions

    rows = load_benchmark(benchmark, source, image_root=image_root, image_dir=out.parent / f"{out.stem}_images")
    write_questions(out, rows)
    n_closed = sum(r["answer_type"] == "CLOSED" for r in rows)
    typer.echo(f"{len(rows)} questions ({n_closed} closed) -> {out}")


@eval_app.command("judge")
def judge_cmd(
    answers: Path = typer.Option(..., "--answers", help="answers JSONL (question_id, text)"),
    questions: Path = typer.Option(..., "--questions", help="questions JSONL with reference answers"),
    out: Path = typer.Option(..., "--out", help="judge results JSON"),
    model: str = typer.Option(..., "--model", help="judge model name, e.g. gpt-4o"),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (default: OpenAI)"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="environment variable holding the key"),
    metric: list[str] = typer.Option(["relative"], "--metric",
                                     help="relative (LLaVA-Med/Quilt GPT score), wsi_precision, wsi_relevance"),
    all_questions: bool = typer.Option(False, help="judge closed questions too (default: open only)"),
) -> None:
    """LLM-judge the open answers; journals beside OUT make reruns resume without new requests."""
    from pathkit.eval import judges
    from pathkit.eval.score import read_answers, read_questions
    from pathkit.io import PathkitError, write_json

    unknown = set(metric) - {"relative", "wsi_precision", "wsi_relevance"}
    if unknown:
        raise PathkitError(f"--metric: unknown {sorted(unknown)}; use relative, wsi_precision, wsi_relevance")
    items = judges.judge_items(read_questions(questions), read_answers(answers), open_only=not all_questions)
    work = out.with_name(out.stem + "_journal")
    client = judges.make_client(base_url, model, api_key_env=api_key_env, cache_dir=work / "cache")
    result: dict = {"model": model, "n_items": len(items)}
    if "relative" in metric:
        result["relative"] = judges.relative_score(items, client, work / "relative.jsonl")
    if "wsi_precision" in metric:
        result["wsi_precision"] = judges.wsi_precision(items, client, work)
    if "wsi_relevance" in metric:
        result["wsi_relevance"] = judges.wsi_relevance(items, client, work)
    write_json(out, result)
    failed = sum(v.get("n_failed", 0) for v in result.values() if isinstance(v, dict))
    typer.echo(f"judged {len(items)} item(s) with {model}; {failed} failure(s) -> {out}")
    if failed:
        raise PathkitError(f"{failed} judge call(s) failed (malformed twice or request error); rerun to retry")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
