"""Per-modality preprocessing: what turns a split's raw column into model inputs, and how to batch them.

A backbone hands out its pipeline (``Backbone.data_pipeline``), so the loaders never ask which
modality they serve. Every pipeline prepares a split once (``prepare``: images decoded and shrunk,
texts tokenized, both cached on disk by ``datasets``), then gives a training view (augmented images,
seeded per example and epoch: ``set_epoch``) and an evaluation view of it, a collate function, the
example lengths used for length-grouped batching (or ``None``), and ``key``: a string that changes
whenever the features of a frozen backbone would, for the feature cache. For prediction, a pipeline
turns raw inputs (image paths / PIL images, or texts) into model batches: ``inference_batches``.
"""
from __future__ import annotations

import io
import itertools
import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import datasets
import torch

from ..errors import HFTransferError
from .augmentations import SeededAugmentation, random_erasing, train_steps
from .splits import INDEX_COLUMN


@dataclass(frozen=True)
class Augmentation:
    """How training images are randomly transformed: random resized crop over ``crop_scale``, a flip, timm's
    ``auto_augment`` policy (None = none) or else ``color_jitter`` (0 = none), and timm's random erasing with
    probability ``reprob``; each example seeded by (``seed``, epoch, index)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    color_jitter: float = 0.4
    seed: int = 0
    auto_augment: str | None = None
    reprob: float = 0.0


@dataclass
class RawBatch:
    """One model batch made from raw inputs: ``rows`` the input indices of its rows, in row order, ``inputs``
    the model inputs on the CPU (None when no input of it was readable), ``failed`` (input index, why) the others."""

    rows: list[int]
    inputs: dict[str, torch.Tensor] | None
    failed: list[tuple[int, str]]


class ImagePipeline:
    """timm preprocessing of one model: decode once, uint8 batches, normalization on the device.

    Training: random resized crop, flip, auto-augment or color jitter, random erasing (``augmentation``; None
    trains on the eval transform); evaluation: resize + center crop. Sizes, interpolation and crop fraction come
    from timm's ``data_config``; images are decoded and shrunk to ``decode_size`` (default: the eval resize size).
    With random erasing (``reprob`` > 0) training batches are normalized float32 instead of uint8 (timm erases
    in normalized space); the backbone takes float input as normalized. Evaluation batches stay uint8.
    """

    def __init__(self, data_config: dict, decode_size: int | None = None, augmentation: Augmentation | None = None):
        self.shorter_side = decode_size if decode_size is not None else resize_size(data_config)
        aug = augmentation or Augmentation()
        train = image_transforms(data_config, True, aug.crop_scale, as_uint8=True,
                                 color_jitter=aug.color_jitter or None, augment=augmentation is not None,
                                 auto_augment=aug.auto_augment, reprob=aug.reprob)
        self.augmentation = SeededAugmentation(train, aug.seed)
        self.eval_transform = image_transforms(data_config, False, as_uint8=True)
        # the feature cache's key: frozen features are computed on the eval transform only, whatever trains
        self.key = repr(self.eval_transform)

    def prepare(self, ds: datasets.Dataset, column: str, split: str) -> datasets.Dataset:
        return decode_images(ds, column, self.shorter_side or None, desc=f"decoding {split} images")

    def train_view(self, ds: datasets.Dataset, column: str) -> datasets.Dataset:
        return with_image_transform(ds, column, self.augmentation)

    def set_epoch(self, epoch: int) -> None:
        self.augmentation.epoch = epoch

    def stream_example(self, value, index: int) -> dict | None:
        """One streamed training image (stored bytes / path record, or a path) decoded, shrunk and augmented on the fly,
        as ``prepare`` + ``train_view`` would; None when there is no image."""
        if not value or (isinstance(value, dict) and value.get("bytes") is None and not value.get("path")):
            return None
        source = value if isinstance(value, str) else value.get("path") or f"example {index}"
        try:
            if isinstance(value, str):
                image = open_image(value, self.shorter_side or None)
            else:
                data = value.get("bytes")
                image = open_image(io.BytesIO(data) if data is not None else value["path"], self.shorter_side or None)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
            raise HFTransferError(f"cannot read image '{source}' ({type(e).__name__}): remove or replace it") from None
        return {"pixel_values": self.augmentation(image, index)}

    def eval_view(self, ds: datasets.Dataset, column: str) -> datasets.Dataset:
        return with_image_transform(ds, column, self.eval_transform)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return collate_images(examples)

    def lengths(self, ds: datasets.Dataset) -> None:
        return None  # every image is the same size after the crop

    def inference_batches(self, inputs: list, batch_size: int, *, workers: int = 0) -> Iterator[RawBatch]:
        """Batches of uint8 eval-transformed images (paths or PIL images), in input order, decoded as training
        decodes them (``open_image``). With ``workers`` threads the next batch decodes while the model runs the
        current one (PIL releases the GIL while decoding and resizing); 0 decodes in the caller's thread."""
        shorter_side = self.shorter_side or None  # prepare's rule: 0 keeps the decoded size

        def load(item) -> tuple[torch.Tensor | None, str | None]:
            try:
                return self.eval_transform(open_image(item, shorter_side)), None
            except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file (OSError, SyntaxError...)
                return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'unreadable'}"

        yield from prefetched_batches(inputs, batch_size, load, _image_batch, workers=workers)


