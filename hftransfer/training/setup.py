"""Everything one fit needs, built and prepared: data, model, strategy, loaders, optimizer, schedule, run state.

``setup`` is the only place the run's config is spread into the components' explicit arguments
(accelerate's ``prepare`` included); the loop then reads the prepared ``TrainingRun``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from ..adaptation.methods import AdaptationMethod, DomainAdaptationModel, create_method
from ..config import TrainConfig
from ..data import DataBundle
from ..data.augmentations import create_batch_mixer
from ..data.balance import class_weights
from ..data.shots import draw_shots
from ..errors import HFTransferError
from ..models.lora import add_lora
from ..models.transfer_model import TransferModel, create_transfer_model
from ..tuning.regularizers import L2SP, decoupled_weight_decay_groups
from ..tuning.strategies import LORA_STRATEGIES, Strategy, TransferScheduler, apply_trainable, param_groups
from .checkpoint import RunState, resume
from .ema import WeightAverage
from .feature_cache import uses_feature_cache
from .inputs import audio_kwargs, load_data, load_target_data
from .loaders import Loaders, create_dataloaders
from .prototypes import init_prototype_head
from .runtime import StopSignals
from .sharding import HostCopy, check_engine_support, engine_name, no_split_modules
from .streaming import load_streaming_bundle, streaming_loaders
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
    num_epochs: int = 1  # --num_train_epochs, or as many as --max_steps reaches into
    total_steps: int = 1  # optimizer steps of the whole run
    stops_at_max_steps: bool = False  # --max_steps ends the run before its last epoch ends
    resumed_from: Path | None = None
    log: RunLog | None = None  # what goes to the --report_to trackers; None: this run is not tracked
    adaptation: AdaptationMethod | None = None  # --domain_adaptation: its loss module (inside ``model``)
    ema: WeightAverage | None = None  # --model_ema
    mixer: Callable[..., dict] | None = None  # --mixup / --cutmix: mixes a training batch, given the step's seed
    on_evaluate: Callable[[int, dict], bool] | None = None  # fit's caller: True stops the run (--tune's pruning)
    host_copy: HostCopy | None = None  # FSDP / DeepSpeed: the main process's whole copy, what the export writes

    def on_cached_features(self, epoch: int) -> bool:
        """Whether ``epoch`` trains the head on the frozen backbone's stored features."""
        return self.with_cache and self.strategy.trainable_groups(epoch) == 0

    def eval_loader(self, epoch: int):
        return self.loaders.cached_eval if self.on_cached_features(epoch) else self.loaders.eval

    def strategy_description(self) -> str:
        """The strategy in one sentence, with the LoRA rank and alpha the model's adapters have."""
        lora = self.module.lora
        return self.strategy.description(lora.r, lora.alpha) if lora is not None else self.strategy.description()


def build_model(cfg: TrainConfig, modality: str, bundle: DataBundle, init_backbone: Path | None = None) -> TransferModel:
    """The run's ``TransferModel``; ``init_backbone``: backbone weights to start from instead of the pretrained ones
    (a safetensors file of ``backbone.state_dict()``, written by ``--domain_adaptation dapt``'s phase)."""
    model = create_transfer_model(modality, cfg.model_name_or_path, bundle.id2label, head=cfg.head_type,
                                  weights=cfg.weights, multi_label=bundle.multi_label,
                                  label_smoothing=cfg.label_smoothing, head_hidden_sizes=tuple(cfg.head_hidden_sizes),
                                  head_dropout=cfg.head_dropout, pooling=cfg.pooling, **audio_kwargs(cfg, modality))
    if init_backbone is not None:  # before LoRA wraps layers: the keys are the plain backbone's
        from safetensors.torch import load_file

        model.backbone.load_state_dict(load_file(str(init_backbone)))
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


def create_strategy(cfg: TrainConfig, num_groups: int) -> Strategy:
    """The run's ``Strategy`` over a backbone of ``num_groups`` layer groups."""
    return Strategy(cfg.strategy, num_groups, cfg.unfreeze_top_k, cfg.unfreeze_every, cfg.lp_epochs,
                    cfg.contrastive_iterations, cfg.episodes)


