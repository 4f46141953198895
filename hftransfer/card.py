"""Model cards that record the transfer recipe, generated from a run's output folder.

``write_model_card(output_dir)`` reads what the run left there: ``hftransfer_config.json`` (the
model: backbone, head, labels, weight layout; required), ``all_results.json`` (metrics, per-class
results, history and the ``transfer`` recipe description; optional) and ``config.yaml`` (the
resolved run config; optional), and renders ``model_cards/model_card.md`` (Jinja) into
``README.md``: Hub metadata (library_name, base_model, datasets, license, tags, pipeline_tag,
model-index with the evaluation results) and a body with the recipe, data, per-class results,
loading instructions for the layout the weights were saved in, and framework versions.

The output is deterministic (no timestamps), so re-pushing an unchanged run makes no commit. No
absolute local paths are written: local data and models are named by their last path parts.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import HFTransferError

TEMPLATE_NAME = "model_card.md"
CARD_NAME = "README.md"
# Offline bundles (see offline.py) -> the Hub repos they are copies of, for ``base_model``.
BUNDLED_BASE_MODELS = {"all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
                       "sentence-transformers/all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
BUNDLED_LICENSES = {"sentence-transformers/all-MiniLM-L6-v2": "apache-2.0"}
STRATEGY_DESCRIPTIONS = {
    "full": "every layer trains from the first step",
    "linear_probe": "the backbone stays frozen; only the head trains",
    "partial": "only the top {unfreeze_top_k} backbone group(s) and the head train",
    "gradual": "the head trains first, then one more backbone group unfreezes every {unfreeze_every} epoch(s), "
               "from the top down (ULMFiT-style gradual unfreezing)",
    "lp_ft": "{lp_epochs} epoch(s) of linear probing, then the whole model fine-tunes from that probe head with the "
             "head at the backbone learning rate (LP-FT, Kumar et al. 2022)",
}
FILE_DESCRIPTIONS = {
    "model.safetensors": "the weights ({layout})",
    "config.json": "native config: architecture, labels, preprocessing",
    "hftransfer_config.json": "hftransfer config: backbone, head, labels, weight layout",
    "encoder_config.json": "the text encoder's transformers config (used by hftransfer)",
    "all_results.json": "final metrics, per-class results, training history and the full transfer recipe",
    "eval_results.json": "metrics of the exported (best) epoch",
    "eval_predictions.jsonl": "per-example labels and predictions on the eval split",
    "config.yaml": "the resolved run configuration (rerun with `--config config.yaml`)",
    "confusion_matrix.png": "confusion matrix of the exported epoch on the eval split",
    "training_curves.png": "loss and accuracy per epoch",
    "per_class_metrics.csv": "per-class precision, recall, F1 and support on the eval split",
    "tokenizer.json": "tokenizer", "tokenizer_config.json": "tokenizer settings", "vocab.txt": "tokenizer vocabulary",
    "special_tokens_map.json": "tokenizer special tokens", "merges.txt": "tokenizer merges",
}
BN_STATS_DESCRIPTIONS = {
    "frozen": "BatchNorm layers of frozen groups keep their pretrained running statistics",
    "all": "every BatchNorm layer keeps its pretrained running statistics (eval mode while training)",
    "none": "BatchNorm running statistics update in every layer",
}
TRANSFER_GAIN_NAMES = {
    "pretrained_accuracy": "accuracy, pretrained init", "scratch_accuracy": "accuracy, random init (mean)",
    "gain": "transfer gain", "noise_margin": "noise margin (2 standard errors)",
    "se_examples": "standard error over eval examples (paired)", "sd_scratch_seeds": "std over from-scratch seeds",
    "negative_transfer": "negative transfer", "scratch_seeds": "from-scratch seeds",
}
MAX_LABELS_SHOWN = 50
MAX_CLASS_ROWS = 100


def template_path() -> Path:
    """``model_cards/model_card.md``: inside the package when installed as a wheel, else at the repo root."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "model_cards" / TEMPLATE_NAME, here.parent / "model_cards" / TEMPLATE_NAME):
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
    card = build_model_card(output_dir, repo_id)
    path = output_dir / CARD_NAME
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(str(card))
    tmp.replace(path)
    return path


