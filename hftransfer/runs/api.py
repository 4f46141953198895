"""The Python API a notebook calls: ``finetune``, ``rank_backbones``, ``predict`` and ``export_onnx`` (exported by
``hftransfer``).

Each converts its arguments at the edge, in timm's style, then calls what the entry points call:

* ``finetune(model, train_dir=..., ...)`` builds a ``TrainConfig`` from keyword options (the recipes'
  flag names, without the dashes) over an optional YAML ``config``, works out the modality, runs
  ``runs.train.train`` in this process (single process, like ``python recipes/image_cls.py``) and
  returns a ``FinetuneResult``: the run's ``all_results.json`` as ``RunResults``, its ``metrics``,
  and the exported model loaded back with ``TransferModel.from_pretrained``.
* ``rank_backbones(candidates, train_dir=..., ...)`` is ``hftransfer rank``: the ranking rows.
* ``predict(model, inputs)`` is ``hftransfer predict`` on Python objects: a ``TransferModel``, a
  ``FinetuneResult``, a run folder or a Hub repo id, through the run's own preprocessing settings
  (``backend="onnxruntime"``: through its ONNX export).
* ``export_onnx(model_dir)`` is ``hftransfer export``: the ONNX graph (and int8), checked, as an ``OnnxExport``.

Options set to ``None`` count as not given (their defaults apply). Defaults are ``TrainConfig``'s,
not the recipes' embedded default jobs. Problems are one-line ``HFTransferError``s, raised (not
turned into an exit) so a notebook keeps its state.
"""
from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..config import RankConfig, TrainConfig, load_config, read_config_file
from ..errors import HFTransferError, show_progress_messages
from ..models.inference import InferenceSettings
from ..models.onnx_runtime import default_onnx_dir
from ..models.saved import hub_onnx_file, load_saved_model
from ..models.transfer_model import TransferModel
from ..records import OnnxExport, RunResults
from .modality import expand_folders, infer_modality

HELP_HINT = {"finetune": "python recipes/image_cls.py --help (or text_cls.py) lists them",
             "rank_backbones": "hftransfer rank --help lists them"}
logger = logging.getLogger(__name__)


@dataclass(repr=False)
class FinetuneResult:
    """What ``finetune`` returns: the run's records, its metrics and the trained model.

    ``results``: ``all_results.json`` (``records.RunResults``: history, recipe, per-class scores);
    ``metrics``: its ``eval_*`` (and ``test_*``) scalars, e.g. ``metrics["eval_accuracy"]``;
    ``model``: the exported best model, ``TransferModel.from_pretrained(output_dir)``.
    ``FinetuneResult.load(output_dir)`` reads a finished run back the same way.
    """

    results: RunResults
    model: TransferModel
    output_dir: Path
    metrics: dict = field(init=False)

    def __post_init__(self):
        self.metrics = {**self.results.metrics, **self.results.test_metrics}

    @classmethod
    def load(cls, output_dir: str | os.PathLike) -> FinetuneResult:
        results = RunResults.read(output_dir)
        if results is None:
            raise HFTransferError(f"'{output_dir}' has no all_results.json: pass the output_dir of a finished run")
        return cls(results, TransferModel.from_pretrained(output_dir), Path(output_dir))

    def predict(self, inputs, **kwargs) -> list[dict]:
        """``hftransfer.predict`` with this run's model and preprocessing settings."""
        return predict(self, inputs, **kwargs)

    def __repr__(self) -> str:
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in self.metrics.items()}
        return (f"FinetuneResult(output_dir='{self.output_dir}', model={self.model.modality} "
                f"{len(self.model.id2label)}-label {self.model.backbone.name}, metrics={shown})")


def finetune(model_name_or_path: str | os.PathLike | None = None, *, modality: str | None = None,
             output_dir: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
             **options) -> FinetuneResult:
    """Fine-tune ``model_name_or_path`` on your data and return the results and the trained model.

    ``options`` are ``TrainConfig`` fields, named as the recipes' flags and YAML keys (``train_dir``,
    ``train_file``, ``strategy``, ``num_train_epochs``, ``learning_rate``, ...); ``config`` a YAML file
    of them (keyword options override it). ``modality`` ("image" / "text") is inferred when left out:
    from the data (``train_dir`` or an image manifest is image, a file with the text column is text),
    else from the model (a timm name is image, anything else a transformers text encoder). The run
    writes to ``output_dir`` exactly as a recipe does (an existing one needs ``overwrite_output_dir=True``
    or ``resume_from_checkpoint="latest"``).
    """
    cfg, modality = finetune_config(model_name_or_path, modality=modality, output_dir=output_dir, config=config,
                                    **options)
    show_progress_messages()
    from .train import train

    train(cfg, modality)
    return FinetuneResult.load(cfg.output_dir)


