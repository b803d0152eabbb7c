"""Build the pointer detector's weights from procedural renders only: ``python -m pathkit.video.pointer_train``.

CenterNet-style training: a Gaussian around the hotspot's cell as the heatmap target (penalty-reduced focal
loss, so cells next to the hotspot are not punished as hard as far ones) and an L1 loss on the offset inside
the hotspot's cell. Seeded: the same seed and step count rebuild the same weights (up to float rounding
of the CPU kernels). About 30 minutes on one CPU core (10000 steps at the default widths). ``--init``
goes on from existing weights (fine-tuning on renders of your own).

The shipped weights (detector v5) are detector v4's (the file at git commit 02ea9d0, 10000 steps on that
commit's renders) trained 6000 more steps on these renders: ``--init v4.safetensors --steps 6000 --lr 1e-3
--seed 1`` (~17 minutes). From scratch on these renders (14000 steps, or 12000 at batch 64) the detector found
as many pointers on the seen screencast splits but took a webcam face or other look-alikes far more often
(3-23% of pointer-free frames against 0-1%): the long first stage on plainer pointers is kept.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from pathkit.io import atomic_path
from pathkit.video.pointer_net import STRIDE, WEIGHTS, WIDTHS, PointerNet, load_pointer_net
from pathkit.video.pointer_renders import RenderPools, training_sample

# Lazy imports: safetensors (the model stack, seconds to import). They load inside the functions that need
# them, not when this module is imported.


def make_batch(rng: np.random.Generator, pools: RenderPools, n: int, size: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (n, 3, s, s), heatmap targets (n, s/4, s/4), offsets (n, 2), hotspot cell index (n, 2) or -1."""
    g = size // STRIDE
    imgs = np.zeros((n, size, size, 3), np.uint8)
    target = np.zeros((n, g, g), np.float32)
    offset = np.zeros((n, 2), np.float32)
    cell = np.full((n, 2), -1, np.int64)
    yy, xx = np.mgrid[0:g, 0:g].astype(np.float32)
    for i in range(n):
        imgs[i], hot = training_sample(rng, pools, size)
        if hot is None:
            continue
        fx, fy = (hot[0] + 0.5) / STRIDE, (hot[1] + 0.5) / STRIDE
        cx, cy = int(np.floor(fx)), int(np.floor(fy))
        if not (0 <= cx < g and 0 <= cy < g):
            continue
        target[i] = np.exp(-((xx + 0.5 - fx) ** 2 + (yy + 0.5 - fy) ** 2) / (2 * 0.7**2))
        target[i, cy, cx] = 1.0
        offset[i] = fx - cx, fy - cy
        cell[i] = cx, cy
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5)
    return x, torch.from_numpy(target), torch.from_numpy(offset), torch.from_numpy(cell)


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1.0)
    pos_loss = -(torch.log(p) * (1 - p) ** 2)[pos].sum()
    neg_loss = -(torch.log(1 - p) * p**2 * (1 - target) ** 4)[~pos].sum()
    return (pos_loss + neg_loss) / max(1, int(pos.sum()))


def train(steps: int = 10000, batch: int = 48, size: int = 96, seed: int = 0, lr: float = 2e-3,
          log_every: int = 100, widths: tuple[int, ...] = WIDTHS, init: PointerNet | None = None) -> PointerNet:
    """Train a detector from scratch, or go on from ``init`` (its widths, its weights)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    pools = RenderPools.build(rng, size=size)
    print(f"render pools: {len(pools.sprites)} pointers, {len(pools.backgrounds)} backgrounds, {time.time() - t0:.0f}s",
          flush=True)
    net = PointerNet(widths) if init is None else init.train().float()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    for step in range(1, steps + 1):
        x, target, offset, cell = make_batch(rng, pools, batch, size)
        out = net(x)
        loss_hm = focal_loss(out[:, 0], target)
        has = cell[:, 0] >= 0
        idx = torch.nonzero(has)[:, 0]
        pred_off = out[idx, 1:, cell[idx, 1], cell[idx, 0]]
        loss_off = (pred_off - offset[idx]).abs().mean() if len(idx) else out.sum() * 0
        loss = loss_hm + loss_off
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            print(f"step {step}/{steps} heatmap {loss_hm.item():.3f} offset {loss_off.item():.3f} "
                  f"{time.time() - t0:.0f}s", flush=True)
    return net.eval()


def save(net: PointerNet, path: str | Path = WEIGHTS) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as part:
        save_file({k: v.half().contiguous() for k, v in net.state_dict().items()}, str(part),
                  metadata={"widths": ",".join(str(w) for w in net.widths)})
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--widths", default=",".join(map(str, WIDTHS)), help="channels: fine, fine, stride-4, coarse, head")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", help="go on from these weights (a safetensors file) instead of starting from scratch")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--out", default=str(WEIGHTS))
    args = ap.parse_args(argv)
    torch.set_num_threads(int(__import__("os").environ.get("PATHKIT_TORCH_THREADS", "1")))
    init = load_pointer_net(args.init) if args.init else None
    net = train(args.steps, args.batch, seed=args.seed, lr=args.lr,
                widths=tuple(int(w) for w in args.widths.split(",")), init=init)
    print(save(net, args.out))


if __name__ == "__main__":
    main()
