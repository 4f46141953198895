"""Everything one fit needs, built and prepared: data, model, strategy, loaders, optimizer, schedule, run state.

``setup`` is the only place the run's config is spread into the components' explicit arguments
(accelerate's ``prepare`` included); the loop then reads the prepared ``TrainingRun``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..adaptation.methods import AdaptationMethod, DomainAdaptationModel, create_method
from ..config import TrainConfig
from ..data import DataBundle
from ..errors import HFTransferError
from ..models.lora import add_lora
from ..models.transfer_model import TransferModel, create_transfer_model
from ..tuning.regularizers import L2SP, decoupled_weight_decay_groups
from ..tuning.strategies import LORA_STRATEGIES, Strategy, TransferScheduler, apply_trainable, param_groups
from .checkpoint import RunState, resume
from .feature_cache import uses_feature_cache
from .inputs import load_data, load_target_data
from .loaders import Loaders, create_dataloaders
from .runtime import StopSignals
from .tracking import RunLog


@dataclass
class TrainingRun:
    """What ``setup`` prepared for one fit. ``model`` is as prepared (a DDP wrapper in multi-process
    runs, replaced when the trainable set changes); ``module`` is the bare ``TransferModel``."""

    cfg: TrainConfig
    accelerator: Accelerator
    output_dir: Path
    bundle: DataBundle
    model: torch.nn.Module
    module: TransferModel
    strategy: Strategy
    group_names: list[str]
    loaders: Loaders
    optimizer: torch.optim.Optimizer
    scheduler: TransferScheduler
    state: RunState
    l2sp: L2SP | None
    with_cache: bool
    stop: StopSignals
    resumed_from: Path | None = None
    log: RunLog | None = None  # what goes to the --report_to trackers; None: this run is not tracked
    adaptation: AdaptationMethod | None = None  # --domain_adaptation: its loss module (inside ``model``)

    def on_cached_features(self, epoch: int) -> bool:
        """Whether ``epoch`` trains the head on the frozen backbone's stored features."""
        return self.with_cache and self.strategy.trainable_groups(epoch) == 0

    def eval_loader(self, epoch: int):
        return self.loaders.cached_eval if self.on_cached_features(epoch) else self.loaders.eval

    def strategy_description(self) -> str:
        """The strategy in one sentence, with the LoRA rank and alpha the model's adapters have."""
        lora = self.module.lora
        return self.strategy.description(lora.r, lora.alpha) if lora is not None else self.strategy.description()


def build_model(cfg: TrainConfig, modality: str, bundle: DataBundle) -> TransferModel:
    model = create_transfer_model(modality, cfg.model_name_or_path, bundle.id2label, head=cfg.head, weights=cfg.weights,
                                  multi_label=bundle.multi_label, label_smoothing=cfg.label_smoothing,
                                  head_hidden_sizes=tuple(cfg.head_hidden_sizes), head_dropout=cfg.head_dropout,
                                  pooling=cfg.pooling)
    model.bn_stats = cfg.bn_stats
    if cfg.image_size:  # text backbones refuse it in one line
        model.backbone.set_input_size(cfg.image_size)
    model.backbone.use_fast_layout()
    if cfg.strategy in LORA_STRATEGIES:  # before prepare: the optimizer, DDP and checkpoints must see the adapters
        add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                 target_modules=cfg.lora_target_modules, train_norm=cfg.train_norm)
    if cfg.gradient_checkpointing:  # before prepare: DDP and torch.compile wrap the model as it will run
        model.backbone.set_gradient_checkpointing(True)
    return model


def load_bundle(cfg: TrainConfig, modality: str, accelerator: Accelerator, data_seed: int | None) -> DataBundle:
    """The labelled splits (and the target domain's, with ``--target_*``), read by the main process first."""
    with accelerator.main_process_first():
        bundle = load_data(cfg, modality, data_seed)
    if cfg.uses_target_data():
        if bundle.multi_label:
            raise HFTransferError("domain adaptation supports single-label classification: the source labels are "
                                  "multi-label; drop the --target_* options")
        with accelerator.main_process_first():
            bundle.target = load_target_data(cfg, modality, bundle.id2label, data_seed)
        accelerator.print(f"target domain: {len(bundle.target.train)} unlabelled train examples"
                          + "".join(f", {len(split)} labelled {name} (reported only)" for name, split in
                                    (("validation", bundle.target.validation), ("test", bundle.target.test)) if split))
    if cfg.do_predict and bundle.test is None:
        raise HFTransferError("--do_predict: the data has no test split: pass --test_dir / --test_file (or a dataset "
                              "with a 'test' split), or drop --do_predict")
    accelerator.print(f"data: {len(bundle.train)} train / {len(bundle.eval)} eval examples, "
                      f"{len(bundle.id2label)} labels ({', '.join(list(bundle.id2label.values())[:10])})")
    return bundle


