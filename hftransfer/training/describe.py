"""What a run records about its transfer recipe: the ``RunDescription`` in ``all_results.json["transfer"]``.

Built here, from the run's config, model and strategy, so that the card (``hub.card``) renders the run
from that record alone and never reads the config.
"""
from __future__ import annotations

from ..models.lora import is_lora_parameter
from ..models.lora import record as lora_record
from ..records import Phase, RunDescription
from ..version import __version__


def describe_run(cfg, modality: str, bundle, model, strategy, group_names: list[str]) -> RunDescription:
    """The transfer recipe of a run about to train: phases, frozen groups, LRs, sizes, data, versions.

    ``cfg`` is the ``TrainConfig``, ``model`` the ``TransferModel``, ``strategy`` its ``Strategy``.
    """
    import accelerate
    import datasets
    import timm
    import torch
    import transformers


    named = dict(model.named_parameters())
    sizes = {g.name: sum(named[n].numel() for n in g.params) for g in model.layer_groups()}
    total = sum(sizes.values())
    if strategy.adapter_only:  # LoRA: inside a trainable group only the adapters train
        sizes.update({g.name: sum(named[n].numel() for n in g.params if is_lora_parameter(n))
                      for g in model.layer_groups()[:-1]})
    phases = []
    for phase in strategy.describe(cfg.num_train_epochs, group_names):
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
        lr_scheduler=f"{cfg.lr_scheduler_type}, warmup {cfg.warmup_ratio:.0%} of each phase",
        regularizer=({"name": "L2-SP", "alpha": cfg.l2sp_alpha, "beta": cfg.l2sp_beta,
                      "note": "decoupled weight decay off"} if cfg.l2sp_active else None),
        label_smoothing=cfg.label_smoothing, head_dropout=cfg.head_dropout, train_norm=cfg.train_norm,
        norm_policy=model.describe_bn_stats() if has_batchnorm else None, max_grad_norm=cfg.max_grad_norm,
        lora=lora_record(model) if model.lora is not None else None,
        mixed_precision=cfg.mixed_precision, gradient_checkpointing=cfg.gradient_checkpointing, seed=cfg.seed, metric_for_best_model=cfg.metric_for_best_model,
        epochs=cfg.num_train_epochs, batch_size=cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps,
        dataset=str(cfg.dataset_name or cfg.train_dir or cfg.train_file), dataset_name=cfg.dataset_name,
        dataset_config=cfg.dataset_config_name,
        validation_data=cfg.validation_dir or cfg.validation_file,
        train_samples=len(bundle.train), eval_samples=len(bundle.eval), label_names=list(bundle.id2label.values()),
        multi_label=bundle.multi_label, parameters=total,
        framework_versions={"hftransfer": __version__, "torch": torch.__version__, "timm": timm.__version__,
                            "transformers": transformers.__version__, "datasets": datasets.__version__,
                            "accelerate": accelerate.__version__},
    )