def finetune_config(model_name_or_path=None, *, modality=None, output_dir=None, config=None,
                    **options) -> tuple[TrainConfig, str]:
    """The validated ``TrainConfig`` and modality ``finetune`` would run with (nothing is read or written)."""
    given = {**options, "model_name_or_path": model_name_or_path, "output_dir": output_dir}
    cfg = build_config(TrainConfig, config, given, "finetune").validate()
    return cfg, infer_modality(cfg, modality)


def rank_backbones(candidates, *, output_dir: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
                   **data_options) -> list[dict]:
    """Score ``candidates`` (timm names, transformers ids or folders; ``random:NAME``, ``NAME=FILE``) on the
    training data by LogME and H-score, best first, as ``hftransfer rank`` does.

    ``data_options`` are the data options of the recipes (``train_dir``, ``train_file``, ``validation_dir``,
    ``max_train_samples``, ``feature_cache_dir``, ``pooling``, ...). Returns the rows of ``rank.json``
    (``rank``, ``candidate``, ``logme``, ``h_score``, ``feature_dim``, ``samples``, ``seconds``, ``features``);
    ``rank.csv``, ``rank.json`` and ``rank.png`` go to ``output_dir``.
    """
    specs = [candidates] if isinstance(candidates, (str, os.PathLike)) else list(candidates or [])
    cfg = build_config(RankConfig, config, {**data_options, "candidates": specs, "output_dir": output_dir},
                       "rank_backbones").validate()
    show_progress_messages()
    from .rank import rank_backbones as rank

    return rank(cfg)


def predict(model, inputs, *, batch_size: int | None = None, top_k: int = 5, threshold: float = 0.5, device=None,
            settings=None, skip_unreadable: bool = False, progress: bool | None = False,
            mixed_precision: str | None = None, num_workers: int | None = None, revision: str | None = None,
            backend: str = "torch", onnx_file=None, quantized: bool = False) -> list[dict]:
    """Label ``inputs`` with ``model``: one ``{"input", "label", "score", "top_k"}`` dict per input, in order.

    ``model``: a ``TransferModel``, a ``FinetuneResult``, a run's ``output_dir`` (or any ``save_pretrained``
    folder) or a Hub repo id (``revision``: its branch, tag or commit). ``inputs``: image paths, folders
    of images or PIL images for an image model; strings for a text model; one item or a list. A run
    folder, Hub repo or ``FinetuneResult`` brings the run's preprocessing settings (``decode_size``,
    ``max_seq_length``, ``mixed_precision`` from its ``config.yaml``) unless ``settings`` is given, so
    predictions equal the run's ``eval_predictions.jsonl``. ``backend="onnxruntime"``: the same batches through
    the ONNX export ``onnx_file`` (default: a run folder's or ``FinetuneResult``'s ``onnx/``, made by ``export_onnx``
    or ``--export_onnx``; for a ``TransferModel``, the export beside the folder it was loaded from, else a temporary
    one), ``quantized=True`` its int8 graph. See ``TransferModel.predict`` for the rest.
    """
    from ..models.inference import predict as run_inference

    given = model
    model, run_settings = _model_and_settings(model, revision)
    settings = run_settings if settings is None else settings
    if backend == "onnxruntime" and onnx_file is None:
        onnx_file = _onnx_default(given, model, settings, quantized, revision)
    if model.modality in ("image", "audio"):
        inputs = expand_folders(inputs, model.modality)
    result = run_inference(model, inputs, batch_size=batch_size, top_k=top_k, threshold=threshold, device=device,
                           settings=settings, skip_unreadable=skip_unreadable, progress=progress,
                           mixed_precision=mixed_precision, num_workers=num_workers, backend=backend,
                           onnx_file=onnx_file, quantized=quantized)
    if result.skipped:
        shown = "; ".join(f"{s.input} ({s.reason})" for s in result.skipped[:5])
        logger.warning(f"skipped {len(result.skipped)} unreadable input(s): {shown}"
                       + (" ..." if len(result.skipped) > 5 else ""))
    return result.predictions


