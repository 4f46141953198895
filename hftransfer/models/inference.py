"""Batched inference with a trained ``TransferModel``, through exactly the preprocessing its run evaluated with.

``predict(model, inputs)`` takes image paths / PIL images or texts and returns one prediction per
readable input (``label``, ``score``, ``top_k``; see ``predictions.to_predictions``) plus the inputs it
skipped. The model is duck-typed (a ``TransferModel``: ``backbone``, ``id2label``, ``multi_label``,
``forward``), so ``TransferModel.predict`` delegates here.

What makes predictions equal the run's own ``eval_predictions.jsonl``:

* the backbone's own eval pipeline (``backbone.data_pipeline``), whose ``inference_batches`` turn raw
  inputs into batches: images are decoded the way training decodes them (``preprocessing.open_image``:
  RGB, shrunk with bicubic to the pipeline's ``shorter_side``, never enlarged), then go through the
  pipeline's ``eval_transform`` (resize + center crop to uint8) and are normalized on the device by
  the backbone, in its fast layout (channels_last for CNNs), as in training; texts are tokenized with
  truncation at ``max_seq_length`` and padded per batch by the pipeline's collate (attention-masked,
  so padding does not change the logits beyond float noise);
* the run's settings (``InferenceSettings.from_run``: ``decode_size``, ``max_seq_length``,
  ``mixed_precision`` from the run's ``config.yaml``), which ``hftransfer_config.json`` does not hold;
* the run's decision rule: single-label = argmax of the logits (softmax gives the scores),
  multi-label = logit > logit(threshold), i.e. sigmoid > threshold, 0.5 being the evaluation's ``logits > 0``.

Speed: images are decoded on a few threads one batch ahead of the model (PIL releases the GIL while
decoding and resizing) and travel to the device as uint8; texts are batched longest first, so each
batch pads to similar lengths; the results are put back in input order.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..errors import HFTransferError
from ..files import BEST_DIR, RUN_CONFIG_NAME, read_yaml
from .devices import autocast_dtype, resolve_device, usable_cores
from .onnx_runtime import BACKENDS, OnnxSession, find_onnx_file
from .predictions import PredictionResult, Skipped, to_predictions

# a hint every unreadable-input error ends with: where the skip switch is in each entry point
SKIP_HINT = "remove or replace it, or skip unreadable inputs (hftransfer predict without --strict; Python: skip_unreadable=True)"


@dataclass
class InferenceSettings:
    """The run settings that change predictions but are not in ``hftransfer_config.json``.

    Defaults are the recipes' defaults (``options.DataOptions``): ``decode_size`` None = the model's
    eval resize size (0 = keep the decoded size), ``max_seq_length`` 128, ``mixed_precision`` None =
    bf16 autocast on CUDA GPUs that support it, else none.
    """

    decode_size: int | None = None
    max_seq_length: int = 128
    mixed_precision: str | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> "InferenceSettings":
        """The settings a run's ``config.yaml`` records (keys it lacks keep their defaults)."""
        data = read_yaml(path)
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        # a YAML null means "the default", which only the fields defaulting to None can hold
        values = {k: v for k, v in values.items() if v is not None or getattr(cls, k) is None}
        return cls(**values)

    @classmethod
    def from_run(cls, folder: str | Path) -> "InferenceSettings":
        """The settings of the run that saved ``folder``: its ``config.yaml`` (a run's ``output_dir``),
        the parent's for a ``best_model/`` folder, else the defaults."""
        folder = Path(folder)
        for candidate in (folder / RUN_CONFIG_NAME, folder.parent / RUN_CONFIG_NAME if folder.name == BEST_DIR else None):
            if candidate is not None and candidate.is_file():
                return cls.from_file(candidate)
        return cls()

    @classmethod
    def resolve(cls, settings) -> "InferenceSettings":
        """``settings`` as given: None (defaults), an ``InferenceSettings``, a mapping of its fields, or a
        run folder / ``config.yaml`` path."""
        if settings is None:
            return cls()
        if isinstance(settings, cls):
            return settings
        if isinstance(settings, dict):
            unknown = sorted(set(settings) - {f.name for f in fields(cls)})
            if unknown:
                raise HFTransferError(f"unknown inference setting(s) {', '.join(unknown)}: use "
                                      f"{', '.join(f.name for f in fields(cls))}")
            return cls(**settings)
        path = Path(settings)
        if path.is_file():
            return cls.from_file(path)
        if path.is_dir():
            return cls.from_run(path)
        raise HFTransferError(f"settings '{settings}' is neither a run folder nor a config.yaml: pass the run's "
                              "output_dir, its config.yaml, a dict or None")

    def replace(self, **overrides) -> "InferenceSettings":
        """A copy with the given fields replaced (None values are ignored: 'not given')."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return InferenceSettings(**values)


def default_batch_size(modality: str, device: torch.device) -> int:
    """8 images per batch on a CPU, else 32. CNNs on a CPU run fastest on cache-sized batches (measured on
    2 cores with EfficientNet-Lite0: 44-48 images/s at 4-16 per batch, 28-32 at 32; bench/RESULTS.md);
    text encoders and GPUs gain from larger ones."""
    return 8 if modality == "image" and device.type == "cpu" else 32


def predict(model, inputs, *, batch_size: int | None = None, top_k: int = 5, threshold: float = 0.5, device=None,
            settings=None, skip_unreadable: bool = False, progress: bool | None = False,
            mixed_precision: str | None = None, num_workers: int | None = None,
            input_names: list[str] | None = None, backend: str = "torch", onnx_file=None,
            quantized: bool = False) -> PredictionResult:
    """Predict ``inputs`` (image paths / PIL images, strings, or audio files / waveforms, per modality) in batches.

    ``batch_size``: None = ``default_batch_size`` (8 images on a CPU, else 32).
    ``settings``: see ``InferenceSettings.resolve`` (pass the run folder for the run's own
    ``max_seq_length`` / ``decode_size``). ``mixed_precision``: ``auto`` (default: the run's setting,
    else bf16 on GPUs that support it), ``no``, ``bf16`` or ``fp16``. Unreadable images and empty
    texts raise ``HFTransferError`` naming the input, or with ``skip_unreadable`` are left out and
    listed in ``result.skipped`` (callers report them: nothing is logged here). ``progress``: a tqdm
    bar (None: only on a terminal). ``num_workers``: image decoding threads (default: by core count).
    ``input_names``: what each prediction's ``input`` says (default: the path, the text, or ``image i``
    for a PIL image without a file name). The model is put in eval mode on ``device`` (default: CUDA >
    MPS > CPU) in its fast memory layout, as training does; its train/eval mode is restored afterwards.
    ``backend``: ``torch``, or ``onnxruntime``: the same batches through the exported graph ``onnx_file``
    (a ``.onnx`` file, an export folder or a run folder with ``onnx/``; ``quantized`` picks the int8
    graph), on the CPU; the torch model then only supplies the preprocessing and labels.
    """
    if isinstance(inputs, (str, Path, dict)) or hasattr(inputs, "convert") or _is_waveform(inputs):
        inputs = [inputs]  # one path, text, PIL image, waveform (a 1-D float array) or audio dict
    inputs = list(inputs)
    session = _onnx_session(backend, onnx_file, quantized)
    dev = resolve_device("cpu" if session is not None else device)
    batch_size = default_batch_size(model.modality, dev) if batch_size is None else batch_size
    check_arguments(model, batch_size=batch_size, top_k=top_k, threshold=threshold)
    if input_names is not None and len(input_names) != len(inputs):
        raise HFTransferError(f"input_names has {len(input_names)} entries for {len(inputs)} inputs: pass one per "
                              "input")
    names = list(input_names) if input_names is not None else [_input_name(x, i, model.modality)
                                                               for i, x in enumerate(inputs)]
    settings = InferenceSettings.resolve(settings)
    dtype = autocast_dtype(mixed_precision if mixed_precision not in (None, "auto") else settings.mixed_precision, dev)
    pipeline = model.backbone.data_pipeline(decode_size=settings.decode_size, max_seq_length=settings.max_seq_length)
    batches = pipeline.inference_batches(inputs, batch_size, workers=_decode_workers(num_workers, dev))
    was_training = model.training
    model.backbone.use_fast_layout()
    model.to(dev).eval()
    start = time.perf_counter()
    try:
        logits, kept, skipped = _logits(model, batches, names, device=dev, dtype=dtype, skip=skip_unreadable,
                                        progress=progress, session=session)
    finally:
        model.train(was_training)
    predictions = to_predictions(logits, model.id2label, model.multi_label, top_k=top_k, threshold=threshold)
    predictions = [{"input": names[i], **p} for p, i in zip(predictions, kept)]  # input first, as files show it
    where = f"{dev} (onnxruntime, {session.path.name})" if session is not None else str(dev)
    return PredictionResult(predictions, skipped, time.perf_counter() - start, where, logits=logits)


def _onnx_session(backend: str, onnx_file, quantized: bool):
    """None for the torch backend, else an ``OnnxSession`` over the graph ``onnx_file`` names."""
    if backend not in BACKENDS:
        raise HFTransferError(f"unknown backend '{backend}': use {' or '.join(BACKENDS)}")
    if backend == "torch":
        if onnx_file is not None or quantized:
            raise HFTransferError("onnx_file / quantized apply to backend='onnxruntime': pass it, or drop them")
        return None
    if onnx_file is None:
        raise HFTransferError("backend='onnxruntime' needs the exported graph: pass onnx_file (a run folder with "
                              "onnx/, an export folder or a .onnx file)")
    return OnnxSession(find_onnx_file(onnx_file, quantized=quantized))


def check_arguments(model, *, batch_size: int, top_k: int, threshold: float) -> None:
    """One-line errors for arguments out of range (before any input is read)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise HFTransferError(f"batch size {batch_size} is not a positive integer: pass 1 or more (e.g. 32)")
    if not isinstance(top_k, int) or top_k < 1:
        raise HFTransferError(f"top_k {top_k} is not a positive integer: pass 1 or more (it is capped at the "
                              f"model's {model.num_labels} labels)")
    if not 0.0 <= threshold <= 1.0:
        raise HFTransferError(f"threshold {threshold} is outside [0, 1]: pass a probability, e.g. 0.5")


