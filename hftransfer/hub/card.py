"""Model cards that record the transfer recipe, generated from a run's output folder.

``write_model_card(output_dir)`` reads what the run left there:
``hftransfer_config.json`` (the model: backbone, head, labels, weight layout; required) and the
``RunResults`` of ``all_results.json`` (metrics, per-class results, history, recipe; optional), and
renders ``model_cards/model_card.md`` (Jinja) into ``README.md``: Hub metadata (library_name,
base_model, datasets, license, tags, pipeline_tag, model-index with the evaluation results) and a
body with the recipe, data, per-class results, loading instructions for the layout the weights were
saved in, and framework versions. The sections are formatted in ``card_model_data`` (model, data,
files, versions), ``card_recipe`` and ``card_results``, single values in ``card_format``; ``card_tune`` and
``card_export`` add the ``--tune`` study and the ONNX export (``hftransfer export`` / ``--export_onnx``).

The output is deterministic (no timestamps), so re-pushing an unchanged run makes no commit. No
absolute local paths are written: local data and models are named by their last path parts.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import HFTransferError
from ..files import CARD_NAME, CONFIG_NAME, CONFUSION_PNG, CURVES_PNG, RUN_CONFIG_NAME, read_json, read_yaml, write_text
from ..records import RunResults
from .card_export import with_export_section
from .card_model_data import (
    BaseModelDescription,
    DatasetDescription,
    base_model_license,
    describe_base_model,
    describe_dataset,
    files_table,
    framework_versions,
    head_display,
    labels_display,
    pooling_display,
    summary_sentence,
)
from .card_recipe import recipe_context
from .card_results import (
    backbone_choice_block,
    domain_adaptation_block,
    hub_eval_results,
    results_context,
    transfer_gain_block,
)
from .card_tune import with_tune_section

TEMPLATE_NAME = "model_card.md"


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
    text = with_tune_section(text, Path(output_dir))  # --tune: the study, before the recipe it chose
    text = with_export_section(text, Path(output_dir), context["repo_id"])  # ONNX / int8 export, before "Files"
    return ModelCard(re.sub(r"\n{3,}", "\n\n", text))


def backbone_library(model_cfg: dict) -> str:
    """The library the backbone comes from: ``timm`` (images, and audio on log-mel spectrograms) or ``transformers``."""
    return "timm" if model_cfg["backbone"]["type"] in ("timm", "audio_timm") else "transformers"


def card_context(output_dir: Path, repo_id: str | None = None) -> dict:
    """Every template variable, preformatted (the template only lays out strings)."""
    model_cfg = read_model_config(output_dir)
    results = RunResults.read(output_dir)
    recipe = results.transfer if results is not None else None
    modality = model_cfg.get("modality", "image" if model_cfg["backbone"]["type"] == "timm" else "text")
    repo_id = repo_id or default_repo_id(output_dir)
    base = describe_base_model(model_cfg=model_cfg, recipe=recipe)
    dataset = describe_dataset(recipe=recipe, modality=modality)
    labels = [model_cfg["id2label"][key] for key in sorted(model_cfg["id2label"], key=int)]
    weights_format = model_cfg.get("weights_format", "hftransfer")
    return {
        "card_data": hub_metadata_yaml(model_cfg=model_cfg, results=results, base=base, dataset=dataset,
                                       modality=modality, repo_id=repo_id),
        "title": repo_id.split("/")[-1],
        "summary": summary_sentence(modality=modality, base_short=base.short, dataset=dataset, recipe=recipe,
                                    num_labels=len(labels), weights_format=layout_name(model_cfg)),
        "modality": modality,
        "backbone_library": backbone_library(model_cfg),
        "repo_id": repo_id,
        "multi_label": bool(model_cfg.get("multi_label")),
        "base_model_display": base.display,
        "head_display": head_display(head_cfg=model_cfg.get("head", {}), feature_dim=model_cfg.get("feature_dim"),
                                     num_labels=len(labels)),
        "pooling": pooling_display(model_cfg),
        "dataset_display": dataset.display,
        "train_samples": recipe.train_samples if recipe else (results.train_samples if results else None),
        "eval_samples": recipe.eval_samples if recipe else (results.metrics.get("eval_samples") if results else None),
        "num_labels": len(labels),
        "labels_display": labels_display(labels),
        "files": files_table(output_dir=output_dir, weights_format=weights_format),
        "versions": framework_versions(recipe=recipe, hftransfer_version=model_cfg.get("hftransfer_version", "?")),
        **loading_context(model_cfg),
        **figures_context(output_dir),
        **optional_blocks_context(results),
        **results_context(results),
        **recipe_context(recipe),
    }


def read_model_config(output_dir: Path) -> dict:
    model_cfg = read_json(output_dir / CONFIG_NAME)
    if not model_cfg:
        raise HFTransferError(f"'{output_dir}' has no {CONFIG_NAME}: write the card of a finished run "
                              "or of a folder written by TransferModel.save_pretrained")
    return model_cfg


def default_repo_id(output_dir: Path) -> str:
    """The run's ``hub_model_id`` from ``config.yaml``, else a placeholder named after the folder."""
    return read_yaml(output_dir / RUN_CONFIG_NAME).get("hub_model_id") or f"<your-username>/{output_dir.resolve().name}"


