"""Batched inference with a trained ``TransferModel``, through exactly the preprocessing its run evaluated with.

``predict(model, inputs)`` takes image paths / PIL images or texts and returns one prediction per
readable input (``label``, ``score``, ``top_k``; see ``to_predictions``) plus the inputs it skipped.
The model is duck-typed (a ``TransferModel``: ``backbone``, ``id2label``, ``multi_label``, ``forward``),
so this module sits below ``model`` and ``model.TransferModel.predict`` delegates here.

What makes predictions equal the run's own ``eval_predictions.jsonl``:

* the backbone's own eval pipeline (``backbone.data_pipeline``): images are decoded the way
  ``preprocessing.decode_images`` does (RGB, shrunk with bicubic to the pipeline's ``shorter_side``,
  never enlarged), then go through the pipeline's ``eval_transform`` (resize + center crop to uint8)
  and are normalized on the device by the backbone, in its fast layout (channels_last for CNNs), as
  in training; texts are tokenized with truncation at ``max_seq_length`` and padded per batch by the
  pipeline's collate (attention-masked, so padding does not change the logits beyond float noise);
* the run's settings (``InferenceSettings.from_run``: ``decode_size``, ``max_seq_length``,
  ``mixed_precision`` from the run's ``config.yaml``), which ``hftransfer_config.json`` does not hold;
* the run's decision rule: single-label = argmax of the logits (softmax gives the scores),
  multi-label = logit > logit(threshold), i.e. sigmoid > threshold, 0.5 being the evaluation's ``logits > 0``.

Speed: images are decoded on a few threads one batch ahead of the model (PIL releases the GIL while
decoding and resizing) and travel to the device as uint8; texts are batched longest first, so each
batch pads to similar lengths, and the results are put back in input order.
"""
from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from ..errors import HFTransferError
from ..files import BEST_DIR, RUN_CONFIG_NAME, read_yaml
from .devices import autocast_dtype, resolve_device, usable_cores

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


@dataclass
class Skipped:
    """An input that could not be read: what it was (path, ``file:line``, ``image 3``) and why."""

    input: str
    reason: str


@dataclass
class PredictionResult:
    """``predictions`` for the readable inputs, in input order, and the ``skipped`` ones."""

    predictions: list[dict] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"


def default_batch_size(modality: str, device: torch.device) -> int:
    """8 images per batch on a CPU, else 32. CNNs on a CPU run fastest on cache-sized batches (measured on
    2 cores with EfficientNet-Lite0: 44-48 images/s at 4-16 per batch, 28-32 at 32; bench/RESULTS.md);
    text encoders and GPUs gain from larger ones."""
    return 8 if modality == "image" and device.type == "cpu" else 32


def predict(model, inputs, batch_size: int | None = None, top_k: int = 5, threshold: float = 0.5, device=None,
            settings=None, skip_unreadable: bool = False, progress: bool | None = False,
            mixed_precision: str | None = None, num_workers: int | None = None,
            input_names: list[str] | None = None) -> PredictionResult:
    """Predict ``inputs`` (image paths / PIL images for an image model, strings for a text model) in batches.

    ``batch_size``: None = ``default_batch_size`` (8 images on a CPU, else 32).
    ``settings``: see ``InferenceSettings.resolve`` (pass the run folder for the run's own
    ``max_seq_length`` / ``decode_size``). ``mixed_precision``: ``auto`` (default: the run's setting,
    else bf16 on GPUs that support it), ``no``, ``bf16`` or ``fp16``. Unreadable images and empty
    texts raise ``HFTransferError`` naming the input, or with ``skip_unreadable`` are left out and
    listed in ``result.skipped`` (callers report them: nothing is logged here). ``progress``: a tqdm
    bar (None: only on a terminal). ``num_workers``: image decoding threads (default: by core count). ``input_names``: what each
    prediction's ``input`` says (default: the path, the text, or ``image i`` for a PIL image without a
    file name). The model is put in eval mode on ``device`` (default: CUDA > MPS > CPU) in its fast
    memory layout, as training does; its train/eval mode is restored afterwards.
    """
    if isinstance(inputs, (str, Path)) or hasattr(inputs, "convert"):
        inputs = [inputs]  # one path, text or PIL image
    inputs = list(inputs)
    dev = resolve_device(device)
    batch_size = default_batch_size(model.modality, dev) if batch_size is None else batch_size
    check_arguments(model, batch_size, top_k, threshold)
    if input_names is not None and len(input_names) != len(inputs):
        raise HFTransferError(f"input_names has {len(input_names)} entries for {len(inputs)} inputs: pass one per input")
    settings = InferenceSettings.resolve(settings)
    dtype = autocast_dtype(mixed_precision if mixed_precision not in (None, "auto") else settings.mixed_precision, dev)
    pipeline = model.backbone.data_pipeline(decode_size=settings.decode_size,
                                             max_seq_length=settings.max_seq_length)
    was_training = model.training
    model.backbone.use_fast_layout()
    model.to(dev).eval()
    start = time.perf_counter()
    try:
        if model.modality == "image":
            names = input_names or [_image_name(item, i) for i, item in enumerate(inputs)]
            logits, kept, skipped = _image_logits(model, pipeline, inputs, names, batch_size, dev, dtype,
                                                  skip_unreadable, progress, num_workers)
        else:
            names = input_names or [t if isinstance(t, str) else f"text {i}" for i, t in enumerate(inputs)]
            logits, kept, skipped = _text_logits(model, pipeline, inputs, names, batch_size, dev, dtype,
                                                 skip_unreadable, progress)
    finally:
        model.train(was_training)
    predictions = to_predictions(logits, model.id2label, model.multi_label, top_k, threshold)
    predictions = [{"input": names[i], **p} for p, i in zip(predictions, kept)]  # input first, as files show it
    return PredictionResult(predictions, skipped, time.perf_counter() - start, str(dev))


