"""``TransformersAudioBackbone``: any transformers audio encoder (wav2vec2, HuBERT, WavLM, AST, Whisper's encoder).

The encoder comes from ``AutoModel`` (an encoder-decoder such as Whisper contributes its encoder alone)
and its preprocessing from ``AutoFeatureExtractor``; features are the mask-aware mean of its last hidden
states (``modeling_hftransfer.frame_mask`` maps a sample-level padding mask onto output frames) or its
first frame. The custom-code export (``HFTransferForAudioClassification`` with ``AudioEncoder``) builds
the same modules under the same names and pools with the same functions.
"""
from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import HFTransferError
from ..files import ENCODER_CONFIG_NAME, write_text
from .backbone import Backbone, LayerGroup, load_state_file
from .layouts import NativeLayout, checked_layout
from .lora import attention_lora_layers
from .modeling_hftransfer import build_audio_encoder, frame_mask, pool
from .text_backbone import TextBackbone

AUDIO_POOLINGS = ("mean", "cls")
DEFAULT_MAX_DURATION = 1.0  # seconds each clip is cropped / padded to, as LogMelFrontend's default
# LoRA's default targets, the attention projections: q_proj/k_proj/v_proj (wav2vec2, HuBERT, WavLM, Whisper, AST
# in transformers 5), query/key/value (AST in transformers 4)
LORA_ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "query", "key", "value")
# model types whose ForSequenceClassification is projector -> mask-aware mean -> classifier (see native_layout)
MEAN_POOLED_CLASSIFIER_TYPES = {"wav2vec2", "hubert", "wavlm", "data2vec-audio"}


