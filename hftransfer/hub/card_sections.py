"""The model card's sections, each formatted from the run's records into the strings the template lays out.

Inputs are the saved model's ``hftransfer_config.json`` (a dict, as written by ``save_pretrained``)
and the typed ``RunResults`` / ``RunDescription`` of ``all_results.json`` (either may be ``None``
for a model saved outside a run).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..files import CARD_NAME, TMP_SUFFIX, stale_native_files
from ..records import BackboneChoice, DomainAdaptation, RunDescription, RunResults, TransferGain

# Offline bundles (see offline.py) -> the Hub repos they are copies of, for ``base_model``.
BUNDLED_BASE_MODELS = {"all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
                       "sentence-transformers/all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
BUNDLED_LICENSES = {"sentence-transformers/all-MiniLM-L6-v2": "apache-2.0"}
FILE_DESCRIPTIONS = {
    "model.safetensors": "the weights ({layout})",
    "config.json": "transformers / timm config: architecture, labels, preprocessing",
    "modeling_hftransfer.py": "transformers custom code for this model (load with `trust_remote_code=True`)",
    "preprocessor_config.json": "image processor settings (timm's evaluation transform)",
    "hftransfer_config.json": "hftransfer config: backbone, head, labels, weight layout",
    "encoder_config.json": "the text encoder's transformers config (used by hftransfer)",
    "all_results.json": "final metrics, per-class results, training history and the full transfer recipe",
    "eval_results.json": "metrics of the exported (best) epoch",
    "eval_predictions.jsonl": "per-example labels and predictions on the eval split",
    "test_predictions.jsonl": "per-example labels and predictions of the exported model on the test split",
    "config.yaml": "the resolved run configuration (rerun with `--config config.yaml`)",
    "backbone_choice.json": "how `--model_name_or_path auto` chose the backbone: every candidate's scores and the rule",
    "confusion_matrix.png": "confusion matrix of the exported epoch on the eval split",
    "training_curves.png": "loss and accuracy per epoch",
    "per_class_metrics.csv": "per-class precision, recall, F1 and support on the eval split",
    "tokenizer.json": "tokenizer", "tokenizer_config.json": "tokenizer settings", "vocab.txt": "tokenizer vocabulary",
    "special_tokens_map.json": "tokenizer special tokens", "merges.txt": "tokenizer merges",
}
POOLING_DESCRIPTIONS = {"mean": "attention-mask-aware mean of the last hidden states", "cls": "first ([CLS]) token",
                        "pooler": "the encoder's pooler (dense + tanh on the first token)"}
MAX_LABELS_SHOWN = 50
MAX_CLASS_ROWS = 100


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return md(str(value))


def lr(value) -> str:
    return "n/a" if value is None else f"{value:.2e}".replace("e-0", "e-")


def md(text: str) -> str:
    """Safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def local_name(path: str) -> str:
    """The last two parts of a local path: enough to recognize it, no home directories in public cards."""
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else path


def looks_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).exists()


