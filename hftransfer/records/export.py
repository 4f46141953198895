"""The ONNX export's records: the graph, its check against torch, and the int8 version's."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..files import EXPORT_RESULTS_NAME, read_json, write_json
from .base import Record


@dataclass
class Int8Check(Record):
    """``--quantize int8``: how it was quantized and what it costs on the validation split (accuracy in [0, 1])."""

    method: str = "dynamic"  # static (calibrated activations, CNNs) or dynamic (int8 weights, transformer encoders)
    settings: dict = field(default_factory=dict)
    eval_samples: int = 0
    fp32_accuracy: float | None = None  # the fp32 ONNX graph's, on the same examples
    int8_accuracy: float | None = None
    accuracy_drop_points: float | None = None  # (fp32 - int8) x 100
    max_accuracy_drop_points: float = 1.0
    agreement: float | None = None  # share of examples whose predicted label is the same as fp32's
    file: str | None = None  # onnx/model_int8.onnx; None when refused
    refused: str | None = None  # why the int8 graph was not kept (its accuracy fell too far)


@dataclass
class OnnxExport(Record):
    """``hftransfer export`` / ``--export_onnx``: the ONNX graph, the check against torch and the int8 version."""

    NESTED = {"int8": Int8Check}

    folder: str = "onnx"  # relative to the run folder when inside it
    file: str = "model.onnx"
    exporter: str = ""
    opset: int = 18
    input_names: list[str] = field(default_factory=list)
    checked_examples: int = 0  # examples whose onnxruntime logits were compared with torch's
    max_abs_logit_diff: float | None = None
    tolerance: float = 1e-4
    int8: Int8Check | None = None
    seconds: float | None = None

    def write(self, folder: str | Path) -> Path:
        return write_json(Path(folder) / EXPORT_RESULTS_NAME, self.to_dict())

    @classmethod
    def read(cls, folder: str | Path) -> "OnnxExport | None":
        path = Path(folder) / EXPORT_RESULTS_NAME
        return cls.from_dict(read_json(path)) if path.is_file() else None
