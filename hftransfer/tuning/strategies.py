"""Fine-tune strategies: which layer groups train when, and at what learning rate.

A strategy is a pure function of the epoch: ``trainable_groups(epoch)`` (how many backbone groups,
counted from the top, are trainable; the head always is) and ``lr_scales(epoch)`` (multipliers of
the head and backbone learning rates). Because nothing else is stored, resuming from a checkpoint
restores exactly the frozen set and learning rates of an uninterrupted run.

Names, the same for image and text backbones:

* ``full``          everything trains from the first step.
* ``linear_probe``  the backbone stays frozen; only the head trains.
* ``partial``       the top ``unfreeze_top_k`` backbone groups and the head train.
* ``gradual``       head only at first, then one more backbone group every ``unfreeze_every`` epochs
                    (ULMFiT-style gradual unfreezing, from the top down).
* ``lp_ft``         ``lp_epochs`` of linear probing, then everything fine-tunes from that probe
                    head with every group at the (lower) backbone learning rate (Kumar et al. 2022).
* ``lora``          LoRA adapters (``lora.add_lora``, peft) train inside the frozen backbone, the head
                    trains fully; the base weights never change.
* ``lp_lora``       ``lp_epochs`` of linear probing, then LoRA from that probe head, the head at the
                    backbone learning rate (LP-FT's recipe with LoRA as the fine-tuning phase).
* ``contrastive``   SetFit's recipe (Tunstall et al. 2022): a phase before the run tunes the backbone on label
                    pairs (``tuning.contrastive``), then the backbone stays frozen while the head trains.
* ``episodic``      the same with prototypical episodes (Snell et al. 2017; ``tuning.episodic``) tuning the
                    backbone: few-shot images' counterpart of SetFit.

For the LoRA strategies (``adapter_only``) "group i trains" means "the adapters inside group i
train", so layer-wise LR decay, phases and the frozen-feature cache of ``lp_lora``'s probe apply as
for the others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ..errors import HFTransferError
from ..models.lora import is_lora_parameter
from ..models.norms import NORM_TYPES

# what each strategy does, in the words logs, model cards and the README use
DESCRIPTIONS = {
    "full": "every layer trains from the first step",
    "linear_probe": "the backbone stays frozen; only the head trains",
    "partial": "only the top {unfreeze_top_k} backbone group(s) and the head train",
    "gradual": "the head trains first, then one more backbone group unfreezes every {unfreeze_every} epoch(s), "
               "from the top down (ULMFiT-style gradual unfreezing)",
    "lp_ft": "{lp_epochs} epoch(s) of linear probing, then the whole model fine-tunes from that probe head with the "
             "head at the backbone learning rate (LP-FT, Kumar et al. 2022)",
    "lora": "low-rank adapters (LoRA, rank {lora_r}, alpha {lora_alpha}) train inside the frozen backbone and the "
            "head trains fully; the export merges them into the base weights",
    "lp_lora": "{lp_epochs} epoch(s) of linear probing, then low-rank adapters (LoRA, rank {lora_r}, alpha "
               "{lora_alpha}) train inside the frozen backbone from that probe head, with the head at the backbone "
               "learning rate",
    "contrastive": "the backbone first learns from label pairs ({contrastive_iterations} positive and as many "
                   "negative pairs per example, sentence-transformers' CosineSimilarityLoss; SetFit's recipe), then "
                   "stays frozen while the head trains",
    "episodic": "the backbone first learns from {episodes} prototypical episodes (queries classified by their cosine "
                "to the class means of a support set; Prototypical Networks), then stays frozen while the head trains",
}
BACKBONE_PHASE_STRATEGIES = ("contrastive", "episodic")  # a phase before the run tunes the backbone; the run doesn't
STRATEGIES = tuple(DESCRIPTIONS)
LORA_STRATEGIES = ("lora", "lp_lora")  # the strategies that inject LoRA adapters and train only them in the backbone


def describe_strategy(name: str, **settings) -> str:
    """``DESCRIPTIONS[name]`` with its settings filled in; a setting not given reads as its flag (README, --help)."""
    fields = ("unfreeze_top_k", "unfreeze_every", "lp_epochs", "lora_r", "lora_alpha", "contrastive_iterations",
              "episodes")
    values = {f: settings.get(f, f"`--{f}`") for f in fields}
    return DESCRIPTIONS[name].format(**{f: f"{v:g}" if isinstance(v, float) else v for f, v in values.items()})


@dataclass
class Strategy:
    name: str
    num_groups: int
    unfreeze_top_k: int = 2
    unfreeze_every: int = 1
    lp_epochs: int = 1
    contrastive_iterations: int = 20
    episodes: int = 100

    def __post_init__(self):
        if self.name not in STRATEGIES:
            raise HFTransferError(f"unknown strategy '{self.name}': use one of {', '.join(STRATEGIES)}")
        if self.unfreeze_every < 1 or self.lp_epochs < 0 or self.unfreeze_top_k < 0:
            raise HFTransferError("unfreeze_every must be >= 1, lp_epochs and unfreeze_top_k >= 0")

    def description(self, lora_r: int = 8, lora_alpha: float = 16.0) -> str:
        """One sentence on what this strategy does with its settings (LoRA strategies name the adapters' rank
        and alpha, which the model's ``LoraSpec`` holds)."""
        return describe_strategy(self.name, unfreeze_top_k=self.unfreeze_top_k, unfreeze_every=self.unfreeze_every,
                                 lp_epochs=self.lp_epochs, lora_r=lora_r, lora_alpha=float(lora_alpha),
                                 contrastive_iterations=self.contrastive_iterations, episodes=self.episodes)

    @property
    def adapter_only(self) -> bool:
        """Whether only LoRA adapters train inside the backbone (the base weights stay frozen throughout)."""
        return self.name in LORA_STRATEGIES

    def trainable_groups(self, epoch: int) -> int:
        """Number of backbone layer groups, from the top, that train during ``epoch`` (0-based)."""
        n = self.num_groups
        if self.name in ("full", "lora"):
            return n
        if self.name in ("linear_probe", *BACKBONE_PHASE_STRATEGIES):  # phases: tuned before the run
            return 0
        if self.name == "partial":
            return min(n, self.unfreeze_top_k)
        if self.name == "gradual":
            return min(n, epoch // self.unfreeze_every)
        return 0 if epoch < self.lp_epochs else n  # lp_ft, lp_lora

    def uses_backbone_lr_for_head(self, epoch: int) -> bool:
        """LP-FT's (and LP-LoRA's) second phase fine-tunes the probe head gently, at the backbone's learning rate."""
        return self.name in ("lp_ft", "lp_lora") and epoch >= self.lp_epochs

    def phase_starts(self) -> list[int]:
        """Epochs where the LR schedule restarts its warmup: LP-FT's fine-tuning phase is its own run."""
        return [0, self.lp_epochs] if self.name in ("lp_ft", "lp_lora") and self.lp_epochs > 0 else [0]

    def describe(self, num_epochs: int, group_names: list[str]) -> list[dict]:
        """Phases as ``{epochs, trainable}`` records for logs and model cards."""
        phases, start = [], 0
        for epoch in range(1, num_epochs + 1):
            if epoch == num_epochs or self.trainable_groups(epoch) != self.trainable_groups(start) or epoch in self.phase_starts():
                k = self.trainable_groups(start)
                phases.append({"epochs": [start, epoch - 1], "trainable_backbone_groups": group_names[len(group_names) - k:],
                               "frozen_backbone_groups": group_names[: len(group_names) - k]})
                start = epoch
        return phases


def apply_trainable(model: nn.Module, num_trainable: int, train_norm: bool = False, adapter_only: bool = False) -> bool:
    """Set ``requires_grad`` for the top ``num_trainable`` backbone groups and the head.

    ``train_norm`` keeps normalization layers trainable inside frozen groups (fastai's default);
    then BatchNorm also keeps updating its statistics. ``adapter_only`` (the LoRA strategies): inside
    the trainable groups only LoRA adapter weights train. Returns whether anything changed.
    """
    groups = model.layer_groups()
    backbone, head = groups[:-1], groups[-1]
    if adapter_only and not any(is_lora_parameter(p) for g in backbone for p in g.params):
        raise HFTransferError("the LoRA strategies need LoRA adapters in the backbone: call lora.add_lora(model) first "
                              "(the recipes do this for --strategy lora / lp_lora)")
    first_trainable = len(backbone) - num_trainable
    wanted = {p: i >= first_trainable and (not adapter_only or is_lora_parameter(p))
              for i, g in enumerate(backbone) for p in g.params}
    wanted.update({p: True for p in head.params})
    if train_norm:
        for name, module in model.named_modules():
            if isinstance(module, NORM_TYPES):
                wanted.update({f"{name}.{p}": True for p, _ in module.named_parameters(recurse=False)})
    changed = False
    for name, param in model.named_parameters():
        flag = wanted.get(name, True)
        changed |= param.requires_grad != flag
        param.requires_grad_(flag)
    return changed


def _no_decay(name: str, param) -> bool:
    return param.ndim <= 1 or name.endswith(".bias")


def param_groups(model: nn.Module, lr: float, head_lr: float, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Optimizer groups for every parameter, trainable now or later.

    One group per (layer group, decay/no-decay): biases and norm weights get no weight decay;
    backbone group ``i`` of ``n`` gets ``lr * layer_decay ** (n - 1 - i)`` (layer-wise LR decay,
    1.0 = off); the head gets ``head_lr``. Frozen parameters have no gradient, so the optimizer
    skips them until they are unfrozen; building all groups once keeps optimizer state and
    checkpoints stable across unfreezing.
    """
    named = dict(model.named_parameters())
    groups = model.layer_groups()
    n = len(groups) - 1
    out = []
    for i, group in enumerate(groups):
        is_head = i == n
        base = head_lr if is_head else lr * layer_decay ** (n - 1 - i)
        for no_decay in (False, True):
            params = [named[p] for p in group.params if _no_decay(p, named[p]) == no_decay]
            if params:
                out.append({"params": params, "lr": base, "base_lr": base, "weight_decay": 0.0 if no_decay else weight_decay,
                            "name": f"{group.name}{'.no_decay' if no_decay else ''}", "is_head": is_head, "layer": i})
    return out


class TransferScheduler:
    """Linear warmup then cosine decay, restarting at each strategy phase; per-group base LRs.

    ``lr = base_lr * factor(step)``; in LP-FT's fine-tuning phase the head's base LR is replaced
    by the backbone's. State is just the step count, so ``save_state``/``load_state`` resume exactly.
    ``total_steps`` (``--max_steps``) ends the schedule before the last epoch does; ``warmup_steps`` > 0
    replaces ``warmup_ratio`` with that many steps at the start of each phase.
    """

    def __init__(self, optimizer, strategy: Strategy, steps_per_epoch: int, num_epochs: int, lr: float,
                 warmup_ratio: float = 0.1, min_lr_ratio: float = 0.0, schedule: str = "cosine",
                 total_steps: int | None = None, warmup_steps: int = 0):
        if schedule not in ("cosine", "linear", "constant"):
            raise HFTransferError(f"unknown lr_scheduler_type '{schedule}': use cosine, linear or constant")
        self.optimizer, self.strategy = optimizer, strategy
        self.steps_per_epoch, self.num_epochs, self.lr = max(1, steps_per_epoch), num_epochs, lr
        self.total_steps = total_steps if total_steps else self.num_epochs * self.steps_per_epoch
        self.warmup_ratio, self.min_lr_ratio, self.schedule = warmup_ratio, min_lr_ratio, schedule
        self.warmup_steps = warmup_steps
        self.step_count = 0
        self._apply()

    def factor(self, step: int) -> float:
        starts = [s * self.steps_per_epoch for s in self.strategy.phase_starts()]
        starts = [s for s in starts if s < self.total_steps] + [self.total_steps]
        k = max(i for i, s in enumerate(starts[:-1]) if s <= step or i == 0)
        begin, end = starts[k], max(starts[k] + 1, starts[k + 1])
        length, t = end - begin, step - begin
        warmup = min(self.warmup_steps, length - 1) if self.warmup_steps else int(self.warmup_ratio * length)
        if t < warmup:
            return (t + 1) / (warmup + 1)
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (t - warmup) / max(1, length - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if self.schedule == "cosine" else 1 - progress
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * decay

    def _apply(self) -> None:
        epoch = self.step_count // self.steps_per_epoch
        f = self.factor(self.step_count)
        gentle_head = self.strategy.uses_backbone_lr_for_head(epoch)
        for g in self.optimizer.param_groups:
            base = self.lr if (g.get("is_head") and gentle_head) else g["base_lr"]
            g["lr"] = base * f

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step_count"]
        self._apply()
