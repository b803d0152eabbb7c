"""Lightning strategies as pathkit uses them: ``cfg.train.strategy`` names one, :func:`make_strategy` builds it.

FSDP needs two things Lightning 2.6 does not do by itself (both measured with torch 2.13):

* on CPU, Lightning refuses ``strategy="fsdp"`` (its connector demands CUDA for any ``FSDPStrategy`` of exactly that
  type) and passes ``device_id=None`` for a CPU device, which torch's FSDP rejects ("FSDP needs a non-CPU
  accelerator device"). :class:`CPUFSDPStrategy` passes ``device_id=cpu``; with gloo it shards and trains.
* norm clipping: Lightning's FSDP precision plugin refuses ``gradient_clip_algorithm="norm"``, and a plain
  ``clip_grad_norm_`` would see one rank's shard. :class:`pathkit.train.vlm_module.VLMModule` clips through
  ``FullyShardedDataParallel.clip_grad_norm_`` (the global norm) when the model is sharded.

A full state dict after FSDP training: :func:`full_state_dict` (gathers with ``offload_to_cpu`` only on CUDA: on
CPU, torch's offload frees the gathered storage the parameters still view, a segfault).
"""

from __future__ import annotations

from typing import Any

# Lazy imports: torch, lightning (the model stack, seconds to import). They load inside the functions that
# need them, not when this module is imported.


def _fsdp_strategy_class():
    import torch
    from lightning.pytorch.strategies import FSDPStrategy

    class CPUFSDPStrategy(FSDPStrategy):
        """Lightning's FSDPStrategy that also runs on CPU processes (gloo): ``device_id`` is the CPU device."""

        def _setup_model(self, model):
            from torch.distributed.fsdp import FullyShardedDataParallel

            if self.root_device.type != "cpu":
                return super()._setup_model(model)
            return FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                            mixed_precision=self.mixed_precision_config,
                                            sharding_strategy=self.sharding_strategy,
                                            device_id=torch.device("cpu"), **self.kwargs)

    return CPUFSDPStrategy


def is_fsdp(strategy: Any) -> bool:
    return (isinstance(strategy, str) and strategy.startswith("fsdp")) or "FSDP" in type(strategy).__name__


def make_strategy(name: str, accelerator: str = "auto"):
    """The Lightning strategy for ``cfg.train.strategy``: names pass through, ``fsdp`` on CPU becomes
    :class:`CPUFSDPStrategy` (on CUDA Lightning's own)."""
    if name != "fsdp":
        return name
    import torch

    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        return _fsdp_strategy_class()(state_dict_type="sharded")  # a full gather on CPU segfaults (module doc)
    return name


def full_state_dict(wrapped) -> dict[str, Any]:
    """The unsharded state dict of an FSDP-wrapped module on rank 0 (an empty dict on other ranks)."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    on_gpu = next(wrapped.parameters()).device.type == "cuda"
    with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT,
                              FullStateDictConfig(offload_to_cpu=on_gpu, rank0_only=True)):
        return wrapped.state_dict()
