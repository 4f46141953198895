"""hftransfer: transfer learning for timm vision backbones and transformers text encoders.

The Python API::

    import hftransfer

    result = hftransfer.finetune("tf_efficientnet_lite0", train_dir="train", validation_dir="val")
    result.metrics["eval_accuracy"], result.model              # all_results.json's scores, the TransferModel
    hftransfer.predict(result, ["photo.jpg"])                  # or a run folder / Hub repo id
    hftransfer.export_onnx(result, quantize="int8")            # onnx/model.onnx (+ model_int8.onnx), checked
    hftransfer.predict(result, ["photo.jpg"], backend="onnxruntime")
    hftransfer.rank_backbones(["resnet18", "tf_efficientnet_lite0"], train_dir="train")

Names are imported on first use (PEP 562), so ``import hftransfer`` loads neither torch nor the
Hugging Face libraries; subpackages (``hftransfer.cli``, ``hftransfer.models``, ...) import as usual.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import HFTransferError
from .version import __version__

# public name -> "module:attribute"
_EXPORTS = {
    "Backbone": "hftransfer.models.factory:Backbone",
    "LayerGroup": "hftransfer.models.factory:LayerGroup",
    "TextBackbone": "hftransfer.models.factory:TextBackbone",
    "TimmBackbone": "hftransfer.models.factory:TimmBackbone",
    "create_backbone": "hftransfer.models.factory:create_backbone",
    "LinearHead": "hftransfer.models.heads:LinearHead",
    "MLPHead": "hftransfer.models.heads:MLPHead",
    "create_head": "hftransfer.models.heads:create_head",
    "TransferModel": "hftransfer.models.transfer_model:TransferModel",
    "TransferOutput": "hftransfer.models.transfer_model:TransferOutput",
    "create_transfer_model": "hftransfer.models.transfer_model:create_transfer_model",
    "RunResults": "hftransfer.records:RunResults",
    "FinetuneResult": "hftransfer.runs.api:FinetuneResult",
    "finetune": "hftransfer.runs.api:finetune",
    "rank_backbones": "hftransfer.runs.api:rank_backbones",
    "predict": "hftransfer.runs.api:predict",
    "export_onnx": "hftransfer.runs.api:export_onnx",
    "OnnxExport": "hftransfer.records:OnnxExport",
}

__all__ = [  # every name of _EXPORTS, and the two imported above
    "Backbone", "FinetuneResult", "HFTransferError", "LayerGroup", "LinearHead", "MLPHead", "OnnxExport",
    "RunResults", "TextBackbone", "TimmBackbone", "TransferModel", "TransferOutput", "__version__",
    "create_backbone", "create_head", "create_transfer_model", "export_onnx", "finetune", "predict",
    "rank_backbones",
]

if TYPE_CHECKING:
    from .models.factory import Backbone, LayerGroup, TextBackbone, TimmBackbone, create_backbone
    from .models.heads import LinearHead, MLPHead, create_head
    from .models.transfer_model import TransferModel, TransferOutput, create_transfer_model
    from .records import OnnxExport, RunResults
    from .runs.api import FinetuneResult, export_onnx, finetune, predict, rank_backbones


def __getattr__(name: str):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'hftransfer' has no attribute '{name}'")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # imported once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