def build_model_card(output_dir: Path, repo_id: str | None = None):
    """The ``huggingface_hub.ModelCard`` of ``output_dir`` (see ``write_model_card``)."""
    import jinja2
    from huggingface_hub import ModelCard

    context = card_context(Path(output_dir), repo_id)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    text = env.from_string(template_path().read_text()).render(**context)
    return ModelCard(re.sub(r"\n{3,}", "\n\n", text))


# ---------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _read_yaml(path: Path) -> dict:
    import yaml

    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def card_context(output_dir: Path, repo_id: str | None = None) -> dict:
    """Every template variable, preformatted (the template only lays out strings)."""
    from huggingface_hub import ModelCardData

    model_cfg = _read_json(output_dir / "hftransfer_config.json")
    if not model_cfg:
        raise HFTransferError(f"'{output_dir}' has no hftransfer_config.json: write the card of a finished run "
                              "or of a folder written by TransferModel.save_pretrained")
    results = _read_json(output_dir / "all_results.json")
    run_cfg = _read_yaml(output_dir / "config.yaml")
    transfer = results.get("transfer", {})
    modality = model_cfg.get("modality", "image" if model_cfg["backbone"]["type"] == "timm" else "text")
    pipeline_tag = f"{modality}-classification"
    repo_id = repo_id or run_cfg.get("hub_model_id") or f"<your-username>/{output_dir.resolve().name}"
    labels = [model_cfg["id2label"][k] for k in sorted(model_cfg["id2label"], key=int)]
    multi_label = bool(model_cfg.get("multi_label"))
    fmt = model_cfg.get("weights_format", "hftransfer")
    native = model_cfg.get("native") or {}
    base_id, base_display, base_short = _base_model(model_cfg, transfer, run_cfg)
    dataset = _dataset(transfer, run_cfg, modality)
    license_id = _license(model_cfg, run_cfg, base_id, modality)
    library = native.get("library") or "hftransfer"
    backbone_lib = "timm" if modality == "image" else "transformers"

    eval_results = _eval_results(results, dataset, pipeline_tag, multi_label)
    card_data = ModelCardData(
        library_name=library,
        base_model=base_id,
        base_model_relation="finetune" if base_id else None,
        datasets=[dataset["hub_id"]] if dataset["hub_id"] else None,
        license=license_id,
        tags=list(dict.fromkeys(["hftransfer", "transfer-learning", pipeline_tag, backbone_lib])),
        pipeline_tag=pipeline_tag,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
        metrics=["accuracy", "f1"] if eval_results else None,
    )
    head_cfg = model_cfg.get("head", {})
    context = {
        "card_data": card_data.to_yaml(),
        "title": repo_id.split("/")[-1],
        "summary": _summary(modality, base_short, dataset, transfer, labels, fmt),
        "modality": modality,
        "repo_id": repo_id,
        "multi_label": multi_label,
        "native_library": native.get("library"),
        "native_architecture": native.get("architecture"),
        "native_reason": model_cfg.get("native_unavailable", "no native equivalent").rstrip("."),
        "base_model_display": base_display,
        "head_display": _head_display(head_cfg, model_cfg.get("feature_dim"), len(labels)),
        "pooling": _pooling_display(model_cfg),
        "dataset_display": dataset["display"],
        "train_samples": transfer.get("train_samples", results.get("train_samples")),
        "eval_samples": transfer.get("eval_samples", results.get("eval_samples")),
        "num_labels": len(labels),
        "labels_display": _labels_display(labels),
        "files": _files(output_dir, fmt),
        "versions": _versions(transfer, model_cfg),
        "transfer_gain": _transfer_gain(results["transfer_gain"]) if "transfer_gain" in results else None,
        "confusion_png": "confusion_matrix.png" if (output_dir / "confusion_matrix.png").is_file() else None,
        "curves_png": "training_curves.png" if (output_dir / "training_curves.png").is_file() else None,
        **_results_context(results, run_cfg, labels),
        **_recipe_context(transfer, run_cfg, modality),
    }
    return context


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _md(str(value))


