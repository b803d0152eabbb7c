"""DDP with 2 CPU processes (gloo) through Lightning: ranks see disjoint data, weights stay equal and move."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from dist_helpers import RECORD_SEEN, TINY_VLM_DATA

SCRIPT = textwrap.dedent('''
    import json, os, re, sys
    import lightning as L
    import torch
    from pathkit.config import Config
    from pathkit.models.vlm import VisionLanguageModel
    from pathkit.train.data import ConversationDataset, VLMDataModule
    from pathkit.train.recipes import Stage
    from pathkit.train.vlm_module import VLMModule

    out = sys.argv[1]
''') + TINY_VLM_DATA + textwrap.dedent('''
    stage = Stage(name="ddp", trainable={"connector": True, "llm": True}, lr=1e-2, warmup_ratio=0.0)
    module = VLMModule(model, stage, total_steps=2)

''') + RECORD_SEEN + textwrap.dedent('''

    def checksum(m):
        return float(sum(p.detach().double().sum() for p in m.parameters() if p.requires_grad))

    before = checksum(model)
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, callbacks=[Record()])
    trainer.fit(module, datamodule=dm)
    row = {"rank": trainer.global_rank, "world": trainer.world_size, "seen": Record.seen,
           "before": before, "after": checksum(model),
           "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None}
    with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as fh:
        json.dump(row, fh)
''')


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["backend"] == "gloo"
    seen0, seen1 = set(ranks[0]["seen"]), set(ranks[1]["seen"])
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 4  # 2 steps x batch 2 on each rank
    assert not seen0 & seen1, "both ranks trained on the same samples"
    # DDP averages gradients, so the replicas stay identical, and the step really moved them
    assert ranks[0]["after"] == pytest.approx(ranks[1]["after"], rel=1e-9)
    assert ranks[0]["before"] == pytest.approx(ranks[1]["before"], rel=1e-9)
    assert abs(ranks[0]["after"] - ranks[0]["before"]) > 1e-3