def load_bundle(cfg: TrainConfig, modality: str, accelerator: Accelerator, data_seed: int | None) -> DataBundle:
    """The labelled splits (and the target domain's, with ``--target_*``), read by the main process first."""
    if cfg.streaming:  # a stream is never read whole: its refusals (--shots, target data, ...) are the config's
        with accelerator.main_process_first():
            bundle = load_streaming_bundle(cfg, modality, accelerator.num_processes)
        accelerator.print(f"data: streaming {', '.join(bundle.train.spec.files['train'][:3])}"
                          f"{' ...' if len(bundle.train.spec.files['train']) > 3 else ''} "
                          f"({len(bundle.train.spec.files['train'])} shard(s), {len(bundle.train)} examples over the "
                          f"run) / {len(bundle.eval)} eval examples, {len(bundle.id2label)} labels "
                          f"({', '.join(list(bundle.id2label.values())[:10])})")
        return bundle
    with accelerator.main_process_first():
        bundle = load_data(cfg, modality, data_seed)
    if cfg.shots:  # K per class of the training split, drawn once the evaluation split is settled
        available = len(bundle.train)
        seed = cfg.seed if data_seed is None else data_seed  # as the held-out split: from-scratch twins get the same
        bundle.train = draw_shots(bundle.train, cfg.shots, seed, bundle.id2label, bundle.multi_label)
        accelerator.print(f"few-shot: {cfg.shots} per class, {len(bundle.train)} training examples (seed {seed}; "
                          f"the other {available - len(bundle.train)} training examples unused)")
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


def train_class_weights(cfg: TrainConfig, bundle: DataBundle, accelerator: Accelerator) -> torch.Tensor | None:
    """``--class_weights``: the loss weights (``pos_weight`` when multi-label) from the training labels."""
    if cfg.class_weight_mode == "none":
        return None
    labels = bundle.train["labels"] if cfg.class_weight_mode == "balanced" else None  # given weights need no labels
    weights = class_weights(labels, len(bundle.id2label), multi_label=bundle.multi_label,
                            mode=cfg.class_weight_mode, values=cfg.class_weight_values,
                            label_names=list(bundle.id2label.values()))
    shown = ", ".join(f"{name} {w:.3g}" for name, w in zip(bundle.id2label.values(), weights.tolist()))
    accelerator.print(f"class weights ({cfg.class_weight_mode}{', as pos_weight' if bundle.multi_label else ''}): {shown}")
    return weights


def create_mixer(cfg: TrainConfig, module: TransferModel):
    """``--mixup`` / ``--cutmix``: timm's Mixup for the training batches, or None."""
    if not cfg.mixing:
        return None
    data_config = module.backbone.data_config
    return create_batch_mixer(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                              switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.label_smoothing,
                              num_classes=module.num_labels, multi_label=module.multi_label,
                              mean=data_config["mean"], std=data_config["std"])