def _lr(value) -> str:
    return "n/a" if value is None else f"{value:.2e}".replace("e-0", "e-")


def _md(text: str) -> str:
    """Safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _local_name(path: str) -> str:
    """The last two parts of a local path: enough to recognize it, no home directories in public cards."""
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else path


def _looks_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).exists()


def _is_repo_id(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not _looks_local(name)


def _base_model(model_cfg: dict, transfer: dict, run_cfg: dict) -> tuple[str | None, str, str]:
    """(Hub id for ``base_model`` or None, markdown for the recipe, short markdown for the summary)."""
    backbone = model_cfg["backbone"]
    name = transfer.get("base_model") or run_cfg.get("model_name_or_path") or backbone.get("model_name", "")
    weights = transfer.get("weights") or run_cfg.get("weights")
    arch = backbone.get("architecture") or backbone.get("model_name", name)
    if backbone["type"] == "text":
        arch = _local_name(name) if _looks_local(name) else name
    if weights is None:
        display = f"`{arch}` ({'timm' if backbone['type'] == 'timm' else 'transformers'} backbone)"
        return None, display, display
    if weights == "random":
        return None, f"`{arch}`, randomly initialized (no pretrained weights: nothing was transferred)", \
            f"a randomly initialized `{arch}`"
    if weights != "pretrained":
        display = f"`{arch}` with weights from the local file `{Path(weights).name}`"
        return None, display, display
    hub_id = None
    if backbone["type"] == "timm":
        if name.startswith("hf-hub:"):
            hub_id = name.removeprefix("hf-hub:").split("@")[0]
        elif not name.startswith("local-dir:"):
            hub_id = (backbone.get("pretrained_cfg") or {}).get("hf_hub_id") or None
    else:
        hub_id = BUNDLED_BASE_MODELS.get(name.lower()) or (name if _is_repo_id(name) else None)
    if hub_id:
        link = f"[{hub_id}](https://huggingface.co/{hub_id})"
        return hub_id, f"{link} (pretrained)", link
    return None, f"`{arch}` (pretrained, from a local copy)", f"`{arch}`"


def _dataset(transfer: dict, run_cfg: dict, modality: str) -> dict:
    """``hub_id`` (for metadata) or None, ``display`` (markdown), ``type`` / ``name`` for the model-index."""
    name, config = run_cfg.get("dataset_name"), run_cfg.get("dataset_config_name")
    if name and not _looks_local(name):
        suffix = f" (config `{config}`)" if config else ""
        return {"hub_id": name, "display": f"[{name}](https://huggingface.co/datasets/{name}){suffix}",
                "type": name, "name": name, "config": config}
    source = name or run_cfg.get("train_dir") or run_cfg.get("train_file") or transfer.get("dataset")
    if not source:
        return {"hub_id": None, "display": "not recorded", "type": "custom", "name": "custom", "config": None}
    local = _local_name(str(source))
    if modality == "image" or Path(str(source)).is_dir():
        kind, what = "imagefolder", "local image folder" if modality == "image" else "local dataset folder"
    else:
        kind = Path(str(source)).suffix.lstrip(".").replace("jsonl", "json").replace("tsv", "csv") or "text"
        what = f"local {kind.upper()} file"
    valid = run_cfg.get("validation_dir") or run_cfg.get("validation_file")
    split = f", validation `{_local_name(str(valid))}`" if valid else ""
    return {"hub_id": None, "display": f"{what} `{local}`{split}", "type": kind, "name": local, "config": None}


def _license(model_cfg: dict, run_cfg: dict, base_id: str | None, modality: str) -> str:
    """An explicit ``hub_license`` / ``license`` in the run config, else the base model's, else ``other``."""
    explicit = run_cfg.get("hub_license") or run_cfg.get("license")
    if explicit:
        return str(explicit)
    if base_id and modality == "image":
        licence = (model_cfg["backbone"].get("pretrained_cfg") or {}).get("license")
        if licence:
            return licence
    return BUNDLED_LICENSES.get(base_id or "", "other")


