"""Native Hub layouts: one copy of the weights, under the key names of timm or transformers.

A TransferModel whose backbone + head has an exact equivalent in the backbone's own library is
saved in that library's layout, so that it loads *without* hftransfer:

* timm backbone + ``LinearHead`` -> timm's Hub layout: ``config.json`` (architecture, num_classes,
  num_features, label_names, pretrained_cfg, model_args) and ``model.safetensors`` holding the timm
  model's own state dict, classifier included. ``timm.create_model("hf-hub:<repo>", pretrained=True)``,
  transformers' ``TimmWrapper`` (``AutoModelForImageClassification``) and
  ``pipeline("image-classification")`` read it. ``model_args`` never carries ``num_classes``:
  TimmWrapper passes ``num_classes`` itself and fails with "got multiple values for keyword argument".
* encoder with ``pooling="pooler"`` + ``LinearHead`` -> ``<Family>ForSequenceClassification``:
  BERT / ERNIE / ALBERT (``pooler -> dropout -> classifier``) map key for key; the RoBERTa family
  (RoBERTa, XLM-R, CamemBERT) and MPNet map because their classification head *is* a pooler
  (``dense -> tanh`` on the first token) followed by ``out_proj``.

Everything else keeps hftransfer's key names and only loads with hftransfer, for a stated reason:
MLP or custom heads, ``mean``/``cls`` pooling (no transformers class pools that way), encoders
without such a classifier (DistilBERT's is ``pre_classifier -> ReLU -> classifier``, ELECTRA's has
no pooler), timm models whose classifier is not one linear layer (distilled heads).

A layout is only chosen after a structural check: the reference model a loader would build from
the written config (instantiated on the ``meta`` device, so no memory or time is spent) must have
exactly the mapped key set and shapes. ``key_map`` (hftransfer prefix -> native prefix) is stored
in ``hftransfer_config.json`` so that ``load_weights`` maps back without consulting these tables.
"""
from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .backbones import TextBackbone, TimmBackbone
from .errors import HFTransferError
from .heads import LinearHead
from .run_files import CONFIG_NAME, NATIVE_CONFIG_NAME, WEIGHTS_NAME, read_json, save_safetensors, write_json

HFTRANSFER_FORMAT = "hftransfer"

# transformers model_type -> how its ForSequenceClassification head relates to pooler + linear head
# (checked key for key and logit for logit in tests/test_export.py; anything else keeps hftransfer's layout)
POOLED_CLASSIFIER_TYPES = {"bert": "classifier_dropout", "ernie": "classifier_dropout",
                           "albert": "classifier_dropout_prob"}
ROBERTA_HEAD_TYPES = {"roberta", "xlm-roberta", "camembert", "mpnet"}


@dataclass
class NativeLayout:
    """How a TransferModel maps onto a native checkpoint.

    ``library`` is ``"timm"`` or ``"transformers"``; ``architecture`` the timm architecture or the
    transformers class name; ``key_map`` ordered ``(hftransfer_prefix, native_prefix)`` pairs;
    ``config`` the native ``config.json`` content.
    """

    library: str
    architecture: str
    key_map: list[tuple[str, str]]
    config: dict = field(repr=False)

    def record(self) -> dict:
        return {"library": self.library, "architecture": self.architecture, "key_map": [list(p) for p in self.key_map]}


def map_keys(state: dict[str, torch.Tensor], key_map: list[tuple[str, str]], reverse: bool = False) -> dict[str, torch.Tensor]:
    """Rename every key by its longest matching prefix in ``key_map`` (``reverse``: native -> hftransfer)."""
    pairs = [(n, h) for h, n in key_map] if reverse else [(h, n) for h, n in key_map]
    pairs.sort(key=lambda p: len(p[0]), reverse=True)
    out = {}
    for key, value in state.items():
        src, dst = next(((s, d) for s, d in pairs if key.startswith(s)), (None, None))
        if src is None:
            raise HFTransferError(f"weight '{key}' matches no prefix of the saved key map {key_map}: the checkpoint "
                                  "does not belong to this model")
        out[dst + key[len(src):]] = value
    return out


