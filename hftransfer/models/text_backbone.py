"""``TextBackbone``: any transformers encoder or decoder LLM as a backbone (mean / CLS / pooler / last-token pooling,
one group per layer)."""
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
from .bundled import bundled_text_model_path
from .layouts import NativeLayout, checked_layout
from .lora import attention_lora_layers
from .modeling_hftransfer import POOLINGS, pool

# LoRA's default targets, the attention projections: query/key/value in BERT, RoBERTa, ALBERT, ELECTRA, MiniLM;
# q_lin/k_lin/v_lin in DistilBERT; q/k/v in MPNet
LORA_ATTENTION_NAMES = ("query", "key", "value", "q_lin", "k_lin", "v_lin", "q", "k", "v")
# transformers model_type -> how its ForSequenceClassification head relates to pooler + linear head
# (checked key for key and logit for logit in tests/test_export.py; anything else keeps hftransfer's layout)
POOLED_CLASSIFIER_TYPES = {"bert": "classifier_dropout", "ernie": "classifier_dropout",
                           "albert": "classifier_dropout_prob"}
ROBERTA_HEAD_TYPES = {"roberta", "xlm-roberta", "camembert", "mpnet"}


def is_decoder_lm(config) -> bool:
    """A decoder-only LLM (Llama, Qwen2, Mistral, Gemma, GPT-2, ...): transformers has a causal LM for its type but
    no masked LM (BERT-style encoders have both; encoder-decoders neither)."""
    from transformers.models.auto import modeling_auto

    model_type = config.model_type
    return (model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and model_type not in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES)


