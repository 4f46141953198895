"""The loop of a phase that tunes the backbone alone before the run fits its head: ``--strategy contrastive``
(label pairs, ``tuning.contrastive``) and ``--strategy episodic`` (prototypical episodes, ``tuning.episodic``).

An explicit accelerate loop (DDP-ready): AdamW over every parameter of ``model``, linear warm-up over the first
10% of the steps then linear decay (sentence-transformers' trainer defaults, which both phases follow), the
loader's order a function of the epoch (accelerate's seedable sampler), one ``step_loss`` per batch.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

WARMUP_SHARE = 0.1


def tune_backbone(model: nn.Module, loader, step_loss: Callable[[nn.Module, object], torch.Tensor], *, accelerator,
                  learning_rate: float, epochs: int, total_steps: int, set_epoch=None, stop=None) -> dict:
    """Train ``model`` in place on ``loader``'s batches, ``step_loss(prepared_model, batch)`` each; returns the steps,
    epochs, the mean loss over the first and over the last tenth of the steps, the runtime and ``stopped`` (the
    signal that interrupted it, or 0).

    ``total_steps``: the schedule's length as one process counts it (accelerate's prepared scheduler steps once
    per process); ``set_epoch(epoch)``: called before each epoch (the pipeline's augmentation draws); ``stop``: a
    ``StopSignals`` whose ``requested(accelerator)`` ends the phase after the current step.
    """
    from transformers import get_linear_schedule_with_warmup

    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(WARMUP_SHARE * total_steps), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    started, losses, stopped, epoch = time.perf_counter(), [], 0, 0
    model.train()
    for epoch in range(epochs):
        if set_epoch is not None:
            set_epoch(epoch)
        if hasattr(loader, "set_epoch"):  # accelerate's seedable sampler: the order is a function of the epoch
            loader.set_epoch(epoch)
        for batch in loader:
            loss = step_loss(model, batch)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            stopped = stop.requested(accelerator) if stop is not None else 0
            if stopped:
                break
        if stopped:
            break
    model.eval()
    tenth = max(1, len(losses) // 10)
    return {"steps": len(losses), "epochs": epoch + 1, "loss_start": sum(losses[:tenth]) / tenth,
            "loss_end": sum(losses[-tenth:]) / tenth, "runtime": time.perf_counter() - started, "stopped": stopped}
