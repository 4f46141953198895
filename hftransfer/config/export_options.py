"""``--export_onnx``: after training, the model as an ONNX graph (and an int8 one), as ``hftransfer export`` makes it.

The names and limits here are shared with ``hftransfer export`` and ``hftransfer.export_onnx``
(``check_export_values``), so the three accept the same values and refuse the rest in the same words.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import HFTransferError
from ..models.onnx_export import DEFAULT_OPSET, require
from .fields import NON_NEGATIVE, Options, Range, option

QUANTIZE_CHOICES = ("none", "int8")
ONNX_OPSETS = Range(14, 21)  # what torch's exporters write and onnxruntime >= 1.20 runs
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")  # the [onnx] extra: exporting, quantizing, checking
# the TrainConfig fields that name the data an int8 check reads; given to hftransfer export, they replace the run's
EXPORT_DATA_OPTIONS = ("dataset_name", "train_dir", "validation_dir", "train_file", "validation_file",
                       "text_column_name", "label_column_name", "image_column_name", "max_eval_samples")


ONNX_RECIPES = ("image", "text")  # audio models have no ONNX export yet (the STFT front end)


@dataclass
class ExportOptions(Options):
    """After training: the model as ONNX (and int8), checked against torch, in output_dir/onnx."""

    export_onnx: bool = option(False, "after training, export the model to output_dir/onnx as ONNX (fp32), checked "
                               "against torch (needs the [onnx] extra; hftransfer export does the same later)",
                               modality=ONNX_RECIPES)
    quantize: str = option("none", "with --export_onnx: int8 also writes an int8 graph (static for CNNs, dynamic for "
                           "text encoders), kept only if its validation accuracy drops by at most "
                           "--max_int8_accuracy_drop points", QUANTIZE_CHOICES, modality=ONNX_RECIPES)
    onnx_opset: Optional[int] = option(None, "with --export_onnx: the ONNX opset of the graph", valid=ONNX_OPSETS,
                                       default_text=f"{DEFAULT_OPSET}, the exporter's own", modality=ONNX_RECIPES)
    max_int8_accuracy_drop: float = option(1.0, "with --quantize int8: most validation accuracy points the int8 graph "
                                           "may lose against fp32; one that loses more is deleted (the run still "
                                           "succeeds, with a warning)", valid=NON_NEGATIVE, modality=ONNX_RECIPES)

    def validate(self) -> "ExportOptions":
        super().validate()
        if not self.export_onnx:
            asked = (("--quantize int8", self.quantize == "int8"),
                     (f"--onnx_opset {self.onnx_opset}", self.onnx_opset is not None))
            given = [flag for flag, value in asked if value]
            if given:
                raise HFTransferError(f"{' / '.join(given)} applies to the ONNX export: pass --export_onnx too, or "
                                      "drop it")
            return self
        for module in ONNX_MODULES:  # before training, not after it
            require(module)
        return self


def check_export_values(*, quantize: str, opset: int, max_accuracy_drop: float, calibration_samples: int) -> None:
    """One line for the first value ``hftransfer export`` / ``hftransfer.export_onnx`` cannot take."""
    if quantize not in QUANTIZE_CHOICES:
        raise HFTransferError(f"quantize '{quantize}' is not one of {', '.join(QUANTIZE_CHOICES)}: pass none or int8")
    if not isinstance(opset, int) or opset not in ONNX_OPSETS:
        raise HFTransferError(f"opset {opset} is out of range: use an ONNX opset from {ONNX_OPSETS.lo:g} to "
                              f"{ONNX_OPSETS.hi:g} (default {DEFAULT_OPSET})")
    if not max_accuracy_drop >= 0:
        raise HFTransferError(f"max_accuracy_drop {max_accuracy_drop} is out of range: use accuracy points >= 0 "
                              "(e.g. 1.0)")
    if not isinstance(calibration_samples, int) or calibration_samples < 1:
        raise HFTransferError(f"calibration_samples {calibration_samples} is out of range: use a number >= 1 "
                              "(e.g. 128)")