def check_arguments(model, batch_size: int, top_k: int, threshold: float) -> None:
    """One-line errors for arguments out of range (before any input is read)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise HFTransferError(f"batch size {batch_size} is not a positive integer: pass 1 or more (e.g. 32)")
    if not isinstance(top_k, int) or top_k < 1:
        raise HFTransferError(f"top_k {top_k} is not a positive integer: pass 1 or more (it is capped at the "
                              f"model's {model.num_labels} labels)")
    if not 0.0 <= threshold <= 1.0:
        raise HFTransferError(f"threshold {threshold} is outside [0, 1]: pass a probability, e.g. 0.5")


# ---- images -----------------------------------------------------------------------------------------
def _image_name(item, i: int) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    return getattr(item, "filename", "") or f"image {i}"


def load_image(item, shorter_side: int | None):
    """An RGB PIL image decoded and shrunk exactly as ``preprocessing.decode_images`` does for training.

    ``shorter_side``: shrink (bicubic) so the shorter side is this many pixels, never enlarging; None
    or 0 keeps the size. ``item``: a path or a PIL image.
    """
    from PIL import Image

    im = item if hasattr(item, "convert") else Image.open(item)
    im.load()
    im = im.convert("RGB")
    if shorter_side and min(im.size) > shorter_side:
        scale = shorter_side / min(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
    return im


def _decode_workers(num_workers: int | None, device: torch.device) -> int:
    """Decoding threads: on a small CPU-only machine one helper (the model needs the cores), else up to 4."""
    if num_workers is not None:
        return max(0, num_workers)
    cores = usable_cores()
    return min(4, cores) if device.type != "cpu" else min(4, max(1, cores // 2))


def _image_logits(model, pipeline, inputs, names, batch_size, device, dtype, skip, progress, num_workers):
    """Logits [n_kept, labels] of every readable image, the kept input indices, and the skipped inputs."""
    from tqdm.auto import tqdm

    shorter = pipeline.shorter_side or None  # ImagePipeline.prepare's rule: 0 keeps the decoded size
    transform = pipeline.eval_transform

    def load(item):
        try:
            return transform(load_image(item, shorter)), None
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file (OSError, SyntaxError...)
            return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'unreadable'}"

    workers = _decode_workers(num_workers, device)
    pool = ThreadPoolExecutor(workers) if workers else None
    starts = list(range(0, len(inputs), batch_size))

    def submit(start):
        chunk = range(start, min(start + batch_size, len(inputs)))
        if pool is None:
            return [(i, _Done(load(inputs[i]))) for i in chunk]
        return [(i, pool.submit(load, inputs[i])) for i in chunk]

    outputs, kept, skipped = [], [], []
    bar = tqdm(total=len(inputs), unit="image", desc="predicting", disable=None if progress is None else not progress,
               dynamic_ncols=True)
    ahead = deque(submit(s) for s in starts[:2])  # one batch decodes while the model runs the previous one
    next_start = 2
    try:
        while ahead:
            batch = ahead.popleft()
            if next_start < len(starts):
                ahead.append(submit(starts[next_start]))
                next_start += 1
            tensors = []
            for i, future in batch:
                tensor, error = future.result()
                if error is None:
                    tensors.append(tensor)
                    kept.append(i)
                elif skip:
                    skipped.append(Skipped(names[i], error))
                else:
                    raise HFTransferError(f"cannot read image '{names[i]}' ({error}): {SKIP_HINT}")
            if tensors:
                pixels = torch.stack(tensors).to(device, non_blocking=True)
                outputs.append(_forward(model, {"pixel_values": pixels}, device, dtype))
            bar.update(len(batch))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return _cat(outputs, model), kept, skipped


class _Done:
    """A finished 'future' for decoding without threads."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


