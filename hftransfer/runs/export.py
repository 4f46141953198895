"""``hftransfer export`` and ``--export_onnx``: a trained model as an ONNX graph (and int8), checked before it is kept.

1. ``models.onnx_export.export_onnx`` writes ``onnx/model.onnx`` + labels + preprocessing.
2. **fp32 check**: onnxruntime's logits against torch's on up to ``CHECK_EXAMPLES`` validation examples
   (the model's example inputs when no data is named), through the same eval pipeline; a difference
   above ``TOLERANCE`` removes the graph and refuses the export.
3. **int8** (``quantize="int8"``): ``models.quantize`` (static with a seeded calibration sample of the
   training split for CNNs, dynamic for transformer encoders); the int8 graph's accuracy on the
   validation split is compared with the fp32 graph's on the same examples, and an int8 graph that
   loses more than ``max_accuracy_drop`` points is deleted and the refusal recorded with the drop.

The record (``records.OnnxExport``) goes to ``onnx/export_results.json`` and, for a run folder, into
``all_results.json["onnx"]``, from which the card's deployment section is written.
"""
from __future__ import annotations

import logging
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..config.export_options import QUANTIZE_CHOICES
from ..data import DataBundle
from ..errors import HFTransferError
from ..files import BEST_DIR, ONNX_DIR, ONNX_INT8_NAME, ONNX_MODEL_NAME, RUN_CONFIG_NAME, read_yaml
from ..models.inference import InferenceSettings, predict
from ..models.onnx_export import DEFAULT_OPSET, export_onnx
from ..models.quantize import quantize_int8
from ..records import Int8Check, OnnxExport, RunResults
from ..training.inputs import load_data

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4  # fp32 onnxruntime vs torch, max |logit difference|
CHECK_EXAMPLES = 64  # validation examples the fp32 check compares
CALIBRATION_BATCH = 16


def export_model(model, output: str | Path, *, settings: InferenceSettings | None = None, quantize: str = "none",
                 opset: int = DEFAULT_OPSET, data: DataBundle | None = None, max_accuracy_drop: float = 1.0,
                 calibration_samples: int = 128, seed: int = 0) -> OnnxExport:
    """Export ``model`` to ``output`` (fp32, checked; int8 with ``quantize="int8"``, which needs ``data``)."""
    if quantize not in QUANTIZE_CHOICES:
        raise HFTransferError(f"--quantize {quantize} is not one of {', '.join(QUANTIZE_CHOICES)}")
    if quantize == "int8" and data is None:
        raise HFTransferError("--quantize int8 checks the int8 model's accuracy on the validation split, and no data "
                              "is named: export from a run folder (its config.yaml names the data) or pass "
                              "--validation_dir / --validation_file and --train_dir / --train_file")
    settings = settings or InferenceSettings()
    output, start = Path(output), time.perf_counter()
    info = export_onnx(model, output, opset=opset, decode_size=settings.decode_size,
                       max_seq_length=settings.max_seq_length)
    inputs = _eval_inputs(data, CHECK_EXAMPLES) if data is not None else model.backbone.example_inputs()
    reference = _logits(model, inputs, settings)
    diff = float((_logits(model, inputs, settings, output / ONNX_MODEL_NAME) - reference).abs().max())
    if diff > TOLERANCE:
        (output / ONNX_MODEL_NAME).unlink()
        raise HFTransferError(f"the ONNX graph's logits differ from torch's by up to {diff:.2g} (more than "
                              f"{TOLERANCE:g}) on {len(inputs)} examples, so it was not kept: try another --opset")
    record = OnnxExport(folder=str(output), file=ONNX_MODEL_NAME, exporter=info["exporter"], opset=opset,
                        input_names=info["input_names"], checked_examples=len(inputs), max_abs_logit_diff=diff,
                        tolerance=TOLERANCE)
    logger.info(f"exported {output / ONNX_MODEL_NAME} ({info['exporter']}, opset {opset}); onnxruntime logits within "
                f"{diff:.1e} of torch's on {len(inputs)} examples")
    (output / ONNX_INT8_NAME).unlink(missing_ok=True)  # an earlier int8 graph is not this export's
    if quantize == "int8":
        record.int8 = check_int8(model, output, settings=settings, data=data, max_accuracy_drop=max_accuracy_drop,
                                 calibration_samples=calibration_samples, seed=seed)
    record.seconds = round(time.perf_counter() - start, 1)
    OnnxExport.from_dict({**record.to_dict(), "folder": "."}).write(output)  # no local path in what gets pushed
    return record


