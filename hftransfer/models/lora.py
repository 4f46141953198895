"""LoRA through peft: which layers get adapters, injecting them, merging them away, the adapter files.

LoRA (Hu et al. 2021) freezes a pretrained weight ``W`` and trains a low-rank update
``W + (alpha / r) * B @ A``. hftransfer never writes LoRA layers itself: ``add_lora`` hands a
``peft.LoraConfig`` to ``peft.inject_adapter_in_model`` on the backbone's ``adaptable_module()`` (the
timm model, or the transformers encoder), so the TransferModel keeps its structure and parameter names
only gain ``.base_layer.`` / ``.lora_A.default.`` parts. The optimizer, DDP, layer groups (hence
layer-wise LR decay), ``save_state`` checkpoints and exact resume therefore treat adapter weights
like any other parameter; the strategy decides that only they, the head (and norms under
``--train_norm``) train.

Default targets per family are the backbone's ``default_lora_layers()``: a transformers encoder's
attention projections (else peft's own per-model-type table), a timm model's ``nn.Linear`` layers
named ``qkv`` / ``proj`` / ``fc1`` / ``fc2`` and its 1x1 convolutions.

Targets are written as the shortest module-name suffixes that match exactly the chosen layers
(``attn.proj`` rather than ``proj`` in a ViT), which is also how peft matches ``target_modules``.

Export: ``merged_copy`` folds every adapter into its base weight and removes the LoRA layers, so the
existing native layouts apply unchanged; ``save_adapter`` writes peft's ``adapter_config.json`` +
``adapter_model.safetensors`` (keys as ``PeftModel.save_pretrained`` writes them, for the bare adaptable
module) plus ``head.safetensors`` and, when norm layers changed in training (``--train_norm``,
``--bn_stats none``), ``norms.safetensors`` (native key names of the adaptable module).
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import HFTransferError
from ..files import ADAPTER_HEAD_NAME, ADAPTER_NORMS_NAME, save_safetensors
from .devices import numel
from .norms import NORM_TYPES

LORA_PREFIX = "lora_"  # peft's LoraModel.prefix: every adapter parameter name has a part starting with it
PEFT_KEY_PREFIX = "base_model.model."  # how PeftModel.save_pretrained prefixes the keys it writes
ADAPTER_NAME = "default"
# the layer types peft's LoRA adapts (and that --lora_target_modules may name)
ADAPTABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


@dataclass
class LoraSpec:
    """The LoRA settings of a model: rank, scaling, dropout, resolved targets and the base weights adapted.

    ``base_weights`` is the ``--weights`` the backbone was built from (``pretrained``, a state-dict
    file; ``random`` or None cannot be rebuilt, so such an adapter only reloads through its merged copy).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)
    base_weights: str | None = None
    train_norm: bool = False

    def peft_config(self, base_model: str | None = None):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), base_model_name_or_path=base_model)

    @classmethod
    def from_record(cls, record: dict) -> "LoraSpec":
        return cls(**{k: record[k] for k in ("r", "alpha", "dropout", "target_modules", "base_weights", "train_norm")
                      if k in record})

    def rebuildable_base_weights(self, save_dir: Path) -> str:
        """The ``base_weights`` that the adapter folder ``save_dir`` rebuilds its backbone from, or a one-line error."""
        if self.base_weights in (None, "random"):
            raise HFTransferError(f"the adapter in '{save_dir}' was trained on "
                                  f"{'random' if self.base_weights else 'unrecorded'} base weights, which cannot be "
                                  "rebuilt: load the merged model in its parent folder")
        return self.base_weights


# ---------------------------------------------------------------------------------------------- targets
def matches_target(name: str, target: str) -> bool:
    """peft's rule for a ``target_modules`` entry: the module name itself or a dotted suffix of it."""
    return name == target or name.endswith("." + target)


def adaptable_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Every layer of ``module`` whose type peft's LoRA can adapt, by name."""
    return {n: m for n, m in module.named_modules() if n and isinstance(m, ADAPTABLE_TYPES)}


def attention_lora_layers(encoder: nn.Module, names: tuple[str, ...]) -> list[str]:
    """A transformers encoder's default LoRA targets: its ``nn.Linear`` layers whose last name is one of ``names`` (the
    attention projections), else the layers peft's own table names for the encoder's ``model_type``."""
    layers = adaptable_layers(encoder)
    chosen = [n for n, m in layers.items() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in names]
    if chosen:
        return chosen
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    targets = PEFT_DEFAULTS.get(encoder.config.model_type, [])
    return [n for n in layers if any(matches_target(n, t) for t in targets)]


