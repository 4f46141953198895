"""Tiny generated audio for tests: WAV / FLAC files and class-per-subfolder folders, written with numpy + soundfile.

Every clip is deterministic (seeded): a class's clips are tones at the class's own frequency plus a little noise,
so a model can tell the classes apart. Nothing here imports hftransfer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# one tone per class index (Hz): below 4 kHz, the Nyquist frequency of the 8 kHz default
CLASS_TONES = (440.0, 1200.0, 2000.0, 2800.0)
BUNDLED_AUDIO = Path(__file__).resolve().parents[1] / "data" / "fsdd"


def tone(frequency: float, sampling_rate: int = 8000, seconds: float = 0.5, amplitude: float = 0.5,
         noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A float32 sine at ``frequency`` Hz, ``seconds`` long, plus seeded Gaussian noise of std ``noise``."""
    t = np.arange(round(seconds * sampling_rate)) / sampling_rate
    wave = amplitude * np.sin(2 * np.pi * frequency * t)
    if noise:
        wave = wave + np.random.default_rng(seed).normal(0, noise, len(t))
    return wave.astype(np.float32)


def write_audio(path: Path, wave: np.ndarray, sampling_rate: int = 8000, subtype: str | None = "PCM_16") -> Path:
    """``wave`` (float, [-1, 1]; 2-D = (frames, channels)) as an audio file; the format follows the suffix."""
    import soundfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), wave, sampling_rate, subtype=subtype)
    return path


def write_bad_audio(folder: Path) -> dict[str, Path]:
    """Files that pass for audio by their name only: ``corrupt.wav`` (a RIFF header, then garbage), ``empty.wav``
    (a valid WAV of 0 samples), ``text.wav`` (a text file renamed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x08\x00\x00WAVE" + np.random.default_rng(0).bytes(256))
    empty = write_audio(folder / "empty.wav", np.zeros(0, dtype=np.float32))
    text = folder / "text.wav"
    text.write_text("this is not audio\n")
    return {"corrupt": corrupt, "empty": empty, "text": text}


def make_audio_folder(root, classes=("down", "up"), per_class: int = 6, sampling_rate: int = 8000,
                      seconds: float = 0.5, seed: int = 0) -> Path:
    """Class-per-subfolder 16-bit WAVs ``root/<class>/<i>.wav``: class c's clips are a tone at
    ``CLASS_TONES[c]`` Hz (amplitude and length varying a little per clip) plus noise; learnable and tiny."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        for i in range(per_class):
            length = seconds * rng.uniform(0.8, 1.2)
            wave = tone(CLASS_TONES[c % len(CLASS_TONES)] * (1 + c // len(CLASS_TONES) * 0.1), sampling_rate, length,
                        amplitude=rng.uniform(0.3, 0.6), noise=0.05, seed=int(rng.integers(2**31)))
            write_audio(root / name / f"{i}.wav", np.clip(wave, -1, 1), sampling_rate)
    return root