def check_int8(model, output: Path, *, settings: InferenceSettings, data: DataBundle, max_accuracy_drop: float,
               calibration_samples: int, seed: int) -> Int8Check:
    """Quantize ``output/model.onnx`` and keep ``model_int8.onnx`` only if its validation accuracy holds."""
    method = model.backbone.int8_method
    calibration = (_calibration_batches(model, data, settings, calibration_samples, seed) if method == "static"
                   else None)
    int8_path = output / ONNX_INT8_NAME
    used = quantize_int8(output / ONNX_MODEL_NAME, int8_path, method=method, calibration=calibration)
    inputs, labels = _eval_inputs(data), torch.as_tensor(np.asarray(data.eval["labels"]))
    fp32 = _logits(model, inputs, settings, output / ONNX_MODEL_NAME)
    int8 = _logits(model, inputs, settings, int8_path)
    fp32_pred, int8_pred = _decide(fp32, model.multi_label), _decide(int8, model.multi_label)
    fp32_acc, int8_acc = _accuracy(fp32_pred, labels), _accuracy(int8_pred, labels)
    drop = round((fp32_acc - int8_acc) * 100, 2)
    check = Int8Check(method=method, settings=used, eval_samples=len(inputs), fp32_accuracy=fp32_acc,
                      int8_accuracy=int8_acc, accuracy_drop_points=drop, max_accuracy_drop_points=max_accuracy_drop,
                      agreement=_accuracy(int8_pred, fp32_pred), file=ONNX_INT8_NAME)
    if drop > max_accuracy_drop:
        int8_path.unlink()
        check.file = None
        check.refused = (f"int8 accuracy {int8_acc:.4f} is {drop:.2f} points below fp32's {fp32_acc:.4f} on "
                         f"{len(inputs)} validation examples (limit {max_accuracy_drop:g})")
        logger.warning(f"int8 export refused: {check.refused}; the fp32 graph is kept")
    else:
        logger.info(f"int8 ({method}): validation accuracy {int8_acc:.4f} vs fp32 {fp32_acc:.4f} "
                    f"({-drop:+.2f} points, {len(inputs)} examples) -> {int8_path}")
    return check


def export_run(model_dir: str | Path, *, output: str | Path | None = None, quantize: str = "none",
               opset: int = DEFAULT_OPSET, max_accuracy_drop: float = 1.0, calibration_samples: int = 128,
               data_options: dict | None = None, revision: str | None = None) -> OnnxExport:
    """``hftransfer export MODEL``: load a run folder (or any ``save_pretrained`` folder / Hub repo), read its data
    from its ``config.yaml`` (``data_options`` override it), export, and record the export in the run's
    ``all_results.json`` when ``output`` is the run's own ``onnx/``."""
    from ..models.saved import load_saved_model

    model, settings = load_saved_model(str(model_dir), revision)
    folder = Path(model_dir) if Path(model_dir).is_dir() else None
    output = Path(output) if output else (folder / ONNX_DIR if folder else Path(ONNX_DIR))
    cfg = run_config(folder, data_options or {})
    data = run_data(cfg, model.modality, required=quantize == "int8")
    record = export_model(model, output, settings=settings, quantize=quantize, opset=opset, data=data,
                          max_accuracy_drop=max_accuracy_drop, calibration_samples=calibration_samples,
                          seed=cfg.seed)
    if folder is not None:
        record_in_run(folder, output, record)
    return record


