"""The backbone contract: layer groups and the ``Backbone`` base class every adapter implements."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import HFTransferError

if TYPE_CHECKING:
    from .layouts import NativeLayout


@dataclass
class LayerGroup:
    """A named slice of the backbone, ``params`` are parameter names relative to the backbone."""

    name: str
    params: list[str]


class Backbone(nn.Module):
    """Base class of the adapters.

    Subclasses set ``modality`` (``"image"`` or ``"text"``), ``feature_dim`` and ``name``, and
    implement ``forward(**inputs) -> Tensor[batch, feature_dim]``, ``layer_groups()``, and
    ``config()`` / ``from_config()`` so that a saved model rebuilds its architecture without
    downloading weights. Whatever else differs per library is a method here too, so that no caller
    asks which adapter it holds: the preprocessing (``data_pipeline``), the module LoRA adapts and its
    default targets (``adaptable_module``, ``default_lora_layers``), and the exports
    (``native_layout``, ``remote_code_config``).
    """

    modality: str
    library: str  # the library whose models it wraps: "timm" or "transformers"
    config_type: str  # ``config()["type"]``, which ``backbone_from_config`` dispatches on
    linear_head_bias = True  # whether a linear head on it has a bias (decoder LLMs: no, like transformers' score)
    feature_dim: int
    name: str
    input_names: tuple[str, ...]

    @classmethod
    def create(cls, model_name_or_path: str, *, weights: str = "pretrained", pooling: str | None = None) -> "Backbone":
        """The factory ``create_backbone`` calls; each adapter takes the options that apply to it."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict, save_dir: Path, *, weights: str | None = None) -> "Backbone":
        """Rebuild the backbone ``config()`` describes: the architecture alone, offline (``weights`` None), or with
        ``weights`` (``pretrained`` or a state-dict file, as ``create`` loads them: a LoRA adapter's base)."""
        raise NotImplementedError

    def layer_groups(self) -> list[LayerGroup]:
        raise NotImplementedError

    def config(self) -> dict:
        raise NotImplementedError

    def data_pipeline(self, *, decode_size: int | None = None, max_seq_length: int = 128, augmentation=None):
        """This backbone's preprocessing (``data.preprocessing.ImagePipeline`` / ``TextPipeline``).

        Each adapter reads what applies to it: images the ``decode_size`` they are shrunk to once and the
        training ``augmentation`` (a ``preprocessing.Augmentation``; None = train on the eval transform),
        texts the ``max_seq_length`` they are truncated to."""
        raise NotImplementedError

    def use_fast_layout(self) -> "Backbone":
        """Switch weights and inputs to the fastest memory layout for this kind of model (a no-op by default)."""
        return self

    def set_gradient_checkpointing(self, enable: bool = True) -> "Backbone":
        """Recompute activations in the backward pass instead of keeping them (``--gradient_checkpointing``).

        Adapters must use *non-reentrant* checkpointing: the reentrant kind returns outputs that need no
        gradient when its inputs need none, so with frozen lower layers (or only adapters training) the
        checkpointed layers silently get no gradients at all."""
        raise HFTransferError(f"{type(self).__name__} has no gradient checkpointing: drop --gradient_checkpointing")

    def set_input_size(self, size: int) -> "Backbone":
        """Train and serve at ``size`` x ``size`` pixels (``--image_size``), where inputs have a size."""
        raise HFTransferError(f"--image_size applies to image models, not {type(self).__name__}: drop it "
                              "(texts have --max_seq_length)")

    def save_preprocessing(self, save_dir: Path) -> None:
        """Write whatever a reload needs besides weights (tokenizer files, encoder config)."""

    # ---- LoRA (``lora``) and the exports (``layouts``): what differs per library ------------------------------
    default_lora_description = "no default targets for this backbone type"  # DEFAULT targets, for error messages

    def adaptable_module(self) -> nn.Module:
        """The wrapped library model that LoRA is injected into, whose parameter names peft's files use."""
        raise HFTransferError(f"LoRA supports timm and transformers backbones, not {type(self).__name__}: "
                              "use another --strategy")

    def default_lora_layers(self) -> list[str]:
        """Full names (in ``adaptable_module``) of the layers LoRA adapts when no targets are given."""
        return []

    def native_layout(self, model) -> tuple[NativeLayout | None, str]:
        """(``layouts.NativeLayout``, ``""``) mapping ``model`` (this backbone + a ``LinearHead``, labels 0..n-1)
        onto this library's own classifier, or (None, why there is none, in one sentence)."""
        return None, f"{type(self).__name__} backbones have no native export"

    def remote_code_config(self) -> dict | None:
        """The ``config.json`` entries ``modeling_hftransfer.py`` rebuilds this backbone from (None: it cannot)."""
        return None

    # ---- ONNX (``onnx_export``, ``quantize``): what differs per modality ---------------------------------------
    onnx_axes: dict[int, str] = {0: "batch"}  # the input axes an ONNX graph leaves free
    int8_method = "dynamic"  # onnxruntime quantization: "dynamic" (weights only) or "static" (calibrated activations)

    def example_inputs(self) -> list:
        """Two raw inputs (as ``predict`` takes them) whose batch traces the ONNX graph."""
        raise HFTransferError(f"{type(self).__name__} backbones have no ONNX export")

    def preprocessing_spec(self, pipeline, save_dir: Path) -> dict:
        """What turns a raw input into the graph's inputs without hftransfer (``onnx/preprocessing.json``), writing
        any file it names (a tokenizer) into ``save_dir``."""
        raise HFTransferError(f"{type(self).__name__} backbones have no ONNX export")


def group_name(params: list[str]) -> str:
    """A readable name for a group of parameters: their common module prefix, or the modules joined."""
    parts = [p.rsplit(".", 1)[0].split(".") for p in params]
    common = os.path.commonprefix(parts)
    if common:
        return ".".join(common)
    tops = dict.fromkeys(".".join(p[:2]) if len(p) > 1 and p[1].isdigit() else p[0] for p in parts)
    return "+".join(tops)


def load_state_file(path: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise HFTransferError(f"weights file '{path}' not found: pass --weights pretrained, random or an existing file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(p)
    state = torch.load(p, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)
