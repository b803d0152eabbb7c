"""``pathkit export MODEL_DIR --format hf-llava --out DIR`` and ``pathkit serve MODEL --port P``."""

from __future__ import annotations

from pathlib import Path

import typer


def export_command(
    model_dir: Path = typer.Argument(..., help="a pathkit model folder (or an HF LLaVA folder)"),
    fmt: str = typer.Option("hf-llava", "--format", help="hf-llava (transformers/vLLM LLaVA folder) or pathkit"),
    out: Path = typer.Option(..., "--out", help="output folder (replaced whole when it exists)"),
) -> None:
    """Write the model where other tools read it: an HF LLaVA folder with LoRA merged, processor, tokenizer
    and chat template. A model LLaVA's layout cannot hold is written as a pathkit folder, and the reason said."""
    from pathkit.io import PathkitError
    from pathkit.serve.export import export_model

    if not model_dir.is_dir():
        raise PathkitError(f"{model_dir}: model folder not found")
    written, reason = export_model(model_dir, out, fmt)
    if reason:
        typer.echo(f"exported as a pathkit folder, not hf-llava: {reason} -> {out}")
    else:
        typer.echo(f"exported {written} -> {out}")


def serve_command(
    model: str = typer.Argument(..., help="a pathkit model folder, an HF LLaVA folder, or an LLM (tiny-pretrained, "
                                          "a transformers folder) for text-only use such as an LLM judge"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (127.0.0.1: this machine only)"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    image_root: Path = typer.Option(None, "--image-root", help="the only folder whose files (images, slide .h5 "
                                                               "features) requests may name; none: data URLs only"),
    max_batch: int = typer.Option(8, "--max-batch", help="requests decoded together in one KV-cached batch"),
    model_id: str = typer.Option(None, "--model-id", help="the name /v1/models reports (default: folder name)"),
    template: str = typer.Option(None, "--template", help="chat template override (plain, vicuna_v1, llama3, "
                                                          "huatuo, qwen2)"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option(None, "--dtype", help="bfloat16, float16 or float32 (default: as saved)"),
    max_image_mb: float = typer.Option(20.0, "--max-image-mb", help="largest image a request may send"),
) -> None:
    """Serve a model over an OpenAI-compatible API: /v1/models and /v1/chat/completions (streaming or not).

    Concurrent requests are batched: requests that arrive together are decoded as one KV-cached batch of up to
    --max-batch, later ones queue for the next batch. Temperature 0 is greedy and gives `pathkit eval answers`'
    answers."""
    from pathkit.serve.server import serve

    serve(model, host=host, port=port, image_root=image_root, max_batch=max_batch, model_id=model_id,
          template=template, device=device, dtype=dtype, max_image_bytes=int(max_image_mb * 1024 * 1024))


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
    app.command("serve")(serve_command)