def create_optimizer(cfg: TrainConfig, model: TransferModel, method: AdaptationMethod | None,
                     trainable_only: bool = False) -> torch.optim.Optimizer:
    """AdamW over the strategy's parameter groups (head and backbone LRs, layer decay, no decay on biases and
    norms), plus a domain adversary's parameters, which train from the first step at the head's LR.
    ``trainable_only``: only the parameters that train now, groups left empty dropped (DeepSpeed's ZeRO
    flattens each group's trainable parameters once, at start, and fails on a group with none)."""
    groups = param_groups(model, cfg.learning_rate, cfg.effective_head_lr, cfg.weight_decay, cfg.layer_decay)
    if trainable_only:
        groups = [g for g in ({**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups)
                  if g["params"]]
    adversary = list(method.parameters()) if method is not None else []
    if adversary:
        groups.append({"params": adversary, "lr": cfg.effective_head_lr, "base_lr": cfg.effective_head_lr,
                       "weight_decay": cfg.weight_decay, "name": "domain_adversary", "is_head": True,
                       "layer": len(groups)})
    return torch.optim.AdamW(decoupled_weight_decay_groups(groups, cfg.l2sp_active))


def epochs_and_steps(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(epochs, optimizer steps) of the run: --num_train_epochs whole epochs, or --max_steps steps in as many
    epochs as they reach into."""
    if cfg.max_steps > 0:
        return math.ceil(cfg.max_steps / steps_per_epoch), cfg.max_steps
    return cfg.num_train_epochs, cfg.num_train_epochs * steps_per_epoch


def estimated_epochs(cfg: TrainConfig, train_size: int, processes: int) -> int:
    """The run's epochs before its loaders exist (the feature-cache decision needs them): exact without
    --max_steps; with it, from the batches each process will see (accelerate's even sharding)."""
    batches = math.ceil(math.ceil(train_size / cfg.per_device_train_batch_size) / processes)
    return epochs_and_steps(cfg, max(1, math.ceil(batches / cfg.gradient_accumulation_steps)))[0]


def feature_cache_applies(cfg: TrainConfig, strategy: Strategy, num_epochs: int) -> bool:
    """Whether frozen-backbone epochs train on cached features (``--feature_cache auto``)."""
    if cfg.adaptation_loss != "none" or cfg.streaming:
        # adaptation needs the target batch beside every source batch; a stream is one pass, nothing is kept
        return False
    if not uses_feature_cache(strategy, num_epochs=num_epochs, policy=cfg.feature_cache, train_norm=cfg.train_norm,
                              bn_stats=cfg.bn_stats):
        return False
    # --auto_augment / --reprob / --mixup / --cutmix apply where the backbone trains; frozen epochs probe on
    # cached (unaugmented) features, as with crop and flip, unless no epoch trains it: then the asked-for
    # augmentation would never happen, so the backbone runs on augmented images every epoch instead
    return not (cfg.heavy_augmentation and all(strategy.trainable_groups(e) == 0 for e in range(num_epochs)))


def prepare_for_sharding(cfg: TrainConfig, accelerator: Accelerator, model: TransferModel, strategy: Strategy,
                         num_epochs: int) -> HostCopy | None:
    """Under FSDP / DeepSpeed: refuse what the engine cannot train, name the blocks FSDP shards one unit each,
    and keep the main process's whole copy for the export (before ``prepare`` shards the model)."""
    if engine_name(accelerator) is None:
        return None
    if cfg.uses_target_data():
        raise HFTransferError(f"domain adaptation trains a loss module beside the model that "
                              f"{engine_name(accelerator)} does not shard with it yet: drop the --target_* options, "
                              "or train with DDP")
    changes = any(strategy.trainable_groups(e) != strategy.trainable_groups(0) for e in range(num_epochs))
    check_engine_support(accelerator, trainable_set_changes=changes, l2sp=cfg.l2sp_active, ema=cfg.model_ema)
    model._no_split_modules = no_split_modules(model)  # what accelerate's TRANSFORMER_BASED_WRAP reads
    if accelerator.distributed_type == DistributedType.DEEPSPEED and getattr(model.backbone, "channels_last", False):
        model.backbone.use_default_layout()  # DeepSpeed broadcasts and flattens each weight as a contiguous view
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.deepspeed_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        # accelerate fills "auto" from loaders prepared with the model; hftransfer prepares its loaders apart
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.per_device_train_batch_size
    engine = engine_name(accelerator)
    units = (f" (blocks sharded one unit each: {', '.join(model._no_split_modules) or 'none, the model is one unit'})"
             if engine == "FSDP" else "")
    accelerator.print(f"{engine}: training state sharded over {accelerator.num_processes} processes{units}; the main "
                      "process keeps a whole copy of the model for the export")
    return HostCopy(accelerator, model)


def setup(cfg: TrainConfig, modality: str, accelerator: Accelerator, output_dir: Path,
          data_seed: int | None = None, stop: StopSignals | None = None,
          init_backbone: Path | None = None, bundle: DataBundle | None = None) -> TrainingRun:
    """Data, model, strategy, loaders, optimizer and schedule, all prepared; resumed if asked to. ``bundle``: splits
    already loaded (a federated client's share of a dataset), else ``load_bundle`` reads them."""
    set_seed(cfg.seed)
    bundle = bundle if bundle is not None else load_bundle(cfg, modality, accelerator, data_seed)
    model = build_model(cfg, modality, bundle, init_backbone)
    model.set_class_weights(train_class_weights(cfg, bundle, accelerator))
    group_names = [g.name for g in model.layer_groups()[:-1]]
    strategy = create_strategy(cfg, len(group_names))
    num_epochs = (cfg.num_train_epochs if cfg.streaming
                  else estimated_epochs(cfg, len(bundle.train), accelerator.num_processes))
    with_cache = feature_cache_applies(cfg, strategy, num_epochs)
    with accelerator.main_process_first():
        loaders = (streaming_loaders(cfg, bundle, model.backbone, accelerator) if cfg.streaming
                   else create_dataloaders(cfg, bundle, model.backbone, with_cache))
    if cfg.head_init == "prototypes":  # before the optimizer and prepare: the head's starting point
        init_prototype_head(accelerator, model, loaders, bundle.input_column, cfg.per_device_eval_batch_size,
                            head=cfg.head, cache_dtype=cfg.feature_cache_dtype, cache_dir=cfg.feature_cache_dir)
    apply_trainable(model, strategy.trainable_groups(0), cfg.train_norm, strategy.adapter_only)
    method = create_method(cfg.adaptation_loss, model.backbone.feature_dim, model.num_labels, cfg.seed,
                           cfg.mcc_temperature, num_target=len(bundle.target.train) if bundle.target is not None else 0,
                           self_training_threshold=cfg.self_training_threshold,
                           adversary_warmup_steps=cfg.adversary_warmup_steps)
    optimizer = create_optimizer(cfg, model, method,
                                 trainable_only=accelerator.distributed_type == DistributedType.DEEPSPEED)
    trained = DomainAdaptationModel(model, method, cfg.adaptation_weight) if method is not None else model
    host_copy = prepare_for_sharding(cfg, accelerator, model, strategy, num_epochs)
    prepared, optimizer = accelerator.prepare(trained, optimizer)
    module = accelerator.unwrap_model(prepared)
    if method is not None:
        module, method = module.model, module.method
    # after prepare (every rank holds rank 0's weights) and before load_state (a resumed run is still
    # pulled towards the starting weights, not the checkpoint's)
    l2sp = L2SP(module, cfg.l2sp_alpha, cfg.l2sp_beta) if cfg.l2sp_active else None
    loaders.prepare(accelerator)
    steps_per_epoch = math.ceil(len(loaders.train) / cfg.gradient_accumulation_steps)
    num_epochs, total_steps = epochs_and_steps(cfg, steps_per_epoch)
    scheduler = TransferScheduler(optimizer, strategy, steps_per_epoch, num_epochs, cfg.learning_rate,
                                  cfg.warmup_ratio, schedule=cfg.lr_scheduler_type, total_steps=total_steps,
                                  warmup_steps=cfg.warmup_steps)
    state = RunState(stream=loaders.train if loaders.streamed else None)
    ema = WeightAverage(module, cfg.model_ema_decay) if cfg.model_ema else None
    # also with --checkpointing_steps no: SIGTERM saves one; the EMA last, so runs without it keep their layout
    accelerator.register_for_checkpointing(scheduler, state, *([ema] if ema is not None else []))
    run = TrainingRun(cfg=cfg, accelerator=accelerator, output_dir=output_dir, bundle=bundle, model=prepared,
                      module=module, strategy=strategy, group_names=group_names, loaders=loaders, optimizer=optimizer,
                      scheduler=scheduler, state=state, l2sp=l2sp, with_cache=with_cache,
                      stop=stop or StopSignals(), num_epochs=num_epochs, total_steps=total_steps,
                      stops_at_max_steps=total_steps < num_epochs * steps_per_epoch, adaptation=method, ema=ema,
                      mixer=create_mixer(cfg, module), host_copy=host_copy)
    if cfg.resume_from_checkpoint:
        run.resumed_from = resume(accelerator, cfg.resume_from_checkpoint, output_dir, state)
    return run