class TextPipeline:
    """Tokenize once without padding; batches are padded dynamically to their longest sequence."""

    def __init__(self, tokenizer, max_seq_length: int):
        from transformers import DataCollatorWithPadding

        self.tokenizer, self.max_seq_length = tokenizer, max_seq_length
        self.collate = DataCollatorWithPadding(tokenizer)
        self.key = f"{type(tokenizer).__name__}|{tokenizer.name_or_path}|max_length={max_seq_length}"

    def prepare(self, ds: datasets.Dataset, column: str, split: str) -> datasets.Dataset:
        return tokenize(ds, column, self.tokenizer, self.max_seq_length)

    def train_view(self, ds: datasets.Dataset, column: str) -> datasets.Dataset:
        return ds

    def eval_view(self, ds: datasets.Dataset, column: str) -> datasets.Dataset:
        return ds

    def lengths(self, ds: datasets.Dataset) -> list[int]:
        return [len(ids) for ids in ds["input_ids"]]

    def set_epoch(self, epoch: int) -> None:
        pass  # nothing random in text preprocessing

    def stream_example(self, value, index: int) -> dict | None:
        """One streamed training text, tokenized on the fly as ``prepare`` does; None for an empty text."""
        if not isinstance(value, str) or not value.strip():
            return None
        return dict(self.tokenizer(value, truncation=True, max_length=self.max_seq_length))

    def inference_batches(self, inputs: list, batch_size: int, *, workers: int = 0) -> Iterator[RawBatch]:
        """Batches of texts tokenized as ``prepare`` does, longest first (each pads to similar lengths, and an
        out-of-memory batch shows at once); empty texts come first, as failed: training skips them too, and a
        prediction for "" would be noise. ``workers`` is unused: tokenizing is one fast call."""
        kept, failed = [], []
        for i, text in enumerate(inputs):
            if not isinstance(text, str):
                raise HFTransferError(f"input {i} is a {type(text).__name__}, not a string: a text model predicts "
                                      "texts")
            if text.strip():
                kept.append(i)
            else:
                failed.append((i, "empty text"))
        if failed:
            yield RawBatch([], None, failed)
        if not kept:
            return
        encoded = self.tokenizer([inputs[i] for i in kept], truncation=True, max_length=self.max_seq_length)
        columns = list(encoded.keys())
        order = sorted(range(len(kept)), key=lambda j: -len(encoded["input_ids"][j]))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = self.collate([{c: encoded[c][j] for c in columns} for j in rows])
            yield RawBatch([kept[j] for j in rows], batch, [])


def prefetched_batches(inputs: list, batch_size: int, load, assemble, *, workers: int = 0) -> Iterator[RawBatch]:
    """``assemble([(index, future of load(inputs[index])), ...])`` per batch of ``batch_size`` inputs, in input order.
    With ``workers`` threads the next batch loads while the caller uses the current one (decoders release the GIL);
    0 loads in the caller's thread."""
    pool = ThreadPoolExecutor(workers) if workers else None

    def submit(chunk: range) -> list[tuple[int, Future]]:
        return [(i, pool.submit(load, inputs[i]) if pool else _finished(load(inputs[i]))) for i in chunk]

    chunks = (range(s, min(s + batch_size, len(inputs))) for s in range(0, len(inputs), batch_size))
    ahead = deque(submit(chunk) for chunk in itertools.islice(chunks, 2))
    try:
        while ahead:
            batch = ahead.popleft()
            ahead.extend(submit(chunk) for chunk in itertools.islice(chunks, 1))
            yield assemble(batch)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _finished(value) -> Future:
    """A future that already holds ``value``: decoding without threads goes through the same batching."""
    future = Future()
    future.set_result(value)
    return future


def _image_batch(futures: list[tuple[int, Future]]) -> RawBatch:
    rows, tensors, failed = [], [], []
    for i, future in futures:
        tensor, error = future.result()
        if error is None:
            rows.append(i)
            tensors.append(tensor)
        else:
            failed.append((i, error))
    return RawBatch(rows, {"pixel_values": torch.stack(tensors)} if tensors else None, failed)


