"""The card's sections about the model and its data: base model, head, pooling, dataset, labels, files, versions.

Inputs are the saved model's ``hftransfer_config.json`` (a dict, as written by ``save_pretrained``)
and the run's ``RunDescription`` (``None`` for a model saved outside a run).
"""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from ..files import CARD_NAME, ONNX_DIR, TMP_SUFFIX, stale_native_files
from ..records import RunDescription
from .card_format import looks_like_hub_repo_id, looks_like_local_path, public_path_name

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
    "tune_results.json": "the `--tune` study: every trial's settings, score and time, the best trial, parameter importances",
    "tune_importance.png": "how much each searched setting mattered to the `--tune` study's validation score",
    "tokenizer.json": "tokenizer", "tokenizer_config.json": "tokenizer settings", "vocab.txt": "tokenizer vocabulary",
    "special_tokens_map.json": "tokenizer special tokens", "merges.txt": "tokenizer merges",
}
# onnx/: hftransfer export / --export_onnx (its tokenizer files take the descriptions above)
ONNX_FILE_DESCRIPTIONS = {
    "model.onnx": "ONNX graph (float32) for onnxruntime: the model's inputs in, `logits` out",
    "model_int8.onnx": "ONNX graph quantized to int8, kept because its validation accuracy held (see "
                       "\"Inference and deployment\")",
    "preprocessing.json": "how an image or a text becomes the ONNX graph's inputs (sizes, interpolation and crop, or "
                          "the tokenizer and max length)",
    "config.json": "the ONNX graph's labels (`id2label`, `label2id`), `problem_type` and decision rule",
    "export_results.json": "the ONNX export's checks: logit difference to torch, int8 accuracy against float32",
}
WEIGHT_LAYOUTS = {"timm": "timm key names", "transformers": "transformers key names"}
POOLING_DESCRIPTIONS = {"mean": "attention-mask-aware mean of the last hidden states", "cls": "first ([CLS]) token",
                        "pooler": "the encoder's pooler (dense + tanh on the first token)",
                        "last": "the last token holding text (a decoder LLM's summary of the whole sequence)"}
# named on the card of a model saved outside a run, which has no recorded versions
RUNNING_FRAMEWORKS = ("torch", "timm", "transformers")
MAX_LABELS_SHOWN = 50


@dataclass
class BaseModelDescription:
    hub_id: str | None  # for the ``base_model`` metadata
    display: str  # markdown for the recipe
    short: str  # markdown for the summary


@dataclass
class DatasetDescription:
    hub_id: str | None  # for the ``datasets`` metadata
    display: str
    type: str  # model-index dataset type and name
    name: str
    config: str | None = None


def describe_base_model(model_cfg: dict, recipe: RunDescription | None) -> BaseModelDescription:
    """What the model was fine-tuned from: a Hub link when the pretrained weights came from the Hub."""
    backbone = model_cfg["backbone"]
    name = (recipe.base_model if recipe else "") or backbone.get("model_name", "")
    architecture = backbone.get("architecture") or backbone.get("model_name", name)
    if backbone["type"] in ("text", "audio_transformers"):
        architecture = public_path_name(name) if looks_like_local_path(name) else name
    if recipe is None:
        library = "timm" if backbone["type"] in ("timm", "audio_timm") else "transformers"
        display = f"`{architecture}` ({library} backbone)"
        return BaseModelDescription(hub_id=None, display=display, short=display)
    if recipe.weights == "random":
        return BaseModelDescription(
            hub_id=None, short=f"a randomly initialized `{architecture}`",
            display=f"`{architecture}`, randomly initialized (no pretrained weights: nothing was transferred)")
    if recipe.weights != "pretrained":
        display = f"`{architecture}` with weights from the local file `{Path(recipe.weights).name}`"
        return BaseModelDescription(hub_id=None, display=display, short=display)
    hub_id = pretrained_hub_id(backbone=backbone, name=name)
    if hub_id:
        link = f"[{hub_id}](https://huggingface.co/{hub_id})"
        return BaseModelDescription(hub_id=hub_id, display=f"{link} (pretrained)", short=link)
    return BaseModelDescription(hub_id=None, display=f"`{architecture}` (pretrained, from a local copy)",
                                short=f"`{architecture}`")


def pretrained_hub_id(backbone: dict, name: str) -> str | None:
    """The Hub repo the pretrained backbone weights came from, or ``None`` for a local copy."""
    if backbone["type"] != "timm":
        return BUNDLED_BASE_MODELS.get(name.lower()) or (name if looks_like_hub_repo_id(name) else None)
    if name.startswith("hf-hub:"):
        return name.removeprefix("hf-hub:").split("@")[0]
    if name.startswith("local-dir:"):
        return None
    return (backbone.get("pretrained_cfg") or {}).get("hf_hub_id") or None


def describe_dataset(recipe: RunDescription | None, modality: str) -> DatasetDescription:
    """The training data: a Hub dataset link, or a local folder / file named by its last path parts."""
    source = recipe.dataset if recipe else None
    if not source:
        return DatasetDescription(hub_id=None, display="not recorded", type="custom", name="custom")
    if recipe.dataset_name and not looks_like_local_path(recipe.dataset_name):
        suffix = f" (config `{recipe.dataset_config}`)" if recipe.dataset_config else ""
        link = f"[{source}](https://huggingface.co/datasets/{source})"
        return DatasetDescription(hub_id=source, display=link + suffix, type=source, name=source,
                                  config=recipe.dataset_config)
    kind, what = local_data_kind(source=source, modality=modality)
    split = f", validation `{public_path_name(recipe.validation_data)}`" if recipe.validation_data else ""
    local = public_path_name(source)
    return DatasetDescription(hub_id=None, display=f"{what} `{local}`{split}", type=kind, name=local)


