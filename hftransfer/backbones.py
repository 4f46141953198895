"""Backbone adapters: one contract over timm vision models and transformers text encoders.

Every adapter maps a batch to pooled features ``[batch, feature_dim]`` and exposes its parameters
as ordered *layer groups* (input -> output: stem/embeddings, each stage/encoder layer, final norm),
which is what freezing, partial/gradual unfreezing and per-layer learning rates operate on.
"""
from __future__ import annotations

import difflib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import HFTransferError
from .run_files import ENCODER_CONFIG_NAME, write_text
from .offline import bundled_text_model_path, bundled_timm_state_dict, has_bundled_timm_weights

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


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
    downloading weights.
    """

    modality: str
    library: str  # the library whose models it wraps: "timm" or "transformers"
    config_type: str  # ``config()["type"]``, which ``backbone_from_config`` dispatches on
    feature_dim: int
    name: str
    input_names: tuple[str, ...]

    @classmethod
    def create(cls, model_name_or_path: str, weights: str = "pretrained", pooling: str = "mean") -> "Backbone":
        """The factory ``create_backbone`` calls; each adapter takes the options that apply to it."""
        raise NotImplementedError

    def layer_groups(self) -> list[LayerGroup]:
        raise NotImplementedError

    def config(self) -> dict:
        raise NotImplementedError

    def data_pipeline(self, options):
        """This backbone's preprocessing (``preprocessing.ImagePipeline`` / ``TextPipeline``) for ``options``
        (a ``TrainConfig`` or anything with its data and augmentation attributes)."""
        raise NotImplementedError

    def use_fast_layout(self) -> "Backbone":
        """Switch weights and inputs to the fastest memory layout for this kind of model (a no-op by default)."""
        return self

    def save_preprocessing(self, save_dir: Path) -> None:
        """Write whatever a reload needs besides weights (tokenizer files, encoder config)."""


def _group_name(params: list[str]) -> str:
    """A readable name for a group of parameters: their common module prefix, or the modules joined."""
    parts = [p.rsplit(".", 1)[0].split(".") for p in params]
    common = os.path.commonprefix(parts)
    if common:
        return ".".join(common)
    tops = dict.fromkeys(".".join(p[:2]) if len(p) > 1 and p[1].isdigit() else p[0] for p in parts)
    return "+".join(tops)


class TimmBackbone(Backbone):
    """Any timm model, its classifier removed (``num_classes=0``) so it returns pooled features.

    ``weights``: ``"pretrained"`` (bundled offline checkpoint when one is installed for the name,
    else timm's own pretrained source, usually the Hub), ``"random"`` (from scratch), or a path to a
    ``.safetensors`` / ``.pth`` state dict, loaded strictly (classifier keys are dropped).
    """

    modality = "image"
    library = "timm"
    config_type = "timm"
    input_names = ("pixel_values",)

    def __init__(self, model_name: str, weights: str = "pretrained", **timm_kwargs):
        super().__init__()
        import timm

        self.channels_last = False
        self.name = model_name
        self.timm_kwargs = timm_kwargs
        arch = model_name.removeprefix("timm/")
        if not model_name.startswith(("hf-hub:", "local-dir:")) and not timm.is_model(arch.split(".")[0]):
            close = difflib.get_close_matches(arch, timm.list_models(), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "list names with timm.list_models('*pattern*')"
            raise HFTransferError(f"unknown timm model '{model_name}': {hint}")
        if weights == "pretrained" and has_bundled_timm_weights(model_name):
            self.model = timm.create_model(arch.split(".")[0], pretrained=False, **timm_kwargs)
            state = bundled_timm_state_dict(model_name)
            self._load_strict(state)
        elif weights in ("pretrained", "random"):
            try:
                self.model = timm.create_model(
                    model_name, pretrained=weights == "pretrained", num_classes=0, **timm_kwargs
                )
            except (OSError, RuntimeError) as e:
                raise HFTransferError(
                    f"could not load pretrained weights for '{model_name}' ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200]}): check the name and network access, or pass --weights PATH"
                ) from None
        else:
            self.model = timm.create_model(arch.split(".")[0], pretrained=False, **timm_kwargs)
            self._load_strict(_load_state_file(weights))
        self.model.reset_classifier(0)
        self.feature_dim = self.model.num_features

    def _load_strict(self, state: dict[str, torch.Tensor]) -> None:
        """Load every backbone tensor or fail: a silent partial load trains a half-random model."""
        classifier = self.model.pretrained_cfg.get("classifier", "classifier")
        classifier = classifier if isinstance(classifier, str) else classifier[0]
        state = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}
        self.model.reset_classifier(0)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise HFTransferError(
                f"weights do not match '{self.name}': {len(missing)} missing (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); pass weights made for this architecture"
            )

    @classmethod
    def create(cls, model_name_or_path: str, weights: str = "pretrained", pooling: str = "mean") -> "TimmBackbone":
        return cls(model_name_or_path, weights=weights)  # timm models pool themselves

    def use_fast_layout(self) -> "TimmBackbone":
        """NHWC weights and inputs: CNN convolutions are faster in channels_last, on CPU and GPU alike."""
        self.model.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def data_pipeline(self, options):
        from .preprocessing import ImagePipeline

        return ImagePipeline(self.data_config, options.decode_size, options.crop_scale, options.color_jitter,
                             options.augment)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled features of normalized float images, or of uint8 images normalized here, on the device."""
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        if pixel_values.dtype == torch.uint8:
            cfg = self.model.pretrained_cfg
            mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=pixel_values.device).view(1, -1, 1, 1)
            std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=pixel_values.device).view(1, -1, 1, 1)
            dtype = next(self.model.parameters()).dtype
            pixel_values = ((pixel_values.to(dtype) / 255 - mean) / std).to(dtype)
        return self.model(pixel_values)

    def layer_groups(self) -> list[LayerGroup]:
        from timm.models import group_parameters

        names = [n for n, _ in self.model.named_parameters()]
        if not hasattr(self.model, "group_matcher"):
            return [LayerGroup("backbone", names)]
        grouped = group_parameters(self.model, self.model.group_matcher(coarse=True))
        # group_parameters keys are sortable ids in input->output order
        groups = [[n for n in grouped[k]] for k in sorted(grouped)]
        return [LayerGroup(f"model.{_group_name(g)}", [f"model.{n}" for n in g]) for g in groups]

    @property
    def data_config(self) -> dict:
        """timm's preprocessing for this model: input size, interpolation, crop, mean/std."""
        from timm.data import resolve_data_config

        return resolve_data_config({}, model=self.model)

    def config(self) -> dict:
        cfg = self.model.pretrained_cfg
        return {"type": "timm", "model_name": self.name, "architecture": cfg.get("architecture", self.name),
                "pretrained_cfg": json.loads(json.dumps(cfg, default=list)), "timm_kwargs": self.timm_kwargs}

    @classmethod
    def from_config(cls, config: dict, save_dir: Path | None = None) -> "TimmBackbone":
        """Rebuild the architecture offline: the saved ``pretrained_cfg`` replaces any Hub lookup."""
        kwargs = dict(config.get("timm_kwargs", {}), pretrained_cfg=config["pretrained_cfg"])
        backbone = cls(config["architecture"], weights="random", **kwargs)
        backbone.name, backbone.timm_kwargs = config["model_name"], config.get("timm_kwargs", {})
        return backbone