def create_optimizer(cfg: TrainConfig, model: TransferModel, method: AdaptationMethod | None) -> torch.optim.Optimizer:
    """AdamW over the strategy's parameter groups (head and backbone LRs, layer decay, no decay on biases and
    norms), plus a domain adversary's parameters, which train from the first step at the head's LR."""
    groups = param_groups(model, cfg.learning_rate, cfg.effective_head_lr, cfg.weight_decay, cfg.layer_decay)
    adversary = list(method.parameters()) if method is not None else []
    if adversary:
        groups.append({"params": adversary, "lr": cfg.effective_head_lr, "base_lr": cfg.effective_head_lr,
                       "weight_decay": cfg.weight_decay, "name": "domain_adversary", "is_head": True,
                       "layer": len(groups)})
    return torch.optim.AdamW(decoupled_weight_decay_groups(groups, cfg.l2sp_active))


def setup(cfg: TrainConfig, modality: str, accelerator: Accelerator, output_dir: Path,
          data_seed: int | None = None, stop: StopSignals | None = None) -> TrainingRun:
    """Data, model, strategy, loaders, optimizer and schedule, all prepared; resumed if asked to."""
    set_seed(cfg.seed)
    bundle = load_bundle(cfg, modality, accelerator, data_seed)
    model = build_model(cfg, modality, bundle)
    group_names = [g.name for g in model.layer_groups()[:-1]]
    strategy = Strategy(cfg.strategy, len(group_names), cfg.unfreeze_top_k, cfg.unfreeze_every, cfg.lp_epochs)
    # adaptation needs the target batch beside every source batch: no cached-feature epochs
    with_cache = uses_feature_cache(strategy, num_epochs=cfg.num_train_epochs, policy=cfg.feature_cache,
                                    train_norm=cfg.train_norm, bn_stats=cfg.bn_stats) and cfg.domain_adaptation == "none"
    with accelerator.main_process_first():
        loaders = create_dataloaders(cfg, bundle, model.backbone, with_cache)
    apply_trainable(model, strategy.trainable_groups(0), cfg.train_norm, strategy.adapter_only)
    method = create_method(cfg.domain_adaptation, model.backbone.feature_dim, model.num_labels, cfg.seed,
                           cfg.mcc_temperature)
    optimizer = create_optimizer(cfg, model, method)
    trained = DomainAdaptationModel(model, method, cfg.adaptation_weight) if method is not None else model
    prepared, optimizer = accelerator.prepare(trained, optimizer)
    module = accelerator.unwrap_model(prepared)
    if method is not None:
        module, method = module.model, module.method
    # after prepare (every rank holds rank 0's weights) and before load_state (a resumed run is still
    # pulled towards the starting weights, not the checkpoint's)
    l2sp = L2SP(module, cfg.l2sp_alpha, cfg.l2sp_beta) if cfg.l2sp_active else None
    loaders.prepare(accelerator)
    steps_per_epoch = math.ceil(len(loaders.train) / cfg.gradient_accumulation_steps)
    scheduler = TransferScheduler(optimizer, strategy, steps_per_epoch, cfg.num_train_epochs, cfg.learning_rate,
                                  cfg.warmup_ratio, schedule=cfg.lr_scheduler_type)
    state = RunState()
    accelerator.register_for_checkpointing(scheduler, state)  # also with --checkpointing_steps no: SIGTERM saves one
    run = TrainingRun(cfg=cfg, accelerator=accelerator, output_dir=output_dir, bundle=bundle, model=prepared,
                      module=module, strategy=strategy, group_names=group_names, loaders=loaders, optimizer=optimizer,
                      scheduler=scheduler, state=state, l2sp=l2sp, with_cache=with_cache,
                      stop=stop or StopSignals(), adaptation=method)
    if cfg.resume_from_checkpoint:
        run.resumed_from = resume(accelerator, cfg.resume_from_checkpoint, output_dir, state)
    return run
