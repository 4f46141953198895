"""Audio preprocessing: the ``AudioPipeline`` of audio models, under the contract of ``preprocessing``'s pipelines.

A split is decoded once (``prepare``: every example read with ``read_audio`` at the model's sampling rate, mono
float32, cached on disk by ``datasets``; unreadable or empty files are dropped and counted). Views then cut each
waveform to ``num_samples`` with one rule, which models apply again: longer ones are cropped (evaluation: the
centre, offset ``(n - num_samples) // 2``; training: a random offset), shorter ones padded with zeros at the
end. Training augments each example seeded by (seed, epoch, index), as images are: random crop, gain and circular
shift, and, for models that compute their own spectrogram, SpecAugment masks that the pipeline only draws
(``spec_masks``: rows (axis, start, width), axis 0 time / 1 frequency, start and width fractions of that axis).
With a transformers feature extractor (wav2vec2, AST, ...) batches are its output and no masks are drawn.

torch is imported where used: ``import hftransfer.data`` stays light.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np

from ..errors import HFTransferError
from ..version import __version__
from .audio_files import AUDIO_SUFFIXES, AudioReadError, read_audio, source_name
from .splits import INDEX_COLUMN, with_index

if TYPE_CHECKING:
    import torch

    from .preprocessing import RawBatch

__all__ = ["AUDIO_SUFFIXES", "AudioReadError", "read_audio", "AudioAugmentation", "AudioPipeline", "fit_length",
           "decode_audio"]

logger = logging.getLogger(__name__)

ERROR_COLUMN = "__audio_error__"  # prepare's per-example reason a file could not be read (None: read)
SHOWN_FAILURES = 3  # file names a skipped-files warning lists


@dataclass(frozen=True)
class AudioAugmentation:
    """How training audio is randomly transformed, each example seeded by (``seed``, epoch, index): a random crop,
    a gain uniform in [-``gain_db``, ``gain_db``] dB, a circular shift of up to ``shift`` of the clip, a speed
    change by a factor uniform in [1 - ``speed``, 1 + ``speed``] (resampling: tempo and pitch together, as another
    voice would say it), and SpecAugment masks: ``time_masks`` / ``freq_masks`` masks, each up to
    ``*_mask_width`` of its axis."""

    seed: int = 0
    gain_db: float = 6.0
    shift: float = 0.1
    speed: float = 0.0
    time_masks: int = 2
    time_mask_width: float = 0.1
    freq_masks: int = 2
    freq_mask_width: float = 0.15

    def __post_init__(self):
        for name in ("shift", "speed", "time_mask_width", "freq_mask_width"):
            if not 0 <= getattr(self, name) <= 1:
                raise HFTransferError(f"audio augmentation {name} is {getattr(self, name)}: use a fraction in [0, 1]")
        for name in ("gain_db", "time_masks", "freq_masks"):
            if getattr(self, name) < 0:
                raise HFTransferError(f"audio augmentation {name} is {getattr(self, name)}: use 0 or more")


def change_speed(wave: np.ndarray, factor: float) -> np.ndarray:
    """``wave`` played ``factor`` times faster (linear interpolation: shorter and higher for ``factor`` > 1)."""
    n = max(1, round(len(wave) / factor))
    return np.interp(np.arange(n) * factor, np.arange(len(wave)), wave).astype(np.float32)


def fit_length(wave: np.ndarray, num_samples: int, offset: int | None = None) -> np.ndarray:
    """``wave`` cut to ``num_samples``: cropped at ``offset`` (None: the centre, ``(n - num_samples) // 2``) when
    longer, padded with zeros at the end when shorter. The one rule of training, evaluation and prediction."""
    wave = np.asarray(wave, dtype=np.float32)
    n = len(wave)
    if n > num_samples:
        start = (n - num_samples) // 2 if offset is None else offset
        return wave[start:start + num_samples]
    if n < num_samples:
        return np.concatenate([wave, np.zeros(num_samples - n, dtype=np.float32)])
    return wave


def draw_spec_masks(rng: np.random.Generator, aug: AudioAugmentation) -> np.ndarray:
    """float32 [time_masks + freq_masks, 3] rows (axis, start, width): time masks (axis 0) first, each width
    uniform in [0, max width] and start uniform in [0, 1 - width], fractions of the axis."""
    rows = []
    for axis, count, max_width in ((0, aug.time_masks, aug.time_mask_width), (1, aug.freq_masks, aug.freq_mask_width)):
        for _ in range(count):
            width = rng.random() * max_width
            rows.append((axis, rng.random() * (1 - width), width))
    return np.asarray(rows, dtype=np.float32).reshape(-1, 3)


class AudioPipeline:
    """Audio preprocessing of one model: decode once at ``sampling_rate``, clips of ``max_duration`` seconds.

    Batches are ``input_values`` float32 [B, num_samples] (and ``spec_masks`` [B, M, 3] for augmented training
    batches), or with a ``feature_extractor`` (a transformers ``SequenceFeatureExtractor``) its output for the
    same clips. ``augmentation`` None trains on the evaluation view.
    """

    def __init__(self, *, sampling_rate: int, max_duration: float, augmentation: AudioAugmentation | None = None,
                 feature_extractor=None):
        if isinstance(sampling_rate, bool) or not (isinstance(sampling_rate, (int, np.integer)) and sampling_rate > 0):
            raise HFTransferError(f"the audio sampling rate is {sampling_rate!r}: use a positive integer (Hz)")
        self.num_samples = round(max_duration * sampling_rate)
        if self.num_samples < 1:
            raise HFTransferError(f"the audio max_duration is {max_duration} s, under one sample at {sampling_rate} "
                                  "Hz: use a positive duration in seconds")
        expected = getattr(feature_extractor, "sampling_rate", None)
        if expected is not None and expected != sampling_rate:
            raise HFTransferError(f"the feature extractor expects {expected} Hz audio, not {sampling_rate} Hz: "
                                  f"use sampling_rate={expected}")
        self.sampling_rate, self.max_duration = int(sampling_rate), max_duration
        self.augmentation, self.feature_extractor = augmentation, feature_extractor
        self.epoch = 0
        self._padding = _padding_kwargs(feature_extractor)
        # the feature cache's key: frozen features are computed on the eval view only, whatever trains
        self.key = (f"audio|sampling_rate={sampling_rate}|num_samples={self.num_samples}|"
                    f"{_extractor_key(feature_extractor)}")

    def prepare(self, ds: datasets.Dataset, column: str, split: str) -> datasets.Dataset:
        return decode_audio(ds, column, self.sampling_rate, split)

    def train_view(self, ds: datasets.Dataset, column: str) -> datasets.Dataset:
        if self.augmentation is None:
            return self.eval_view(ds, column)
        return _with_clips(ds, column, self.augmented, True)

    def eval_view(self, ds: datasets.Dataset, column: str) -> datasets.Dataset:
        return _with_clips(ds, column, lambda wave, index: (fit_length(wave, self.num_samples), None), False)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def lengths(self, ds: datasets.Dataset) -> None:
        return None  # every clip is num_samples long

    def augmented(self, wave, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The training clip of example ``index`` in the current epoch, and its SpecAugment masks (None with a
        feature extractor): every draw from a numpy Generator seeded by (seed, epoch, index) alone."""
        aug, n = self.augmentation, self.num_samples
        wave = np.asarray(wave, dtype=np.float32)
        rng = np.random.default_rng(random.Random(f"{aug.seed}/{self.epoch}/{index}").getrandbits(64))
        offset, gain, shift, speed = rng.random(4)  # drawn whatever the clip's length: the draws after stay put
        if aug.speed:
            wave = change_speed(wave, 1 + (2 * speed - 1) * aug.speed)
        clip = fit_length(wave, n, int(offset * (len(wave) - n + 1)) if len(wave) > n else None)
        clip = clip * np.float32(10 ** ((2 * gain - 1) * aug.gain_db / 20))
        clip = np.roll(clip, round((2 * shift - 1) * int(aug.shift * n)))
        return clip, (draw_spec_masks(rng, aug) if self.feature_extractor is None else None)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        import torch

        batch = self.model_inputs([e["input_values"] for e in examples])
        if "labels" in examples[0]:
            batch["labels"] = torch.tensor([e["labels"] for e in examples])  # ids, or multi-hot float rows
        if INDEX_COLUMN in examples[0]:
            batch[INDEX_COLUMN] = torch.tensor([e[INDEX_COLUMN] for e in examples])
        if "spec_masks" in examples[0]:
            batch["spec_masks"] = torch.from_numpy(np.stack([e["spec_masks"] for e in examples]))
        return batch

    def model_inputs(self, clips: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """The model inputs of clips already cut to ``num_samples``: stacked, or the feature extractor's output."""
        import torch

        if self.feature_extractor is None:
            return {"input_values": torch.from_numpy(np.stack(clips).astype(np.float32, copy=False))}
        features = self.feature_extractor([np.asarray(c, dtype=np.float32) for c in clips],
                                          sampling_rate=self.sampling_rate, return_tensors="pt", **self._padding)
        return dict(features)

    def inference_batches(self, inputs: list, batch_size: int, *, workers: int = 0) -> Iterator[RawBatch]:
        """Batches of evaluation clips of raw inputs (anything ``read_audio`` takes), in input order, decoded as
        training decodes them; an unreadable input is a ``failed`` entry (index, reason) and the others go on.
        With ``workers`` threads the next batch decodes while the model runs the current one."""

        def load(item) -> tuple[np.ndarray | None, str | None]:
            try:
                return fit_length(read_audio(item, self.sampling_rate), self.num_samples), None
            except AudioReadError as e:
                return None, str(e)
            except HFTransferError:
                raise  # soundfile missing: every input would fail alike
            except Exception as e:  # noqa: BLE001 - one odd input must not stop the others
                return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'unreadable'}"

        from .preprocessing import prefetched_batches

        yield from prefetched_batches(inputs, batch_size, load, self._raw_batch, workers=workers)

    def _raw_batch(self, futures: list) -> RawBatch:
        from .preprocessing import RawBatch

        rows, clips, failed = [], [], []
        for i, future in futures:
            clip, error = future.result()
            if error is None:
                rows.append(i)
                clips.append(clip)
            else:
                failed.append((i, error))
        return RawBatch(rows, self.model_inputs(clips) if clips else None, failed)


def _with_clips(ds: datasets.Dataset, column: str, clip_of, seeded: bool) -> datasets.Dataset:
    """``ds`` yielding ``input_values`` (``clip_of(wave, index)``'s clip) on access, ``spec_masks`` when it draws
    masks, and ``labels`` / ``INDEX_COLUMN`` as they are; ``seeded``: ``clip_of`` needs each example's index."""

    def apply(batch):
        indices = batch[INDEX_COLUMN] if seeded else itertools.repeat(0)
        pairs = [clip_of(wave, int(i)) for wave, i in zip(batch[column], indices)]
        out = {"input_values": [clip for clip, _ in pairs]}
        if pairs and pairs[0][1] is not None:
            out["spec_masks"] = [masks for _, masks in pairs]
        for key in ("labels", INDEX_COLUMN):
            if key in batch:
                out[key] = batch[key]
        return out

    return ds.with_transform(apply)


def decode_audio(ds: datasets.Dataset, column: str, sampling_rate: int, split: str = "train") -> datasets.Dataset:
    """Every example of ``column`` read once with ``read_audio`` into a float32 waveform (same column), as a
    ``datasets`` map cached by fingerprint; unreadable and empty ones dropped, with one warning naming a few.

    An ``Audio`` column (or path strings / bytes) is read as ``Audio(decode=False)`` records: ``datasets`` 5
    would decode it through torchcodec and ffmpeg. Other columns are kept.
    """
    if column not in ds.column_names:
        raise HFTransferError(f"no audio column '{column}' in the {split} data (columns: {', '.join(ds.column_names)})"
                              ": pass --audio_column_name")
    feature = ds.features[column]
    if isinstance(feature, datasets.Audio) or (isinstance(feature, datasets.Value) and feature.dtype in (
            "string", "large_string", "binary", "large_binary")):
        ds = ds.cast_column(column, datasets.Audio(decode=False))
    features = datasets.Features({**ds.features, column: datasets.List(datasets.Value("float32")),
                                  ERROR_COLUMN: datasets.Value("string")})
    decoded = ds.map(_decode_batch, batched=True, batch_size=32, writer_batch_size=64, with_indices=True,
                     features=features, fn_kwargs={"column": column, "sampling_rate": sampling_rate},
                     desc=f"decoding {split} audio", **_in_memory_cache(ds, column, sampling_rate))
    return _drop_unreadable(decoded, split)


def _decode_batch(batch: dict, indices: list[int], column: str, sampling_rate: int) -> dict:
    waves, errors = [], []
    for item, i in zip(batch[column], indices):
        try:
            waves.append(read_audio(item, sampling_rate))
            errors.append(None)
        except AudioReadError as e:
            waves.append(np.zeros(0, dtype=np.float32))
            errors.append(f"{source_name(item, i + 1)} ({e})")
    return {column: waves, ERROR_COLUMN: errors}


def _in_memory_cache(ds: datasets.Dataset, column: str, sampling_rate: int) -> dict:
    """For a split held in memory (audio folders, manifests' in-memory steps), the cache file ``datasets`` would
    only pick for one backed by files: the decode is still done once per content and sampling rate."""
    if ds.cache_files:
        return {}  # datasets names the cache file by fingerprint itself
    from datasets.fingerprint import Hasher

    fingerprint = Hasher.hash([ds._fingerprint, "hftransfer.audio.decode", __version__, column, sampling_rate])
    folder = Path(datasets.config.HF_DATASETS_CACHE) / "hftransfer_audio"
    folder.mkdir(parents=True, exist_ok=True)
    return {"cache_file_name": str(folder / f"decoded-{fingerprint}.arrow"), "new_fingerprint": fingerprint}


def _drop_unreadable(decoded: datasets.Dataset, split: str) -> datasets.Dataset:
    """``decoded`` without the examples that could not be read (one warning); all unreadable is an error."""
    if ERROR_COLUMN not in decoded.column_names:  # an empty split: datasets' map adds no column to 0 rows
        return decoded
    errors = list(decoded[ERROR_COLUMN])
    decoded = decoded.remove_columns(ERROR_COLUMN)
    bad = [i for i, error in enumerate(errors) if error is not None]
    if not bad:
        return decoded
    shown = ", ".join(errors[i] for i in bad[:SHOWN_FAILURES]) + (", ..." if len(bad) > SHOWN_FAILURES else "")
    if len(bad) == len(errors):
        raise HFTransferError(f"none of the {len(errors)} {split} audio files could be read ({shown}): pass files "
                              "soundfile reads (WAV, FLAC, OGG, MP3, AIFF, ...), e.g. converted with ffmpeg to WAV")
    logger.warning(f"skipped {len(bad)} of {len(errors)} {split} audio files that could not be read: {shown}")
    dropped = set(bad)
    kept = decoded.select([i for i in range(len(errors)) if i not in dropped])
    # the index is each example's position in its split: evaluation and the feature cache order by it
    return with_index(kept) if INDEX_COLUMN in kept.column_names else kept


def _padding_kwargs(feature_extractor) -> dict:
    """``padding=True`` for an extractor that pads on request; none for one that pads to a fixed length by default
    (``padding="max_length"``, e.g. Whisper's 30 s) or takes no ``padding`` (AST pads to its ``max_length``)."""
    if feature_extractor is None:
        return {}
    try:
        parameter = inspect.signature(feature_extractor.__call__).parameters.get("padding")
    except (TypeError, ValueError):
        return {}
    if parameter is None or parameter.default == "max_length":
        return {}
    return {"padding": True}


def _extractor_key(feature_extractor) -> str:
    """The feature extractor's class and a hash of its configuration ("none" without one)."""
    if feature_extractor is None:
        return "none"
    to_json = getattr(feature_extractor, "to_json_string", None)
    config = to_json() if to_json is not None else repr(feature_extractor)
    return f"{type(feature_extractor).__name__}:{hashlib.sha1(config.encode()).hexdigest()[:16]}"