# ---- texts ------------------------------------------------------------------------------------------
def _text_logits(model, pipeline, inputs, names, batch_size, device, dtype, skip, progress):
    """Logits of every non-empty text, batched longest first and returned in input order."""
    from tqdm.auto import tqdm

    kept, skipped = [], []
    for i, text in enumerate(inputs):
        if not isinstance(text, str):
            raise HFTransferError(f"input {i} is a {type(text).__name__}, not a string: a text model predicts texts")
        if text.strip():
            kept.append(i)
        elif skip:
            skipped.append(Skipped(names[i], "empty text"))
        else:  # training skips empty texts as well; a prediction for "" would be noise
            raise HFTransferError(f"input {i} is an empty text: {SKIP_HINT}")
    encoded = pipeline.tokenizer([inputs[i] for i in kept], truncation=True, max_length=pipeline.max_seq_length)
    columns = list(encoded.keys())
    order = sorted(range(len(kept)), key=lambda j: -len(encoded["input_ids"][j]))  # longest first: OOM shows at once
    logits = [None] * len(kept)
    bar = tqdm(total=len(inputs), unit="text", desc="predicting", disable=None if progress is None else not progress,
               dynamic_ncols=True)
    bar.update(len(skipped))
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = pipeline.collate([{c: encoded[c][j] for c in columns} for j in rows])
            out = _forward(model, {k: v.to(device) for k, v in batch.items()}, device, dtype)
            for j, row in zip(rows, out):
                logits[j] = row
            bar.update(len(rows))
    finally:
        bar.close()
    return (torch.stack(logits) if logits else _cat([], model)), kept, skipped


# ---- shared -----------------------------------------------------------------------------------------
def _forward(model, batch: dict, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return model(**batch).logits.float().cpu()


def _cat(outputs: list[torch.Tensor], model) -> torch.Tensor:
    return torch.cat(outputs) if outputs else torch.empty(0, model.num_labels)


def to_predictions(logits: torch.Tensor, id2label: dict[int, str], multi_label: bool, top_k: int = 5,
                   threshold: float = 0.5) -> list[dict]:
    """One dict per row of ``logits``, shaped like transformers' classification pipelines plus the label:

    * single-label: ``label`` (the argmax, as evaluation picks it), ``score`` (its softmax
      probability), ``top_k`` (the ``top_k`` most probable ``{"label", "score"}``, capped at the
      number of labels);
    * multi-label: ``label`` / ``score`` are *lists*, the labels whose sigmoid probability exceeds
      ``threshold`` (most probable first; possibly empty: "none of them"), and ``top_k`` the
      ``top_k`` most probable labels whatever the threshold.
    """
    if logits.numel() == 0:
        return []
    names = [id2label[i] for i in range(logits.shape[1])]
    probs = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)
    k = min(top_k, logits.shape[1])
    top_scores, top_ids = probs.topk(k, dim=-1)
    out = []
    if multi_label:
        # decided on the logits: sigmoid(x) > t  <=>  x > logit(t), and logit(0.5) = 0 is evaluation's rule exactly
        cut = math.log(threshold / (1 - threshold)) if 0 < threshold < 1 else (-math.inf if threshold == 0 else math.inf)
        chosen = logits > cut
    else:
        best = logits.argmax(dim=-1)
    for r in range(logits.shape[0]):
        ranked = [{"label": names[i], "score": float(s)} for s, i in zip(top_scores[r].tolist(), top_ids[r].tolist())]
        if multi_label:
            ids = sorted(chosen[r].nonzero().flatten().tolist(), key=lambda i: -float(probs[r, i]))
            out.append({"label": [names[i] for i in ids], "score": [float(probs[r, i]) for i in ids], "top_k": ranked})
        else:
            i = int(best[r])
            out.append({"label": names[i], "score": float(probs[r, i]), "top_k": ranked})
    return out
