"""TransferModel: a backbone adapter plus a pluggable head, the same for images and text."""
from __future__ import annotations

import importlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import HFTransferError
from ..files import ADAPTER_DIR, CONFIG_NAME, write_json
from .devices import numel
from .factory import Backbone, LayerGroup, backbone_from_config, create_backbone
from .heads import classification_loss, create_head
from .layouts import load_weights, save_weights
from .lora import LoraSpec, add_lora, load_adapter_files, merged_copy, save_adapter_files
from .lora import record as lora_record
from .norms import BN_STATS_DESCRIPTIONS, keep_bn_statistics


@dataclass
class TransferOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    features: torch.Tensor | None = None  # the backbone's pooled features the logits came from


class TransferModel(nn.Module):
    """``backbone`` (pooled features) -> ``head`` (logits), with the loss and label names attached.

    The contract follows timm: ``forward_features`` / ``forward_head`` / ``reset_classifier``, and
    ``layer_groups()`` lists backbone groups input->output with the head last.

    ``bn_stats`` decides which BatchNorm layers stay in eval mode under ``train()`` (normalizing
    with, and not updating, their pretrained running statistics): ``"frozen"`` (default) those whose
    affine parameters are all frozen, so frozen groups do not drift; ``"all"`` every one, the usual
    advice when fine-tuning on small data, where batch statistics are noisy and shifted by
    augmentation; ``"none"`` no layer (plain ``nn.Module`` behaviour).
    """

    def __init__(self, backbone: Backbone, head: nn.Module, id2label: dict[int, str], *, multi_label: bool = False,
                 label_smoothing: float = 0.0, head_config: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.id2label = {int(k): v for k, v in id2label.items()}
        self.multi_label = multi_label
        self.label_smoothing = label_smoothing
        self.head_config = head_config or {"type": "custom", "class": f"{type(head).__module__}.{type(head).__qualname__}"}
        self.bn_stats = "frozen"
        self.lora = None  # a lora.LoraSpec once lora.add_lora injected adapters into the backbone
        self.base_weights = None  # the --weights the backbone was built from (recorded with a LoRA adapter)
        # a training setting, not part of the model: non-persistent, so it follows .to(device) but stays out of
        # state_dict(), checkpoints and exports (which load without hftransfer exactly as before)
        self.register_buffer("class_weights", None, persistent=False)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def modality(self) -> str:
        return self.backbone.modality

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    def forward_features(self, **inputs) -> torch.Tensor:
        return self.backbone(**{k: v for k, v in inputs.items() if k in self.backbone.input_names})

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, labels: torch.Tensor | None = None, features: torch.Tensor | None = None, **inputs) -> TransferOutput:
        """Logits (and loss when ``labels`` are given) from backbone inputs, or from precomputed
        backbone ``features`` (the frozen-feature cache), which skips the backbone."""
        if features is None:
            features = self.forward_features(**inputs)
        logits = self.forward_head(features.to(next(self.head.parameters(), features).dtype))
        output = self.output(logits, labels)
        output.features = features
        return output

    def output(self, logits: torch.Tensor, labels: torch.Tensor | None = None) -> TransferOutput:
        """Logits with their classification loss (None without ``labels``)."""
        loss = None
        if labels is not None:
            loss = classification_loss(logits, labels, self.multi_label, self.label_smoothing, self.class_weights)
        return TransferOutput(logits=logits, loss=loss)

    def set_class_weights(self, weights: torch.Tensor | None) -> None:
        """Loss weights per label (``data.balance.class_weights``; BCE's ``pos_weight`` when multi-label), or None."""
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float32).flatten()
            if len(weights) != self.num_labels:
                raise HFTransferError(f"{len(weights)} class weights for a model of {self.num_labels} labels")
            weights = weights.to(next(self.parameters(), weights).device)
        self.class_weights = weights

    def reset_classifier(self, id2label: dict[int, str], head: str | nn.Module = "linear", **head_kwargs) -> None:
        """Replace the head for a new label set (e.g. to reuse a fine-tuned backbone)."""
        self.set_class_weights(None)  # weights of the old label set would not match the new one
        self.id2label = {int(k): v for k, v in id2label.items()}
        if head == "linear" and not self.backbone.linear_head_bias:
            head_kwargs.setdefault("bias", False)
        self.head = create_head(head, self.backbone.feature_dim, self.num_labels, **head_kwargs)
        self.head_config = _head_config(head, head_kwargs, self.head)

    def layer_groups(self) -> list[LayerGroup]:
        """Backbone groups (input -> output), then the head; names are relative to this model."""
        groups = [LayerGroup(f"backbone.{g.name}", [f"backbone.{p}" for p in g.params])
                  for g in self.backbone.layer_groups()]
        return groups + [LayerGroup("head", [f"head.{n}" for n, _ in self.head.named_parameters()])]

    def train(self, mode: bool = True) -> "TransferModel":
        super().train(mode)
        if mode:
            keep_bn_statistics(self, self.bn_stats)
        return self

    def describe_bn_stats(self) -> str:
        return BN_STATS_DESCRIPTIONS[self.bn_stats]

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(numel(p) for p in self.parameters() if p.requires_grad or not trainable_only)

    # ---- persistence -------------------------------------------------------------------------
    def config(self) -> dict:
        return {
            "hftransfer_version": _version(),
            "modality": self.modality,
            "backbone": self.backbone.config(),
            "head": self.head_config,
            "feature_dim": self.backbone.feature_dim,
            "id2label": {str(k): v for k, v in self.id2label.items()},
            "multi_label": self.multi_label,
            "label_smoothing": self.label_smoothing,
        }

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write ONE copy of the weights plus ``hftransfer_config.json`` and the preprocessing files.

        When the model has an exact native equivalent (timm backbone + linear head; BERT, ERNIE,
        ALBERT, MPNet or RoBERTa-family encoder with ``pooling="pooler"`` + linear head),
        ``model.safetensors`` holds that library's keys next to its ``config.json``, so timm /
        transformers / ``pipeline`` load the folder without hftransfer; otherwise it holds
        hftransfer's keys. ``hftransfer_config.json`` records which
        (``weights_format``) and why no native layout exists (``native_unavailable``); see ``export``.

        A model with LoRA adapters (``lora.add_lora``) is saved *merged* (adapters folded into the
        base weights, LoRA layers removed), so the layouts above apply unchanged, and its adapter goes
        to ``adapter/`` (peft's ``adapter_config.json`` + ``adapter_model.safetensors``, the head as
        ``head.safetensors``, its own ``hftransfer_config.json``); ``lora`` in the config records r,
        alpha, targets and the trainable fraction.
        """
        save_dir = Path(save_directory)
        save_dir.mkdir(parents=True, exist_ok=True)
        adapter_dir = save_dir / ADAPTER_DIR
        if self.lora is None:
            if (adapter_dir / CONFIG_NAME).is_file():  # an earlier LoRA save's adapter does not describe these weights
                shutil.rmtree(adapter_dir)
            record = save_weights(self, save_dir)
        else:
            lora = lora_record(self)
            self._save_adapter(adapter_dir, lora)
            record = {**save_weights(merged_copy(self), save_dir), "lora": {**lora, "merged": True, "adapter": ADAPTER_DIR}}
        self.backbone.save_preprocessing(save_dir)
        write_json(save_dir / CONFIG_NAME, {**self.config(), **record})  # last: its presence marks a complete save
        return save_dir

    def _save_adapter(self, adapter_dir: Path, lora: dict) -> None:
        """``adapter/``: peft's adapter files, the head (and moved norms), preprocessing and an hftransfer config
        that ``from_pretrained`` rebuilds from the base weights (LoRA layers kept, unmerged, trainable)."""
        files = save_adapter_files(self, adapter_dir)
        self.backbone.save_preprocessing(adapter_dir)
        write_json(adapter_dir / CONFIG_NAME, {**self.config(), "weights_format": "peft_adapter",
                                               "lora": {**lora, "merged": False, "files": files}})

    @classmethod
    def from_pretrained(cls, path: str | Path, head: nn.Module | None = None, *, revision: str | None = None,
                        token: str | None = None) -> "TransferModel":
        """Load a model written by ``save_pretrained`` from a folder or a Hub repo id (``user/name``).

        Local folders need no network. A repo id is fetched with ``snapshot_download`` (``revision``:
        branch, tag, ``refs/pr/N`` or commit; ``token`` defaults to HF_TOKEN / the stored login).
        Weights are mapped back from the native layout if they were saved in one and loaded strictly.
        A model with a user-defined head needs that head's class importable, or an instance passed as
        ``head`` (its weights are then loaded from the checkpoint).

        A LoRA run's folder loads as the merged model; its ``adapter/`` subfolder loads as the base
        backbone (its recorded ``--weights``) with the adapters re-injected and loaded, unmerged, the
        adapters and head trainable and the base frozen, ready to train on.
        """
        save_dir = Path(path)
        if not save_dir.is_dir():
            from ..hub.push import download_model

            save_dir = download_model(str(path), revision=revision, token=token)
        if not (save_dir / CONFIG_NAME).is_file():
            raise HFTransferError(f"'{path}' has no {CONFIG_NAME}: pass a folder or repo written by hftransfer's "
                                  "save_pretrained / push_to_hub (plain timm or transformers models load with those)")
        config = json.loads((save_dir / CONFIG_NAME).read_text())
        # an adapter/ folder: the backbone built from its recorded base weights, the peft adapter re-injected
        lora = LoraSpec.from_record(config["lora"]) if config.get("lora", {}).get("merged") is False else None
        backbone = backbone_from_config(config["backbone"], save_dir,
                                        weights=lora.rebuildable_base_weights(save_dir) if lora else None)
        id2label = {int(k): v for k, v in config["id2label"].items()}
        head = head if head is not None else _saved_head(config["head"], backbone.feature_dim, len(id2label))
        model = cls(backbone, head, id2label, multi_label=config["multi_label"],
                    label_smoothing=config.get("label_smoothing", 0.0), head_config=config["head"])
        model.source_dir = save_dir  # where its ONNX export would be (predict's onnxruntime backend)
        if lora is not None:
            add_lora(model, spec=lora)
            load_adapter_files(model, save_dir)
            return model.eval()
        try:
            missing, unexpected = model.load_state_dict(load_weights(save_dir, config), strict=False)
        except RuntimeError as e:  # shape mismatches raise even when not strict
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = next((ln for ln in lines if "size mismatch" in ln), lines[0])[:200]
            raise HFTransferError(f"the weights in '{path}' do not match its {CONFIG_NAME} ({detail}): "
                                  "save or download the model again") from None
        if missing or unexpected:  # strict: a partly loaded model would predict from random weights
            raise HFTransferError(f"the weights in '{path}' do not match its {CONFIG_NAME} ({len(missing)} missing, "
                                  f"e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}): "
                                  "save or download the model again")
        return model.eval()

    def push_to_hub(self, repo_id: str, private: bool = False, revision: str | None = None, create_pr: bool = False,
                    commit_message: str = "Upload model with hftransfer", token: str | None = None) -> str:
        """Save this model (native layout where one exists) with a model card and upload it; returns the URL.

        ``revision`` is a branch (created from main if missing); ``create_pr`` opens a pull request
        against main instead of committing. The token comes from ``token``, HF_TOKEN or the stored
        login and is never printed. Failures raise ``HFTransferError`` with one line naming the fix.
        Only the main process of a distributed run uploads; the others return ``""``.
        """
        import tempfile

        from ..hub.card import write_model_card
        from ..hub.push import is_main_process, push_folder

        if not is_main_process():  # saving is work the other ranks would throw away
            return ""
        with tempfile.TemporaryDirectory(prefix="hftransfer-push-") as tmp:
            folder = self.save_pretrained(tmp)
            write_model_card(folder, repo_id=repo_id)  # the card names the repo it is pushed to
            return push_folder(folder, repo_id, private=private, revision=revision, create_pr=create_pr,
                               commit_message=commit_message, token=token)

    def predict(self, inputs, *, batch_size: int | None = None, top_k: int = 5, threshold: float = 0.5, device=None,
                settings=None, skip_unreadable: bool = False, progress: bool | None = False, backend: str = "torch",
                onnx_file=None, quantized: bool = False) -> list[dict]:
        """Label ``inputs`` (image paths / PIL images, or texts) in batches; one dict per input, in order.

        ``batch_size`` defaults to 8 images on a CPU (fastest there), else 32.

        Each dict is ``{"input", "label", "score", "top_k"}`` like transformers' classification
        pipelines: ``label`` the predicted label (argmax), ``score`` its softmax probability, ``top_k``
        the ``top_k`` most probable ``{"label", "score"}``. Multi-label models give lists in ``label``
        / ``score``: every label whose sigmoid probability exceeds ``threshold``. Preprocessing is the
        backbone's evaluation pipeline; ``settings`` (the run's output_dir, its ``config.yaml``, a dict
        or None = defaults) supplies ``max_seq_length`` / ``decode_size`` / ``mixed_precision``, so
        ``model.predict(files, settings="outputs/run")`` equals the run's ``eval_predictions.jsonl``.
        ``device``: default CUDA > MPS > CPU; the model stays there, in its fast memory layout (channels_last
        for CNNs, as in training), its train/eval mode restored.
        An unreadable image or empty text raises ``HFTransferError``; ``skip_unreadable=True`` leaves it
        out (logged as a warning; each dict's ``input`` says which input it belongs to). See ``inference``.
        ``backend="onnxruntime"`` runs the same batches through an ONNX export on the CPU: ``onnx_file`` (default:
        the ``onnx/`` export next to the folder the model was loaded from; without one the model is exported to
        a temporary folder, once), ``quantized=True`` its int8 graph (``hftransfer export --quantize int8``).
        """
        import logging

        from .inference import InferenceSettings, predict
        from .onnx_runtime import default_onnx_dir

        if backend == "onnxruntime" and onnx_file is None:
            onnx_file = default_onnx_dir(self, InferenceSettings.resolve(settings), quantized=quantized)
        result = predict(self, inputs, batch_size=batch_size, top_k=top_k, threshold=threshold, device=device,
                         settings=settings, skip_unreadable=skip_unreadable, progress=progress, backend=backend,
                         onnx_file=onnx_file, quantized=quantized)
        if result.skipped:
            shown = "; ".join(f"{s.input} ({s.reason})" for s in result.skipped[:5])
            logging.getLogger(__name__).warning(f"skipped {len(result.skipped)} unreadable input(s): {shown}"
                                                + (" ..." if len(result.skipped) > 5 else ""))
        return result.predictions


def _saved_head(head_config: dict, feature_dim: int, num_labels: int) -> nn.Module:
    """The head ``head_config`` describes, weights still to load: a built-in one, or a user class importable by name."""
    if head_config["type"] == "custom":
        module, _, name = head_config["class"].rpartition(".")
        return getattr(importlib.import_module(module), name)(feature_dim, num_labels)
    kwargs = {k: v for k, v in head_config.items() if k != "type"}
    return create_head(head_config["type"], feature_dim, num_labels, **kwargs)


def _head_config(head, head_kwargs: dict, module: nn.Module) -> dict:
    if isinstance(head, str):
        return {"type": head, **head_kwargs}
    return {"type": "custom", "class": f"{type(module).__module__}.{type(module).__qualname__}"}


def _version() -> str:
    from ..version import __version__

    return __version__


def create_transfer_model(modality: str, model_name_or_path: str, id2label: dict[int, str], *,
                          head: str | nn.Module = "linear", weights: str = "pretrained", multi_label: bool = False,
                          label_smoothing: float = 0.0, head_hidden_sizes: tuple[int, ...] = (512,),
                          head_dropout: float = 0.0, pooling: str | None = None, sampling_rate: int | None = None,
                          max_duration: float | None = None, n_mels: int | None = None) -> TransferModel:
    """Build a TransferModel: backbone by name/path (``weights`` = pretrained | random | file) plus a head.

    ``pooling`` applies to transformers encoders (``mean``, ``cls``; text also ``pooler`` and ``last``; None: ``last``
    for decoder LLMs, else ``mean``); ``sampling_rate``,
    ``max_duration`` and ``n_mels`` to audio backbones (None: the backbone's default; see ``create_backbone``)."""
    if not id2label:
        raise HFTransferError("no labels: the training data must contain at least one class")
    audio = {"sampling_rate": sampling_rate, "max_duration": max_duration, "n_mels": n_mels}
    backbone = create_backbone(modality, model_name_or_path, weights=weights, pooling=pooling,
                               **{k: v for k, v in audio.items() if v is not None})
    head_kwargs = {"dropout": head_dropout}
    if head == "mlp":
        head_kwargs["hidden_sizes"] = list(head_hidden_sizes)
    if head == "linear" and not backbone.linear_head_bias:
        head_kwargs["bias"] = False  # decoder LLMs: transformers' score layer has no bias
    head_module = create_head(head, backbone.feature_dim, len(id2label), **head_kwargs)
    model = TransferModel(backbone, head_module, id2label, multi_label=multi_label, label_smoothing=label_smoothing,
                          head_config=_head_config(head, head_kwargs, head_module))
    model.base_weights = weights
    return model


__all__ = ["TransferModel", "TransferOutput", "create_transfer_model"]
