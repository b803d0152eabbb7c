"""Shared pieces of the 2-process training scripts (tests/test_train_ddp.py, tests/test_train_fsdp.py).

Each is Python source text that a script includes at top level: the scripts run in subprocesses that Lightning
relaunches per rank, so they are files, not functions."""

from __future__ import annotations

import textwrap

# The tiny full-fine-tune VLM and 16 numbered yes/no records with a fixed random image each; defines cfg, model,
# records, load_image, ds (ConversationDataset) and dm (VLMDataModule, batch 2). Needs L, torch, Config,
# VisionLanguageModel, ConversationDataset and VLMDataModule imported.
TINY_VLM_DATA = textwrap.dedent('''
    cfg = Config.from_name("tiny").override({"llm.lora_r": 0})
    L.seed_everything(0, verbose=False)
    model = VisionLanguageModel.from_config(cfg)
    records = [{"id": str(i), "image": str(i), "conversations": [
        {"from": "human", "value": f"<image>\\nIs sample number {i} tumor?"},
        {"from": "gpt", "value": "yes" if i % 2 else "no"}]} for i in range(16)]

    def load_image(path):  # a fixed random image per record
        return torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(int(path)))

    ds = ConversationDataset(records, model.tokenizer, "vicuna_v1", 128, load_image=load_image)
    dm = VLMDataModule(ds, batch_size=2, pad_token_id=model.tokenizer.pad_token_id, seed=0)
''')

# A callback recording which sample numbers this rank trained on (Record.seen). Needs L and re imported.
RECORD_SEEN = textwrap.dedent('''
    class Record(L.Callback):
        seen = []
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            for row in batch["input_ids"]:
                text = pl_module.model.tokenizer.decode(row, skip_special_tokens=True)
                self.seen.append(int(re.search(r"number (\\d+)", text).group(1)))
''')
