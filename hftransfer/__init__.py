"""hftransfer: transfer learning for timm vision backbones and transformers text encoders."""
__version__ = "0.1.0"

from .errors import HFTransferError  # noqa: E402
from .models.factory import Backbone, LayerGroup, TextBackbone, TimmBackbone, create_backbone  # noqa: E402
from .models.heads import LinearHead, MLPHead, create_head  # noqa: E402
from .models.transfer_model import TransferModel, TransferOutput, create_transfer_model  # noqa: E402

__all__ = [
    "Backbone", "LayerGroup", "TextBackbone", "TimmBackbone", "create_backbone", "HFTransferError",
    "LinearHead", "MLPHead", "create_head", "TransferModel", "TransferOutput", "create_transfer_model",
]