def layout_name(model_cfg: dict) -> str:
    """The weight layout as the summary names it."""
    weights_format = model_cfg.get("weights_format", "hftransfer")
    return f"{weights_format} (with transformers custom code)" if model_cfg.get("remote_code") else weights_format


def hub_metadata_yaml(model_cfg: dict, results: RunResults | None, base: BaseModelDescription,
                      dataset: DatasetDescription, modality: str, repo_id: str) -> str:
    """The card's YAML header: what the Hub indexes (library, base model, datasets, license, tags, model-index)."""
    from huggingface_hub import ModelCardData

    pipeline_tag = f"{modality}-classification"
    eval_results = hub_eval_results(results=results, dataset_type=dataset.type, dataset_name=dataset.name,
                                    dataset_config=dataset.config, pipeline_tag=pipeline_tag,
                                    multi_label=bool(model_cfg.get("multi_label")))
    native = model_cfg.get("native") or {}
    card_data = ModelCardData(
        # custom-code exports load with transformers too, so the Hub shows its snippet
        library_name=native.get("library") or ("transformers" if model_cfg.get("remote_code") else "hftransfer"),
        base_model=base.hub_id,
        base_model_relation="finetune" if base.hub_id else None,
        datasets=[dataset.hub_id] if dataset.hub_id else None,
        license=base_model_license(model_cfg=model_cfg, base_hub_id=base.hub_id, modality=modality),
        tags=list(dict.fromkeys(["hftransfer", "transfer-learning", pipeline_tag,
                                 backbone_library(model_cfg)])),
        pipeline_tag=pipeline_tag,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
        metrics=["accuracy", "f1"] if eval_results else None,
    )
    return card_data.to_yaml()


def loading_context(model_cfg: dict) -> dict:
    """What "How to use" needs: the native library the weights load with, else why not and whether custom code ships."""
    native = model_cfg.get("native") or {}
    return {"native_library": native.get("library"), "native_architecture": native.get("architecture"),
            "native_reason": model_cfg.get("native_unavailable", "no native equivalent").rstrip("."),
            "remote_code": model_cfg.get("remote_code")}


def figures_context(output_dir: Path) -> dict:
    """The plots the run saved, linked only when they are there."""
    return {"confusion_png": CONFUSION_PNG if (output_dir / CONFUSION_PNG).is_file() else None,
            "curves_png": CURVES_PNG if (output_dir / CURVES_PNG).is_file() else None}


def optional_blocks_context(results: RunResults | None) -> dict:
    """The blocks a run has only when it was asked for them (``--compare_scratch``, ``auto``, target data)."""
    if results is None:
        return {"transfer_gain": None, "backbone_choice": None, "domain_adaptation": None}
    return {"transfer_gain": transfer_gain_block(results.transfer_gain) if results.transfer_gain else None,
            "backbone_choice": backbone_choice_block(results.backbone_choice) if results.backbone_choice else None,
            "domain_adaptation": domain_adaptation_block(results.domain_adaptation)
            if results.domain_adaptation else None}
