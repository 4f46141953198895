"""Backbone adapters: one contract over timm vision models, transformers text encoders and audio models.

Every adapter maps a batch to pooled features ``[batch, feature_dim]`` and exposes its parameters
as ordered *layer groups* (input -> output: stem/embeddings, each stage/encoder layer, final norm),
which is what freezing, partial/gradual unfreezing and per-layer learning rates operate on.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import HFTransferError
from .audio_backbone import AUDIO_OPTIONS, LogMelTimmBackbone
from .audio_encoder_backbone import TransformersAudioBackbone
from .backbone import Backbone, LayerGroup
from .bundled import has_bundled_timm_weights
from .text_backbone import TextBackbone
from .timm_backbone import TimmBackbone

BACKBONE_CLASSES = (TimmBackbone, TextBackbone, LogMelTimmBackbone, TransformersAudioBackbone)


def create_backbone(modality: str, model_name_or_path: str, *, weights: str = "pretrained", pooling: str | None = None,
                    sampling_rate: int | None = None, max_duration: float | None = None,
                    n_mels: int | None = None) -> Backbone:
    """Build the adapter for ``modality``: ``"image"`` -> timm, ``"text"`` -> transformers encoder, ``"audio"`` ->
    a timm model on log-mel spectrograms (``LogMelTimmBackbone``) for a timm name (``hf-hub:``, ``local-dir:``,
    bundled names included), else a transformers audio encoder (``TransformersAudioBackbone``).

    ``pooling`` applies to transformers encoders (timm models pool themselves). The audio options, None = the
    model's default, apply to audio only: ``sampling_rate`` (Hz, the log-mel front end's; an encoder's feature
    extractor fixes its own, which it may only repeat), ``max_duration`` (seconds every clip is centre-cropped or
    zero-padded to; default 1.0) and ``n_mels`` (mel bands of the log-mel front end; default 128)."""
    audio = {"sampling_rate": sampling_rate, "max_duration": max_duration, "n_mels": n_mels}
    if modality == "audio":
        return audio_backbone_class(model_name_or_path).create(model_name_or_path, weights=weights, pooling=pooling,
                                                               **audio)
    given = [name for name in AUDIO_OPTIONS if audio[name] is not None]
    if given:
        raise HFTransferError(f"--{given[0]} applies to audio models, not {modality} ones: drop it")
    by_modality = {cls.modality: cls for cls in (TimmBackbone, TextBackbone)}
    if modality not in by_modality:
        raise HFTransferError(f"unknown modality '{modality}': use image, text or audio")
    return by_modality[modality].create(model_name_or_path, weights=weights, pooling=pooling)


def audio_backbone_class(name: str) -> type[Backbone]:
    """The audio adapter a name needs: log-mel + timm for a timm name, else a transformers audio encoder."""
    return LogMelTimmBackbone if is_timm_name(name) else TransformersAudioBackbone


def is_timm_name(name: str) -> bool:
    """A timm model name (``timm/`` prefix and ``.tag`` allowed), ``hf-hub:`` / ``local-dir:`` or a bundled name."""
    import timm

    return (name.startswith(("hf-hub:", "local-dir:")) or timm.is_model(name.removeprefix("timm/").split(".")[0])
            or has_bundled_timm_weights(name))


def modality_of(name: str) -> str | None:
    """Which adapter a model name or folder needs, without loading it: ``image`` for a timm name (``hf-hub:``,
    ``local-dir:`` and ``timm/`` included) or a folder in timm's Hub layout, ``text`` for a transformers folder
    or any other name (a transformers id); None for a folder that is neither. (Audio is the recipe's choice,
    never inferred from a name: see ``create_backbone``.)"""
    path = Path(name)
    if path.is_dir():
        config_file = path / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        if "architecture" in config or "pretrained_cfg" in config:  # timm's Hub layout
            return "image"
        return "text" if "model_type" in config else None
    import timm

    if name.startswith(("hf-hub:", "local-dir:")) or timm.is_model(name.removeprefix("timm/").split(".")[0]):
        return "image"
    return "text"


def backbone_from_config(config: dict, save_dir: Path, *, weights: str | None = None) -> Backbone:
    """Rebuild the adapter a saved ``hftransfer_config.json`` describes: its architecture only, no download
    (``weights`` None), or with ``weights`` (``pretrained`` or a state-dict file: the base a LoRA adapter adapts)."""
    by_type = {cls.config_type: cls for cls in BACKBONE_CLASSES}
    return by_type[config["type"]].from_config(config, save_dir, weights=weights)


__all__ = ["Backbone", "LayerGroup", "TextBackbone", "TimmBackbone", "LogMelTimmBackbone", "TransformersAudioBackbone",
           "BACKBONE_CLASSES", "create_backbone", "audio_backbone_class", "backbone_from_config"]
