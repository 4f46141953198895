"""Audio files: which suffixes count as audio, the one decode (``read_audio``), and audio folders and manifests.

``read_audio`` turns anything an audio example can be (a path, bytes, a file object, a ``datasets`` record, an
array) into a float32 mono waveform at one sampling rate, with soundfile (libsndfile: WAV, FLAC, OGG/Opus, MP3,
AIFF, ...) and scipy's polyphase resampler: no torchaudio, torchcodec or ffmpeg. ``datasets`` 5 decodes its
``Audio`` feature through torchcodec, so audio columns here are always ``Audio(decode=False)`` records.

soundfile and scipy are imported where used: ``import hftransfer.data`` stays light, and works without them.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import datasets
import numpy as np

from ..errors import HFTransferError
from .manifests import resolve_images

# libsndfile's major formats -> the file suffixes they go by (RAW and MAT need outside knowledge: left out)
_FORMAT_SUFFIXES = {
    "WAV": (".wav", ".wave"), "WAVEX": (".wav",), "RF64": (".rf64",), "W64": (".w64",), "FLAC": (".flac",),
    "OGG": (".ogg", ".oga", ".opus"), "MP3": (".mp3",), "AIFF": (".aiff", ".aif", ".aifc"), "AU": (".au", ".snd"),
    "CAF": (".caf",), "NIST": (".sph", ".nist"), "VOC": (".voc",), "AVR": (".avr",), "PAF": (".paf",),
    "SVX": (".8svx", ".svx"), "WVE": (".wve",), "HTK": (".htk",), "SD2": (".sd2",), "XI": (".xi",),
    "PVF": (".pvf",), "MPC2K": (".mpc2k",), "SDS": (".sds",),
}


def _audio_suffixes() -> frozenset[str]:
    try:
        import soundfile

        formats = set(soundfile.available_formats())
    except (ImportError, OSError):  # soundfile missing (or its libsndfile): read_audio says how to install it
        formats = set(_FORMAT_SUFFIXES)
    return frozenset(s for name, suffixes in _FORMAT_SUFFIXES.items() if name in formats for s in suffixes)


AUDIO_SUFFIXES: frozenset[str] = _audio_suffixes()


class AudioReadError(Exception):
    """An audio example that cannot be used; ``str(e)`` is a short reason ("empty audio (0 samples)", ...)."""


def read_audio(source, sampling_rate: int) -> np.ndarray:
    """float32 mono 1-D waveform at ``sampling_rate``: the one decode of training and prediction alike.

    ``source``: a path (str / Path), raw bytes, a binary file object, a dict ``{"bytes", "path"}`` (``datasets``
    ``Audio(decode=False)``; the bytes win) or ``{"array", "sampling_rate"}`` (decoded ``datasets`` audio, the
    transformers pipeline convention), an ``(array, rate)`` tuple, or a 1-D / 2-D array (or list) taken as already
    at ``sampling_rate`` (2-D: the smaller axis is the channels). Channels are averaged, integer PCM is scaled to
    [-1, 1], other rates are resampled with ``scipy.signal.resample_poly`` (the exact ratio). Raises
    :class:`AudioReadError` for unreadable data, zero-length audio and non-finite samples.
    """
    wave, rate = _samples(source, sampling_rate)
    if wave.size == 0:
        raise AudioReadError("empty audio (0 samples)")
    wave = _mono(_as_float(wave))
    if not np.isfinite(wave).all():
        raise AudioReadError("non-finite samples (NaN or inf)")
    return _resample(wave, _rate(rate), _rate(sampling_rate))


def _samples(source, sampling_rate: int) -> tuple[np.ndarray, object]:
    """The raw samples of ``source`` (any shape and dtype) and their rate."""
    if source is None:
        raise AudioReadError("no audio (empty cell)")
    if isinstance(source, dict):
        if source.get("array") is not None:
            if source.get("sampling_rate") is None:
                raise AudioReadError("an audio array without its 'sampling_rate'")
            return _array(source["array"]), source["sampling_rate"]
        if source.get("bytes") is not None:
            return _decode(io.BytesIO(source["bytes"]))
        if source.get("path"):
            return _decode_path(source["path"])
        raise AudioReadError("no audio (a record without bytes, path or array)")
    if isinstance(source, (str, os.PathLike)):
        return _decode_path(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(source)))
    if hasattr(source, "read"):
        return _decode(source)
    if isinstance(source, tuple) and len(source) == 2 and np.ndim(source[1]) == 0:
        return _array(source[0]), source[1]
    if isinstance(source, (list, np.ndarray)) or hasattr(source, "__array__"):  # arrays, lists, torch tensors
        return _array(source), sampling_rate
    raise AudioReadError(f"not audio (a {type(source).__name__})")


def _array(values) -> np.ndarray:
    try:
        return np.asarray(values)
    except (TypeError, ValueError, RuntimeError) as e:  # ragged lists, a tensor on an accelerator, ...
        raise AudioReadError(f"not an array of samples ({type(e).__name__})") from None


def _decode_path(path) -> tuple[np.ndarray, int]:
    if not Path(path).is_file():
        raise AudioReadError(f"file not found ({path})")
    return _decode(path)


def _decode(file) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 samples of an audio file and its rate; any libsndfile failure as one reason."""
    try:
        import soundfile
    except (ImportError, OSError) as e:
        raise HFTransferError(f"reading audio files needs soundfile ({type(e).__name__}: {e}): "
                              "pip install soundfile") from None
    try:
        return soundfile.read(file, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile (LibsndfileError), and RuntimeError / TypeError on odd input
        detail = getattr(e, "error_string", None) or (str(e).splitlines()[0] if str(e) else "unreadable")
        raise AudioReadError(f"not an audio file ({type(e).__name__}: {detail[:120]})") from None


def _as_float(wave: np.ndarray) -> np.ndarray:
    """Samples as float32: integer PCM scaled to [-1, 1] (unsigned centred first), floats as they are."""
    if wave.dtype == np.bool_ or wave.dtype.kind not in "iuf":
        raise AudioReadError(f"not audio samples (an array of {wave.dtype})")
    if wave.dtype.kind == "u":
        half = float(np.iinfo(wave.dtype).max // 2 + 1)
        return ((wave.astype(np.float64) - half) / half).astype(np.float32)
    if wave.dtype.kind == "i":
        return (wave.astype(np.float64) / -float(np.iinfo(wave.dtype).min)).astype(np.float32)
    return wave.astype(np.float32, copy=False)


def _mono(wave: np.ndarray) -> np.ndarray:
    """1-D: the mean over channels (the smaller axis of a 2-D array)."""
    if wave.ndim == 1:
        return wave
    if wave.ndim != 2:
        raise AudioReadError(f"not a waveform (an array of shape {tuple(wave.shape)}: expected 1-D or 2-D)")
    return wave.mean(axis=0 if wave.shape[0] <= wave.shape[1] else 1, dtype=np.float32)


def _rate(rate) -> int:
    """A sampling rate as a positive int (8000.0 is 8000; 8000.5 is refused)."""
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise AudioReadError(f"invalid sampling rate {rate!r}") from None
    if not (value > 0 and value.is_integer()):
        raise AudioReadError(f"invalid sampling rate {rate!r}")
    return int(value)


def _resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return np.ascontiguousarray(wave, dtype=np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(wave, target // g, rate // g).astype(np.float32)


def source_name(item, row: int) -> str:
    """How a message names an example: its file name, else its row (1-based)."""
    path = item.get("path") if isinstance(item, dict) else item if isinstance(item, (str, os.PathLike)) else None
    return Path(path).name if path else f"row {row}"


def audio_files_under(folder: Path) -> list[Path]:
    """Every audio file (``AUDIO_SUFFIXES``) under ``folder``, recursively, sorted; hidden files and folders skipped."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in AUDIO_SUFFIXES]
    return sorted(found)


def audio_dataset(columns: dict[str, list], features: dict, audio_column: str) -> datasets.Dataset:
    """An in-memory split whose ``audio_column`` (absolute path strings) becomes ``Audio(decode=False)``.

    Its fingerprint covers every file's size and modification time, so the decode ``AudioPipeline.prepare``
    caches under it is redone when a file changes in place.
    """
    from datasets.fingerprint import Hasher

    ds = datasets.Dataset.from_dict(columns, features=datasets.Features({audio_column: datasets.Value("string"),
                                                                         **features}))
    stats = [(s.st_size, s.st_mtime_ns) for s in map(os.stat, columns[audio_column])]
    ds = datasets.Dataset(ds.data, info=ds.info, fingerprint=Hasher.hash([ds._fingerprint, stats]))
    return ds.cast_column(audio_column, datasets.Audio(decode=False))


# resolve_images' words for an image manifest, and what they are for an audio one
_AUDIO_WORDS = (("--image_column_name", "--audio_column_name"), ("no image column", "no audio column"),
                ("not image paths", "not audio paths"), ("the image column", "the audio column"),
                (": image '", ": audio file '"))


def resolve_audio(ds: datasets.Dataset, column: str, manifest: Path) -> datasets.Dataset:
    """``manifests.resolve_images`` for an audio manifest: paths made absolute and checked, bytes kept; the column
    becomes ``Audio(decode=False)`` (both features are the same {bytes, path} records)."""
    try:
        ds = resolve_images(ds, column, manifest)
    except HFTransferError as e:
        message = str(e)
        for image_words, audio_words in _AUDIO_WORDS:
            message = message.replace(image_words, audio_words)
        raise HFTransferError(message) from None
    return ds.cast_column(column, datasets.Audio(decode=False))
