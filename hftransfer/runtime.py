"""The processes a run spans: the Accelerator, CPU threads, and keeping DDP ranks in step.

accelerate handles devices, mixed precision and process groups; what it leaves to us is choosing
thread counts on CPU (``accelerate launch`` pins one thread per process), re-wrapping DDP when the
trainable set changes mid-run, and checking that every rank still holds the same weights.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs

from .loaders import available_cores


def create_accelerator(cfg) -> Accelerator:
    """An Accelerator for ``cfg`` (a ``TrainConfig``): accumulation, precision, compile, seedable sampling."""
    kwargs = {}
    if cfg.mixed_precision:
        kwargs["mixed_precision"] = cfg.mixed_precision
    elif "ACCELERATE_MIXED_PRECISION" not in os.environ and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        kwargs["mixed_precision"] = "bf16"  # free speed on GPUs with bf16; on CPUs without it bf16 is slower
    if cfg.torch_compile:
        kwargs["dynamo_backend"] = "inductor"
    return Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        # seedable sampler + set_epoch: a resumed run sees the same shuffle order as an uninterrupted one
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.ddp_timeout))],
        **kwargs,
    )


def configure_threads(num_threads: int | None, accelerator: Accelerator) -> int:
    """On CPU use all cores: ``accelerate launch`` sets OMP_NUM_THREADS=1, halving speed on 2 cores."""
    if accelerator.device.type != "cpu":
        return torch.get_num_threads()
    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    threads = num_threads or max(1, available_cores() // max(1, local_procs))
    torch.set_num_threads(threads)
    return threads


def rewrap_ddp(accelerator: Accelerator, model):
    """Rebuild the DDP wrapper after the trainable set changed.

    DDP registers gradient hooks only for parameters that required grad when it was built: a group
    unfrozen later would train on each rank's own gradient, silently unsynchronized, and a group
    frozen later makes DDP wait for gradients that never come. Accelerate has no public re-wrap; its
    checkpoint list may hold the wrapper or the bare module, so a wrapper there is swapped too.
    """
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model
    device_ids = [accelerator.device.index] if accelerator.device.type == "cuda" else None
    wrapped = torch.nn.parallel.DistributedDataParallel(model.module, device_ids=device_ids)
    accelerator._models = [wrapped if m is model else m for m in accelerator._models]
    return wrapped


def check_ranks_in_sync(accelerator: Accelerator, module: torch.nn.Module) -> None:
    """Fail loudly if processes hold different weights (e.g. a group trained without gradient sync)."""
    if accelerator.num_processes == 1:
        return
    sums = torch.stack([p.detach().double().sum() for p in module.parameters()]).to(accelerator.device)
    gathered = accelerator.gather(sums[None])
    if not torch.allclose(gathered, gathered[:1].expand_as(gathered), rtol=1e-6, atol=1e-6):
        raise RuntimeError("model weights differ between processes: gradient synchronization is broken")
