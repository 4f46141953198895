"""An exported ONNX graph run by onnxruntime, fed the batches the torch model gets (``predict --backend onnxruntime``).

``find_onnx_file`` resolves what a user names (a run folder, its ``onnx/`` folder, or a ``.onnx`` file;
``quantized`` picks ``model_int8.onnx``); ``OnnxSession`` runs it on the CPU with one thread per usable
core (onnxruntime's default spins a thread per *machine* core, which oversubscribes a CPU set), fully
optimized graph (constant folding, Conv+BN+activation fusion).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import HFTransferError
from ..files import ONNX_DIR, ONNX_INT8_NAME, ONNX_MODEL_NAME
from .devices import usable_cores
from .onnx_export import require

BACKENDS = ("torch", "onnxruntime")


def find_onnx_file(source: str | Path, *, quantized: bool = False) -> Path:
    """The graph ``source`` names: a ``.onnx`` file, an export folder, or a run folder with an ``onnx/`` export."""
    source = Path(source)
    if source.suffix == ".onnx":
        if not source.is_file():
            raise HFTransferError(f"ONNX file '{source}' does not exist: pass an exported model.onnx")
        return source
    name = ONNX_INT8_NAME if quantized else ONNX_MODEL_NAME
    for folder in (source, source / ONNX_DIR):
        if (folder / name).is_file():
            return folder / name
    what = "int8 export" if quantized else "ONNX export"
    how = "--quantize int8" if quantized else "--format onnx"
    raise HFTransferError(f"'{source}' has no {what} ({ONNX_DIR}/{name}): run hftransfer export {source} {how} "
                          "first (or train with --export_onnx)")


def default_onnx_dir(model, settings, *, quantized: bool = False) -> Path:
    """The export ``TransferModel.predict(backend="onnxruntime")`` runs when none is named: the ``onnx/`` folder next
    to the folder the model was loaded from, else one made now in a temporary folder (fp32 only; once per model;
    ``settings``: the ``InferenceSettings`` its preprocessing uses)."""
    import tempfile

    from .onnx_export import export_onnx

    source = getattr(model, "source_dir", None)
    if source is not None and (Path(source) / ONNX_DIR / (ONNX_INT8_NAME if quantized else ONNX_MODEL_NAME)).is_file():
        return Path(source) / ONNX_DIR
    if quantized:
        raise HFTransferError("quantized=True needs an int8 export of this model (its accuracy is checked on "
                              "validation data): run hftransfer export MODEL_DIR --quantize int8, or pass onnx_file")
    cached = getattr(model, "_onnx_tmp", None)
    if cached is None:
        cached = model._onnx_tmp = tempfile.TemporaryDirectory(prefix="hftransfer-onnx-")
        export_onnx(model, cached.name, decode_size=settings.decode_size, max_seq_length=settings.max_seq_length)
    return Path(cached.name)


class OnnxSession:
    """An onnxruntime CPU session over ``path``: ``logits(inputs)`` takes the pipeline's tensors, returns logits."""

    def __init__(self, path: str | Path, *, threads: int | None = None):
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cores()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initializers etc. are noise to a user
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise HFTransferError(f"onnxruntime cannot load '{path}' ({str(e).splitlines()[0][:200]}): re-export it "
                                  "with hftransfer export") from None
        self.path = Path(path)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise HFTransferError(f"the ONNX graph {self.path} takes {', '.join(missing)}, which the model's "
                                  "preprocessing does not produce: re-export it from this model")
        feed = {n: np.ascontiguousarray(inputs[n].cpu().numpy()) for n in self.input_names}
        return torch.from_numpy(self.session.run(["logits"], feed)[0]).float()
