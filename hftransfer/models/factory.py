"""Backbone adapters: one contract over timm vision models and transformers text encoders.

Every adapter maps a batch to pooled features ``[batch, feature_dim]`` and exposes its parameters
as ordered *layer groups* (input -> output: stem/embeddings, each stage/encoder layer, final norm),
which is what freezing, partial/gradual unfreezing and per-layer learning rates operate on.
"""
from __future__ import annotations

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


def backbone_from_config(config: dict, save_dir: Path, *, weights: str | None = None) -> Backbone:
    """Rebuild the adapter a saved ``hftransfer_config.json`` describes: its architecture only, no download
    (``weights`` None), or with ``weights`` (``pretrained`` or a state-dict file: the base a LoRA adapter adapts)."""
    by_type = {cls.config_type: cls for cls in BACKBONE_CLASSES}
    return by_type[config["type"]].from_config(config, save_dir, weights=weights)


__all__ = ["Backbone", "LayerGroup", "TextBackbone", "TimmBackbone", "BACKBONE_CLASSES",
           "create_backbone", "backbone_from_config"]
