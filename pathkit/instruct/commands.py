"""``pathkit instruct``: generate instruction data with a prompt kind and a model; list and show prompts."""

from __future__ import annotations

from pathlib import Path

import typer

from pathkit.io import PathkitError

instruct = typer.Typer(help="Instruction data from an OpenAI-compatible model (or the offline rule-based one).",
                       no_args_is_help=True)


@instruct.command("generate")
def generate_cmd(
    in_path: Path = typer.Argument(..., help="IN.jsonl: rows with id, image, caption/context (narratives rows ok)"),
    prompt: str = typer.Option(..., "--prompt", help="prompt kind (see `pathkit instruct prompts`)"),
    out: Path = typer.Option(..., "--out", help="OUT.json (LLaVA JSON); journal/failures/summary go beside it"),
    model: str = typer.Option("rule-based", help="model name; 'rule-based' runs offline without a server"),
    base_url: str = typer.Option(None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1"),
    concurrency: int = typer.Option(8, help="requests in flight"),
    max_attempts: int = typer.Option(5, help="attempts per request (429/5xx/timeouts/dropped connections)"),
    timeout: float = typer.Option(60.0, help="seconds per attempt"),
    cache_dir: Path = typer.Option(None, help="response cache (default: $PATHKIT_CACHE/chat)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="do not read or write the response cache"),
    prompts_dir: Path = typer.Option(None, help="a folder or YAML file of templates overriding the built-in ones"),
    temperature: float = typer.Option(None, help="sampling temperature sent to the model"),
    max_tokens: int = typer.Option(None, help="max_tokens sent to the model"),
    retry_failed: bool = typer.Option(True, help="on resume, retry items that failed before"),
) -> None:
    """Generate instruction data: each IN row -> the prompt -> the model -> a parsed reply -> one LLaVA record.

    The key is read from OPENAI_API_KEY only. A killed run resumes from its journal (OUT.journal.jsonl) and
    never does an item twice; a re-run answers finished requests from the cache. Exits 1 when items failed
    (listed in OUT.failures.jsonl).
    """
    from pathkit.instruct.generate import generate_file
    from pathkit.paths import cache_dir as default_cache

    if concurrency < 1 or max_attempts < 1:
        raise PathkitError("--concurrency and --max-attempts must be >= 1")
    params = {k: v for k, v in (("temperature", temperature), ("max_tokens", max_tokens)) if v is not None}
    cache = None if no_cache else (cache_dir or default_cache() / "chat")
    summary = generate_file(in_path, out, prompt, model=model, base_url=base_url, concurrency=concurrency,
                            max_attempts=max_attempts, timeout=timeout, cache_dir=cache, overrides=prompts_dir,
                            params=params, retry_failed=retry_failed)
    usage = summary["usage"]
    typer.echo(f"{summary['written']} of {summary['items']} written -> {out} in {summary['seconds']:.1f} s "
               f"({summary['items_per_s']} items/s); requests {usage['requests']}, cache hits "
               f"{usage['cache_hits']}, tokens {usage['prompt_tokens']}+{usage['completion_tokens']}, "
               f"estimated ${usage['estimated_cost_usd']:.4f}")
    if summary["failed"]:
        typer.echo(f"error: {summary['failed']} item(s) failed (see {summary['failures']})", err=True)
        raise typer.Exit(1)


@instruct.command("prompts")
def prompts_cmd(
    kind: str = typer.Argument(None, help="show this prompt kind in full (omit to list all)"),
    prompts_dir: Path = typer.Option(None, help="a folder or YAML file of templates overriding the built-in ones"),
) -> None:
    """List the prompt kinds, or show one template (system, user, declared reply shape, source)."""
    from pathkit.instruct.prompts import get_prompt, load_prompts

    if kind is None:
        for name, t in sorted(load_prompts(prompts_dir).items()):
            typer.echo(f"{name:28s} {t.family:18s} -> {t.produces:15s} {t.description.split('.')[0][:70]}")
        return
    t = get_prompt(kind, prompts_dir)
    typer.echo(f"# {t.kind} ({t.family}) from {t.path}\n# {t.description}\n# source: {t.source}\n")
    typer.echo(f"[system]\n{t.system.strip()}\n\n[user]\n{t.user.strip()}\n\n[reply shape: {t.reply_shape}]\n"
               f"{t.reply_example.strip()}")
    for name, st in t.stages.items():
        typer.echo(f"\n[stage {name}: reply shape {st.reply_shape}]")
        if st.system:
            typer.echo(f"[system]\n{st.system.strip()}")
        typer.echo(f"[user]\n{st.user.strip()}")


def register(app: typer.Typer) -> None:
    app.add_typer(instruct, name="instruct")
