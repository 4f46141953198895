"""Data: where examples come from (``sources``), labelled splits (``splits``), the target domain (``target``),
image manifests and text files (``manifests``, ``text_files``), per-modality preprocessing (``preprocessing``; audio:
``audio``, its decoding and files ``audio_files``) and timm's training augmentations (``augmentations``:
auto-augment, random erasing, Mixup / CutMix)."""
from .audio import AUDIO_SUFFIXES, AudioAugmentation, AudioPipeline, AudioReadError, read_audio
from .augmentations import BatchMixer, check_auto_augment, create_batch_mixer
from .sources import DataSource, load_raw_splits
from .splits import INDEX_COLUMN, DataBundle, prepare_splits, subset
from .target import TargetBundle, load_target_data

__all__ = ["BatchMixer", "check_auto_augment", "create_batch_mixer", "DataSource", "load_raw_splits", "INDEX_COLUMN",
           "DataBundle", "prepare_splits", "subset", "TargetBundle", "load_target_data", "AUDIO_SUFFIXES",
           "AudioAugmentation", "AudioPipeline", "AudioReadError", "read_audio"]