def shortest_suffixes(chosen: list[str], all_names: list[str]) -> list[str]:
    """The shortest dotted suffixes that, matched the way peft matches, select exactly ``chosen`` among ``all_names``."""
    wanted, out = set(chosen), []
    for name in chosen:
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if all(n in wanted for n in all_names if matches_target(n, suffix)):
                if suffix not in out:
                    out.append(suffix)
                break
    return out


def candidate_names(module: nn.Module) -> list[str]:
    """The short names (last part) of the layers a target could name, for error messages."""
    return sorted({n.rsplit(".", 1)[-1] for n in adaptable_layers(module)})


def resolve_targets(backbone, requested: list[str] | None = None) -> list[str]:
    """``target_modules`` for peft: the family default, or ``requested`` checked name by name.

    A requested name that matches no layer, or only layers LoRA cannot adapt, is refused with the
    names that would match; a model with no default target is refused in one line.
    """
    module = backbone.adaptable_module()
    layers = adaptable_layers(module)
    all_names = [n for n, _ in module.named_modules() if n]
    what = f"'{backbone.name}'"
    if not layers:
        raise HFTransferError(f"{what} has no Linear, Conv or Embedding layer for LoRA to adapt: use another --strategy")
    candidates = candidate_names(module)
    if not requested:
        chosen = backbone.default_lora_layers()
        if not chosen:
            raise HFTransferError(f"{what} has none of the layers LoRA adapts by default "
                                  f"({backbone.default_lora_description}): pass --lora_target_modules with some of "
                                  f"{', '.join(candidates[:20])}")
        return shortest_suffixes(chosen, all_names)
    for target in requested:
        matched = [n for n in all_names if matches_target(n, target)]
        if not matched:
            close = difflib.get_close_matches(target.rsplit(".", 1)[-1], candidates, n=5)
            shown = ", ".join(close or candidates[:20])
            raise HFTransferError(f"unknown LoRA target module '{target}' in {what}: pass --lora_target_modules with "
                                  f"names of its Linear / Conv layers, e.g. {shown}")
        unsupported = [n for n in matched if n not in layers]
        if unsupported:
            kind = type(module.get_submodule(unsupported[0])).__name__
            raise HFTransferError(f"LoRA target '{target}' matches {unsupported[0]}, a {kind}, which LoRA cannot adapt: "
                                  f"name Linear / Conv layers instead, e.g. {', '.join(candidates[:20])}")
    return list(requested)


# ---------------------------------------------------------------------------------------------- injecting
def is_lora_parameter(name: str) -> bool:
    """Whether a parameter name belongs to a LoRA adapter (``...qkv.lora_A.default.weight``)."""
    return any(part.startswith(LORA_PREFIX) for part in name.split("."))


def add_lora(model, r: int = 8, alpha: float = 16.0, dropout: float = 0.0, target_modules: list[str] | None = None,
             train_norm: bool = False, spec: LoraSpec | None = None):
    """Inject LoRA adapters into ``model``'s backbone with peft, in place; returns ``model``.

    Targets are resolved (and checked) here unless ``spec`` gives them already (a reload). Call it
    before ``accelerator.prepare``: the new parameters must exist when the optimizer and DDP are
    built. ``model.lora`` records the settings (what the card, the export and reloads read).
    """
    from peft import inject_adapter_in_model

    if getattr(model, "lora", None) is not None:
        raise HFTransferError("this model already has LoRA adapters: add them once")
    if spec is None:
        spec = LoraSpec(r, alpha, dropout, resolve_targets(model.backbone, target_modules),
                        getattr(model, "base_weights", None), train_norm)
    module = model.backbone.adaptable_module()
    try:
        inject_adapter_in_model(spec.peft_config(model.backbone.name), module, adapter_name=ADAPTER_NAME)
    except ValueError as e:  # peft's own refusal (e.g. a layer type it does not support)
        raise HFTransferError(f"peft could not add LoRA to '{model.backbone.name}' ({str(e).splitlines()[0][:200]}): "
                              "change --lora_target_modules") from None
    if getattr(model.backbone, "channels_last", False):
        module.to(memory_format=torch.channels_last)  # the new adapter convolutions too
    model.lora = spec
    return model


def lora_parameter_count(model) -> int:
    return sum(numel(p) for n, p in model.named_parameters() if is_lora_parameter(n))


def trainable_fraction(model, spec: LoraSpec) -> tuple[int, float]:
    """(parameters that train in the LoRA phase, their share of all parameters): adapters + head (+ norms)."""
    count = lora_parameter_count(model) + sum(numel(p) for p in model.head.parameters())
    if spec.train_norm:
        count += sum(numel(p) for m in model.backbone.modules() if isinstance(m, NORM_TYPES)
                     for p in m.parameters(recurse=False))
    total = sum(numel(p) for p in model.parameters())
    return count, count / max(1, total)


