"""Models: the backbone contract and its timm / transformers adapters, heads, ``TransferModel``, LoRA,
native weight layouts, bundled offline weights, devices and batched inference."""
