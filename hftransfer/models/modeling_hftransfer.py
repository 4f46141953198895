"""transformers custom code for classifiers fine-tuned with hftransfer; this file must not import hftransfer.

hftransfer copies this file into every saved model that has no exact native timm / transformers
layout (mean or CLS pooling, MLP heads, DistilBERT or ELECTRA encoders, distilled timm
classifiers), next to a ``config.json`` whose ``auto_map`` names the classes below. transformers
then loads the folder or Hub repo with ``trust_remote_code=True`` and nothing but torch,
transformers (and timm for images) installed::

    AutoModelForSequenceClassification.from_pretrained(repo, trust_remote_code=True)
    AutoModelForImageClassification.from_pretrained(repo, trust_remote_code=True)
    pipeline("text-classification", model=repo, trust_remote_code=True)

The module names match hftransfer's (``backbone.encoder.*`` / ``backbone.model.*``, ``head.*``),
so ``model.safetensors`` is the very file hftransfer itself loads: one copy of the weights. The
heads and the pooling are defined here and nowhere else; hftransfer imports them from this file,
so the two can never compute different logits.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput, SequenceClassifierOutput

try:  # only image models need timm; text users may not have it installed
    import timm
except ImportError:
    timm = None

MODEL_TYPE = "hftransfer"


class LinearHead(nn.Module):
    """Dropout (optional) then one linear layer: the head of a linear probe."""

    def __init__(self, in_features: int, num_labels: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))


class MLPHead(nn.Module):
    """``Linear -> GELU -> Dropout`` for each hidden size, then the output layer."""

    def __init__(self, in_features: int, num_labels: int, hidden_sizes: Sequence[int] = (512,), dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(features))


HEADS = {"linear": LinearHead, "mlp": MLPHead}
POOLINGS = ("mean", "cls", "pooler")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str,
         pooler_output: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per sequence: mask-aware mean of the last hidden states, the first token, or the pooler's output."""
    if pooling == "pooler":
        return pooler_output
    if pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def build_head(head: dict, in_features: int, num_labels: int) -> nn.Module:
    """The head a ``config.json`` ``head`` entry describes (``{"type": "mlp", "hidden_sizes": [...], ...}``)."""
    kwargs = {k: v for k, v in head.items() if k != "type"}
    if head["type"] == "linear":
        kwargs.pop("hidden_sizes", None)
    return HEADS[head["type"]](in_features, num_labels, **kwargs)


class HFTransferConfig(PretrainedConfig):
    """What rebuilds the classifier: the backbone (an encoder config, or a timm architecture and its
    ``pretrained_cfg``), the pooling, and the head; labels and ``problem_type`` as transformers keeps them."""

    model_type = MODEL_TYPE

    def __init__(self, modality: str = "text", head: dict | None = None, feature_dim: int | None = None,
                 pooling: str = "mean", encoder_config: dict | None = None, architecture: str | None = None,
                 pretrained_cfg: dict | None = None, timm_kwargs: dict | None = None, **kwargs):
        self.modality = modality
        self.head = head or {"type": "linear"}
        self.feature_dim = feature_dim
        self.pooling = pooling
        self.encoder_config = encoder_config
        self.architecture = architecture
        self.pretrained_cfg = pretrained_cfg
        self.timm_kwargs = timm_kwargs or {}
        super().__init__(**kwargs)


class TextEncoder(nn.Module):
    """A transformers encoder plus the pooling it was fine-tuned with."""

    def __init__(self, config: HFTransferConfig):
        super().__init__()
        self.pooling = config.pooling
        self.encoder = AutoModel.from_config(AutoConfig.for_model(**config.encoder_config))
        if self.pooling != "pooler" and getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # unused by mean / CLS pooling, and not in the saved weights
        self.takes_token_type_ids = "token_type_ids" in inspect.signature(self.encoder.forward).parameters

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.takes_token_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        out = self.encoder(**kwargs)
        return pool(out.last_hidden_state, attention_mask, self.pooling, getattr(out, "pooler_output", None))


class TimmFeatures(nn.Module):
    """A timm model without its classifier, returning pooled features of normalized images."""

    def __init__(self, config: HFTransferConfig):
        super().__init__()
        if timm is None:
            raise ImportError("this image classifier needs timm: pip install timm")
        self.model = timm.create_model(config.architecture, pretrained=False, num_classes=0,
                                       pretrained_cfg=config.pretrained_cfg, **config.timm_kwargs)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)


class HFTransferPreTrainedModel(PreTrainedModel):
    config_class = HFTransferConfig
    base_model_prefix = "backbone"

    def _init_weights(self, module: nn.Module) -> None:
        pass  # every weight comes from the checkpoint; nothing here is trained from scratch

    def _classify(self, features: torch.Tensor, labels: torch.Tensor | None):
        logits = self.head(features.to(self.head.fc.weight.dtype))
        loss = None
        if labels is not None:
            if self.config.problem_type == "multi_label_classification":
                loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
            else:
                loss = nn.functional.cross_entropy(logits.float(), labels)
        return logits, loss


class HFTransferForSequenceClassification(HFTransferPreTrainedModel):
    """Encoder -> pooling -> head, as hftransfer trained it; outputs ``SequenceClassifierOutput``."""

    main_input_name = "input_ids"

    def __init__(self, config: HFTransferConfig):
        super().__init__(config)
        self.backbone = TextEncoder(config)
        self.head = build_head(config.head, config.feature_dim, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, return_dict=None,
                **kwargs) -> SequenceClassifierOutput:
        features = self.backbone(input_ids, attention_mask, token_type_ids)
        logits, loss = self._classify(features, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


class HFTransferForImageClassification(HFTransferPreTrainedModel):
    """timm backbone -> head, as hftransfer trained it; outputs ``ImageClassifierOutput``."""

    main_input_name = "pixel_values"

    def __init__(self, config: HFTransferConfig):
        super().__init__(config)
        self.backbone = TimmFeatures(config)
        self.head = build_head(config.head, config.feature_dim, config.num_labels)
        self.post_init()

    def forward(self, pixel_values=None, labels=None, return_dict=None, **kwargs) -> ImageClassifierOutput:
        features = self.backbone(pixel_values)
        logits, loss = self._classify(features, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)