def export_onnx(model_dir, *, output: str | os.PathLike | None = None, quantize: str = "none",
                opset: int | None = None, max_accuracy_drop: float = 1.0, calibration_samples: int = 128,
                revision: str | None = None, **data_options) -> OnnxExport:
    """Export a trained model as ONNX, as ``hftransfer export`` does: ``model_dir`` (a run's ``output_dir``, a
    ``FinetuneResult``, a ``save_pretrained`` folder or a Hub repo id) to ``output`` (default: ``model_dir/onnx``).

    The graph's onnxruntime logits are checked against torch's (``record.max_abs_logit_diff``). ``quantize="int8"``
    also writes ``model_int8.onnx``, measured on the run's validation split (the data its ``config.yaml`` names;
    ``data_options``, ``config.export_options.EXPORT_DATA_OPTIONS`` such as ``train_dir`` / ``validation_file``,
    replace it). An int8 graph that loses more than ``max_accuracy_drop`` accuracy points is deleted, no error
    raised: ``record.int8.refused`` says why (``record.int8.int8_accuracy`` / ``fp32_accuracy``: the measures).
    ``opset``: default ``models.onnx_export.DEFAULT_OPSET``. Returns the record (``onnx/export_results.json``;
    ``all_results.json["onnx"]`` for a run folder).
    """
    from ..config.export_options import EXPORT_DATA_OPTIONS, ONNX_MODULES, check_export_values
    from ..models.onnx_export import DEFAULT_OPSET, require
    from .export import export_run

    opset = DEFAULT_OPSET if opset is None else opset
    check_export_values(quantize=quantize, opset=opset, max_accuracy_drop=max_accuracy_drop,
                        calibration_samples=calibration_samples)
    unknown = sorted(set(data_options) - set(EXPORT_DATA_OPTIONS))
    if unknown:
        raise HFTransferError(f"unknown option(s) {', '.join(unknown)} for hftransfer.export_onnx: the data options "
                              f"are {', '.join(EXPORT_DATA_OPTIONS)}")
    for module in ONNX_MODULES:  # before the model loads
        require(module)
    source = model_dir.output_dir if isinstance(model_dir, FinetuneResult) else os.fspath(model_dir)
    show_progress_messages()
    return export_run(source, output=_plain(output), quantize=quantize, opset=opset,
                      max_accuracy_drop=max_accuracy_drop, calibration_samples=calibration_samples,
                      data_options={k: _plain(v) for k, v in data_options.items()}, revision=revision)


# ---- arguments -----------------------------------------------------------------------------------------
def _plain(value):
    """Paths as strings and tuples as lists, the types the config fields hold."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def check_option_names(options: dict, config_cls, entry: str) -> None:
    """One line naming every unknown option, with the close matches among ``config_cls``'s fields."""
    names = [f.name for f in fields(config_cls)]
    unknown = [k for k in options if k not in names]
    if not unknown:
        return
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, names, n=3)
        listed = f"{', '.join(close[:-1])} or {close[-1]}" if len(close) > 1 else "".join(close)
        parts.append(f"'{name}'" + (f" (did you mean {listed}?)" if close else ""))
    raise HFTransferError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(parts)} for hftransfer.{entry}: "
                          f"options are the recipes' flag names without the dashes ({HELP_HINT[entry]})")


def build_config(config_cls, config, options: dict, entry: str):
    """``config_cls`` from its defaults < the YAML ``config`` < ``options`` (None = not given), type-checked
    and converted as flags are, not yet validated."""
    given = {k: _plain(v) for k, v in options.items() if v is not None}
    check_option_names(given, config_cls, entry)
    values = {**read_config_file(_plain(config)), **given}
    if config is not None:
        values["config"] = _plain(config)
    return load_config([], defaults=values, config_cls=config_cls, validate=False)


# ---- models and inputs ---------------------------------------------------------------------------------
def _model_and_settings(model, revision: str | None):
    """(TransferModel, the run's InferenceSettings or None) for whatever ``predict`` was given."""
    if isinstance(model, FinetuneResult):
        return model.model, InferenceSettings.from_run(model.output_dir)
    if isinstance(model, TransferModel):
        return model, None
    if not isinstance(model, (str, os.PathLike)):
        raise HFTransferError(f"model is a {type(model).__name__}: pass a TransferModel, a FinetuneResult, a run's "
                              "output_dir or a Hub repo id")
    return load_saved_model(os.fspath(model), revision)


def _onnx_default(given, model: TransferModel, settings, quantized: bool, revision: str | None):
    """The export ``backend="onnxruntime"`` runs when no ``onnx_file`` is given: a run's (a ``FinetuneResult``, a folder
    or a Hub repo: its ``onnx/``), else ``TransferModel.predict``'s own default (the export beside the folder the
    model was loaded from, else a temporary one)."""
    if isinstance(given, FinetuneResult):
        return given.output_dir
    if isinstance(given, TransferModel):
        return default_onnx_dir(model, InferenceSettings.resolve(settings), quantized=quantized)
    path = os.fspath(given)
    return path if Path(path).is_dir() else hub_onnx_file(path, quantized=quantized, revision=revision)


__all__ = ["FinetuneResult", "export_onnx", "finetune", "finetune_config", "infer_modality", "predict",
           "rank_backbones"]
