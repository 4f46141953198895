"""Model cards that record the transfer recipe, generated from a run's output folder.

``describe_run`` is what a run records about its recipe (``RunDescription``, stored in
``all_results.json["transfer"]``). ``write_model_card(output_dir)`` reads what the run left there:
``hftransfer_config.json`` (the model: backbone, head, labels, weight layout; required) and the
``RunResults`` of ``all_results.json`` (metrics, per-class results, history, recipe; optional), and
renders ``model_cards/model_card.md`` (Jinja) into ``README.md``: Hub metadata (library_name,
base_model, datasets, license, tags, pipeline_tag, model-index with the evaluation results) and a
body with the recipe, data, per-class results, loading instructions for the layout the weights were
saved in, and framework versions (the sections are formatted in ``card_sections``).

The output is deterministic (no timestamps), so re-pushing an unchanged run makes no commit. No
absolute local paths are written: local data and models are named by their last path parts.
"""
from __future__ import annotations

import re
from pathlib import Path

from . import card_sections as sections
from ..models.lora import is_lora_parameter
from ..models.lora import record as lora_record
from ..errors import HFTransferError
from ..files import CARD_NAME, CONFIG_NAME, CONFUSION_PNG, CURVES_PNG, RUN_CONFIG_NAME, read_json, read_yaml, write_text
from ..records import Phase, RunDescription, RunResults

TEMPLATE_NAME = "model_card.md"


def describe_run(cfg, modality: str, bundle, model, strategy, group_names: list[str]) -> RunDescription:
    """The transfer recipe of a run about to train: phases, frozen groups, LRs, sizes, data, versions.

    ``cfg`` is the ``TrainConfig``, ``model`` the ``TransferModel``, ``strategy`` its ``Strategy``.
    """
    import accelerate
    import datasets
    import timm
    import torch
    import transformers

    from ..version import __version__

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


def template_path() -> Path:
    """``model_cards/model_card.md``: inside the package when installed as a wheel, else at the repo root."""
    package = Path(__file__).resolve().parents[1]  # hftransfer/, whose model_cards links to the repo's
    for candidate in (package / "model_cards" / TEMPLATE_NAME, package.parent / "model_cards" / TEMPLATE_NAME):
        if candidate.is_file():
            return candidate
    raise HFTransferError(f"model card template {TEMPLATE_NAME} not found next to the hftransfer package: reinstall "
                          "hftransfer (pip install -e .)")


def write_model_card(output_dir: Path, repo_id: str | None = None) -> Path:
    """Render the card of the run (or saved model) in ``output_dir`` into ``output_dir/README.md``.

    ``repo_id`` is used in the loading snippets and as the model name; by default the run's
    ``hub_model_id`` from ``config.yaml``, else ``<your-username>/<folder name>``.
    """
    output_dir = Path(output_dir)
    return write_text(output_dir / CARD_NAME, str(build_model_card(output_dir, repo_id)))


def build_model_card(output_dir: Path, repo_id: str | None = None):
    """The ``huggingface_hub.ModelCard`` of ``output_dir`` (see ``write_model_card``)."""
    import jinja2
    from huggingface_hub import ModelCard

    context = card_context(Path(output_dir), repo_id)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    text = env.from_string(template_path().read_text()).render(**context)
    return ModelCard(re.sub(r"\n{3,}", "\n\n", text))


def card_context(output_dir: Path, repo_id: str | None = None) -> dict:
    """Every template variable, preformatted (the template only lays out strings)."""
    from huggingface_hub import ModelCardData

    model_cfg = read_json(output_dir / CONFIG_NAME)
    if not model_cfg:
        raise HFTransferError(f"'{output_dir}' has no {CONFIG_NAME}: write the card of a finished run "
                              "or of a folder written by TransferModel.save_pretrained")
    results = RunResults.read(output_dir)
    recipe = results.transfer if results is not None else None
    modality = model_cfg.get("modality", "image" if model_cfg["backbone"]["type"] == "timm" else "text")
    pipeline_tag = f"{modality}-classification"
    repo_id = repo_id or read_yaml(output_dir / RUN_CONFIG_NAME).get("hub_model_id") \
        or f"<your-username>/{output_dir.resolve().name}"
    labels = [model_cfg["id2label"][k] for k in sorted(model_cfg["id2label"], key=int)]
    multi_label = bool(model_cfg.get("multi_label"))
    fmt = model_cfg.get("weights_format", "hftransfer")
    native = model_cfg.get("native") or {}
    base = sections.base_model(model_cfg, recipe)
    dataset = sections.dataset(recipe, modality)
    eval_results = sections.eval_results(results, dataset, pipeline_tag, multi_label)
    card_data = ModelCardData(
        # custom-code exports load with transformers too, so the Hub shows its snippet
        library_name=native.get("library") or ("transformers" if model_cfg.get("remote_code") else "hftransfer"),
        base_model=base.hub_id,
        base_model_relation="finetune" if base.hub_id else None,
        datasets=[dataset.hub_id] if dataset.hub_id else None,
        license=sections.license_of(model_cfg, base.hub_id, modality),
        tags=list(dict.fromkeys(["hftransfer", "transfer-learning", pipeline_tag,
                                 "timm" if modality == "image" else "transformers"])),
        pipeline_tag=pipeline_tag,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
        metrics=["accuracy", "f1"] if eval_results else None,
    )
    return {
        "card_data": card_data.to_yaml(),
        "title": repo_id.split("/")[-1],
        "summary": sections.summary(modality, base.short, dataset, recipe, labels,
                                   f"{fmt} (with transformers custom code)" if model_cfg.get("remote_code") else fmt),
        "modality": modality,
        "repo_id": repo_id,
        "multi_label": multi_label,
        "native_library": native.get("library"),
        "native_architecture": native.get("architecture"),
        "native_reason": model_cfg.get("native_unavailable", "no native equivalent").rstrip("."),
        "remote_code": model_cfg.get("remote_code"),
        "base_model_display": base.display,
        "head_display": sections.head_display(model_cfg.get("head", {}), model_cfg.get("feature_dim"), len(labels)),
        "pooling": sections.pooling_display(model_cfg),
        "dataset_display": dataset.display,
        "train_samples": recipe.train_samples if recipe else (results.train_samples if results else None),
        "eval_samples": recipe.eval_samples if recipe else (results.metrics.get("eval_samples") if results else None),
        "num_labels": len(labels),
        "labels_display": sections.labels_display(labels),
        "files": sections.files(output_dir, fmt),
        "versions": sections.versions(recipe, model_cfg),
        "transfer_gain": sections.transfer_gain(results.transfer_gain) if results and results.transfer_gain else None,
        "backbone_choice": sections.backbone_choice(results.backbone_choice) if results and results.backbone_choice
        else None,
        "domain_adaptation": sections.domain_adaptation(results.domain_adaptation)
        if results and results.domain_adaptation else None,
        "confusion_png": CONFUSION_PNG if (output_dir / CONFUSION_PNG).is_file() else None,
        "curves_png": CURVES_PNG if (output_dir / CURVES_PNG).is_file() else None,
        **sections.results_context(results),
        **sections.recipe_context(recipe),
    }
