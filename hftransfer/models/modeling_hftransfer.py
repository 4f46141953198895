"""transformers custom code for classifiers fine-tuned with hftransfer; this file must not import hftransfer.

hftransfer copies this file into every saved model that has no exact native timm / transformers layout (mean or
CLS pooling, MLP or cosine heads, DistilBERT or ELECTRA encoders, distilled timm classifiers, every audio
classifier), next to a ``config.json`` whose ``auto_map`` names the classes below. transformers then loads the
folder or Hub repo with ``trust_remote_code=True`` and nothing but torch, transformers (and timm for images and
log-mel audio) installed::

    AutoModelForSequenceClassification.from_pretrained(repo, trust_remote_code=True)
    AutoModelFor{Image,Audio}Classification.from_pretrained(repo, trust_remote_code=True)
    pipeline("text-classification", model=repo, trust_remote_code=True)  # or image- / audio-classification

The module names match hftransfer's (``backbone.encoder.*`` / ``backbone.model.*``, ``head.*``), so
``model.safetensors`` is the very file hftransfer itself loads: one copy of the weights. The heads and the pooling are
defined here and nowhere else; hftransfer imports them from this file, so the two can never compute different logits.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.audio_utils import mel_filter_bank
from transformers.modeling_outputs import ImageClassifierOutput, SequenceClassifierOutput

try:  # only image models need timm; text users may not have it installed
    import timm
except ImportError:
    timm = None

MODEL_TYPE = "hftransfer"


class LinearHead(nn.Module):
    """Dropout (optional) then one linear layer: the head of a linear probe."""

    def __init__(self, in_features: int, num_labels: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_labels, bias=bias)  # bias-free for decoder LLMs, as their `score` layer

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))


class MLPHead(nn.Module):
    """``Linear -> GELU -> Dropout`` for each hidden size, then the output layer."""

    def __init__(self, in_features: int, num_labels: int, hidden_sizes: Sequence[int] = (512,), dropout: float = 0.1):
        super().__init__()
        widths = [in_features, *hidden_sizes]
        self.hidden = nn.Sequential(*[layer for width, hidden in zip(widths, widths[1:])
                                      for layer in (nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout))])
        self.fc = nn.Linear(widths[-1], num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(features))


class CosineHead(nn.Module):
    """Dropout (optional), then ``exp(log_scale) * cos(features, W[c])`` per class: a learned temperature (its log is
    the parameter) times cosine similarity, no bias; ``--head_init prototypes`` starts row c at class c's mean."""

    def __init__(self, in_features: int, num_labels: int, dropout: float = 0.0, scale: float = 10.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_labels, bias=False)  # row c: the direction of class c
        self.log_scale = nn.Parameter(torch.tensor(float(scale)).log())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x, w = nn.functional.normalize(self.dropout(features), dim=-1), nn.functional.normalize(self.fc.weight, dim=-1)
        return self.log_scale.exp() * (x @ w.T)


