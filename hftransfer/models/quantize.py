"""int8 versions of an exported graph, with onnxruntime's quantization tools (the backbone says which kind).

* ``static`` (CNNs): activations and weights int8 in QDQ form, per-channel weights; activation ranges
  come from calibration batches (a seeded sample of the training split, through the eval pipeline).
  Convolutions' activations are what costs time on a CPU, so only calibrated activations speed them up.
* ``dynamic`` (transformer encoders): int8 weights for the matrix products, activation scales
  computed per batch at run time: no calibration, and the usual choice for BERT-like models.

Both first run ``quant_pre_process`` (shape inference and graph optimization), as onnxruntime advises.
Whether the result is good enough is the caller's decision (``runs.export``: accuracy on the validation
split against fp32).
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import HFTransferError
from ..files import atomic_path
from .onnx_export import require

logger = logging.getLogger(__name__)

INT8_METHODS = ("static", "dynamic")


class _Batches:
    """onnxruntime's ``CalibrationDataReader``: one feed dict per ``get_next`` call, then None."""

    def __init__(self, batches: Iterable[dict[str, np.ndarray]]):
        self.batches = iter(batches)

    def get_next(self):
        return next(self.batches, None)


@contextlib.contextmanager
def _root_logger_untouched():
    """onnxruntime's quantizer logs with ``logging.info``, which gives an unconfigured root logger a stderr handler
    that then repeats every library's messages (hftransfer's too): a NullHandler on the root keeps it unconfigured."""
    root, guard = logging.getLogger(), logging.NullHandler()
    root.addHandler(guard)
    try:
        yield
    finally:
        root.removeHandler(guard)


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, *, method: str,
                  calibration: list[dict[str, np.ndarray]] | None = None) -> dict:
    """Write the int8 graph of ``fp32_path`` to ``int8_path``; returns the settings used (for the records)."""
    if method not in INT8_METHODS:
        raise HFTransferError(f"unknown int8 method '{method}': use {' or '.join(INT8_METHODS)}")
    if method == "static" and not calibration:
        raise HFTransferError("static int8 quantization needs calibration batches (a sample of the training split)")
    quantization = require("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _root_logger_untouched(), tempfile.TemporaryDirectory() as tmp, atomic_path(int8_path) as out:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            # symbolic shape inference is for onnxruntime's transformer fusions; it fails on dynamo-exported graphs
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        except Exception as e:  # noqa: BLE001 - pre-processing is an optimization; quantizing works without it
            logger.warning(f"onnxruntime's quant_pre_process failed ({type(e).__name__}: {str(e)[:120]}); quantizing "
                           "the graph as is")
            prepared = Path(fp32_path)
        if method == "static":
            quantization.quantize_static(
                str(prepared), str(out), _Batches(calibration), quant_format=quantization.QuantFormat.QDQ,
                per_channel=True, activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8, calibrate_method=quantization.CalibrationMethod.MinMax)
        else:
            quantization.quantize_dynamic(str(prepared), str(out), per_channel=True,
                                          weight_type=quantization.QuantType.QInt8)
    activations = "uint8, MinMax-calibrated (QDQ)" if method == "static" else "quantized per batch at run time"
    settings = {"method": method, "weights": "int8 per channel", "activations": activations}
    if calibration:
        settings["calibration_examples"] = int(sum(len(next(iter(b.values()))) for b in calibration))
    return settings
