"""The model behind ``pathkit serve``: one worker thread that decodes batches of requests with a KV cache.

Requests wait in a queue. The worker takes the first one, gathers whatever else arrives within ``batch_wait_s``
(up to ``max_batch``; requests of one visual kind share a batch), left-pads their prompts, splices in the visual
tokens, runs one prefill and then one cached step per new token for the whole batch. Each row stops at its own
stop token, token budget or when its listener cancels it (a stop string, a closed connection); the batch ends
when every row has. Requests that arrive meanwhile wait for the next batch (static batching: simple, and on a
CPU or one GPU the batch is what buys throughput). Greedy rows (temperature 0) take the argmax, so their tokens
equal ``VisionLanguageModel.generate`` and transformers' ``generate``; other rows sample with their own seeded
generator (temperature, top-p).
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pathkit.io import PathkitError
from pathkit.models.conversation import get_template
from pathkit.models.llava_folder import is_hf_llava_dir
from pathkit.models.llm import load_llm
from pathkit.models.vlm import META_FILE, VisionLanguageModel
from pathkit.serve.images import RequestError


@dataclass
class Generation:
    """One request to the worker. ``on_event(kind, value)`` is called from the worker thread with
    ``("start", prompt_tokens)``, ``("token", id)`` (return False to stop this row), ``("done", reason)`` or
    ``("error", RequestError)``."""

    prompt_ids: list[int]
    kind: str  # image, slide or none
    visual: Any
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    on_event: Callable[[str, Any], Any]
    generator: torch.Generator | None = field(default=None, repr=False)


def _cache_of(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


class ServedModel:
    """A pathkit VLM (image or slide), an HF LLaVA folder, or a plain causal LM behind one interface."""

    def __init__(self, name_or_path: str | Path, template: str | None = None, device: str = "cpu",
                 dtype: str | None = None):
        path = Path(str(name_or_path)).expanduser()
        self.vlm = None
        if (path / META_FILE).is_file() or is_hf_llava_dir(path):
            self.vlm = VisionLanguageModel.from_pretrained(path, device=device).eval()
            if dtype is not None:
                self.vlm.to(getattr(torch, dtype))
            self.llm, self.tokenizer, self.vision = self.vlm.llm, self.vlm.tokenizer, self.vlm.vision
            self.template = template or self.vlm.template
        else:
            self.llm, self.tokenizer = load_llm(str(name_or_path), dtype=dtype, device=device)
            self.llm.eval()
            self.vision, self.template = "none", template or "vicuna_v1"
        self.template = get_template(self.template).name
        self.device = torch.device(device)
        self.context_length = int(getattr(self.llm.config, "max_position_embeddings", 2048))
        self.stop_ids = self._stop_ids()
        base = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        # transformers >= 5.2x calls the KV cache argument "cache"; earlier versions "past_key_values"
        self.cache_kwarg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    def _stop_ids(self) -> list[int]:
        if self.vlm is not None:
            return self.vlm.stop_token_ids()

        ids = [self.tokenizer.eos_token_id]
        for stop in get_template(self.template).stop_strings:
            encoded = self.tokenizer(stop, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1:
                ids.append(encoded[0])
        return [int(i) for i in dict.fromkeys(ids) if i is not None]

    def embed(self, ids: torch.Tensor, mask: torch.Tensor, kind: str, visuals: list[Any]):
        """Left-padded prompt ids (B, T) -> (embeds (B, T', H), mask (B, T')) with visual tokens spliced in."""
        if kind == "none" or self.vlm is None:
            return self.llm.get_input_embeddings()(ids), mask
        if kind == "image":
            features = self.vlm.visual_tokens(images=self.vlm.prepare_images(visuals))
        else:
            features = self.vlm.visual_tokens(slide_features=[f for f, _ in visuals],
                                              slide_coords=[c for _, c in visuals])
        embeds, mask, _, _ = self.vlm.splice(ids, mask, None, features, padding_side="left")
        return embeds, mask


class Engine:
    """Queue + worker thread around a :class:`ServedModel` (see the module docstring)."""

    def __init__(self, model: ServedModel, max_batch: int = 8, batch_wait_s: float = 0.01):
        if max_batch < 1:
            raise PathkitError(f"max_batch={max_batch}: must be >= 1")
        self.model = model
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.queue: queue.Queue[Generation | None] = queue.Queue()
        self.batches = 0  # batches decoded so far (the server's /health reports it)
        self._thread = threading.Thread(target=self._run, name="pathkit-serve-engine", daemon=True)
        self._thread.start()

    def submit(self, request: Generation) -> None:
        if request.temperature > 0:
            request.generator = torch.Generator()  # sampling runs on the CPU copy of the row's probabilities
            request.generator.manual_seed(request.seed if request.seed is not None
                                          else int(torch.randint(0, 2**31 - 1, ()).item()))
        self.queue.put(request)

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=10)

    # -------------------------------------------------------------------------------------------- worker

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            for kind in ("image", "slide", "none"):
                group = [r for r in batch if r.kind == kind]
                if group:
                    self._decode(group)

    def _decode(self, group: list[Generation]) -> None:
        try:
            with torch.inference_mode():
                self._decode_batch(group)
        except Exception as err:  # one failed batch answers its requests and the server goes on
            error = err if isinstance(err, RequestError) else RequestError(
                f"generation failed: {type(err).__name__}: {err}", status=500, code="generation_failed")
            for request in group:
                request.on_event("error", error)

    def _decode_batch(self, group: list[Generation]) -> None:
        model = self.model
        pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
        longest = max(len(r.prompt_ids) for r in group)
        ids = torch.full((len(group), longest), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(group):  # left padding: every row's next token is at the same column
            ids[i, longest - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, longest - len(r.prompt_ids):] = 1
        ids, mask = ids.to(model.device), mask.to(model.device)
        embeds, mask = model.embed(ids, mask, group[0].kind, [r.visual for r in group])
        lengths = mask.sum(-1).tolist()
        live = []
        for r, n in zip(group, lengths):
            if n + r.max_tokens > model.context_length:
                r.on_event("error", RequestError(
                    f"this request needs {n} prompt tokens (visual tokens included) + max_tokens {r.max_tokens}, "
                    f"over the model's context length of {model.context_length}", "max_tokens",
                    "context_length_exceeded"))
                live.append(False)
            else:
                r.on_event("start", int(n))
                live.append(True)
        if not any(live):
            return
        self.batches += 1
        active = torch.tensor(live, device=model.device)
        produced = [0] * len(group)
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=True)
        past, logits = _cache_of(out), out.logits[:, -1]
        stops = torch.tensor(model.stop_ids, device=model.device)
        while bool(active.any()):
            tokens = self._pick(logits.float(), group)
            for i, r in enumerate(group):
                if not active[i]:
                    continue
                token = int(tokens[i])
                if bool(torch.isin(tokens[i], stops)):
                    active[i] = False
                    r.on_event("done", "stop")
                    continue
                produced[i] += 1
                keep = r.on_event("token", token)
                if keep is False:
                    active[i] = False
                    r.on_event("done", "stop")
                elif produced[i] >= r.max_tokens:
                    active[i] = False
                    r.on_event("done", "length")
            if not bool(active.any()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # finished rows keep decoding, unread
            position_ids = position_ids[:, -1:] + 1
            out = model.llm(input_ids=tokens[:, None], attention_mask=mask, position_ids=position_ids,
                            use_cache=True, **{model.cache_kwarg: past})
            past, logits = _cache_of(out), out.logits[:, -1]

    @staticmethod
    def _pick(logits: torch.Tensor, group: list[Generation]) -> torch.Tensor:
        """Next token per row: argmax at temperature 0, else a top-p sample at the row's temperature."""
        tokens = logits.argmax(-1)
        for i, r in enumerate(group):
            if r.temperature <= 0:
                continue
            probs = torch.softmax(logits[i] / r.temperature, dim=-1)
            if r.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(-1) - sorted_probs < r.top_p  # the smallest set reaching top_p
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            tokens[i] = torch.multinomial(probs.cpu(), 1, generator=r.generator).to(tokens.device)[0]
        return tokens