def native_layout(model) -> tuple[NativeLayout | None, str]:
    """The native layout of ``model`` and ``""``, or ``None`` and why there is none (one sentence)."""
    if type(model.head) is not LinearHead:
        kind = model.head_config.get("type", "custom")
        return None, (f"the {kind} head has no equivalent in {model.backbone.library}, "
                      "whose classifiers are a single linear layer")
    if sorted(model.id2label) != list(range(model.num_labels)):
        return None, "label ids are not 0..n-1, which native label lists require"
    if isinstance(model.backbone, TimmBackbone):
        return _timm_layout(model)
    if isinstance(model.backbone, TextBackbone):
        return _transformers_layout(model)
    return None, f"{type(model.backbone).__name__} backbones have no native export"


def _timm_layout(model) -> tuple[NativeLayout | None, str]:
    import timm
    from timm.models._hub import save_config_for_hf

    timm_model = model.backbone.model
    classifier = timm_model.pretrained_cfg.get("classifier", "classifier")
    if not isinstance(classifier, str):
        return None, f"the timm architecture has {len(classifier)} classifiers (e.g. a distillation head), not one"
    with tempfile.TemporaryDirectory() as tmp:
        # timm's own exporter knows which constructor arguments rebuild this model (img_size, ...)
        save_config_for_hf(timm_model, Path(tmp) / NATIVE_CONFIG_NAME)
        config = json.loads((Path(tmp) / NATIVE_CONFIG_NAME).read_text())
    labels = [model.id2label[i] for i in range(model.num_labels)]
    config["num_classes"] = model.num_labels
    config["pretrained_cfg"]["num_classes"] = model.num_labels
    config["label_names"] = labels
    model_args = {k: v for k, v in config.get("model_args", {}).items() if k != "num_classes"}
    config.pop("model_args", None)
    if model_args:
        config["model_args"] = model_args
    if model.multi_label:
        config["problem_type"] = "multi_label_classification"  # TimmWrapper / pipeline apply a sigmoid
    layout = NativeLayout("timm", config["architecture"],
                          [("backbone.model.", ""), ("head.fc.", f"{classifier}.")], config)
    try:
        with torch.device("meta"):
            reference = timm.create_model(config["architecture"], pretrained=False, num_classes=model.num_labels,
                                          **model_args)
    except Exception as e:  # any failure to rebuild means loaders would fail too
        return None, f"timm could not rebuild '{config['architecture']}' from its exported config ({type(e).__name__})"
    return _checked(layout, model, reference.state_dict())


def _transformers_layout(model) -> tuple[NativeLayout | None, str]:
    from transformers import AutoModelForSequenceClassification

    backbone = model.backbone
    model_type = backbone.encoder.config.model_type
    if backbone.pooling != "pooler":
        return None, (f"{backbone.pooling} pooling has no transformers equivalent: sequence classifiers pool "
                      "with the encoder's pooler (train with --pooling pooler for a native export)")
    if model_type not in POOLED_CLASSIFIER_TYPES and model_type not in ROBERTA_HEAD_TYPES:
        return None, (f"the {model_type} sequence classifier is not 'pooler -> linear' (only BERT, ERNIE, ALBERT, "
                      "MPNet and the RoBERTa family map exactly)")
    config = copy.deepcopy(backbone.encoder.config)
    config.id2label = dict(model.id2label)
    config.label2id = model.label2id
    config.problem_type = "multi_label_classification" if model.multi_label else "single_label_classification"
    dropout_field = POOLED_CLASSIFIER_TYPES.get(model_type, "classifier_dropout")
    setattr(config, dropout_field, float(model.head.dropout.p))
    try:
        with torch.device("meta"):
            reference = AutoModelForSequenceClassification.from_config(config)
    except Exception as e:
        return None, f"transformers could not build a sequence classifier for {model_type} ({type(e).__name__})"
    config.architectures = [type(reference).__name__]
    prefix = reference.base_model_prefix
    if model_type in ROBERTA_HEAD_TYPES:
        key_map = [("backbone.encoder.pooler.dense.", "classifier.dense."), ("backbone.encoder.", f"{prefix}."),
                   ("head.fc.", "classifier.out_proj.")]
    else:
        key_map = [("backbone.encoder.", f"{prefix}."), ("head.fc.", "classifier.")]
    layout = NativeLayout("transformers", config.architectures[0], key_map, json.loads(config.to_json_string()))
    return _checked(layout, model, reference.state_dict())