def _eval_results(results: dict, dataset: dict, pipeline_tag: str, multi_label: bool) -> list:
    from huggingface_hub import EvalResult

    if "eval_accuracy" not in results:
        return []
    common = {"task_type": pipeline_tag, "task_name": pipeline_tag.replace("-", " ").capitalize(),
              "dataset_type": dataset["type"], "dataset_name": dataset["name"], "dataset_split": "validation"}
    if dataset.get("config"):
        common["dataset_config"] = dataset["config"]
    out = [EvalResult(metric_type="accuracy", metric_value=round(float(results["eval_accuracy"]), 4),
                      metric_name="Accuracy (exact match)" if multi_label else "Accuracy", **common)]
    if "eval_f1" in results:
        out.append(EvalResult(metric_type="f1", metric_value=round(float(results["eval_f1"]), 4),
                              metric_name="F1 (macro)", metric_config="macro", **common))
    return out


def _summary(modality: str, base_display: str, dataset: dict, transfer: dict, labels: list[str], fmt: str) -> str:
    task = "An image" if modality == "image" else "A text"
    if not transfer:
        return f"{task} classifier ({len(labels)} labels) built with hftransfer on {base_display}."
    strategy = transfer.get("strategy", "?")
    return (f"{task} classifier fine-tuned from {base_display} on {dataset['display']} "
            f"({transfer.get('train_samples', '?')} training examples, {len(labels)} labels) with hftransfer's "
            f"`{strategy}` transfer strategy. Weights are stored in the {fmt} layout.")


def _head_display(head_cfg: dict, feature_dim, num_labels: int) -> str:
    kind = head_cfg.get("type", "custom")
    dropout = head_cfg.get("dropout")
    drop = f", dropout {dropout}" if dropout else ""
    if kind == "linear":
        return f"linear ({feature_dim} -> {num_labels}{drop})"
    if kind == "mlp":
        sizes = " -> ".join(str(s) for s in [feature_dim, *head_cfg.get("hidden_sizes", []), num_labels])
        return f"MLP ({sizes}, GELU{drop})"
    return f"custom `{head_cfg.get('class', kind)}`"


def _pooling_display(model_cfg: dict) -> str | None:
    pooling = model_cfg["backbone"].get("pooling")
    return {"mean": "attention-mask-aware mean of the last hidden states", "cls": "first ([CLS]) token",
            "pooler": "the encoder's pooler (dense + tanh on the first token)"}.get(pooling, pooling)


def _labels_display(labels: list[str]) -> str:
    shown = ", ".join(f"`{label}`" for label in labels[:MAX_LABELS_SHOWN])
    more = len(labels) - MAX_LABELS_SHOWN
    return shown + (f", ... ({more} more, see `config.json` / `hftransfer_config.json`)" if more > 0 else "")


