"""The run folder: every file name hftransfer writes, one atomic writer, and the readers.

A leaf module (it imports nothing from hftransfer but ``errors``), so the model, layouts, hub, card
and training modules can all name the same files without importing each other.

Every write goes through ``atomic_path``: the content lands in a temporary sibling that is renamed
over the target only once it is complete, so a crash never leaves a half-written file that a later
run, resume or push would read as finished. ``atomic_dir`` does the same for whole folders.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from .errors import HFTransferError

# ---- what a saved model folder holds --------------------------------------------------------------
CONFIG_NAME = "hftransfer_config.json"  # hftransfer's own model config: backbone, head, labels, layout
WEIGHTS_NAME = "model.safetensors"
NATIVE_CONFIG_NAME = "config.json"  # timm / transformers config, present when the weights use their layout
ENCODER_CONFIG_NAME = "encoder_config.json"  # the text encoder's transformers config
REMOTE_CODE_NAME = "modeling_hftransfer.py"  # transformers custom code, for models without a native layout
IMAGE_PROCESSOR_NAME = "preprocessor_config.json"  # transformers' image processor settings
FEATURE_EXTRACTOR_NAME = IMAGE_PROCESSOR_NAME  # the same file, for audio: the feature extractor (every audio model)
CARD_NAME = "README.md"

# ---- what a run's output_dir holds besides the model ---------------------------------------------
RESULTS_NAME = "all_results.json"
EVAL_RESULTS_NAME = "eval_results.json"
PREDICTIONS_NAME = "eval_predictions.jsonl"
TEST_PREDICTIONS_NAME = "test_predictions.jsonl"
RUN_CONFIG_NAME = "config.yaml"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curves.png"
PER_CLASS_CSV = "per_class_metrics.csv"
CHECKPOINT_DIR = "checkpoints"  # accelerate save_state folders, step_<global step>
BEST_DIR = "best_model"  # the best epoch so far, copied to output_dir at the end
ADAPTER_DIR = "adapter"  # LoRA runs: peft adapter files + head next to the merged model
ADAPTER_HEAD_NAME = "head.safetensors"  # the head, beside a peft adapter (peft files hold only the adapters)
ADAPTER_NORMS_NAME = "norms.safetensors"  # norm layers that moved while LoRA trained (--train_norm, --bn_stats none)
SCRATCH_DIR = "scratch"  # --compare_scratch runs
BACKBONE_CHOICE_NAME = "backbone_choice.json"  # --model_name_or_path auto: the ranking and the choice, reused on resume
FEATURE_CACHE_DIR = "feature_cache"  # auto's default --feature_cache_dir: content-addressed, kept across overwrites
SOURCE_ONLY_DIR = "source_only"  # --compare_source_only: the same run without adaptation
DAPT_DIR = "dapt"  # --domain_adaptation dapt: the continued-pretraining phase's encoder and checkpoints; kept on overwrite
CONTRASTIVE_DIR = "contrastive"  # --strategy contrastive: the backbone tuned on label pairs, reused by a re-run
EPISODIC_DIR = "episodic"  # --strategy episodic: the backbone tuned on prototypical episodes, reused by a re-run
DRAWS_DIR = "draws"  # --shots K --shot_draws N: draws 1..N-1, scored and summarized, not exported
ADAPTED_DIR = "adapted"  # --compare_source_only chose the source-only model: the adapted one moves here
TUNE_DIR = "tune"  # --tune: the Optuna study, its trials and best_recipe.yaml; kept when the final fit replaces a run
TUNE_STUDY_NAME = "study.db"  # tune/study.db: the SQLite storage a resumed study continues from
TUNE_TRIALS_DIR = "trials"  # tune/trials/<number>: each trial's results and config
BEST_RECIPE_NAME = "best_recipe.yaml"  # tune/best_recipe.yaml: the chosen recipe, rerun with --config without search
TUNE_RESULTS_NAME = "tune_results.json"  # the study as data: trials, best trial, parameter importances
TUNE_IMPORTANCE_PNG = "tune_importance.png"  # the parameter-importance bar chart
ONNX_DIR = "onnx"  # hftransfer export / --export_onnx: the ONNX graphs, labels and preprocessing, loadable without hftransfer
ONNX_MODEL_NAME = "model.onnx"  # onnx/model.onnx: fp32, the model's own inputs in, logits out
ONNX_INT8_NAME = "model_int8.onnx"  # onnx/model_int8.onnx: int8 (--quantize int8)
ONNX_PREPROCESSING_NAME = "preprocessing.json"  # onnx/preprocessing.json: how to turn an image or text into the graph's inputs
EXPORT_RESULTS_NAME = "export_results.json"  # onnx/export_results.json: the checks (logit difference, int8 accuracy)
LOGGING_DIR = "runs"  # runs/<run_name>: tracker logs, where transformers' Trainer puts TensorBoard's
TMP_SUFFIX = ".tmp"  # unfinished writes; never pushed, never read
# the files of the custom-code export (models without a native timm / transformers layout)
REMOTE_CODE_FILES = (NATIVE_CONFIG_NAME, REMOTE_CODE_NAME, IMAGE_PROCESSOR_NAME)
HFTRANSFER_FORMAT = "hftransfer"  # ``weights_format`` of weights saved under hftransfer's own key names


# ---- atomic writes ----------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    The rename is atomic on POSIX file systems, so readers see the old file or the complete new
    one, never a part. On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    return write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_yaml(path: str | Path, data: dict) -> Path:
    import yaml

    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def save_safetensors(path: str | Path, tensors: dict, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def copy_file(source: str | Path, target: str | Path) -> Path:
    with atomic_path(target) as tmp:
        shutil.copy2(source, tmp)
    return Path(target)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; it replaces ``path`` (and whatever was there) on success."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        old = path.with_name(path.name + ".old" + TMP_SUFFIX)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- readers ------------------------------------------------------------------------------------------
def read_json(path: str | Path, default: Any = None) -> Any:
    """The parsed file, or ``default`` when it does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else default


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping; ``{}`` for a missing or empty file, a one-line error for anything else."""
    import yaml

    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise HFTransferError(f"config file '{path}' is not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HFTransferError(f"config file '{path}' must hold a mapping of option: value")
    return data


def files_under(folder: Path, suffixes) -> list[Path]:
    """Files under ``folder`` with one of ``suffixes`` (lower case), recursively, sorted; hidden files and folders
    left out."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def stale_native_files(save_dir: Path) -> list[str]:
    """Loader files in ``save_dir`` that its weights do not use (left by an earlier run in the folder).

    A timm / transformers loader would pair such a ``config.json`` (or modeling code) with weights
    of another layout, so cards do not list them and pushes do not upload them.
    """
    path = save_dir / CONFIG_NAME
    if not path.is_file():
        return []
    config = read_json(path, {})
    if config.get("weights_format", HFTRANSFER_FORMAT) != HFTRANSFER_FORMAT:
        used = {NATIVE_CONFIG_NAME}
    elif config.get("remote_code"):
        used = set(REMOTE_CODE_FILES) if config.get("modality") == "image" else {NATIVE_CONFIG_NAME, REMOTE_CODE_NAME}
    else:
        used = set()
    if config.get("modality") == "audio":  # an audio model's feature extractor, whatever the layout
        used.add(FEATURE_EXTRACTOR_NAME)
    return [name for name in REMOTE_CODE_FILES if name not in used and (save_dir / name).is_file()]
