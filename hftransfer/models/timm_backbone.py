"""``TimmBackbone``: any timm model as a backbone (features, layer groups from ``group_matcher``, preprocessing)."""
from __future__ import annotations

import difflib
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import HFTransferError
from ..files import NATIVE_CONFIG_NAME
from .backbone import Backbone, LayerGroup, group_name, load_state_file
from .bundled import bundled_timm_state_dict, has_bundled_timm_weights
from .layouts import NativeLayout, checked_layout
from .lora import adaptable_layers

# LoRA's default Linear targets: ViT-style blocks (a fused ``qkv`` gets one adapter pair), ConvNeXt's MLPs
# attention and MLP projections: fused qkv / proj / fc1 / fc2 (ViT, DeiT, DINOv2, Swin, ...), and the unfused
# q_proj / k_proj / v_proj and SwiGLU fc1_g / fc1_x of EVA-02 and other large timm ViTs
LORA_LINEAR_NAMES = ("qkv", "proj", "fc1", "fc2", "q_proj", "k_proj", "v_proj", "fc1_g", "fc1_x")


class TimmBackbone(Backbone):
    """Any timm model, its classifier removed (``num_classes=0``) so it returns pooled features.

    ``weights``: ``"pretrained"`` (bundled offline checkpoint when one is installed for the name,
    else timm's own pretrained source, usually the Hub), ``"random"`` (from scratch), or a path to a
    ``.safetensors`` / ``.pth`` state dict, loaded strictly (classifier keys are dropped).
    """

    modality = "image"
    library = "timm"
    config_type = "timm"
    input_names = ("pixel_values",)

    def __init__(self, model_name: str, weights: str = "pretrained", **timm_kwargs):
        super().__init__()
        import timm

        self.channels_last = False
        self.name = model_name
        self.timm_kwargs = timm_kwargs
        arch = model_name.removeprefix("timm/")
        if not model_name.startswith(("hf-hub:", "local-dir:")) and not timm.is_model(arch.split(".")[0]):
            close = difflib.get_close_matches(arch, timm.list_models(), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "list names with timm.list_models('*pattern*')"
            raise HFTransferError(f"unknown timm model '{model_name}': {hint}")
        if weights == "pretrained" and has_bundled_timm_weights(model_name):
            self.model = timm.create_model(arch.split(".")[0], pretrained=False, **timm_kwargs)
            state = bundled_timm_state_dict(model_name)
            self._load_strict(state)
        elif weights in ("pretrained", "random"):
            try:
                self.model = timm.create_model(
                    model_name, pretrained=weights == "pretrained", num_classes=0, **timm_kwargs
                )
            except (OSError, RuntimeError) as e:
                raise HFTransferError(
                    f"could not load pretrained weights for '{model_name}' ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200]}): check the name and network access, or pass --weights PATH"
                ) from None
        else:
            self.model = timm.create_model(arch.split(".")[0], pretrained=False, **timm_kwargs)
            self._load_strict(load_state_file(weights))
        self.model.reset_classifier(0)
        self.feature_dim = self.model.num_features

    def _load_strict(self, state: dict[str, torch.Tensor]) -> None:
        """Load every backbone tensor or fail: a silent partial load trains a half-random model."""
        classifier = self.model.pretrained_cfg.get("classifier", "classifier")
        classifier = classifier if isinstance(classifier, str) else classifier[0]
        state = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}
        self.model.reset_classifier(0)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise HFTransferError(
                f"weights do not match '{self.name}': {len(missing)} missing (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); pass weights made for this architecture"
            )

    @classmethod
    def create(cls, model_name_or_path: str, *, weights: str = "pretrained",
               pooling: str | None = None) -> "TimmBackbone":
        return cls(model_name_or_path, weights=weights)  # timm models pool themselves

    def use_fast_layout(self) -> "TimmBackbone":
        """NHWC weights and inputs: CNN convolutions are faster in channels_last, on CPU and GPU alike."""
        self.model.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def use_default_layout(self) -> "TimmBackbone":
        """Back to NCHW weights and inputs (for engines that view each weight as one flat contiguous buffer)."""
        self.model.to(memory_format=torch.contiguous_format)
        self.channels_last = False
        return self

    def set_input_size(self, size: int) -> "TimmBackbone":
        """Train and serve at ``size`` x ``size`` pixels: the preprocessing (and the exported config, which
        records ``pretrained_cfg``) follows. Models with a fixed grid (ViTs) resize it through timm."""
        if hasattr(self.model, "set_input_size"):
            self.model.set_input_size(img_size=size)
        cfg = dict(self.model.pretrained_cfg)
        cfg["input_size"] = (cfg.get("input_size", (3, 224, 224))[0], size, size)
        cfg.pop("test_input_size", None)  # timm would evaluate at the original size otherwise
        cfg.pop("test_crop_pct", None)
        self.model.pretrained_cfg = cfg
        return self

    def set_gradient_checkpointing(self, enable: bool = True) -> "TimmBackbone":
        """timm's ``set_grad_checkpointing`` (stage by stage through ``checkpoint_seq``), non-reentrant.

        timm picks reentrant or not from one process-wide switch (``timm.layers.set_reentrant_ckpt``, set
        from ``TIMM_REENTRANT_CKPT``; older timm versions always checkpointed re-entrantly); it is forced off
        here because reentrant checkpoints over a frozen stem pass no gradient to the trainable stages behind them."""
        import timm
        from timm import layers

        if enable:
            if not hasattr(layers, "set_reentrant_ckpt"):
                raise HFTransferError(f"timm {timm.__version__} checkpoints re-entrantly, which gives frozen-input "
                                      "layers no gradients: pip install -U timm, or drop --gradient_checkpointing")
            layers.set_reentrant_ckpt(False)
        try:
            self.model.set_grad_checkpointing(enable)
        except (AssertionError, NotImplementedError, AttributeError):
            raise HFTransferError(f"timm model '{self.name}' does not support gradient checkpointing: drop "
                                  "--gradient_checkpointing") from None
        return self

    def data_pipeline(self, *, decode_size: int | None = None, max_seq_length: int = 128, augmentation=None):
        from ..data.preprocessing import ImagePipeline

        return ImagePipeline(self.data_config, decode_size, augmentation)

    # ONNX: a CNN's activations quantize well once calibrated (static int8, QDQ); the graph takes uint8 pixels
    int8_method = "static"

    def example_inputs(self) -> list:
        from PIL import Image

        size = self.data_config["input_size"][-1]
        return [Image.new("RGB", (size + 32, size), (120, 80, 40)), Image.new("RGB", (size, size + 16), (10, 200, 90))]

    def preprocessing_spec(self, pipeline, save_dir: Path) -> dict:
        """Decode to RGB, shrink the shorter side (bicubic, never enlarge), resize, center crop, uint8 NCHW: the
        graph normalizes inside, so a plain ``numpy`` array of pixels is its input."""
        from ..data.preprocessing import resize_size

        cfg = self.data_config
        return {"modality": "image", "inputs": {"pixel_values": {"dtype": "uint8", "layout": "NCHW (RGB)"}},
                "decode_shorter_side": pipeline.shorter_side or None, "decode_interpolation": "bicubic",
                "resize_shorter_side": resize_size(cfg), "interpolation": cfg.get("interpolation", "bilinear"),
                "center_crop": int(cfg["input_size"][-1]), "normalization": "inside the graph",
                "mean": list(cfg["mean"]), "std": list(cfg["std"])}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled features of normalized float images, or of uint8 images normalized here, on the device."""
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        if pixel_values.dtype == torch.uint8:
            cfg = self.model.pretrained_cfg
            mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=pixel_values.device).view(1, -1, 1, 1)
            std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=pixel_values.device).view(1, -1, 1, 1)
            dtype = next(self.model.parameters()).dtype
            pixel_values = ((pixel_values.to(dtype) / 255 - mean) / std).to(dtype)
        return self.model(pixel_values)

    def layer_groups(self) -> list[LayerGroup]:
        from timm.models import group_parameters

        names = [n for n, _ in self.model.named_parameters()]
        if not hasattr(self.model, "group_matcher"):
            return [LayerGroup("backbone", names)]
        grouped = group_parameters(self.model, self.model.group_matcher(coarse=True))
        # group_parameters keys are sortable ids in input->output order
        groups = [[n for n in grouped[k]] for k in sorted(grouped)]
        return [LayerGroup(f"model.{group_name(g)}", [f"model.{n}" for n in g]) for g in groups]

    @property
    def data_config(self) -> dict:
        """timm's preprocessing for this model: input size, interpolation, crop, mean/std."""
        from timm.data import resolve_data_config

        return resolve_data_config({}, model=self.model)

    def config(self) -> dict:
        cfg = self.model.pretrained_cfg
        return {"type": "timm", "model_name": self.name, "architecture": cfg.get("architecture", self.name),
                "pretrained_cfg": json.loads(json.dumps(cfg, default=list)), "timm_kwargs": self.timm_kwargs}

    @classmethod
    def from_config(cls, config: dict, save_dir: Path | None = None, *, weights: str | None = None) -> "TimmBackbone":
        """The architecture offline (the saved ``pretrained_cfg`` replaces any Hub lookup), or with ``weights``."""
        if weights is not None:
            return cls(config["model_name"], weights=weights, **config.get("timm_kwargs", {}))
        kwargs = dict(config.get("timm_kwargs", {}), pretrained_cfg=config["pretrained_cfg"])
        backbone = cls(config["architecture"], weights="random", **kwargs)
        backbone.name, backbone.timm_kwargs = config["model_name"], config.get("timm_kwargs", {})
        return backbone

    # ---- LoRA and the exports -----------------------------------------------------------------------------
    default_lora_description = "Linear layers named qkv/proj/fc1/fc2 and 1x1 convolutions"

    def adaptable_module(self) -> nn.Module:
        return self.model

    def default_lora_layers(self) -> list[str]:
        """``nn.Linear`` layers named in ``LORA_LINEAR_NAMES`` and every 1x1, ungrouped ``nn.Conv2d``
        (EfficientNet's / MobileNet's pointwise and squeeze-excite convolutions, ResNet bottlenecks), which peft's
        Conv2d LoRA adapts. A ViT's ``patch_embed.proj`` is a 16x16 convolution and is left alone."""
        return [n for n, m in adaptable_layers(self.model).items()
                if (isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in LORA_LINEAR_NAMES)
                or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1)]

    def native_layout(self, model) -> tuple[NativeLayout | None, str]:
        """timm's Hub layout: timm's own ``config.json`` (labels added), the timm model's keys, classifier included."""
        import timm
        from timm.models._hub import save_config_for_hf

        classifier = self.model.pretrained_cfg.get("classifier", "classifier")
        if not isinstance(classifier, str):
            return None, f"the timm architecture has {len(classifier)} classifiers (e.g. a distillation head), not one"
        with tempfile.TemporaryDirectory() as tmp:
            # timm's own exporter knows which constructor arguments rebuild this model (img_size, ...)
            save_config_for_hf(self.model, Path(tmp) / NATIVE_CONFIG_NAME)
            config = json.loads((Path(tmp) / NATIVE_CONFIG_NAME).read_text())
        config["num_classes"] = model.num_labels
        config["pretrained_cfg"]["num_classes"] = model.num_labels
        config["label_names"] = [model.id2label[i] for i in range(model.num_labels)]
        model_args = {k: v for k, v in config.pop("model_args", {}).items() if k != "num_classes"}
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
            return None, (f"timm could not rebuild '{config['architecture']}' from its exported config "
                          f"({type(e).__name__})")
        return checked_layout(layout, model, reference.state_dict())

    def remote_code_config(self) -> dict:
        """timm's architecture and ``pretrained_cfg``; ``image_processor_type`` makes ``AutoImageProcessor`` and
        ``pipeline`` apply timm's own eval transform."""
        config = self.config()
        return {"architecture": config["architecture"], "pretrained_cfg": config["pretrained_cfg"],
                "timm_kwargs": config.get("timm_kwargs", {}), "image_processor_type": "TimmWrapperImageProcessor"}
