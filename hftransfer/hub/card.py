"""Model cards that record the transfer recipe, generated from a run's output folder.

``write_model_card(output_dir)`` reads what the run left there:
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

from ..errors import HFTransferError
from ..files import CARD_NAME, CONFIG_NAME, CONFUSION_PNG, CURVES_PNG, RUN_CONFIG_NAME, read_json, read_yaml, write_text
from ..records import RunResults
from . import card_sections as sections

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
