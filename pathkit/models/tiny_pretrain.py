"""Text-only pre-training of the tiny LLM (``tiny-pretrained``): the step real assistants get from their LLM.

Every seed system starts from a pretrained, chat-tuned LLM (Vicuna, Llama-3-Instruct, Qwen2) and LoRA or full
fine-tuning then adapts it to images. A random-init tiny LLM has no such start: measured on the 2-core CPU, LoRA
on it learns only the answer prior (held-out yes/no 0.50, 4-way slide diagnosis <= 0.25), while full fine-tuning
needs 24-40 epochs before yes/no leaves chance. ``tiny-pretrained`` is the tiny Llama after a few minutes of
causal language modelling on :func:`pathkit.synthetic.corpus.text_conversations` in the preset's chat template:
it learns the vocabulary, the answer formats and to answer a question from the caption or report that precedes
it. The LoRA stages then start from a model that already "reads" the domain, as the papers' stages do.

The loss covers every token after the system prompt (the context, the question and the answer), because
learning the context sentences is what makes the class words meaningful; the system prompt is the same in every
sequence and is skipped. Logits are computed only at the supervised positions (the output head is most of the
compute of a 64-wide model with a 4,096-token vocabulary). Deterministic for a seed on one CPU thread.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from pathkit.models.conversation import (
    IGNORE_INDEX,
    system_token_count,
    tokenize_conversation,
    tokenize_prompt,
)
from pathkit.synthetic.corpus import text_conversations

# Lazy imports: torch (the model stack, seconds to import). They load inside the functions that need them, not
# when this module is imported.


@dataclass(frozen=True)
class PretrainSpec:
    """How ``tiny-pretrained`` is trained (part of its cache key: change a field and it is rebuilt)."""

    conversations: int = 24_000
    steps: int = 1_200
    batch_size: int = 32
    lr: float = 4e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    template: str = "vicuna_v1"
    max_length: int = 256
    seed: int = 0


def system_prefix_length(tokenizer, template: str) -> int:
    """Tokens before the first human turn (BOS + system prompt): identical in every sequence, not supervised."""
    return system_token_count(tokenizer, template)


def pretrain_tiny_llm(model, tokenizer, spec: PretrainSpec = PretrainSpec(), log=None) -> dict[str, Any]:
    """Train ``model`` (a transformers causal LM) in place on the synthetic text corpus.

    Returns a record of the run: the spec, the loss every 50 steps, seconds and tokens seen.
    """
    import torch
    import torch.nn.functional as F

    conversations = text_conversations(spec.conversations, seed=spec.seed)
    skip = system_prefix_length(tokenizer, spec.template)
    encoded = [tokenize_conversation(c, tokenizer, spec.template, max_length=spec.max_length)["input_ids"]
               for c in conversations]
    generator = torch.Generator().manual_seed(spec.seed)
    order = torch.randperm(len(encoded), generator=generator).tolist()  # mixed lengths and kinds in every batch
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, betas=(0.9, 0.98), weight_decay=spec.weight_decay)
    pad = tokenizer.pad_token_id
    model.train()
    losses, tokens, start = [], 0, time.perf_counter()
    for step in range(spec.steps):
        lr = spec.lr * min(1.0, (step + 1) / spec.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / spec.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = [encoded[order[(step * spec.batch_size + j) % len(order)]] for j in range(spec.batch_size)]
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        for j, r in enumerate(rows):
            input_ids[j, :len(r)] = torch.tensor(r)
            attention[j, :len(r)] = 1
        targets = input_ids[:, 1:].masked_fill(attention[:, 1:] == 0, IGNORE_INDEX)
        targets[:, :max(skip - 1, 0)] = IGNORE_INDEX  # predicting the system prompt teaches nothing
        hidden = model.model(input_ids=input_ids, attention_mask=attention).last_hidden_state[:, :-1]
        keep = targets != IGNORE_INDEX  # (B, L-1): logits only where there is a target
        loss = F.cross_entropy(model.lm_head(hidden[keep]), targets[keep])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(keep.sum())
        if step % 50 == 0 or step == spec.steps - 1:
            losses.append({"step": step, "loss": round(loss.item(), 4)})
            if log is not None:
                log(f"tiny-pretrained step {step}/{spec.steps} loss {loss.item():.3f}")
    model.eval()
    return {"spec": asdict(spec), "losses": losses, "seconds": round(time.perf_counter() - start, 1),
            "supervised_tokens": tokens, "system_prefix_tokens": skip}


def answer_from_context(model, tokenizer, conversations: list[list[dict[str, Any]]], template: str = "vicuna_v1"
                        ) -> float:
    """Accuracy of greedy next-token answers on closed text questions (yes/no or one letter), for checks."""
    import torch

    hits = []
    with torch.no_grad():
        for conv in conversations:
            truth = conv[1]["value"]
            ids = tokenize_prompt(conv[0]["value"], tokenizer, template)
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            answer = tokenizer.decode([int(logits.argmax())]).strip()
            hits.append(answer == truth)
    return sum(hits) / max(len(hits), 1)