def open_image(source, shorter_side: int | None = None):
    """An RGB PIL image shrunk (bicubic) so its shorter side is ``shorter_side`` pixels, never enlarged (None or 0
    keeps the size): the one decode of training (``decode_images``) and prediction alike.

    ``source``: a path, a binary file object or a PIL image.
    """
    from PIL import Image

    im = source if hasattr(source, "convert") else Image.open(source)
    im.load()
    im = im.convert("RGB")
    if shorter_side and min(im.size) > shorter_side:
        scale = shorter_side / min(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
    return im


def image_suffixes() -> set[str]:
    """File suffixes PIL can open (``.jpg``, ``.png``, ``.webp``, ...), lower case."""
    from PIL import Image

    return {s.lower() for s, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def decode_images(ds: datasets.Dataset, column: str, shorter_side: int | None = None,
                  desc: str = "decoding images") -> datasets.Dataset:
    """Decode every image once: RGB, shrunk so its shorter side is ``shorter_side`` (never enlarged).

    Runs as a ``datasets`` map, so the result is cached on disk by the data's fingerprint and later
    runs and epochs skip the JPEG decode and the big resize; a corrupt or non-image file is named
    here, before training, instead of mid-epoch. The shrink target is the eval transform's resize
    size, which the eval crop and random resized crops of training cut from.
    """

    def fn(batch):
        out = []
        for i, item in enumerate(batch[column]):
            source = item.get("path") or f"example {i}"
            try:
                out.append(open_image(io.BytesIO(item["bytes"]) if item.get("bytes") is not None else item["path"],
                                      shorter_side))
            except Exception as e:
                raise HFTransferError(f"cannot read image '{source}' ({type(e).__name__}): remove or replace that "
                                      "file") from None
        return {column: out}

    raw = ds.cast_column(column, datasets.Image(decode=False))
    return raw.map(fn, batched=True, batch_size=32, desc=desc, features=ds.features)


def resize_size(data_config: dict) -> int:
    """The eval transform's resize (shorter side) before its center crop, as timm computes it."""
    return math.floor(data_config["input_size"][-1] / data_config.get("crop_pct", 0.875))


def image_transforms(data_config: dict, train: bool, crop_scale=(0.08, 1.0), hflip: float = 0.5,
                     color_jitter: float | None = 0.4, augment: bool = True, as_uint8: bool = False,
                     auto_augment: str | None = None, reprob: float = 0.0):
    """Train (random resized crop, flip, auto-augment or jitter, erasing) or eval (resize + center crop) transform
    for a timm model, in timm's order (``data.augmentations.train_steps``).

    Sizes, interpolation, crop fraction and mean/std come from timm's ``data_config``.
    ``augment=False`` trains on the eval transform. ``as_uint8`` stops at a uint8 tensor: batches
    travel 4x smaller and the backbone normalizes on the device; otherwise the output is the
    normalized float tensor timm's own transforms give. Training with ``reprob`` > 0 always ends normalized
    float: timm's random erasing fills boxes with noise drawn in normalized space.
    """
    from torchvision.transforms import v2

    erasing = train and augment and reprob > 0
    if train and augment:
        steps = train_steps(data_config, crop_scale, hflip, color_jitter, auto_augment)
    else:
        interpolation = v2.InterpolationMode(data_config.get("interpolation", "bilinear"))
        steps = [v2.Resize(resize_size(data_config), interpolation=interpolation),
                 v2.CenterCrop(data_config["input_size"][-1])]
    steps.append(v2.PILToTensor())
    if not as_uint8 or erasing:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(data_config["mean"], data_config["std"])]
    if erasing:
        steps.append(random_erasing(reprob))
    return v2.Compose(steps)


def with_image_transform(ds: datasets.Dataset, column: str, transform) -> datasets.Dataset:
    """Apply ``transform`` on access, yielding ``pixel_values``; a ``SeededAugmentation`` gets each example's index."""
    seeded = isinstance(transform, SeededAugmentation)

    def apply(batch):
        images = [im if im.mode == "RGB" else im.convert("RGB") for im in batch[column]]
        if seeded:
            out = {"pixel_values": [transform(im, int(i)) for im, i in zip(images, batch[INDEX_COLUMN])]}
        else:
            out = {"pixel_values": [transform(im) for im in images]}
        for key in ("labels", INDEX_COLUMN):
            if key in batch:
                out[key] = batch[key]
        return out

    return ds.with_transform(apply)


def tokenize(ds: datasets.Dataset, column: str, tokenizer, max_length: int) -> datasets.Dataset:
    """Tokenize once (cached by ``datasets``) without padding; batches are padded dynamically."""

    def fn(batch):
        texts = [t if isinstance(t, str) else "" for t in batch[column]]
        return tokenizer(texts, truncation=True, max_length=max_length)

    return ds.map(fn, batched=True, remove_columns=[column], desc="tokenizing")


def collate_images(examples: list[dict]) -> dict[str, torch.Tensor]:
    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])}
    batch["labels"] = torch.tensor([e["labels"] for e in examples])
    if INDEX_COLUMN in examples[0]:
        batch[INDEX_COLUMN] = torch.tensor([e[INDEX_COLUMN] for e in examples])
    return batch