def record(model) -> dict:
    """What ``hftransfer_config.json`` and the card say about the adapters of ``model``."""
    spec = model.lora
    count, fraction = trainable_fraction(model, spec)
    adapted = sum(1 for _, m in model.backbone.adaptable_module().named_modules() if _is_lora_layer(m))
    return {**asdict(spec), "adapted_layers": adapted, "lora_parameters": lora_parameter_count(model),
            "trainable_parameters": count, "trainable_fraction": fraction}


# ---------------------------------------------------------------------------------------------- merging, files
def _is_lora_layer(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def merged_copy(model):
    """A deep copy of ``model`` with every adapter merged into its base weight and the LoRA layers removed.

    The copy holds plain ``nn.Linear`` / ``nn.Conv2d`` layers again, under the base model's own key
    names, so native exports, ``modeling_hftransfer.py`` and plain timm / transformers load it.
    ``safe_merge`` refuses weights that turn non-finite instead of exporting them.
    """
    merged = copy.deepcopy(model)
    module = merged.backbone.adaptable_module()
    for name, layer in [(n, m) for n, m in module.named_modules() if _is_lora_layer(m)]:
        layer.merge(safe_merge=True, adapter_names=[ADAPTER_NAME])
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, layer.get_base_layer())
    if hasattr(module, "peft_config"):
        del module.peft_config
    merged.lora = None
    return merged


def _changed_norms(model) -> bool:
    """Whether norm layers moved in training: trained (``--train_norm``) or BatchNorm statistics updated."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return model.lora.train_norm or (has_bn and model.bn_stats == "none")


def save_adapter_files(model, folder: Path) -> list[str]:
    """Write peft's ``adapter_config.json`` + ``adapter_model.safetensors``, the head and (if they moved) the norms.

    Returns the file names written. The adapter keys are those ``PeftModel.save_pretrained`` writes
    for the bare adaptable module, so ``PeftModel.from_pretrained(base, folder, is_trainable=True)`` attaches them.
    """
    from peft.utils import CONFIG_NAME as PEFT_CONFIG_NAME
    from peft.utils import SAFETENSORS_WEIGHTS_NAME, get_peft_model_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    module = model.backbone.adaptable_module()
    state = get_peft_model_state_dict(module, adapter_name=ADAPTER_NAME, save_embedding_layers=False)
    state = {PEFT_KEY_PREFIX + k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_safetensors(folder / SAFETENSORS_WEIGHTS_NAME, state, metadata={"format": "pt"})
    model.lora.peft_config(model.backbone.name).save_pretrained(str(folder))
    head = {k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}
    save_safetensors(folder / ADAPTER_HEAD_NAME, head, metadata={"format": "pt"})
    written = [PEFT_CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, ADAPTER_HEAD_NAME]
    norms_file = folder / ADAPTER_NORMS_NAME
    if _changed_norms(model):
        norms = {f"{name}.{k}": v.detach().contiguous().cpu() for name, m in module.named_modules()
                 if isinstance(m, NORM_TYPES) for k, v in m.state_dict().items()}
        save_safetensors(norms_file, norms, metadata={"format": "pt"})
        written.append(ADAPTER_NORMS_NAME)
    else:
        norms_file.unlink(missing_ok=True)
    return written


def load_adapter_files(model, folder: Path) -> None:
    """Load what ``save_adapter_files`` wrote into ``model`` (adapters already injected), checking every key."""
    from peft import set_peft_model_state_dict
    from peft.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import load_file

    path = Path(folder) / SAFETENSORS_WEIGHTS_NAME
    if not path.is_file():
        raise HFTransferError(f"'{folder}' has no {SAFETENSORS_WEIGHTS_NAME}: the adapter folder is incomplete, "
                              "save or download it again")
    module = model.backbone.adaptable_module()
    state = {k.removeprefix(PEFT_KEY_PREFIX): v for k, v in load_file(path).items()}
    result = set_peft_model_state_dict(module, state, adapter_name=ADAPTER_NAME)
    missing = [k for k in result.missing_keys if is_lora_parameter(k)]
    if missing or result.unexpected_keys:
        raise HFTransferError(f"the adapter in '{folder}' does not match its adapter_config.json ({len(missing)} "
                              f"missing, e.g. {missing[:2]}; {len(result.unexpected_keys)} unexpected, e.g. "
                              f"{result.unexpected_keys[:2]}): save or download it again")
    model.head.load_state_dict(load_file(Path(folder) / ADAPTER_HEAD_NAME))  # strict: a random head is never kept
    norms_file = Path(folder) / ADAPTER_NORMS_NAME
    if norms_file.is_file():
        missing, unexpected = module.load_state_dict(load_file(norms_file), strict=False)
        if unexpected:
            raise HFTransferError(f"{norms_file} holds weights this model lacks (e.g. {unexpected[:2]}): "
                                  "save or download the adapter again")