def local_data_kind(source: str, modality: str) -> tuple[str, str]:
    """The model-index dataset type of local data (``imagefolder``, ``csv``, ``json``, ...) and its description."""
    path = Path(source)
    if path.is_dir() or (modality in ("image", "audio") and not path.suffix):
        folders = {"image": ("imagefolder", "local image folder"), "audio": ("audiofolder", "local audio folder")}
        return folders.get(modality, ("imagefolder", "local dataset folder"))
    file_format = path.suffix.lstrip(".").replace("jsonl", "json").replace("tsv", "csv")  # the datasets loader
    if modality in ("image", "audio"):
        return file_format, f"local {modality} manifest ({file_format.upper()})"
    file_format = file_format or "text"
    return file_format, f"local {file_format.upper()} file"


def base_model_license(model_cfg: dict, base_hub_id: str | None, modality: str) -> str:
    """The base model's license (timm's pretrained_cfg, or a known bundled model), else ``other``."""
    if base_hub_id and modality in ("image", "audio"):
        licence = (model_cfg["backbone"].get("pretrained_cfg") or {}).get("license")
        if licence:
            return licence
    return BUNDLED_LICENSES.get(base_hub_id or "", "other")


def summary_sentence(modality: str, base_short: str, dataset: DatasetDescription, recipe: RunDescription | None,
                     num_labels: int, weights_format: str) -> str:
    task = {"image": "An image", "audio": "An audio"}.get(modality, "A text")
    if recipe is None:
        return f"{task} classifier ({num_labels} labels) built with hftransfer on {base_short}."
    return (f"{task} classifier fine-tuned from {base_short} on {dataset.display} "
            f"({recipe.train_samples} training examples, {num_labels} labels) with hftransfer's "
            f"`{recipe.strategy}` transfer strategy. Weights are stored in the {weights_format} layout.")


def head_display(head_cfg: dict, feature_dim, num_labels: int) -> str:
    kind = head_cfg.get("type", "custom")
    dropout = head_cfg.get("dropout")
    drop = f", dropout {dropout}" if dropout else ""
    if kind == "linear":
        return f"linear ({feature_dim} -> {num_labels}{drop})"
    if kind == "mlp":
        sizes = " -> ".join(str(size) for size in [feature_dim, *head_cfg.get("hidden_sizes", []), num_labels])
        return f"MLP ({sizes}, GELU{drop})"
    if kind == "cosine":
        return f"cosine ({feature_dim} -> {num_labels}: scaled cosine similarity to each class's weights{drop})"
    return f"custom `{head_cfg.get('class', kind)}`"


def pooling_display(model_cfg: dict) -> str | None:
    pooling = model_cfg["backbone"].get("pooling")
    return POOLING_DESCRIPTIONS.get(pooling, pooling)


def labels_display(labels: list[str]) -> str:
    shown = ", ".join(f"`{label}`" for label in labels[:MAX_LABELS_SHOWN])
    more = len(labels) - MAX_LABELS_SHOWN
    return shown + (f", ... ({more} more, see `config.json` / `hftransfer_config.json`)" if more > 0 else "")


def files_table(output_dir: Path, weights_format: str) -> list[tuple[str, str]]:
    """(file name, what it holds) for every file that gets pushed: no stale native files, temporaries or locks."""
    layout = WEIGHT_LAYOUTS.get(weights_format, "hftransfer key names")
    rows, stale = [], set(stale_native_files(output_dir))
    for path in sorted(output_dir.iterdir()):
        if path.is_file() and path.name not in stale | {CARD_NAME} and not path.name.endswith((TMP_SUFFIX, ".lock")):
            rows.append((path.name, FILE_DESCRIPTIONS.get(path.name, "").format(layout=layout) or "run artifact"))
    return rows + onnx_files(output_dir)


def onnx_files(output_dir: Path) -> list[tuple[str, str]]:
    """``onnx/*``: the export that is pushed with the model (``hftransfer export`` / ``--export_onnx``)."""
    folder = output_dir / ONNX_DIR
    if not folder.is_dir():
        return []
    return [(f"{ONNX_DIR}/{path.name}", ONNX_FILE_DESCRIPTIONS.get(path.name) or FILE_DESCRIPTIONS.get(path.name)
             or "ONNX export artifact")
            for path in sorted(folder.iterdir())
            if path.is_file() and not path.name.endswith((TMP_SUFFIX, ".lock"))]


def framework_versions(recipe: RunDescription | None, hftransfer_version: str) -> list[tuple[str, str]]:
    """The versions the run recorded; for a model saved outside a run, the installed ones."""
    if recipe and recipe.framework_versions:
        return list(recipe.framework_versions.items())
    return [("hftransfer", hftransfer_version),
            *((framework, installed_version(framework)) for framework in RUNNING_FRAMEWORKS)]


def installed_version(distribution: str) -> str:
    """Read from the package metadata, so that writing a card never imports torch, timm or transformers."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