def _results_context(results: dict, run_cfg: dict, labels: list[str]) -> dict:
    if "eval_accuracy" not in results:
        return {"results": None, "per_class": None, "per_class_note": None, "history": None, "best_epoch": None,
                "epochs_run": None, "metric_for_best_model": None}
    rows = [("accuracy", _fmt(results["eval_accuracy"])), ("F1 (macro)", _fmt(results.get("eval_f1"))),
            ("loss", _fmt(results.get("eval_loss")))]
    if results.get("train_runtime") is not None:
        rows.append(("training time", f"{results['train_runtime']:.0f} s on {results.get('world_size', 1)} process(es)"))
    per_class_all = results.get("eval_per_class") or {}
    per_class = [{"label": _md(label), **{k: _fmt(m.get(k)) for k in ("precision", "recall", "f1")},
                  "support": _fmt(m.get("support"))} for label, m in per_class_all.items()]
    note = None
    if len(per_class) > MAX_CLASS_ROWS:
        note = f"First {MAX_CLASS_ROWS} of {len(per_class)} classes; all of them are in `all_results.json`."
        per_class = per_class[:MAX_CLASS_ROWS]
    history = [{"epoch": h.get("epoch"), **{k: _fmt(h.get(k)) for k in ("train_loss", "eval_loss", "eval_accuracy", "eval_f1")}}
               for h in results.get("history", [])]
    return {"results": rows, "per_class": per_class, "per_class_note": note, "history": history,
            "best_epoch": results.get("best_epoch"), "epochs_run": results.get("epochs", len(history)),
            "metric_for_best_model": run_cfg.get("metric_for_best_model", "accuracy")}


def _recipe_context(transfer: dict, run_cfg: dict, modality: str) -> dict:
    if not transfer:
        return {"strategy": None, "strategy_description": None, "learning_rates": None, "schedule": None,
                "regularization": None, "optimization": None, "parameters": "n/a", "phases": None,
                "phase_notes": None, "layer_lrs": None, "layer_decay": None}
    strategy = transfer.get("strategy")
    params = {k: run_cfg.get(k, default) for k, default in (("unfreeze_top_k", 2), ("unfreeze_every", 1), ("lp_epochs", 1))}
    description = STRATEGY_DESCRIPTIONS.get(strategy, "custom strategy").format(**params)
    lr, head_lr, decay = transfer.get("learning_rate"), transfer.get("head_learning_rate"), transfer.get("layer_decay", 1.0)
    learning_rates = f"backbone {_lr(lr)} (peak), head {_lr(head_lr)}"
    if decay not in (None, 1, 1.0):
        learning_rates += f", layer-wise decay {decay} per group from the top"
    phases, notes, group_names = [], [], []
    for i, phase in enumerate(transfer.get("phases", []), 1):
        first, last = (e + 1 for e in phase["epochs"])
        trainable, frozen = phase.get("trainable_backbone_groups", []), phase.get("frozen_backbone_groups", [])
        group_names = group_names or [*frozen, *trainable]
        phases.append({"index": i, "epochs": str(first) if first == last else f"{first}-{last}",
                       "trainable": _span(trainable), "frozen": _span(frozen),
                       "fraction": f"{phase.get('trainable_fraction', 0):.1%}", "head_lr": _lr(phase.get("head_learning_rate"))})
        if phase.get("note"):
            notes.append(f"Phase {i}: {phase['note']}.")
    layer_lrs = None
    if decay not in (None, 1, 1.0) and group_names and lr is not None:
        n = len(group_names)
        layer_lrs = [(_short(g), _lr(lr * decay ** (n - 1 - i))) for i, g in enumerate(group_names)]
        layer_lrs.append(("head", _lr(head_lr)))
    optimization = [f"AdamW, weight decay {transfer.get('weight_decay')} (not on biases and norm weights)"]
    if transfer.get("batch_size"):
        optimization.append(f"batch size {transfer['batch_size']}")
    if transfer.get("epochs"):
        optimization.append(f"{transfer['epochs']} epoch(s)")
    for key, label in (("max_grad_norm", "gradient clipping"), ("mixed_precision", "mixed precision"), ("seed", "seed")):
        if run_cfg.get(key) not in (None, 0, 0.0, "no"):
            optimization.append(f"{label} {run_cfg[key]}")
    total = transfer.get("parameters")
    return {
        "strategy": strategy, "strategy_description": description, "learning_rates": learning_rates,
        "schedule": transfer.get("lr_scheduler"),
        "regularization": _regularization(transfer.get("regularizer"), run_cfg, modality),
        "optimization": ", ".join(optimization),
        "parameters": f"{total:,} in total" if isinstance(total, int) else "n/a",
        "phases": phases, "phase_notes": " ".join(notes) or None, "layer_lrs": layer_lrs, "layer_decay": decay,
    }


