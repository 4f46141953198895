"""Backbone adapters: one contract over timm vision models and transformers text encoders.

Every adapter maps a batch to pooled features ``[batch, feature_dim]`` and exposes its parameters
as ordered *layer groups* (input -> output: stem/embeddings, each stage/encoder layer, final norm),
which is what freezing, partial/gradual unfreezing and per-layer learning rates operate on.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import HFTransferError
from .backbone import Backbone, LayerGroup
from .text_backbone import TextBackbone
from .timm_backbone import TimmBackbone

BACKBONE_CLASSES = (TimmBackbone, TextBackbone)


def create_backbone(modality: str, model_name_or_path: str, *, weights: str = "pretrained",
                    pooling: str = "mean") -> Backbone:
    """Build the adapter for ``modality`` (``"image"`` -> timm, ``"text"`` -> transformers).

    ``pooling`` applies to text encoders (timm models pool themselves)."""
    by_modality = {cls.modality: cls for cls in BACKBONE_CLASSES}
    if modality not in by_modality:
        raise HFTransferError(f"unknown modality '{modality}': use {' or '.join(by_modality)}")
    return by_modality[modality].create(model_name_or_path, weights=weights, pooling=pooling)


def modality_of(name: str) -> str | None:
    """Which adapter a model name or folder needs, without loading it: ``image`` for a timm name (``hf-hub:``,
    ``local-dir:`` and ``timm/`` included) or a folder in timm's Hub layout, ``text`` for a transformers folder
    or any other name (a transformers id); None for a folder that is neither."""
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


__all__ = ["Backbone", "LayerGroup", "TextBackbone", "TimmBackbone", "BACKBONE_CLASSES",
           "create_backbone", "backbone_from_config"]