def record_in_run(run_dir: Path, output: Path, record: OnnxExport) -> None:
    """Add the export to the run's ``all_results.json`` (the card reads it there) when it lies inside the run."""
    results = RunResults.read(run_dir) if (run_dir / "all_results.json").is_file() else None
    if results is None or not output.resolve().is_relative_to(run_dir.resolve()):
        return
    record.folder = str(output.resolve().relative_to(run_dir.resolve()))
    results.onnx = record
    results.write(run_dir)


def run_config(folder: Path | None, overrides: dict) -> TrainConfig:
    """The run's own ``TrainConfig`` (its ``config.yaml``; the parent's for ``best_model/``) with ``overrides``."""
    values: dict = {}
    if folder is not None:
        for path in (folder / RUN_CONFIG_NAME, folder.parent / RUN_CONFIG_NAME if folder.name == BEST_DIR else None):
            if path is not None and path.is_file():
                values = dict(read_yaml(path) or {})
                break
    if any(overrides.get(k) for k in ("dataset_name", "train_dir", "validation_dir", "train_file", "validation_file")):
        for key in ("dataset_name", "dataset_config_name", "train_dir", "validation_dir", "test_dir", "train_file",
                    "validation_file", "test_file"):  # data named now replaces the run's, not mixes with it
            values.pop(key, None)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in values.items() if k in known}
    values.setdefault("model_name_or_path", "unused")  # the model comes from the folder; the config only names data
    return TrainConfig(**values)


def names_data(cfg: TrainConfig) -> bool:
    return bool(cfg.dataset_name or cfg.train_dir or cfg.train_file)


def run_data(cfg: TrainConfig, modality: str, *, required: bool) -> DataBundle | None:
    """The run's splits (the fp32 check compares validation examples, int8 needs them); an fp32-only export of a
    model whose data is gone falls back to the backbone's example inputs, with a warning."""
    if not names_data(cfg):
        return None
    try:
        return load_data(cfg, modality)
    except HFTransferError as e:
        if required:
            raise
        logger.warning(f"the run's data could not be read ({e}): the ONNX graph is checked on example inputs only")
        return None


# ---- helpers ----------------------------------------------------------------------------------------
def _eval_inputs(data: DataBundle, limit: int | None = None) -> list:
    ds = data.eval if limit is None else data.eval.select(range(min(limit, len(data.eval))))
    return list(ds[data.input_column])


def _logits(model, inputs: list, settings: InferenceSettings, onnx_file: Path | None = None) -> torch.Tensor:
    backend = "torch" if onnx_file is None else "onnxruntime"
    result = predict(model, inputs, device="cpu", settings=settings, mixed_precision="no", backend=backend,
                     onnx_file=onnx_file)
    return result.logits


def _calibration_batches(model, data: DataBundle, settings: InferenceSettings, n: int, seed: int) -> list[dict]:
    """A seeded sample of ``n`` training examples through the eval pipeline, as onnxruntime feed dicts."""
    sample = data.train.shuffle(seed=seed).select(range(min(n, len(data.train))))
    pipeline = model.backbone.data_pipeline(decode_size=settings.decode_size, max_seq_length=settings.max_seq_length)
    batches = pipeline.inference_batches(list(sample[data.input_column]), CALIBRATION_BATCH)
    return [{k: v.numpy() for k, v in b.inputs.items()} for b in batches if b.inputs is not None]


def _decide(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    return (logits > 0).long() if multi_label else logits.argmax(-1)


def _accuracy(predictions: torch.Tensor, references: torch.Tensor) -> float:
    """Top-1 accuracy, or the exact-match ratio for multi-label rows (the runs' own accuracy)."""
    same = predictions == references.to(predictions.dtype)
    return float((same.all(-1) if same.dim() > 1 else same).float().mean())