def _is_waveform(inputs) -> bool:
    """One audio clip: a 1-D numpy float array (not a list, nor an array or Series of texts)."""
    return getattr(inputs, "ndim", 0) == 1 and getattr(getattr(inputs, "dtype", None), "kind", "") == "f"


def _input_name(item, i: int, modality: str) -> str:
    """A path or text as given; a PIL image's file name, else ``image i``."""
    if isinstance(item, (str, Path)):
        return str(item)
    return getattr(item, "filename", "") or f"{modality} {i}"


def _decode_workers(num_workers: int | None, device: torch.device) -> int:
    """Image decoding threads: on a small CPU-only machine one helper (the model needs the cores), else up to 4."""
    if num_workers is not None:
        return max(0, num_workers)
    cores = usable_cores()
    return min(4, cores) if device.type != "cpu" else min(4, max(1, cores // 2))


def _logits(model, batches: Iterator, names: list[str], *, device: torch.device, dtype: torch.dtype | None,
            skip: bool, progress: bool | None, session=None) -> tuple[torch.Tensor, list[int], list[Skipped]]:
    """Logits [n_kept, labels] of every readable input in input order, the kept input indices, and the skipped
    inputs, from the pipeline's ``RawBatch`` stream (closed here, so that decoding threads stop on an error)."""
    from tqdm.auto import tqdm

    rows, outputs, skipped = [], [], []
    bar = tqdm(total=len(names), unit=model.modality, desc="predicting",
               disable=None if progress is None else not progress, dynamic_ncols=True)
    with bar, contextlib.closing(batches):
        for batch in batches:
            for i, reason in batch.failed:
                if not skip:
                    what = f"'{names[i]}'" if names[i].strip() else f"input {i}"  # an empty text names nothing
                    raise HFTransferError(f"cannot read {model.modality} {what} ({reason}): {SKIP_HINT}")
                skipped.append(Skipped(names[i], reason))
            if batch.inputs is not None and session is not None:
                outputs.append(session.logits(batch.inputs))
                rows += batch.rows
            elif batch.inputs is not None:
                inputs = {k: v.to(device, non_blocking=True) for k, v in batch.inputs.items()}
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                            enabled=dtype is not None):
                    outputs.append(model(**inputs).logits.float().cpu())
                rows += batch.rows
            bar.update(len(batch.rows) + len(batch.failed))
    if not outputs:
        return torch.empty(0, model.num_labels), [], skipped
    order = torch.tensor(rows).argsort()  # texts ran longest first
    return torch.cat(outputs)[order], [rows[j] for j in order.tolist()], skipped
