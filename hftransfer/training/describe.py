"""What a run records about its transfer recipe: the ``RunDescription`` in ``all_results.json["transfer"]``.

Built here, from the run's config, model and strategy, so that the card (``hub.card``) renders the run
from that record alone and never reads the config.
"""
from __future__ import annotations

from ..models.devices import numel
from ..models.lora import is_lora_parameter
from ..models.lora import record as lora_record
from ..records import Phase, RunDescription
from ..version import __version__


def describe_run(cfg, modality: str, bundle, model, strategy, group_names: list[str], num_epochs: int | None = None,
                 total_steps: int | None = None) -> RunDescription:
    """The transfer recipe of a run about to train: phases, frozen groups, LRs, sizes, data, versions.

    ``cfg`` is the ``TrainConfig``, ``model`` the ``TransferModel``, ``strategy`` its ``Strategy``;
    ``num_epochs`` / ``total_steps`` the run's (``--max_steps`` may end it before ``--num_train_epochs``).
    """
    import accelerate
    import datasets
    import timm
    import torch
    import transformers


    named = dict(model.named_parameters())
    sizes = {g.name: sum(numel(named[n]) for n in g.params) for g in model.layer_groups()}
    total = sum(sizes.values())
    if strategy.adapter_only:  # LoRA: inside a trainable group only the adapters train
        sizes.update({g.name: sum(numel(named[n]) for n in g.params if is_lora_parameter(n))
                      for g in model.layer_groups()[:-1]})
    phases = []
    num_epochs = num_epochs or cfg.num_train_epochs
    for phase in strategy.describe(num_epochs, group_names):
        trainable = sizes["head"] + sum(sizes[n] for n in phase["trainable_backbone_groups"])
        gentle = strategy.uses_backbone_lr_for_head(phase["epochs"][0])
        phases.append(Phase(**phase, trainable_fraction=trainable / total,
                            head_learning_rate=cfg.learning_rate if gentle else cfg.effective_head_lr,
                            note="normalization layers train inside frozen groups"
                            if cfg.train_norm and phase["frozen_backbone_groups"] else None))
    has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return RunDescription(
        modality=modality, base_model=cfg.model_name_or_path, weights=cfg.weights, strategy=cfg.strategy,
        strategy_description=strategy.description(), phases=phases, learning_rate=cfg.learning_rate,
        head_learning_rate=cfg.effective_head_lr, layer_decay=cfg.layer_decay, weight_decay=cfg.weight_decay,
        lr_scheduler=f"{cfg.lr_scheduler_type}, warmup "
                     + (f"{cfg.warmup_steps} steps" if cfg.warmup_steps else f"{cfg.warmup_ratio:.0%}") + " of each phase",
        regularizer=({"name": "L2-SP", "alpha": cfg.l2sp_alpha, "beta": cfg.l2sp_beta,
                      "note": "decoupled weight decay off"} if cfg.l2sp_active else None),
        label_smoothing=cfg.label_smoothing, head_dropout=cfg.head_dropout, train_norm=cfg.train_norm,
        norm_policy=model.describe_bn_stats() if has_batchnorm else None, max_grad_norm=cfg.max_grad_norm,
        lora=lora_record(model) if model.lora is not None else None,
        mixed_precision=cfg.mixed_precision, gradient_checkpointing=cfg.gradient_checkpointing, seed=cfg.seed, metric_for_best_model=cfg.metric_for_best_model,
        epochs=num_epochs, max_steps=total_steps if cfg.max_steps > 0 else None,
        batch_size=cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps,
        class_weights=class_weight_record(cfg, model, bundle), sampler=cfg.sampler,
        augmentation=augmentation_record(cfg, modality),
        model_ema={"decay": cfg.model_ema_decay, "warmup": True} if cfg.model_ema else None,
        evaluation={k: getattr(cfg, k) for k in ("eval_strategy", "eval_steps", "early_stopping_patience",
                                                 "early_stopping_threshold") if getattr(cfg, k) is not None},
        dataset=str(cfg.dataset_name or cfg.train_dir or cfg.train_file), dataset_name=cfg.dataset_name,
        dataset_config=cfg.dataset_config_name,
        validation_data=cfg.validation_dir or cfg.validation_file,
        train_samples=len(bundle.train), eval_samples=len(bundle.eval), label_names=list(bundle.id2label.values()),
        multi_label=bundle.multi_label, parameters=total,
        framework_versions={"hftransfer": __version__, "torch": torch.__version__, "timm": timm.__version__,
                            "transformers": transformers.__version__, "datasets": datasets.__version__,
                            "accelerate": accelerate.__version__},
    )


def class_weight_record(cfg, model, bundle) -> dict | None:
    """``--class_weights`` as used: the mode and each label's weight (``pos_weight`` for multi-label)."""
    weights = getattr(model, "class_weights", None)
    if weights is None:
        return None
    return {"mode": cfg.class_weight_mode, "pos_weight": bundle.multi_label,
            "weights": dict(zip(bundle.id2label.values(), (round(float(w), 6) for w in weights.tolist())))}


def augmentation_record(cfg, modality: str) -> dict:
    """What made training images or audio clips differ from evaluation ones (empty for text)."""
    if modality == "text":
        return {}
    if not cfg.augment:
        return {"augment": False}
    if modality == "audio":
        return {"random_crop": True, "gain_db": cfg.gain_db, "time_shift": cfg.time_shift,
                "speed_perturb": cfg.speed_perturb,
                "time_masks": cfg.time_masks, "freq_masks": cfg.freq_masks}
    record = {"crop_scale": list(cfg.crop_scale), "color_jitter": 0.0 if cfg.auto_augment else cfg.color_jitter}
    record.update({k: getattr(cfg, k) for k in ("auto_augment", "reprob") if getattr(cfg, k)})
    if cfg.mixing:
        record.update({"mixup": cfg.mixup, "cutmix": cfg.cutmix, "mixup_prob": cfg.mixup_prob,
                       "mixup_switch_prob": cfg.mixup_switch_prob})
    return record