HEADS = {"linear": LinearHead, "mlp": MLPHead, "cosine": CosineHead}
POOLINGS = ("mean", "cls", "pooler", "last")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str,
         pooler_output: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per sequence: mask-aware mean of the last hidden states, the first token, the pooler's output, or
    the last token holding text (either padding side; in a decoder LLM the only one that has seen the whole text)."""
    if pooling == "pooler":
        return pooler_output
    if pooling == "cls" or (pooling == "last" and attention_mask is None):
        return hidden[:, 0 if pooling == "cls" else -1]
    if pooling == "last":  # the rightmost position the mask keeps, the rule of transformers' decoder classifiers
        last = (torch.arange(hidden.shape[1], device=hidden.device) * attention_mask).argmax(-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def build_head(head: dict, in_features: int, num_labels: int) -> nn.Module:
    """The head a ``config.json`` ``head`` entry describes (``{"type": "mlp", "hidden_sizes": [...], ...}``)."""
    kwargs = {k: v for k, v in head.items() if k != "type" and (k != "hidden_sizes" or head["type"] == "mlp")}
    return HEADS[head["type"]](in_features, num_labels, **kwargs)


class HFTransferConfig(PretrainedConfig):
    """What rebuilds the classifier: the backbone (an encoder config, or a timm architecture and its ``pretrained_cfg``;
    audio: the log-mel ``frontend`` settings in front of a timm model, or the ``audio_inputs`` an audio encoder
    takes), the pooling, and the head; labels and ``problem_type`` as transformers keeps them."""

    model_type = MODEL_TYPE

    def __init__(self, modality: str = "text", head: dict | None = None, feature_dim: int | None = None,
                 pooling: str = "mean", encoder_config: dict | None = None, architecture: str | None = None,
                 pretrained_cfg: dict | None = None, timm_kwargs: dict | None = None, frontend: dict | None = None,
                 audio_inputs: list[str] | None = None, **kwargs):
        self.modality, self.head, self.feature_dim = modality, head or {"type": "linear"}, feature_dim
        self.pooling, self.encoder_config, self.architecture = pooling, encoder_config, architecture
        self.pretrained_cfg, self.timm_kwargs = pretrained_cfg, timm_kwargs or {}
        self.frontend, self.audio_inputs = frontend, audio_inputs
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
        types = {"token_type_ids": token_type_ids} if token_type_ids is not None and self.takes_token_type_ids else {}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **types)
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


def fit_length(waves: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Clips of exactly ``num_samples``: longer ones centre-cropped at ``(N - num_samples) // 2``, shorter ones
    zero-padded at the end (the rule hftransfer's audio pipeline applies too)."""
    start = max(0, (waves.shape[-1] - num_samples) // 2)
    return nn.functional.pad(waves[..., start:start + num_samples], (0, max(0, num_samples - waves.shape[-1])))


def spectrogram_keep(spec_masks: torch.Tensor, n_mels: int, frames: int) -> torch.Tensor:
    """[batch, n_mels, frames], False in the masked bands: a row ``(axis, start, width)`` of ``spec_masks``
    [batch, masks, 3] masks index i of its axis (0 time, 1 mel frequency; length L) where
    start * L <= i < (start + width) * L."""
    axis, start, width = spec_masks.float().unbind(-1)

    def band(length: int, which: int) -> torch.Tensor:
        index = torch.arange(length, device=spec_masks.device, dtype=torch.float32)
        hit = (index >= (start * length).unsqueeze(-1)) & (index < ((start + width) * length).unsqueeze(-1))
        return (hit & (axis == which).unsqueeze(-1)).any(dim=1)

    return ~(band(n_mels, 1).unsqueeze(-1) | band(frames, 0).unsqueeze(1))


class LogMelFrontend(nn.Module):
    """Waveforms [batch, samples] -> log-mel spectrograms [batch, 3, n_mels, frames], images for a timm model.

    Clips are fitted to ``max_duration`` seconds (``fit_length``); then an STFT (Hann window of ``n_fft``, default
    25 ms rounded up to a power of two; hop 10 ms; centred frames), power, a Slaney mel filterbank (``f_min`` ..
    ``f_max``, default rate / 2), ``log(mel + 1e-6)``, zero mean and unit std per example; ``spec_masks`` (training
    only) silence bands (set to the clip's minimum), and the channel is repeated thrice for ImageNet weights.
    Buffers are rebuilt, not saved."""

    def __init__(self, sampling_rate: int = 16000, max_duration: float = 1.0, n_fft: int | None = None,
                 hop_length: int | None = None, n_mels: int = 128, f_min: float = 0.0, f_max: float | None = None):
        super().__init__()
        self.sampling_rate, self.max_duration, self.n_mels = int(sampling_rate), float(max_duration), int(n_mels)
        self.n_fft = int(n_fft or 1 << (int(-(-0.025 * sampling_rate // 1)) - 1).bit_length())  # 25 ms, up to 2^k
        self.hop_length = int(hop_length or round(0.010 * sampling_rate))
        self.f_min, self.f_max = float(f_min), float(f_max if f_max is not None else sampling_rate / 2)
        self.num_samples = round(self.max_duration * self.sampling_rate)
        self.register_buffer("window", torch.empty(self.n_fft), persistent=False)
        self.register_buffer("mel_filters", torch.empty(self.n_mels, self.n_fft // 2 + 1), persistent=False)
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Compute the window and filterbank (again: transformers 5 loads models on the meta device and leaves
        non-persistent buffers empty, for ``_init_weights`` to fill)."""
        bank = mel_filter_bank(self.n_fft // 2 + 1, self.n_mels, self.f_min, self.f_max, self.sampling_rate,
                               norm="slaney", mel_scale="slaney")
        self.window.copy_(torch.hann_window(self.n_fft, device="cpu"))
        self.mel_filters.copy_(torch.from_numpy(bank.T))

    def config(self) -> dict:
        return {k: getattr(self, k) for k in ("sampling_rate", "max_duration", "n_fft", "hop_length", "n_mels",
                                              "f_min", "f_max")}

    @property
    def num_frames(self) -> int:
        return 1 + self.num_samples // self.hop_length

    def forward(self, input_values: torch.Tensor, spec_masks: torch.Tensor | None = None) -> torch.Tensor:
        waves = fit_length(input_values.float(), self.num_samples)
        with torch.autocast(waves.device.type, enabled=False):  # in float32 whatever the model's precision
            spec = torch.stft(waves, self.n_fft, self.hop_length, window=self.window.float(), center=True,
                              return_complex=True)
            logmel = torch.log(torch.matmul(self.mel_filters.float(), spec.abs() ** 2) + 1e-6)
            mean, std = logmel.mean(dim=(1, 2), keepdim=True), logmel.std(dim=(1, 2), keepdim=True)
            logmel = (logmel - mean) / (std + 1e-5)
            if spec_masks is not None:  # masked bands become silence (the clip's floor), not its mean: short clips
                # padded to max_duration are mostly silence, where a mean-valued band would be a bright artefact
                floor = logmel.amin(dim=(1, 2), keepdim=True).expand_as(logmel)
                logmel = torch.where(spectrogram_keep(spec_masks, *logmel.shape[1:]), logmel, floor)
        return logmel.unsqueeze(1).repeat(1, 3, 1, 1)


def fit_spectrogram_size(model: nn.Module, frontend: LogMelFrontend) -> nn.Module:
    """A timm model with a fixed input grid (a ViT) set to the spectrogram's size (n_mels x frames, zero-padded to
    whole patches; position embeddings resampled), else as it is."""
    embed = getattr(model, "patch_embed", None)
    if hasattr(model, "set_input_size") and getattr(embed, "img_size", None):
        (ph, pw), size = embed.patch_size, (frontend.n_mels, frontend.num_frames)
        model.set_input_size(img_size=(-(-size[0] // ph) * ph, -(-size[1] // pw) * pw))
        embed.strict_img_size, embed.dynamic_img_pad = False, True
    return model


class LogMelTimmFeatures(TimmFeatures):
    """Waveforms -> ``frontend`` (log-mel spectrograms) -> ``model`` (timm, no classifier): pooled features."""

    input_names = ("input_values",)

    def __init__(self, config: HFTransferConfig):
        super().__init__(config)
        self.frontend = LogMelFrontend(**config.frontend)
        fit_spectrogram_size(self.model, self.frontend)

    def forward(self, input_values: torch.Tensor, spec_masks: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(self.frontend(input_values, spec_masks).to(next(self.model.parameters()).dtype))


def build_audio_encoder(encoder_config: dict) -> nn.Module:
    """The ``AutoModel`` of ``encoder_config``; of an encoder-decoder (Whisper) the encoder alone."""
    model = AutoModel.from_config(AutoConfig.for_model(**encoder_config))
    return model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model


def frame_mask(encoder: nn.Module, frames: int, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Which of the ``frames`` output frames hold audio: the encoder's own map of a sample mask onto frames
    (wav2vec2, HuBERT, WavLM), the mask itself when it has one entry per frame, else None (every frame counts)."""
    if attention_mask is None:
        return None
    if hasattr(encoder, "_get_feature_vector_attention_mask"):
        return encoder._get_feature_vector_attention_mask(frames, attention_mask)
    return attention_mask if attention_mask.shape[1] == frames else None


class AudioEncoder(nn.Module):
    """A transformers audio encoder plus the pooling it was fine-tuned with (mask-aware mean, or first frame)."""

    def __init__(self, config: HFTransferConfig):
        super().__init__()
        self.pooling, self.input_names = config.pooling, tuple(config.audio_inputs or ("input_values",))
        self.encoder = build_audio_encoder(config.encoder_config)

    def forward(self, input_values=None, attention_mask=None, input_features=None) -> torch.Tensor:
        given = {"input_values": input_values, "attention_mask": attention_mask, "input_features": input_features}
        hidden = self.encoder(**{k: v for k, v in given.items() if v is not None}).last_hidden_state
        return pool(hidden, frame_mask(self.encoder, hidden.shape[1], attention_mask), self.pooling)


class HFTransferPreTrainedModel(PreTrainedModel):
    config_class = HFTransferConfig
    base_model_prefix = "backbone"

    def _init_weights(self, module: nn.Module) -> None:
        """Every weight comes from the checkpoint; only the log-mel front end's computed buffers are filled in."""
        if isinstance(module, LogMelFrontend):
            module.reset_buffers()

    def _build(self, config: HFTransferConfig, backbone: nn.Module) -> None:
        self.backbone, self.head = backbone, build_head(config.head, config.feature_dim, config.num_labels)
        self.post_init()

    def _classify(self, features: torch.Tensor, labels: torch.Tensor | None):
        logits, loss = self.head(features.to(self.head.fc.weight.dtype)), None
        if labels is not None and self.config.problem_type == "multi_label_classification":
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        elif labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels)
        return logits, loss


class HFTransferForSequenceClassification(HFTransferPreTrainedModel):
    """Encoder -> pooling -> head, as hftransfer trained it; outputs ``SequenceClassifierOutput``."""

    main_input_name = "input_ids"

    def __init__(self, config: HFTransferConfig):
        super().__init__(config)
        self._build(config, TextEncoder(config))

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
        self._build(config, TimmFeatures(config))

    def forward(self, pixel_values=None, labels=None, return_dict=None, **kwargs) -> ImageClassifierOutput:
        features = self.backbone(pixel_values)
        logits, loss = self._classify(features, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)


class HFTransferForAudioClassification(HFTransferPreTrainedModel):
    """Waveforms -> log-mel + timm, or an audio encoder + pooling -> head; outputs ``SequenceClassifierOutput``."""

    main_input_name = "input_values"

    def __init__(self, config: HFTransferConfig):
        super().__init__(config)
        self._build(config, LogMelTimmFeatures(config) if config.frontend else AudioEncoder(config))

    def forward(self, input_values=None, attention_mask=None, input_features=None, labels=None, return_dict=None,
                **kwargs) -> SequenceClassifierOutput:
        given = {"input_values": input_values, "attention_mask": attention_mask, "input_features": input_features}
        features = self.backbone(**{k: v for k, v in given.items() if v is not None and k in self.backbone.input_names})
        logits, loss = self._classify(features, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