class TextBackbone(Backbone):
    """Any transformers text model loadable with ``AutoModel``: encoders (BERT, DistilBERT, RoBERTa, MiniLM, ...)
    and decoder LLMs (Llama, Qwen2, Mistral, Gemma, ...).

    ``pooling``: ``"mean"`` (attention-mask-aware mean of the last hidden states), ``"cls"`` (first
    token), ``"pooler"`` (the model's own pooler, BERT's tanh dense layer) or ``"last"`` (the last token
    holding text); None = ``last`` for a decoder LLM, ``mean`` for an encoder. With mean/cls pooling
    the encoder's pooler is dropped so that no parameter goes unused (DDP requires that).

    Decoder LLMs: a tokenizer without a padding token pads with its end-of-sequence token, on the right, so that
    positions count from the first token whatever the batch (left padding shifts rotary positions), and the model
    config records that ``pad_token_id`` (its ``ForSequenceClassification`` finds the last token by it). Their
    linear head has no bias, like transformers' ``score`` layer, so the export is that class. Pretrained weights
    load in float32 whatever the checkpoint's dtype: the optimizer keeps full-precision weights, and
    ``--mixed_precision`` sets the compute dtype.
    """

    modality = "text"
    library = "transformers"
    config_type = "text"
    input_names = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, model_name_or_path: str, weights: str = "pretrained", pooling: str | None = None,
                 encoder_config: dict | None = None, tokenizer_path: str | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if pooling is not None and pooling not in POOLINGS:
            raise HFTransferError(f"unknown pooling '{pooling}': use mean, cls, pooler or last")
        self.name, self.pooling = model_name_or_path, pooling
        source = bundled_text_model_path(model_name_or_path) or model_name_or_path
        config = None
        try:
            if encoder_config is not None:
                config = AutoConfig.for_model(**encoder_config)
                self.encoder = AutoModel.from_config(config)
            elif weights == "random":
                self.encoder = AutoModel.from_config(AutoConfig.from_pretrained(source))
            elif weights == "pretrained":
                self.encoder = AutoModel.from_pretrained(source, dtype=torch.float32)
            else:
                self.encoder = AutoModel.from_config(AutoConfig.from_pretrained(source))
                self._load_strict(load_state_file(weights))
            # an export's config.json is hftransfer's custom-code config: handing the encoder's config over keeps
            # transformers from reading it as a plain config (and warning about the model type)
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or source, config=config,
                                                           trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise HFTransferError(
                f"could not load text encoder '{model_name_or_path}' ({str(e).splitlines()[0][:200]}): "
                "pass a transformers model folder or a Hub model id reachable from here"
            ) from None
        self.is_decoder = is_decoder_lm(self.encoder.config)
        self.pooling = pooling = pooling or ("last" if self.is_decoder else "mean")
        if self.is_decoder:
            self._prepare_decoder(model_name_or_path)
        if pooling == "pooler" and getattr(self.encoder, "pooler", None) is None:
            raise HFTransferError(f"'{model_name_or_path}' has no pooler layer: use --pooling mean or cls")
        if pooling != "pooler" and getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None
        self.feature_dim = self.encoder.config.hidden_size
        accepted = inspect.signature(self.encoder.forward).parameters
        self.input_names = tuple(n for n in TextBackbone.input_names if n in accepted)
        if self.is_decoder:  # a BERT-style tokenizer on a decoder would feed token_type_ids to transformers' pipeline
            self.tokenizer.model_input_names = [n for n in self.tokenizer.model_input_names if n in self.input_names]

    @classmethod
    def create(cls, model_name_or_path: str, *, weights: str = "pretrained",
               pooling: str | None = None) -> "TextBackbone":
        return cls(model_name_or_path, weights=weights, pooling=pooling)

    def _prepare_decoder(self, name: str) -> None:
        """Padding for a decoder LLM: a pad token (else its EOS), right padding, ``pad_token_id`` in the config."""
        if self.pooling == "cls":
            raise HFTransferError(f"'{name}' is a decoder LLM: its first token attends to nothing after it, so cls "
                                  "pooling ignores the text; use --pooling last (the default) or mean")
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise HFTransferError(f"the tokenizer of '{name}' has neither a padding nor an end-of-sequence "
                                      "token to pad with: add a pad_token to its tokenizer_config.json")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.encoder.config.pad_token_id = self.tokenizer.pad_token_id

    @property
    def linear_head_bias(self) -> bool:
        """Whether a linear head on this backbone has a bias: not on decoder LLMs (transformers' ``score`` has none)."""
        return not self.is_decoder

    def set_gradient_checkpointing(self, enable: bool = True) -> "TextBackbone":
        """transformers' checkpointing of every encoder layer, non-reentrant: the reentrant kind needs
        ``enable_input_require_grads`` to give anything a gradient behind frozen embeddings. Active in
        training mode only (transformers' rule); evaluation and feature extraction are unchanged.

        transformers 5.x renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable``
        (the old name warns until v6); the new name is used where it exists."""
        if not getattr(self.encoder, "supports_gradient_checkpointing", False):
            raise HFTransferError(f"the {type(self.encoder).__name__} encoder of '{self.name}' does not support "
                                  "gradient checkpointing: drop --gradient_checkpointing")
        kwargs = {"use_reentrant": False}
        if hasattr(self.encoder, "activation_checkpointing_enable"):
            if enable:
                self.encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.encoder.activation_checkpointing_disable()
        elif enable:
            self.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            self.encoder.gradient_checkpointing_disable()
        return self

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether the encoder's layers recompute their activations in the backward pass."""
        return any(getattr(m, "gradient_checkpointing", False) for m in self.encoder.modules())

    def data_pipeline(self, *, decode_size: int | None = None, max_seq_length: int = 128, augmentation=None):
        from ..data.preprocessing import TextPipeline

        return TextPipeline(self.tokenizer, max_seq_length)

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
        return pool(out.last_hidden_state, attention_mask, self.pooling, getattr(out, "pooler_output", None))

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

    # ONNX: batch and sequence length stay free; int8 quantizes the weights of the matrix products (dynamic)
    onnx_axes = {0: "batch", 1: "sequence"}
    int8_method = "dynamic"

    def example_inputs(self) -> list:
        return ["an example sentence", "a second and somewhat longer example sentence, to trace padding"]

    def preprocessing_spec(self, pipeline, save_dir: Path) -> dict:
        """The tokenizer (saved into ``save_dir``), truncation at the run's ``max_seq_length``, padding per batch."""
        self.tokenizer.save_pretrained(save_dir)
        return {"modality": "text", "inputs": {name: {"dtype": "int64"} for name in self.input_names},
                "tokenizer": ".", "max_seq_length": pipeline.max_seq_length, "truncation": True, "padding": "longest"}

    def save_preprocessing(self, save_dir: Path) -> None:
        self.tokenizer.save_pretrained(save_dir)
        write_text(save_dir / ENCODER_CONFIG_NAME, json.dumps(self.encoder.config.to_dict(), indent=2))

    @classmethod
    def from_config(cls, config: dict, save_dir: Path, *, weights: str | None = None) -> "TextBackbone":
        """The saved encoder config and tokenizer (random weights), or the encoder built from ``weights``."""
        if weights is not None:
            return cls(config["model_name"], weights=weights, pooling=config["pooling"], tokenizer_path=str(save_dir))
        encoder_config = json.loads((save_dir / ENCODER_CONFIG_NAME).read_text())
        return cls(config["model_name"], pooling=config["pooling"], encoder_config=encoder_config,
                   tokenizer_path=str(save_dir))

    # ---- LoRA and the exports -----------------------------------------------------------------------------
    default_lora_description = "the encoder's attention projections (query/key/value)"

    def adaptable_module(self) -> nn.Module:
        return self.encoder

    def default_lora_layers(self) -> list[str]:
        """The attention projections (``LORA_ATTENTION_NAMES``), else those of peft's own table per model type."""
        return attention_lora_layers(self.encoder, LORA_ATTENTION_NAMES)

    def native_layout(self, model) -> tuple[NativeLayout | None, str]:
        """``<Family>ForSequenceClassification``, where it is exactly this backbone + a linear head: the encoder's
        pooler + linear (BERT, ERNIE, ALBERT; RoBERTa family, MPNet), or a decoder LLM's last token + bias-free
        ``score`` (Llama, Qwen2, Mistral, Gemma, ...: transformers finds that token as the last one that is not
        ``pad_token_id``, which is the one the attention mask ends on for text without pad tokens in it)."""
        model_type = self.encoder.config.model_type
        if self.is_decoder and self.pooling != "last":
            return None, (f"{self.pooling} pooling has no transformers equivalent: decoder sequence classifiers read "
                          "the last token (train with --pooling last, the default, for a native export)")
        if not self.is_decoder and self.pooling != "pooler":
            return None, (f"{self.pooling} pooling has no transformers equivalent: sequence classifiers pool "
                          "with the encoder's pooler (train with --pooling pooler for a native export)")
        if not self.is_decoder and model_type not in POOLED_CLASSIFIER_TYPES and model_type not in ROBERTA_HEAD_TYPES:
            return None, (f"the {model_type} sequence classifier is not 'pooler -> linear' (only BERT, ERNIE, ALBERT, "
                          "MPNet and the RoBERTa family map exactly)")
        config, reference = self._sequence_classifier(model)
        if reference is None:
            return None, f"transformers could not build a sequence classifier for {model_type} ({config})"
        prefix = reference.base_model_prefix
        if self.is_decoder:
            key_map = [("backbone.encoder.", f"{prefix}."), ("head.fc.", "score.")]
        elif model_type in ROBERTA_HEAD_TYPES:  # their classification head is a pooler (dense -> tanh) + out_proj
            key_map = [("backbone.encoder.pooler.dense.", "classifier.dense."), ("backbone.encoder.", f"{prefix}."),
                       ("head.fc.", "classifier.out_proj.")]
        else:
            key_map = [("backbone.encoder.", f"{prefix}."), ("head.fc.", "classifier.")]
        layout = NativeLayout("transformers", config.architectures[0], key_map, json.loads(config.to_json_string()))
        return checked_layout(layout, model, reference.state_dict())

    def _sequence_classifier(self, model):
        """The native config (labels, problem type, head dropout) and the classifier transformers builds from it on
        the meta device; ``(error name, None)`` where it cannot build one."""
        from transformers import AutoModelForSequenceClassification

        config = copy.deepcopy(self.encoder.config)
        config.id2label = dict(model.id2label)
        config.label2id = model.label2id
        config.problem_type = "multi_label_classification" if model.multi_label else "single_label_classification"
        if not self.is_decoder:
            setattr(config, POOLED_CLASSIFIER_TYPES.get(config.model_type, "classifier_dropout"),
                    float(model.head.dropout.p))
        try:
            with torch.device("meta"):
                reference = AutoModelForSequenceClassification.from_config(config)
        except Exception as e:
            return type(e).__name__, None
        config.architectures = [type(reference).__name__]
        return config, reference

    def remote_code_config(self) -> dict:
        return {"pooling": self.pooling, "encoder_config": self.encoder.config.to_dict()}