class TransformersAudioBackbone(Backbone):
    """A transformers audio encoder and its feature extractor.

    ``pooling``: ``"mean"`` over the output frames (only those holding audio where the encoder maps a padding
    mask onto frames) or ``"cls"`` (the first frame: AST's CLS token). ``max_duration``: the seconds each clip
    is centre-cropped or zero-padded to before the feature extractor.
    """

    modality = "audio"
    library = "transformers"
    config_type = "audio_transformers"
    input_names = ("input_values", "input_features", "attention_mask")

    def __init__(self, model_name_or_path: str, weights: str = "pretrained", pooling: str | None = None,
                 max_duration: float = DEFAULT_MAX_DURATION, encoder_config: dict | None = None,
                 preprocessor_path: str | None = None):
        super().__init__()
        pooling = pooling or "mean"
        if pooling not in AUDIO_POOLINGS:
            raise HFTransferError(f"unknown pooling '{pooling}' for an audio encoder: use mean or cls")
        self.name, self.pooling, self.max_duration = model_name_or_path, pooling, float(max_duration)
        self.encoder = self._load_encoder(model_name_or_path, weights, encoder_config)
        try:
            from transformers import AutoFeatureExtractor

            self.feature_extractor = AutoFeatureExtractor.from_pretrained(preprocessor_path or model_name_or_path)
        except (OSError, ValueError) as e:
            raise HFTransferError(f"'{model_name_or_path}' has no audio feature extractor "
                                  f"({str(e).splitlines()[0][:160]}): pass an audio model with a "
                                  "preprocessor_config.json, or a timm name for log-mel spectrograms") from None
        accepted = inspect.signature(self.encoder.forward).parameters
        wanted = ("input_values", "input_features")
        if getattr(self.feature_extractor, "return_attention_mask", False):
            wanted += ("attention_mask",)  # a padding mask, where the feature extractor makes one
        self.input_names = tuple(n for n in wanted if n in accepted)
        if not set(self.input_names) & {"input_values", "input_features"}:
            raise HFTransferError(f"'{model_name_or_path}' ({type(self.encoder).__name__}) takes no audio input: pass "
                                  "an audio encoder (wav2vec2, HuBERT, WavLM, AST, Whisper) or a timm name")
        self.feature_dim = self.encoder.config.hidden_size

    def _load_encoder(self, name: str, weights: str, encoder_config: dict | None) -> nn.Module:
        from transformers import AutoConfig, AutoModel

        try:
            if encoder_config is not None:
                return build_audio_encoder(encoder_config)
            if weights == "pretrained":
                model = AutoModel.from_pretrained(name)
                return model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model
            encoder = build_audio_encoder(AutoConfig.from_pretrained(name).to_dict())
        except (OSError, ValueError) as e:
            raise HFTransferError(f"could not load audio encoder '{name}' ({str(e).splitlines()[0][:200]}): pass a "
                                  "transformers model folder or a Hub model id reachable from here") from None
        if weights != "random":
            self._load_strict(encoder, load_state_file(weights))
        return encoder

    def _load_strict(self, encoder: nn.Module, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise HFTransferError(f"weights do not match '{self.name}': {len(missing)} missing (e.g. {missing[:2]}), "
                                  f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")

    @classmethod
    def create(cls, model_name_or_path: str, *, weights: str = "pretrained", pooling: str | None = None,
               sampling_rate: int | None = None, max_duration: float | None = None,
               n_mels: int | None = None) -> "TransformersAudioBackbone":
        """``max_duration`` None: ``DEFAULT_MAX_DURATION``. The feature extractor fixes the rate and the features:
        ``sampling_rate`` may only repeat its rate, ``n_mels`` (the log-mel front end's) does not apply."""
        if n_mels is not None:
            raise HFTransferError(f"--n_mels sets the log-mel front end of timm models, and '{model_name_or_path}' "
                                  "is an audio encoder with its own feature extractor: drop --n_mels")
        backbone = cls(model_name_or_path, weights=weights, pooling=pooling,
                       max_duration=DEFAULT_MAX_DURATION if max_duration is None else max_duration)
        rate = backbone.feature_extractor.sampling_rate
        if sampling_rate is not None and sampling_rate != rate:
            raise HFTransferError(f"'{model_name_or_path}' takes audio at {rate} Hz (its feature extractor's rate), "
                                  f"not {sampling_rate}: pass --sampling_rate {rate} or drop it")
        return backbone

    # the same transformers checkpointing as text encoders (non-reentrant, training mode only)
    set_gradient_checkpointing = TextBackbone.set_gradient_checkpointing
    gradient_checkpointing = TextBackbone.gradient_checkpointing

    def data_pipeline(self, *, decode_size: int | None = None, max_seq_length: int = 128, augmentation=None):
        """Waveforms at the feature extractor's rate, fitted to ``max_duration``, then its features (``data.audio``)."""
        from ..data.audio import AudioPipeline

        return AudioPipeline(sampling_rate=self.feature_extractor.sampling_rate, max_duration=self.max_duration,
                             augmentation=augmentation, feature_extractor=self.feature_extractor)

    def set_input_size(self, size: int) -> "TransformersAudioBackbone":
        raise HFTransferError("--image_size applies to image models: an audio encoder's input is set by "
                              "--max_duration and its feature extractor")

    def forward(self, input_values=None, attention_mask=None, input_features=None) -> torch.Tensor:
        given = {"input_values": input_values, "attention_mask": attention_mask, "input_features": input_features}
        hidden = self.encoder(**{k: v for k, v in given.items() if v is not None}).last_hidden_state
        return pool(hidden, frame_mask(self.encoder, hidden.shape[1], attention_mask), self.pooling)

    def layer_groups(self) -> list[LayerGroup]:
        """The feature encoder / embeddings, one group per transformer layer, then whatever follows (final norm).

        The layer stack is the ``nn.ModuleList`` of ``num_hidden_layers`` entries holding the most parameters
        (wav2vec2's convolutional feature encoder may have as many entries)."""
        n_layers = self.encoder.config.num_hidden_layers
        stacks = [(sum(p.numel() for p in m.parameters()), name) for name, m in self.encoder.named_modules()
                  if isinstance(m, nn.ModuleList) and len(m) == n_layers]
        names = [n for n, _ in self.encoder.named_parameters()]
        if not stacks:
            return [LayerGroup("encoder", [f"encoder.{n}" for n in names])]
        stack = max(stacks)[1]
        before, layers, after = [], [[] for _ in range(n_layers)], []
        for n in names:
            if n.startswith(stack + "."):
                layers[int(n[len(stack) + 1:].split(".")[0])].append(n)
            else:
                (after if any(layers) else before).append(n)
        groups = [("embeddings", before)] + [(f"{stack}.{i}", g) for i, g in enumerate(layers)] + [("final", after)]
        return [LayerGroup(f"encoder.{name}", [f"encoder.{n}" for n in g]) for name, g in groups if g]

    def config(self) -> dict:
        return {"type": self.config_type, "model_name": self.name, "pooling": self.pooling,
                "max_duration": self.max_duration}

    def save_preprocessing(self, save_dir: Path) -> None:
        """The feature extractor (``preprocessor_config.json``) and the encoder's config, for an offline rebuild."""
        self.feature_extractor.save_pretrained(save_dir)
        write_text(save_dir / ENCODER_CONFIG_NAME, json.dumps(self.encoder.config.to_dict(), indent=2))

    @classmethod
    def from_config(cls, config: dict, save_dir: Path, *, weights: str | None = None) -> "TransformersAudioBackbone":
        """The saved encoder config and feature extractor (random weights), or the encoder built from ``weights``."""
        kwargs = {"pooling": config["pooling"], "max_duration": config.get("max_duration", DEFAULT_MAX_DURATION),
                  "preprocessor_path": str(save_dir)}
        if weights is not None:
            return cls(config["model_name"], weights=weights, **kwargs)
        encoder_config = json.loads((Path(save_dir) / ENCODER_CONFIG_NAME).read_text())
        return cls(config["model_name"], encoder_config=encoder_config, **kwargs)

    # ---- LoRA and the exports -----------------------------------------------------------------------------
    default_lora_description = "the encoder's attention projections (q_proj/k_proj/v_proj, query/key/value)"

    def adaptable_module(self) -> nn.Module:
        return self.encoder

    def default_lora_layers(self) -> list[str]:
        """The attention projections (``LORA_ATTENTION_NAMES``), else those of peft's own table per model type."""
        return attention_lora_layers(self.encoder, LORA_ATTENTION_NAMES)

    def native_layout(self, model) -> tuple[NativeLayout | None, str]:
        """``<Family>ForSequenceClassification`` of wav2vec2-like encoders, whose head is ``projector`` -> mask-aware
        mean -> ``classifier``: with mean pooling and a linear head it is exact once the projector is the identity
        (``classifier_proj_size`` = hidden size; written as constant tensors, dropped on loading)."""
        from transformers import AutoModelForAudioClassification

        model_type = self.encoder.config.model_type
        if self.pooling != "mean" or model_type not in MEAN_POOLED_CLASSIFIER_TYPES:
            return None, (f"{self.pooling}-pooled {model_type} has no exact transformers audio classifier (only "
                          "mean-pooled wav2vec2, HuBERT, WavLM and Data2VecAudio map): the export uses custom code")
        config = copy.deepcopy(self.encoder.config)
        config.id2label, config.label2id = dict(model.id2label), model.label2id
        config.problem_type = "multi_label_classification" if model.multi_label else "single_label_classification"
        config.classifier_proj_size, config.use_weighted_layer_sum = self.feature_dim, False
        try:
            with torch.device("meta"):
                reference = AutoModelForAudioClassification.from_config(config)
        except Exception as e:  # noqa: BLE001 - e.g. wav2vec2 adapters, which its sequence classifier refuses
            return None, f"transformers could not build an audio classifier for {model_type} ({type(e).__name__})"
        config.architectures = [type(reference).__name__]
        dtype = model.head.fc.weight.dtype
        constants = {"projector.weight": torch.eye(self.feature_dim, dtype=dtype),
                     "projector.bias": torch.zeros(self.feature_dim, dtype=dtype)}
        key_map = [("backbone.encoder.", f"{reference.base_model_prefix}."), ("head.fc.", "classifier.")]
        layout = NativeLayout("transformers", config.architectures[0], key_map, json.loads(config.to_json_string()),
                              constants)
        return checked_layout(layout, model, reference.state_dict())

    def remote_code_config(self) -> dict:
        """The encoder's config, the pooling and the inputs it takes (``AudioEncoder``)."""
        return {"pooling": self.pooling, "encoder_config": self.encoder.config.to_dict(),
                "audio_inputs": list(self.input_names)}