def _checked(layout: NativeLayout, model, reference: dict[str, torch.Tensor]) -> tuple[NativeLayout | None, str]:
    """Keep ``layout`` only if the mapped state matches the reference model key for key, shape for shape."""
    state = model.state_dict()
    mapped = map_keys(state, layout.key_map)
    if len(mapped) != len(state) or set(map_keys(mapped, layout.key_map, reverse=True)) != set(state):
        return None, f"hftransfer's weights do not map one-to-one onto {layout.architecture}"
    ref_shapes = {k: tuple(v.shape) for k, v in reference.items()}
    shapes = {k: tuple(v.shape) for k, v in mapped.items()}
    if ref_shapes != shapes:
        missing = sorted(set(ref_shapes) - set(shapes))[:2]
        extra = sorted(set(shapes) - set(ref_shapes))[:2]
        return None, f"{layout.architecture} expects other weights (missing {missing}, unexpected {extra})"
    return layout, ""


def save_weights(model, save_dir: Path) -> dict:
    """Write ``model.safetensors`` (native keys + ``config.json`` when a native layout exists).

    Returns the record merged into ``hftransfer_config.json``: ``weights_format`` (``timm``,
    ``transformers`` or ``hftransfer``) plus ``native`` (library, architecture, key map) or
    ``native_unavailable`` (the reason). A stale native ``config.json`` from an earlier save into the
    same folder is removed so that no loader picks up a config that no longer matches the weights.
    """
    layout, reason = native_layout(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if layout is not None:
        state = map_keys(state, layout.key_map)
    save_safetensors(save_dir / WEIGHTS_NAME, state, metadata={"format": "pt"})
    native_config = save_dir / NATIVE_CONFIG_NAME
    if layout is None:
        if native_config.is_file() and _written_by_us(save_dir):
            native_config.unlink()
        return {"weights_format": HFTRANSFER_FORMAT, "native_unavailable": reason}
    write_json(native_config, layout.config)
    return {"weights_format": layout.library, "native": layout.record()}


def _written_by_us(save_dir: Path) -> bool:
    return read_json(save_dir / CONFIG_NAME, {}).get("weights_format", HFTRANSFER_FORMAT) != HFTRANSFER_FORMAT


def load_weights(save_dir: Path, config: dict) -> dict[str, torch.Tensor]:
    """The state dict of ``save_dir`` under hftransfer's key names, whatever layout it was saved in."""
    from safetensors.torch import load_file

    path = save_dir / WEIGHTS_NAME
    if not path.is_file():
        raise HFTransferError(f"'{save_dir}' has no {WEIGHTS_NAME}: the folder is incomplete, save or download it again")
    state = load_file(path)
    if config.get("weights_format", HFTRANSFER_FORMAT) == HFTRANSFER_FORMAT:
        return state
    key_map = [tuple(p) for p in config["native"]["key_map"]]
    return map_keys(state, key_map, reverse=True)


def stale_native_files(save_dir: Path) -> list[str]:
    """Native config files in ``save_dir`` that its weights do not use (left by an earlier run in the folder).

    A timm / transformers loader would pair such a ``config.json`` with weights of another layout, so
    cards do not list them and pushes do not upload them.
    """
    path = save_dir / CONFIG_NAME
    fmt = read_json(path, {}).get("weights_format", HFTRANSFER_FORMAT) if path.is_file() else None
    return [NATIVE_CONFIG_NAME] if fmt == HFTRANSFER_FORMAT and (save_dir / NATIVE_CONFIG_NAME).is_file() else []
