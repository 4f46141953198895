"""``--model_ema``: an exponential moving average of the weights, kept beside the trained ones.

timm's ``ModelEmaV3`` holds the average (a copy of the bare ``TransferModel`` on the same device, in
eval mode, without gradients) and warms its decay up from 0 (``1 - (1 + step) ** -2/3``, capped at
``--model_ema_decay``), so a fine-tune of a few hundred steps still averages its recent weights
instead of staying at the pretrained ones. It is updated after every optimizer step, evaluated beside
the raw weights at every evaluation, and checkpointed with the run (``register_for_checkpointing``).
"""
from __future__ import annotations

import torch


class WeightAverage:
    """The EMA of ``module``'s weights (parameters and buffers, e.g. BatchNorm statistics)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        from timm.utils import ModelEmaV3

        self.decay = decay
        self.ema = ModelEmaV3(module, decay=decay, use_warmup=True)

    @property
    def module(self) -> torch.nn.Module:
        """The averaged model: evaluate it, or export it (``save_pretrained``) when it scores better."""
        return self.ema.module

    def update(self, module: torch.nn.Module, step: int) -> None:
        """After optimizer step ``step`` (1-based): fold the new weights into the average."""
        self.ema.update(module, step=step)

    # accelerate's save_state / load_state call these for registered objects
    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)
