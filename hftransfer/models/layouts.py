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
* mean-pooled wav2vec2 / HuBERT / WavLM / Data2VecAudio + ``LinearHead`` -> ``<Family>ForSequenceClassification``
  (``projector`` -> mask-aware mean -> ``classifier``), its projector the identity: two ``constants``
  written with the weights and dropped on loading (``AutoModelForAudioClassification``, ``pipeline``).

Everything else keeps hftransfer's key names, for a stated reason (MLP heads, ``mean``/``cls``
pooling: no transformers class pools that way, encoders without such a classifier: DistilBERT's is
``pre_classifier -> ReLU -> classifier``, ELECTRA's has no pooler, timm models whose classifier is
not one linear layer) and still loads without hftransfer, through transformers' custom code: the
self-contained ``modeling_hftransfer.py`` is copied next to a ``config.json`` whose ``auto_map``
names its classes (``AutoModelFor{Sequence,Image,Audio}Classification`` with ``trust_remote_code=True``,
and ``pipeline``). Its module names are hftransfer's, so the one weights file serves both loaders.
Only user-defined heads, whose code the folder cannot carry, load with hftransfer alone.

A layout is only chosen after a structural check: the reference model a loader would build from
the written config (instantiated on the ``meta`` device, so no memory or time is spent) must have
exactly the mapped key set and shapes. ``key_map`` (hftransfer prefix -> native prefix) is stored
in ``hftransfer_config.json`` so that ``load_weights`` maps back without consulting the backbones.

Each backbone adapter knows its own library: ``Backbone.native_layout`` builds the layout above and
``Backbone.remote_code_config`` the backbone's part of the custom-code config; this module holds the
checks they share and writes the files.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import HFTransferError
from ..files import (
    CONFIG_NAME,
    HFTRANSFER_FORMAT,
    IMAGE_PROCESSOR_NAME,
    NATIVE_CONFIG_NAME,
    REMOTE_CODE_FILES,
    REMOTE_CODE_NAME,
    WEIGHTS_NAME,
    copy_file,
    read_json,
    save_safetensors,
    write_json,
)
from . import modeling_hftransfer
from .heads import HEADS, LinearHead

# modality -> (transformers auto class, the class of modeling_hftransfer.py it maps to)
REMOTE_CODE_CLASSES = {"text": ("AutoModelForSequenceClassification", "HFTransferForSequenceClassification"),
                       "image": ("AutoModelForImageClassification", "HFTransferForImageClassification"),
                       "audio": ("AutoModelForAudioClassification", "HFTransferForAudioClassification")}


@dataclass
class NativeLayout:
    """How a TransferModel maps onto a native checkpoint.

    ``library`` is ``"timm"`` or ``"transformers"``; ``architecture`` the timm architecture or the
    transformers class name; ``key_map`` ordered ``(hftransfer_prefix, native_prefix)`` pairs;
    ``config`` the native ``config.json`` content; ``constants`` native tensors that hftransfer's model
    has no counterpart of (an identity projection), written with the weights and dropped on loading.
    """

    library: str
    architecture: str
    key_map: list[tuple[str, str]]
    config: dict = field(repr=False)
    constants: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def record(self) -> dict:
        record = {"library": self.library, "architecture": self.architecture,
                  "key_map": [list(p) for p in self.key_map]}
        return {**record, "constant_keys": sorted(self.constants)} if self.constants else record


def map_keys(state: dict[str, torch.Tensor], key_map: list[tuple[str, str]],
             reverse: bool = False) -> dict[str, torch.Tensor]:
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
    return model.backbone.native_layout(model)


def checked_layout(layout: NativeLayout, model, reference: dict[str, torch.Tensor]) -> tuple[NativeLayout | None, str]:
    """Keep ``layout`` only if the mapped state matches the reference model key for key, shape for shape."""
    state = model.state_dict()
    mapped = map_keys(state, layout.key_map)
    if len(mapped) != len(state) or set(map_keys(mapped, layout.key_map, reverse=True)) != set(state):
        return None, f"hftransfer's weights do not map one-to-one onto {layout.architecture}"
    if set(mapped) & set(layout.constants):
        return None, f"constant tensors of {layout.architecture} collide with hftransfer's weights"
    mapped.update(layout.constants)
    ref_shapes = {k: tuple(v.shape) for k, v in reference.items()}
    shapes = {k: tuple(v.shape) for k, v in mapped.items()}
    if ref_shapes != shapes:
        missing = sorted(set(ref_shapes) - set(shapes))[:2]
        extra = sorted(set(shapes) - set(ref_shapes))[:2]
        return None, f"{layout.architecture} expects other weights (missing {missing}, unexpected {extra})"
    return layout, ""


@dataclass
class RemoteCodeLayout:
    """A ``config.json`` for ``modeling_hftransfer.py``: the classes transformers loads with ``trust_remote_code``."""

    auto_class: str
    architecture: str
    config: dict = field(repr=False)

    def record(self) -> dict:
        return {"auto_class": self.auto_class, "architecture": self.architecture, "file": REMOTE_CODE_NAME}