def _short(group: str) -> str:
    return group.removeprefix("backbone.")


def _span(groups: list[str]) -> str:
    """Frozen groups are a prefix and trainable ones a suffix of the ordered list: name its ends."""
    if not groups:
        return "none"
    names = [f"`{_short(g)}`" for g in groups]
    if len(names) <= 3:
        return ", ".join(names)
    return f"{names[0]} ... {names[-1]} ({len(names)} groups)"


def _regularization(regularizer, run_cfg: dict, modality: str) -> str:
    """The transfer regularizer and its weight (any shape a recipe records), label smoothing, head dropout, BN policy."""
    parts = []
    if isinstance(regularizer, dict):
        name = regularizer.get("name") or regularizer.get("type") or "regularizer"
        weight = next((regularizer[k] for k in ("weight", "alpha", "strength", "lambda") if k in regularizer), None)
        extra = ", ".join(f"{k} {v}" for k, v in regularizer.items()
                          if k not in ("name", "type", "weight", "alpha", "strength", "lambda"))
        parts.append(f"{name}" + (f", weight {weight}" if weight is not None else "") + (f" ({extra})" if extra else ""))
    elif regularizer:
        weight = run_cfg.get("regularizer_weight") or run_cfg.get(f"{regularizer}_weight")
        parts.append(f"{regularizer}" + (f", weight {weight}" if weight is not None else ""))
    else:
        parts.append("no transfer regularizer (e.g. L2-SP)")
    if run_cfg.get("label_smoothing"):
        parts.append(f"label smoothing {run_cfg['label_smoothing']}")
    if run_cfg.get("head_dropout"):
        parts.append(f"head dropout {run_cfg['head_dropout']}")
    if run_cfg.get("train_norm"):
        parts.append("normalization layers train inside frozen groups")
    bn_stats = BN_STATS_DESCRIPTIONS.get(run_cfg.get("bn_stats"))
    if bn_stats and modality == "image":
        parts.append(bn_stats)
    return "; ".join(parts)


def _transfer_gain(value) -> dict | None:
    """The optional "did transfer help" block: a summary line and the scalar fields, flattened one level."""
    if value in (None, {}, []):
        return None
    if not isinstance(value, dict):
        return {"summary": None, "rows": [("transfer gain", _fmt(value))]}
    rows = []
    for key, item in value.items():
        if key == "summary":
            continue
        name = TRANSFER_GAIN_NAMES.get(key, key.replace("_", " "))
        if isinstance(item, dict):
            rows += [(f"{name} {sub}", _fmt(v)) for sub, v in item.items() if not isinstance(v, (dict, list))]
        elif not isinstance(item, list):
            rows.append((name, _fmt(item)))
    summary = value.get("summary") if isinstance(value.get("summary"), str) else None
    return {"summary": summary, "rows": rows}


def _files(output_dir: Path, fmt: str) -> list[tuple[str, str]]:
    layout = {"timm": "timm key names", "transformers": "transformers key names"}.get(fmt, "hftransfer key names")
    from .export import stale_native_files

    out, stale = [], set(stale_native_files(output_dir))
    for path in sorted(output_dir.iterdir()):
        if path.is_file() and path.name not in stale | {CARD_NAME} and not path.name.endswith((".tmp", ".lock")):
            out.append((path.name, FILE_DESCRIPTIONS.get(path.name, "").format(layout=layout) or "run artifact"))
    return out


def _versions(transfer: dict, model_cfg: dict) -> list[tuple[str, str]]:
    versions = transfer.get("framework_versions")
    if not versions:
        import timm
        import torch
        import transformers

        versions = {"hftransfer": model_cfg.get("hftransfer_version", "?"), "torch": torch.__version__,
                    "timm": timm.__version__, "transformers": transformers.__version__}
    return list(versions.items())
