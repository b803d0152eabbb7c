"""Checkpoint selection as a user does it: a validation split of the training images, the best epoch kept.

- ``split_validation`` holds out whole images (no question about a validation image ever trains), deterministic.
- ``closed_answer_hits`` counts exactly predicted short answers (yes/no, a letter), teacher-forced.
- ``BestWeights`` under a real Lightning ``Trainer`` ends with the weights of the best validated epoch (highest
  closed accuracy, ties by lower loss), not the last epoch's, and resumes with its history from ``last.ckpt``.
"""

from __future__ import annotations

import lightning as L
import torch

from pathkit.train.checkpointing import BestWeights
from pathkit.train.data import split_validation
from pathkit.train.vlm_module import closed_answer_hits


def _records() -> list[dict]:
    recs = []
    for i in range(20):
        for k in range(3):  # three records per image, as a caption + Q/A set
            recs.append({"id": f"img{i}_{k}", "image": f"images/{i}.png", "conversations": []})
    recs += [{"id": f"text{j}", "conversations": []} for j in range(5)]  # text-only records
    return recs


def test_split_validation_holds_out_whole_images_deterministically():
    recs = _records()
    train, val = split_validation(recs, 0.2, seed=3)
    assert len(train) + len(val) == len(recs)
    train_images = {r.get("image") or r["id"] for r in train}
    val_images = {r.get("image") or r["id"] for r in val}
    assert not train_images & val_images
    assert len(val_images) == round(25 * 0.2)  # 20 images + 5 text-only records = 25 keys
    assert split_validation(recs, 0.2, seed=3) == (train, val)
    assert split_validation(recs, 0.2, seed=4)[1] != val
    assert [r["id"] for r in train] == [r["id"] for r in recs if r in train]  # order kept
    assert split_validation(recs, 0.0, seed=3) == (recs, [])


def test_closed_answer_hits_counts_short_answers_exactly():
    vocab = 10
    # row: prompt, then a 2-token answer (yes + eos) predicted right, prompt, a 5-token answer (open, not counted),
    # prompt, a 2-token answer predicted wrong in its second token
    labels = torch.tensor([[-100, -100, 3, 9, -100, 4, 4, 4, 4, 9, -100, 5, 9]])
    targets = labels[0, 1:].clone()
    pred_next = torch.where(targets == -100, torch.zeros_like(targets), targets)
    pred_next[-1] = 2  # the last answer's end token is predicted wrong
    logits = torch.zeros(1, labels.shape[1], vocab)
    logits[0, torch.arange(labels.shape[1] - 1), pred_next] = 5.0
    assert closed_answer_hits(logits, labels) == (1, 2)
    assert closed_answer_hits(logits, labels, max_tokens=5) == (2, 3)


class _Toy(L.LightningModule):
    """One weight that moves every step; validation reports a fixed (accuracy, loss) per epoch."""

    def __init__(self, schedule: list[tuple[float, float]]):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.schedule = schedule

    def training_step(self, batch, batch_idx):
        return ((self.w - 100.0) ** 2).sum()

    def validation_step(self, batch, batch_idx):
        acc, loss = self.schedule[self.current_epoch]
        self.log("val/closed_accuracy", acc, on_epoch=True, batch_size=1)
        self.log("val/loss", loss, on_epoch=True, batch_size=1)

    def on_validation_epoch_end(self):
        self.seen = getattr(self, "seen", []) + [float(self.w.detach())]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=1)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(1, 1), batch_size=1)


def _fit(module, callbacks, tmp_path, epochs, ckpt=None):
    trainer = L.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        accelerator="cpu", default_root_dir=str(tmp_path))
    trainer.fit(module, ckpt_path=ckpt)
    return trainer


def test_best_weights_keeps_the_best_validated_epoch_and_survives_a_resume(tmp_path):
    # accuracy peaks at epoch 2 and 4 (tie), the lower loss at epoch 4 wins; the last epoch (5) is worse
    schedule = [(0.5, 1.0), (0.6, 0.9), (0.8, 0.8), (0.7, 0.7), (0.8, 0.6), (0.6, 0.5)]
    module, best = _Toy(schedule), BestWeights()
    _fit(module, [best], tmp_path, epochs=6)
    assert best.best_epoch == 4
    assert float(module.w.detach()) == module.seen[4] != module.seen[5]
    assert [h["epoch"] for h in best.history] == list(range(6))

    # interrupted after 3 epochs, resumed from the checkpoint: same selection, same weights
    first, best_a = _Toy(schedule), BestWeights()
    trainer = _fit(first, [best_a], tmp_path / "a", epochs=3)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    resumed, best_b = _Toy(schedule), BestWeights()
    _fit(resumed, [best_b], tmp_path / "b", epochs=6, ckpt=str(tmp_path / "last.ckpt"))
    assert best_b.best_epoch == 4 and len(best_b.history) == 6
    assert float(resumed.w.detach()) == float(module.w.detach())