def remote_code_layout(model) -> tuple[RemoteCodeLayout | None, str]:
    """The custom-code export of ``model`` and ``""``, or ``None`` and why there is none (one sentence).

    The config is checked like a native one: the classes it names, built on the ``meta`` device,
    must hold exactly the model's weight names and shapes.
    """
    head = model.head_config
    if head.get("type") not in HEADS:
        return None, (f"the user-defined head {head.get('class', 'custom')} is not part of the shipped modeling code "
                      "(load it with hftransfer, its class importable)")
    if sorted(model.id2label) != list(range(model.num_labels)):
        return None, "label ids are not 0..n-1, which transformers' id2label requires"
    auto_class, architecture = REMOTE_CODE_CLASSES[model.modality]
    config = {
        "model_type": modeling_hftransfer.MODEL_TYPE,
        "architectures": [architecture],
        "auto_map": {"AutoConfig": "modeling_hftransfer.HFTransferConfig",
                     auto_class: f"modeling_hftransfer.{architecture}"},
        "modality": model.modality,
        "head": head,
        "feature_dim": model.backbone.feature_dim,
        "id2label": {str(i): model.id2label[i] for i in range(model.num_labels)},
        "label2id": {model.id2label[i]: i for i in range(model.num_labels)},
        "problem_type": "multi_label_classification" if model.multi_label else "single_label_classification",
    }
    backbone = model.backbone.remote_code_config()
    if backbone is None:
        return None, f"{type(model.backbone).__name__} backbones have no transformers custom code"
    config.update(backbone)
    layout = RemoteCodeLayout(auto_class, architecture, config)
    try:
        with torch.device("meta"):
            cls = getattr(modeling_hftransfer, architecture)
            reference = cls(modeling_hftransfer.HFTransferConfig(**copy.deepcopy(config)))
    except Exception as e:  # noqa: BLE001 - whatever fails here would fail for the user's loader too
        return None, f"the shipped modeling code could not rebuild this model ({type(e).__name__}: {str(e)[:120]})"
    ref_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    if ref_shapes != {k: tuple(v.shape) for k, v in model.state_dict().items()}:
        return None, "the shipped modeling code builds other weights than this model holds"
    return layout, ""


def _write_remote_code(save_dir: Path, layout: RemoteCodeLayout) -> None:
    """``config.json``, the modeling code and, for images, timm's image processor. An audio model's
    ``preprocessor_config.json`` is its feature extractor, which ``save_preprocessing`` writes (and keeps)."""
    write_json(save_dir / NATIVE_CONFIG_NAME, layout.config)
    copy_file(Path(modeling_hftransfer.__file__), save_dir / REMOTE_CODE_NAME)
    if layout.config["modality"] == "audio":
        return
    if layout.config["modality"] == "image":  # the image processor transformers' Hub loaders look for first
        write_json(save_dir / IMAGE_PROCESSOR_NAME, {
            "image_processor_type": layout.config["image_processor_type"],
            "architecture": layout.config["architecture"], "pretrained_cfg": layout.config["pretrained_cfg"]})
    elif (save_dir / IMAGE_PROCESSOR_NAME).is_file():
        (save_dir / IMAGE_PROCESSOR_NAME).unlink()


def save_weights(model, save_dir: Path) -> dict:
    """Write ``model.safetensors`` and the ``config.json`` of the layout that loads it without hftransfer.

    Native layout: native keys + timm / transformers ``config.json``. Otherwise hftransfer's keys +
    the custom-code ``config.json`` and ``modeling_hftransfer.py`` (+ ``preprocessor_config.json``
    for images; audio models write theirs, the feature extractor, in ``save_preprocessing``). Returns the
    record merged into ``hftransfer_config.json``: ``weights_format`` (``timm``, ``transformers`` or
    ``hftransfer``) plus ``native`` (library, architecture, key map)
    or ``native_unavailable`` (the reason) and ``remote_code`` (auto class, architecture) or
    ``remote_code_unavailable``. Files of another layout left by an earlier save into the same
    folder are removed, so that no loader pairs a config with weights it does not describe.
    """
    layout, reason = native_layout(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if layout is not None:
        state = {**map_keys(state, layout.key_map), **layout.constants}
    earlier = _files_written_by_us(save_dir)
    save_safetensors(save_dir / WEIGHTS_NAME, state, metadata={"format": "pt"})
    if layout is not None:
        _remove(save_dir, [name for name in earlier if name != NATIVE_CONFIG_NAME])
        write_json(save_dir / NATIVE_CONFIG_NAME, layout.config)
        return {"weights_format": layout.library, "native": layout.record()}
    remote, remote_reason = remote_code_layout(model)
    record = {"weights_format": HFTRANSFER_FORMAT, "native_unavailable": reason}
    if remote is None:
        _remove(save_dir, earlier)
        return {**record, "remote_code_unavailable": remote_reason}
    _write_remote_code(save_dir, remote)
    return {**record, "remote_code": remote.record()}


def _files_written_by_us(save_dir: Path) -> list[str]:
    """The loader files an earlier hftransfer save left in ``save_dir`` (a user's own ``config.json`` is kept)."""
    earlier = read_json(save_dir / CONFIG_NAME, {})
    if earlier.get("weights_format", HFTRANSFER_FORMAT) == HFTRANSFER_FORMAT and not earlier.get("remote_code"):
        return []
    return [name for name in REMOTE_CODE_FILES if (save_dir / name).is_file()]


def _remove(save_dir: Path, names: list[str]) -> None:
    for name in names:
        (save_dir / name).unlink(missing_ok=True)


def load_weights(save_dir: Path, config: dict) -> dict[str, torch.Tensor]:
    """The state dict of ``save_dir`` under hftransfer's key names, whatever layout it was saved in."""
    from safetensors.torch import load_file

    path = save_dir / WEIGHTS_NAME
    if not path.is_file():
        raise HFTransferError(f"'{save_dir}' has no {WEIGHTS_NAME}: the folder is incomplete, save or download it "
                              "again")
    state = load_file(path)
    if config.get("weights_format", HFTRANSFER_FORMAT) == HFTRANSFER_FORMAT:
        return state
    key_map = [tuple(p) for p in config["native"]["key_map"]]
    constants = set(config["native"].get("constant_keys", []))
    return map_keys({k: v for k, v in state.items() if k not in constants}, key_map, reverse=True)