class TextBackbone(Backbone):
    """Any transformers encoder loadable with ``AutoModel`` (BERT, DistilBERT, RoBERTa, MiniLM, ...).

    ``pooling``: ``"mean"`` (attention-mask-aware mean of the last hidden states), ``"cls"`` (first
    token) or ``"pooler"`` (the model's own pooler, BERT's tanh dense layer). With mean/cls pooling
    the encoder's pooler is dropped so that no parameter goes unused (DDP requires that).
    """

    modality = "text"
    library = "transformers"
    config_type = "text"
    input_names = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, model_name_or_path: str, weights: str = "pretrained", pooling: str = "mean",
                 encoder_config: dict | None = None, tokenizer_path: str | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if pooling not in ("mean", "cls", "pooler"):
            raise HFTransferError(f"unknown pooling '{pooling}': use mean, cls or pooler")
        self.name, self.pooling = model_name_or_path, pooling
        source = bundled_text_model_path(model_name_or_path) or model_name_or_path
        try:
            if encoder_config is not None:
                config = AutoConfig.for_model(**encoder_config)
                self.encoder = AutoModel.from_config(config)
            elif weights == "random":
                self.encoder = AutoModel.from_config(AutoConfig.from_pretrained(source))
            elif weights == "pretrained":
                self.encoder = AutoModel.from_pretrained(source)
            else:
                self.encoder = AutoModel.from_config(AutoConfig.from_pretrained(source))
                self._load_strict(_load_state_file(weights))
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or source)
        except (OSError, ValueError) as e:
            raise HFTransferError(
                f"could not load text encoder '{model_name_or_path}' ({str(e).splitlines()[0][:200]}): "
                "pass a transformers model folder or a Hub model id reachable from here"
            ) from None
        if pooling == "pooler" and getattr(self.encoder, "pooler", None) is None:
            raise HFTransferError(f"'{model_name_or_path}' has no pooler layer: use --pooling mean or cls")
        if pooling != "pooler" and getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None
        self.feature_dim = self.encoder.config.hidden_size
        accepted = inspect.signature(self.encoder.forward).parameters
        self.input_names = tuple(n for n in TextBackbone.input_names if n in accepted)

    @classmethod
    def create(cls, model_name_or_path: str, weights: str = "pretrained", pooling: str = "mean") -> "TextBackbone":
        return cls(model_name_or_path, weights=weights, pooling=pooling)

    def data_pipeline(self, options):
        from .preprocessing import TextPipeline

        return TextPipeline(self.tokenizer, options.max_seq_length)

    def _load_strict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.encoder.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("pooler.")]
        unexpected = [k for k in unexpected if not k.startswith("pooler.")]
        if missing or unexpected:
            raise HFTransferError(
                f"weights do not match '{self.name}': {len(missing)} missing (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
            )

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.encoder(**kwargs)
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(dim=1)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def layer_groups(self) -> list[LayerGroup]:
        """Embeddings, one group per transformer layer, then whatever follows (final norm, pooler).

        The layer stack is found as the ``nn.ModuleList`` with ``num_hidden_layers`` entries, which
        covers BERT (``encoder.layer``), DistilBERT (``transformer.layer``), RoBERTa and friends.
        """
        n_layers = self.encoder.config.num_hidden_layers
        stack = next(
            (name for name, m in self.encoder.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers),
            None,
        )
        names = [n for n, _ in self.encoder.named_parameters()]
        if stack is None:
            return [LayerGroup("encoder", [f"encoder.{n}" for n in names])]
        before, layers, after = [], [[] for _ in range(n_layers)], []
        for n in names:
            if n.startswith(stack + "."):
                layers[int(n[len(stack) + 1 :].split(".")[0])].append(n)
            elif any(layers):
                after.append(n)
            else:
                before.append(n)
        groups = [("embeddings", before)] + [(f"{stack}.{i}", g) for i, g in enumerate(layers)]
        groups += [("final", after)] if after else []
        return [LayerGroup(f"encoder.{name}", [f"encoder.{n}" for n in g]) for name, g in groups if g]

    def config(self) -> dict:
        return {"type": "text", "model_name": self.name, "pooling": self.pooling}

    def save_preprocessing(self, save_dir: Path) -> None:
        self.tokenizer.save_pretrained(save_dir)
        write_text(save_dir / ENCODER_CONFIG_NAME, json.dumps(self.encoder.config.to_dict(), indent=2))

    @classmethod
    def from_config(cls, config: dict, save_dir: Path) -> "TextBackbone":
        encoder_config = json.loads((save_dir / ENCODER_CONFIG_NAME).read_text())
        return cls(config["model_name"], pooling=config["pooling"], encoder_config=encoder_config,
                   tokenizer_path=str(save_dir))


def _load_state_file(path: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise HFTransferError(f"weights file '{path}' not found: pass --weights pretrained, random or an existing file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(p)
    state = torch.load(p, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


BACKBONE_CLASSES = (TimmBackbone, TextBackbone)


def create_backbone(modality: str, model_name_or_path: str, weights: str = "pretrained", pooling: str = "mean") -> Backbone:
    """Build the adapter for ``modality`` (``"image"`` -> timm, ``"text"`` -> transformers).

    ``pooling`` applies to text encoders (timm models pool themselves)."""
    by_modality = {cls.modality: cls for cls in BACKBONE_CLASSES}
    if modality not in by_modality:
        raise HFTransferError(f"unknown modality '{modality}': use {' or '.join(by_modality)}")
    return by_modality[modality].create(model_name_or_path, weights=weights, pooling=pooling)


def backbone_from_config(config: dict, save_dir: Path) -> Backbone:
    """Rebuild the adapter a saved ``hftransfer_config.json`` describes (architecture only, no download)."""
    by_type = {cls.config_type: cls for cls in BACKBONE_CLASSES}
    return by_type[config["type"]].from_config(config, save_dir)