def is_repo_id(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not looks_local(name)


@dataclass
class BaseModel:
    hub_id: str | None  # for the ``base_model`` metadata
    display: str  # markdown for the recipe
    short: str  # markdown for the summary


def base_model(model_cfg: dict, recipe: RunDescription | None) -> BaseModel:
    backbone = model_cfg["backbone"]
    name = (recipe.base_model if recipe else "") or backbone.get("model_name", "")
    arch = backbone.get("architecture") or backbone.get("model_name", name)
    if backbone["type"] == "text":
        arch = local_name(name) if looks_local(name) else name
    if recipe is None:
        display = f"`{arch}` ({'timm' if backbone['type'] == 'timm' else 'transformers'} backbone)"
        return BaseModel(None, display, display)
    if recipe.weights == "random":
        return BaseModel(None, f"`{arch}`, randomly initialized (no pretrained weights: nothing was transferred)",
                         f"a randomly initialized `{arch}`")
    if recipe.weights != "pretrained":
        display = f"`{arch}` with weights from the local file `{Path(recipe.weights).name}`"
        return BaseModel(None, display, display)
    hub_id = None
    if backbone["type"] == "timm":
        if name.startswith("hf-hub:"):
            hub_id = name.removeprefix("hf-hub:").split("@")[0]
        elif not name.startswith("local-dir:"):
            hub_id = (backbone.get("pretrained_cfg") or {}).get("hf_hub_id") or None
    else:
        hub_id = BUNDLED_BASE_MODELS.get(name.lower()) or (name if is_repo_id(name) else None)
    if hub_id:
        link = f"[{hub_id}](https://huggingface.co/{hub_id})"
        return BaseModel(hub_id, f"{link} (pretrained)", link)
    return BaseModel(None, f"`{arch}` (pretrained, from a local copy)", f"`{arch}`")


@dataclass
class Dataset:
    hub_id: str | None  # for the ``datasets`` metadata
    display: str
    type: str  # model-index dataset type and name
    name: str
    config: str | None = None


def dataset(recipe: RunDescription | None, modality: str) -> Dataset:
    source = recipe.dataset if recipe else None
    if not source:
        return Dataset(None, "not recorded", "custom", "custom")
    if recipe.dataset_name and not looks_local(recipe.dataset_name):
        suffix = f" (config `{recipe.dataset_config}`)" if recipe.dataset_config else ""
        return Dataset(source, f"[{source}](https://huggingface.co/datasets/{source}){suffix}", source, source,
                       recipe.dataset_config)
    local = local_name(source)
    if Path(source).is_dir() or (modality == "image" and not Path(source).suffix):
        kind, what = "imagefolder", "local image folder" if modality == "image" else "local dataset folder"
    elif modality == "image":
        kind = Path(source).suffix.lstrip(".").replace("jsonl", "json").replace("tsv", "csv")
        what = f"local image manifest ({kind.upper()})"
    else:
        kind = Path(source).suffix.lstrip(".").replace("jsonl", "json").replace("tsv", "csv") or "text"
        what = f"local {kind.upper()} file"
    split = f", validation `{local_name(recipe.validation_data)}`" if recipe.validation_data else ""
    return Dataset(None, f"{what} `{local}`{split}", kind, local)


def license_of(model_cfg: dict, base_id: str | None, modality: str) -> str:
    """The base model's license (timm's pretrained_cfg, or a known bundled model), else ``other``."""
    if base_id and modality == "image":
        licence = (model_cfg["backbone"].get("pretrained_cfg") or {}).get("license")
        if licence:
            return licence
    return BUNDLED_LICENSES.get(base_id or "", "other")


def eval_results(results: RunResults | None, data: Dataset, pipeline_tag: str, multi_label: bool) -> list:
    from huggingface_hub import EvalResult

    if results is None or "eval_accuracy" not in results.metrics:
        return []
    common = {"task_type": pipeline_tag, "task_name": pipeline_tag.replace("-", " ").capitalize(),
              "dataset_type": data.type, "dataset_name": data.name, "dataset_split": "validation"}
    if data.config:
        common["dataset_config"] = data.config
    out = []
    for split, prefix, values in (("validation", "eval_", results.metrics), ("test", "test_", results.test_metrics)):
        if f"{prefix}accuracy" not in values:
            continue
        where = {**common, "dataset_split": split}
        out.append(EvalResult(metric_type="accuracy", metric_value=round(float(values[f"{prefix}accuracy"]), 4),
                              metric_name="Accuracy (exact match)" if multi_label else "Accuracy", **where))
        if f"{prefix}f1" in values:
            out.append(EvalResult(metric_type="f1", metric_value=round(float(values[f"{prefix}f1"]), 4),
                                  metric_name="F1 (macro)", metric_config="macro", **where))
    return out


def summary(modality: str, base_short: str, data: Dataset, recipe: RunDescription | None, labels: list[str],
            weights_format: str) -> str:
    task = "An image" if modality == "image" else "A text"
    if recipe is None:
        return f"{task} classifier ({len(labels)} labels) built with hftransfer on {base_short}."
    return (f"{task} classifier fine-tuned from {base_short} on {data.display} "
            f"({recipe.train_samples} training examples, {len(labels)} labels) with hftransfer's "
            f"`{recipe.strategy}` transfer strategy. Weights are stored in the {weights_format} layout.")


def head_display(head_cfg: dict, feature_dim, num_labels: int) -> str:
    kind = head_cfg.get("type", "custom")
    dropout = head_cfg.get("dropout")
    drop = f", dropout {dropout}" if dropout else ""
    if kind == "linear":
        return f"linear ({feature_dim} -> {num_labels}{drop})"
    if kind == "mlp":
        sizes = " -> ".join(str(s) for s in [feature_dim, *head_cfg.get("hidden_sizes", []), num_labels])
        return f"MLP ({sizes}, GELU{drop})"
    return f"custom `{head_cfg.get('class', kind)}`"


def pooling_display(model_cfg: dict) -> str | None:
    pooling = model_cfg["backbone"].get("pooling")
    return POOLING_DESCRIPTIONS.get(pooling, pooling)


def labels_display(labels: list[str]) -> str:
    shown = ", ".join(f"`{label}`" for label in labels[:MAX_LABELS_SHOWN])
    more = len(labels) - MAX_LABELS_SHOWN
    return shown + (f", ... ({more} more, see `config.json` / `hftransfer_config.json`)" if more > 0 else "")


def results_context(results: RunResults | None) -> dict:
    if results is None or "eval_accuracy" not in results.metrics:
        return {"results": None, "per_class": None, "per_class_note": None, "history": None, "best_epoch": None,
                "epochs_run": None, "metric_for_best_model": None, "test_results": None, "test_samples": None}
    m = results.metrics
    rows = [("accuracy", fmt(m["eval_accuracy"])), ("F1 (macro)", fmt(m.get("eval_f1"))), ("loss", fmt(m.get("eval_loss")))]
    if results.train_runtime is not None:
        rows.append(("training time", f"{results.train_runtime:.0f} s on {results.world_size} process(es)"))
    per_class = [{"label": md(label), **{k: fmt(c.get(k)) for k in ("precision", "recall", "f1")},
                  "support": fmt(c.get("support"))} for label, c in results.eval_per_class.items()]
    note = None
    if len(per_class) > MAX_CLASS_ROWS:
        note = f"First {MAX_CLASS_ROWS} of {len(per_class)} classes; all of them are in `all_results.json`."
        per_class = per_class[:MAX_CLASS_ROWS]
    history = [{"epoch": h.epoch, "train_loss": fmt(h.train_loss), "eval_loss": fmt(h.eval_loss),
                "eval_accuracy": fmt(h.eval_accuracy), "eval_f1": fmt(h.eval_f1)} for h in results.history]
    t = results.test_metrics
    test_rows = [("accuracy", fmt(t["test_accuracy"])), ("F1 (macro)", fmt(t.get("test_f1"))),
                 ("loss", fmt(t.get("test_loss")))] if "test_accuracy" in t else None
    return {"results": rows, "per_class": per_class, "per_class_note": note, "history": history,
            "test_results": test_rows, "test_samples": t.get("test_samples"),
            "best_epoch": results.best_epoch, "epochs_run": results.epochs or len(history),
            "metric_for_best_model": results.transfer.metric_for_best_model if results.transfer else "accuracy"}


def recipe_context(recipe: RunDescription | None) -> dict:
    if recipe is None:
        return {"strategy": None, "strategy_description": None, "learning_rates": None, "schedule": None,
                "regularization": None, "optimization": None, "parameters": "n/a", "phases": None,
                "phase_notes": None, "layer_lrs": None, "layer_decay": None, "lora": None}
    decay = recipe.layer_decay
    learning_rates = f"backbone {lr(recipe.learning_rate)} (peak), head {lr(recipe.head_learning_rate)}"
    if decay != 1.0:
        learning_rates += f", layer-wise decay {decay} per group from the top"
    phases, notes = [], []
    for i, phase in enumerate(recipe.phases, 1):
        first, last = (e + 1 for e in phase.epochs)
        phases.append({"index": i, "epochs": str(first) if first == last else f"{first}-{last}",
                       "trainable": span(phase.trainable_backbone_groups), "frozen": span(phase.frozen_backbone_groups),
                       "fraction": f"{phase.trainable_fraction:.1%}", "head_lr": lr(phase.head_learning_rate)})
        if phase.note:
            notes.append(f"Phase {i}: {phase.note}.")
    group_names = [*recipe.phases[0].frozen_backbone_groups, *recipe.phases[0].trainable_backbone_groups] \
        if recipe.phases else []
    layer_lrs = None
    if decay != 1.0 and group_names and recipe.learning_rate is not None:
        n = len(group_names)
        layer_lrs = [(short(g), lr(recipe.learning_rate * decay ** (n - 1 - i))) for i, g in enumerate(group_names)]
        layer_lrs.append(("head", lr(recipe.head_learning_rate)))
    optimization = [f"AdamW, weight decay {recipe.weight_decay} (not on biases and norm weights)"]
    optimization += [f"batch size {recipe.batch_size}"] if recipe.batch_size else []
    optimization += [f"{recipe.epochs} epoch(s)"] if recipe.epochs else []
    for value, label in ((recipe.max_grad_norm, "gradient clipping"), (recipe.mixed_precision, "mixed precision"),
                         (recipe.seed, "seed")):
        if value not in (None, 0, 0.0, "no"):
            optimization.append(f"{label} {value}")
    if recipe.gradient_checkpointing:
        optimization.append("gradient checkpointing (non-reentrant)")
    return {
        "strategy": recipe.strategy, "strategy_description": recipe.strategy_description or "custom strategy",
        "learning_rates": learning_rates, "schedule": recipe.lr_scheduler, "regularization": regularization(recipe),
        "optimization": ", ".join(optimization),
        "parameters": f"{recipe.parameters:,} in total" if isinstance(recipe.parameters, int) else "n/a",
        "phases": phases, "phase_notes": " ".join(notes) or None, "layer_lrs": layer_lrs, "layer_decay": decay,
        "lora": lora(recipe.lora),
    }


def lora(record: dict | None) -> str | None:
    """The LoRA line: rank, alpha, dropout, targets, what trains, and that the export is merged."""
    if not record:
        return None
    targets = ", ".join(f"`{t}`" for t in record["target_modules"])
    return (f"rank {record['r']}, alpha {record['alpha']:g}, dropout {record['dropout']:g} on {targets} "
            f"({record['adapted_layers']} layers); {record['trainable_parameters']:,} trainable parameters "
            f"({record['trainable_fraction']:.2%}: adapters + head{' + norm layers' if record.get('train_norm') else ''}). "
            "The weights here are **merged** (adapters folded into the base weights, loadable as a plain model); "
            "the adapter alone (peft `adapter_config.json` + `adapter_model.safetensors`, with the head as "
            "`head.safetensors`) is in `adapter/`")


def short(group: str) -> str:
    return group.removeprefix("backbone.")


def span(groups: list[str]) -> str:
    """Frozen groups are a prefix and trainable ones a suffix of the ordered list: name its ends."""
    if not groups:
        return "none"
    names = [f"`{short(g)}`" for g in groups]
    if len(names) <= 3:
        return ", ".join(names)
    return f"{names[0]} ... {names[-1]} ({len(names)} groups)"


def regularization(recipe: RunDescription) -> str:
    """L2-SP and its weights, label smoothing, head dropout, the normalization policy."""
    reg = recipe.regularizer
    if reg:
        extra = ", ".join(f"{k} {v}" for k, v in reg.items() if k not in ("name", "alpha"))
        parts = [f"{reg['name']}, weight {reg['alpha']}" + (f" ({extra})" if extra else "")]
    else:
        parts = ["no transfer regularizer (e.g. L2-SP)"]
    if recipe.label_smoothing:
        parts.append(f"label smoothing {recipe.label_smoothing}")
    if recipe.head_dropout:
        parts.append(f"head dropout {recipe.head_dropout}")
    if recipe.train_norm:
        parts.append("normalization layers train inside frozen groups")
    if recipe.norm_policy:
        parts.append(recipe.norm_policy)
    return "; ".join(parts)


def candidate_display(spec: str) -> str:
    """A ranked candidate as the card names it: local folders and weight files by their last path parts."""
    prefix = "random:" if spec.startswith("random:") else ""
    name, _, weights = spec.removeprefix(prefix).partition("=")
    name = local_name(name) if looks_local(name) else name
    return prefix + name + (f"={Path(weights).name if looks_local(weights) else weights}" if weights else "")


def backbone_choice(choice: BackboneChoice) -> dict:
    """The "Backbone choice" block: the rule and its outcome in words, then one row per ranked candidate."""
    rows = [{"rank": r.get("rank"), "candidate": md(candidate_display(r["candidate"])),
             "h_score": fmt(r.get("h_score")), "logme": fmt(r.get("logme")), "dim": fmt(r.get("feature_dim")),
             "chosen": "**chosen**" if r["candidate"] == choice.chosen else
             ("random-init floor" if r["candidate"].startswith("random:") else "")} for r in choice.ranking]
    reason, warning = choice.reason, choice.warning or ""
    for spec in sorted(choice.candidates, key=len, reverse=True):  # no local paths in a public card
        reason, warning = reason.replace(spec, candidate_display(spec)), warning.replace(spec, candidate_display(spec))
    return {"reason": md(reason), "warning": md(warning) if warning else None, "rows": rows,
            "metric": {"h_score": "H-score", "logme": "LogME"}.get(choice.metric, choice.metric),
            "train_samples": choice.train_samples}


def transfer_gain(gain: TransferGain) -> dict:
    """The "did transfer help" block: the summary line and one row per scalar (per-run lists stay in the JSON)."""
    rows = [(name, fmt(getattr(gain, key))) for key, name in TransferGain.LABELS.items()]
    rows += [(key.replace("_", " "), fmt(value)) for key, value in gain.extra.items() if not isinstance(value, (dict, list))]
    return {"summary": gain.summary or None, "rows": rows}


def files(output_dir: Path, weights_format: str) -> list[tuple[str, str]]:
    layout = {"timm": "timm key names", "transformers": "transformers key names"}.get(weights_format, "hftransfer key names")
    out, stale = [], set(stale_native_files(output_dir))
    for path in sorted(output_dir.iterdir()):
        if path.is_file() and path.name not in stale | {CARD_NAME} and not path.name.endswith((TMP_SUFFIX, ".lock")):
            out.append((path.name, FILE_DESCRIPTIONS.get(path.name, "").format(layout=layout) or "run artifact"))
    return out


def versions(recipe: RunDescription | None, model_cfg: dict) -> list[tuple[str, str]]:
    if recipe and recipe.framework_versions:
        return list(recipe.framework_versions.items())
    import timm
    import torch
    import transformers

    return [("hftransfer", model_cfg.get("hftransfer_version", "?")), ("torch", torch.__version__),
            ("timm", timm.__version__), ("transformers", transformers.__version__)]


METHOD_NAMES = {"none": "no adaptation (source-only training)", "dann": "DANN (Ganin et al. 2016)",
                "cdan": "CDAN+E (Long et al. 2018)", "mcc": "MCC (Jin et al. 2020)"}


def domain_adaptation(record: DomainAdaptation) -> dict:
    """The "Domain adaptation" block: method, gap, the label-free selection, the oracle and the source-only twin."""
    gap = record.domain_gap or {}
    gap_text = (f"proxy A-distance {fmt(gap['proxy_a_distance'], 3)} (0 = indistinguishable, 2 = linearly separable), "
                f"MMD {fmt(gap['mmd'])}, on {gap['samples_per_domain']} examples per domain") if gap else None
    rows = [("source validation accuracy (selected epoch)", fmt(record.source_accuracy)),
            ("target information maximization (label-free)", fmt(record.target_im)),
            ("selection score (label-free)", fmt(record.selection_score))]
    if record.target_oracle_accuracy is not None:
        rows.append(("target validation accuracy (**oracle**: target labels, reported only, never used to select)",
                     fmt(record.target_oracle_accuracy)))
        rows.append(("best target validation accuracy of any epoch (oracle)",
                     f"{fmt(record.target_oracle_best_accuracy)} (epoch {record.target_oracle_best_epoch})"))
    if record.target_test_accuracy is not None:
        rows.append((f"target test accuracy, exported model ({record.target_test_samples} examples)",
                     fmt(record.target_test_accuracy)))
    so = record.source_only
    if so is not None:
        if so.target_oracle_accuracy is not None:
            rows.append(("source-only: target validation accuracy (oracle)", fmt(so.target_oracle_accuracy)))
        if so.target_test_accuracy is not None:
            rows.append(("source-only: target test accuracy", fmt(so.target_test_accuracy)))
        rows.append(("source-only: selection score (label-free)", fmt(so.selection_score)))
    return {"method": md(METHOD_NAMES.get(record.method, record.method)), "rule": md(record.selection_rule),
            "target_train_samples": record.target_train_samples, "selected_epoch": record.selected_epoch,
            "gap": gap_text, "rows": rows, "verdict": md(record.verdict) if record.verdict else None,
            "warning": md(record.warning) if record.warning else None}
