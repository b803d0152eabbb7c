"""FSDP with 2 CPU processes (gloo) through Lightning on pathkit's VLMModule, checked against a DDP run.

Lightning 2.6 refuses ``Trainer(strategy="fsdp", accelerator="cpu")`` (its accelerator connector demands CUDA for
any ``FSDPStrategy`` whose type is exactly ``FSDPStrategy``), and ``FSDPStrategy._setup_model`` passes
``device_id=root_device.index``, which is ``None`` for a CPU device, so torch's FSDP looks for an accelerator and
raises "FSDP needs a non-CPU accelerator device". torch's FSDP itself runs on CPU with gloo when given
``device_id=torch.device("cpu")``, so pathkit's ``make_strategy("fsdp", "cpu")`` returns a subclass of Lightning's
``FSDPStrategy`` (``pathkit.train.strategies.CPUFSDPStrategy``) that passes it; everything else (full sharding, ``use_orig_params``, the optimiser set up on the sharded model, the
full state dict gathered for saving) is Lightning's FSDP path unchanged.

Two more CPU/FSDP facts the script works around (both in Lightning 2.6.6 / torch 2.13): Lightning's full state
dict gather (``lightning_module_state_dict``, ``save_checkpoint`` with ``state_dict_type="full"``) uses
``offload_to_cpu=True``, and torch's ``FlatParamHandle.to_cpu()`` on a flat parameter already on CPU moves nothing
and then frees the unsharded storage the parameters still view: a segfault, so the script gathers with
``offload_to_cpu=False``. And ``FSDPPrecision`` refuses norm clipping (``gradient_clip_val`` with the default
``"norm"`` raises MisconfigurationException, on GPU as well), so ``VLMModule`` clips through
``FullyShardedDataParallel.clip_grad_norm_`` when its model is sharded.

One script runs both strategies with the same model, data, seed and norm clipping: ranks see disjoint data,
parameters are really sharded (each rank holds half of the flat parameter), clipping sees the global norm, the
per-rank losses of every step equal the DDP run's, and the state dict gathered after FSDP training loads into a
fresh ``VisionLanguageModel`` whose logits equal the sharded model's and the DDP-trained model's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from dist_helpers import RECORD_SEEN, TINY_VLM_DATA

SCRIPT = textwrap.dedent('''
    import json, os, re, sys
    import lightning as L
    import torch
    from pathkit.config import Config
    from pathkit.models.vlm import VisionLanguageModel
    from pathkit.train.data import ConversationDataset, VLMDataModule, pad_collate
    from pathkit.train.recipes import Stage
    from pathkit.train.strategies import make_strategy
    from pathkit.train.vlm_module import VLMModule, count_trainable

    strategy_name, out, CLIP = sys.argv[1], sys.argv[2], float(sys.argv[3])
    STEPS = 3


''') + TINY_VLM_DATA + textwrap.dedent('''
    stage = Stage(name=strategy_name, trainable={"connector": True, "llm": True}, lr=1e-2, warmup_ratio=0.0)


    module = VLMModule(model, stage, total_steps=STEPS)  # clips by the global norm under FSDP too
    trainable, total = count_trainable(model)


''') + RECORD_SEEN + textwrap.dedent('''


    strategy = make_strategy(strategy_name, "cpu")  # fsdp on CPU: pathkit's CPUFSDPStrategy
    trainer = L.Trainer(strategy=strategy, accelerator="cpu", devices=2, max_steps=STEPS, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, callbacks=[Record()], gradient_clip_val=CLIP or None)
    trainer.fit(module, datamodule=dm)
    rank = trainer.global_rank
    wrapped = trainer.strategy.model
    row = {"rank": rank, "world": trainer.world_size, "strategy": type(trainer.strategy).__name__,
           "backend": torch.distributed.get_backend(), "seen": Record.seen,
           "losses": [r["loss"] for r in module.step_losses], "trainable": trainable, "total": total,
           "clip_norms": module.clip_norms}

    # one probe input: the same on every rank
    probe = pad_collate(model.tokenizer.pad_token_id)([ds[3], ds[10]])
    wrapped.eval()
    with torch.no_grad():
        row["probe_logits"] = wrapped(probe).logits.double().sum(-1).flatten().tolist()  # sharded forward, all ranks

    if strategy_name == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        units = FSDP.fsdp_modules(wrapped)
        row["fsdp_units"] = len(units)
        row["flat_local_numel"] = sum(u._flat_param.numel() for u in units if u._flat_param is not None)
        row["flat_full_numel"] = sum(int(u._flat_param._unpadded_unsharded_size.numel()) for u in units
                                     if u._flat_param is not None)
        # with use_orig_params the original parameters are views into this rank's shard
        row["trainable_local_numel"] = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    if strategy_name == "fsdp":
        # the full state dict gathered on rank 0. Not trainer.strategy.lightning_module_state_dict(): Lightning
        # gathers with offload_to_cpu=True, and torch's FlatParamHandle.to_cpu() on a CPU flat parameter moves
        # nothing and then frees the unsharded storage the parameters still point to: segfault (torch 2.13)
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType

        with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT,
                                  FullStateDictConfig(offload_to_cpu=False, rank0_only=True)):
            state = wrapped.state_dict()
    else:
        state = trainer.strategy.lightning_module_state_dict()
    if rank == 0:
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        torch.save(state, os.path.join(out, f"{strategy_name}_state.pt"))
        torch.save(probe, os.path.join(out, "probe.pt"))
    with open(os.path.join(out, f"{strategy_name}_rank{rank}.json"), "w") as fh:
        json.dump(row, fh)
''')


def _run(tmp_path, strategy: str, clip: float = 0.0) -> list[dict]:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), strategy, str(tmp_path), str(clip)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp_path / f"{strategy}_rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_fsdp_two_cpu_processes_shards_and_matches_ddp(tmp_path):
    # both with the runner's default norm clipping (Stage.grad_clip = 1.0): DDP through Lightning's own clipping,
    # FSDP through FullyShardedDataParallel.clip_grad_norm_ (the global norm over the shards)
    fsdp = _run(tmp_path, "fsdp", clip=1.0)
    ddp = _run(tmp_path, "ddp", clip=1.0)
    assert [r["world"] for r in fsdp] == [2, 2] and fsdp[0]["backend"] == "gloo"
    assert fsdp[0]["strategy"] == "CPUFSDPStrategy" and ddp[0]["strategy"] == "DDPStrategy"

    # ranks see disjoint data, and the same data as under DDP
    for runs in (fsdp, ddp):
        assert len(runs[0]["seen"]) == len(runs[1]["seen"]) == 6  # 3 steps x batch 2 on each rank
        assert not set(runs[0]["seen"]) & set(runs[1]["seen"]), "both ranks trained on the same samples"
    assert [r["seen"] for r in fsdp] == [r["seen"] for r in ddp]

    # really sharded: the FSDP unit's flat parameter (every parameter, frozen vision tower included) is split in
    # two halves, one per rank, and together the ranks hold each trainable number once (DDP: a full replica each).
    # The flat order is llm, connector, then the frozen vision tower, so the trainable split is uneven.
    trainable, total = fsdp[0]["trainable"], fsdp[0]["total"]
    assert 0 < trainable < total
    for r in fsdp:
        assert r["fsdp_units"] >= 1
        assert r["flat_full_numel"] == total
        assert abs(r["flat_local_numel"] - total / 2) <= 1  # padded to an even split
    local = [r["trainable_local_numel"] for r in fsdp]
    assert sum(local) == trainable
    assert all(0 < n <= total / 2 + 1 for n in local) and max(local) < 0.7 * trainable, (local, trainable)

    # same data, same seed: every step's per-rank loss equals the DDP run's (gradients averaged the same way)
    for f, d in zip(fsdp, ddp):
        assert len(f["losses"]) == len(d["losses"]) == 3
        assert f["losses"] == pytest.approx(d["losses"], rel=1e-4, abs=1e-5)
    assert fsdp[0]["losses"][2] != pytest.approx(fsdp[0]["losses"][0], rel=1e-3)  # training moved the loss
    # clipping was active (global norm above 1.0 at every step), and both ranks computed the same global norm
    assert len(fsdp[0]["clip_norms"]) == 3 and min(fsdp[0]["clip_norms"]) > 1.0, fsdp[0]["clip_norms"]
    assert fsdp[0]["clip_norms"] == pytest.approx(fsdp[1]["clip_norms"], rel=1e-6)
    # the sharded forward agrees across ranks and with DDP
    assert fsdp[0]["probe_logits"] == pytest.approx(fsdp[1]["probe_logits"], rel=1e-6)
    assert fsdp[0]["probe_logits"] == pytest.approx(ddp[0]["probe_logits"], rel=1e-4)

    # the state dict gathered after FSDP training loads into a fresh model: same logits as FSDP and DDP models
    from pathkit.config import Config
    from pathkit.models.vlm import VisionLanguageModel

    torch.manual_seed(123)  # a different initialisation than the trained runs
    fresh = VisionLanguageModel.from_config(Config.from_name("tiny").override({"llm.lora_r": 0})).eval()
    probe = torch.load(tmp_path / "probe.pt", weights_only=True)
    with torch.no_grad():
        before = fresh(**probe).logits
        fresh.load_state_dict(torch.load(tmp_path / "fsdp_state.pt", weights_only=True), strict=True)
        logits = fresh(**probe).logits
        ddp_model = VisionLanguageModel.from_config(Config.from_name("tiny").override({"llm.lora_r": 0})).eval()
        ddp_model.load_state_dict(torch.load(tmp_path / "ddp_state.pt", weights_only=True), strict=True)
        ddp_logits = ddp_model(**probe).logits
    assert not torch.allclose(before, logits)
    assert logits.double().sum(-1).flatten().tolist() == pytest.approx(fsdp[0]["probe_logits"], rel=1e-5)
    torch.testing.assert_close(logits, ddp_logits, rtol=1e-4, atol=1e-4)


def _train_cli(tmp_path, strategy: str):
    out = tmp_path / strategy
    cmd = [sys.executable, "-m", "pathkit.cli", "train", "quilt_llava", "--preset", "tiny", "--out", str(out),
           "--data", str(tmp_path / "data"), "--no-progress", "--set", "*.max_steps=3", "--set", "*.batch_size=4",
           "--set", f"train.strategy={strategy}", "--set", "train.devices=2", "--set", "train.accelerator=cpu",
           "--set", "synthetic.tiles_per_class=6"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_pathkit_train_with_fsdp_matches_ddp_and_saves_whole_models(tmp_path):
    """``pathkit train --set train.strategy=fsdp`` (2 CPU processes): both stages train with the DDP run's
    per-step losses, each stage saves a whole (gathered) model the next stage and the evaluation load, and the
    final models of the two runs give the same logits."""
    from pathkit.io import read_json, read_jsonl
    from pathkit.models.vlm import VisionLanguageModel

    fsdp, ddp = _train_cli(tmp_path, "fsdp"), _train_cli(tmp_path, "ddp")
    for stage in ("alignment", "instruct"):
        f = [r["loss"] for r in read_jsonl(fsdp / stage / "losses.jsonl")]
        d = [r["loss"] for r in read_jsonl(ddp / stage / "losses.jsonl")]
        assert len(f) == len(d) == 3
        assert f == pytest.approx(d, rel=1e-4, abs=1e-5), stage
    assert read_json(fsdp / "summary.json")["n_closed"] > 0  # evaluated from the saved, unsharded model
    models = [VisionLanguageModel.from_pretrained(run / "instruct" / "model").eval() for run in (fsdp, ddp)]
    ids = models[0].tokenizer("<image>\nIs this tumor?", return_tensors="pt")["input_ids"]
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = [m(input_ids=ids, attention_mask=torch.ones_like(ids), images=image).logits for m in models]
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)
