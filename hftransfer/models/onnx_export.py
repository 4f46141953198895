"""A ``TransferModel`` as an ONNX graph: the model's own inputs in, ``logits`` out, batch (and sequence) axes free.

``export_onnx(model, folder)`` writes ``folder/model.onnx`` plus what a process without hftransfer needs
to use it: ``config.json`` (``id2label`` / ``label2id``, ``problem_type``, as transformers names them),
``preprocessing.json`` (the backbone's ``preprocessing_spec``: image sizes and interpolation, or the
tokenizer, saved beside it, and ``max_seq_length``). The graph's inputs are exactly what the model's
eval pipeline feeds the torch model (``backbone.data_pipeline().inference_batches``): uint8 NCHW
pixels for images (normalization is inside the graph), the tokenizer's ``input_ids`` /
``attention_mask`` / ``token_type_ids`` for texts. So ``hftransfer predict --backend onnxruntime``
runs the same batches through either, and a user's ten lines of PIL or tokenizer code do too.

The exporter is torch's own (``torch.onnx.export`` with ``dynamo=True``, the one torch maintains); a
model it cannot trace falls back to the TorchScript exporter, with a warning. optimum's exporters
would be the first choice for native transformers models, but optimum-onnx pins transformers < 4.58.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import HFTransferError
from ..files import NATIVE_CONFIG_NAME, ONNX_MODEL_NAME, ONNX_PREPROCESSING_NAME, atomic_path, write_text

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # the dynamo exporter's native opset; onnxruntime >= 1.14 runs it
ONNX_EXTRA = "pip install 'hftransfer[onnx]' (in a clone: pip install -e \".[onnx]\")"


def require(module: str):
    """Import ``module`` (onnx, onnxruntime, onnxscript), or one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise HFTransferError(f"ONNX export and the onnxruntime backend need {module.split('.')[0]}, which is not "
                              f"installed: {ONNX_EXTRA}") from None


class LogitsGraph(nn.Module):
    """The model as a function of positional tensors (ONNX inputs have an order), returning the logits."""

    def __init__(self, model: nn.Module, input_names: list[str]):
        super().__init__()
        self.model, self.input_names = model, list(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs))).logits


def example_batch(model, *, decode_size: int | None = None, max_seq_length: int = 128) -> dict[str, torch.Tensor]:
    """A batch of the backbone's ``example_inputs`` through its eval pipeline: what the graph will be fed."""
    pipeline = model.backbone.data_pipeline(decode_size=decode_size, max_seq_length=max_seq_length)
    batch = next(b for b in pipeline.inference_batches(model.backbone.example_inputs(), 2) if b.inputs is not None)
    return dict(batch.inputs)


@contextlib.contextmanager
def exportable(model: nn.Module):
    """``model`` in eval mode, float32, on the CPU, in the contiguous layout, for the block; its state restored after.

    (The exporters switch modules to eval themselves but restore *train* mode afterwards, which would
    leave dropout and batch statistics on: the mode is restored here instead.)"""
    was_training = model.training
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    channels_last = getattr(model.backbone, "channels_last", False)
    if channels_last:
        model.backbone.channels_last = False
    model.to("cpu", torch.float32).eval()
    try:
        yield model
    finally:
        model.to(device, dtype).train(was_training)
        if channels_last:
            model.backbone.channels_last = True


def export_onnx(model, folder: str | Path, *, opset: int = DEFAULT_OPSET, decode_size: int | None = None,
                max_seq_length: int = 128) -> dict:
    """Write ``folder/model.onnx``, ``config.json`` and ``preprocessing.json`` (+ tokenizer files) for ``model``.

    ``decode_size`` / ``max_seq_length``: the run's preprocessing settings (``InferenceSettings``), recorded
    in ``preprocessing.json``. Returns what was done: the exporter used, the opset, the graph's inputs.
    """
    require("onnx")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    example = example_batch(model, decode_size=decode_size, max_seq_length=max_seq_length)
    names = [n for n in model.backbone.input_names if n in example]
    axes = model.backbone.onnx_axes
    with exportable(model):
        graph = LogitsGraph(model, names).eval()
        args = tuple(example[n].cpu() for n in names)
        with atomic_path(folder / ONNX_MODEL_NAME) as tmp:
            exporter = _export(graph, args, names, axes, tmp, opset)
    pipeline = model.backbone.data_pipeline(decode_size=decode_size, max_seq_length=max_seq_length)
    spec = model.backbone.preprocessing_spec(pipeline, folder)
    write_text(folder / ONNX_PREPROCESSING_NAME, json.dumps({**spec, "input_names": names, "output_names": ["logits"],
                                                               "dynamic_axes": {str(k): v for k, v in axes.items()}},
                                                              indent=2))
    write_text(folder / NATIVE_CONFIG_NAME, json.dumps(label_config(model), indent=2))
    return {"exporter": exporter, "opset": opset, "input_names": names}


def label_config(model) -> dict:
    """The labels as transformers' ``config.json`` names them, plus what the logits mean."""
    return {"id2label": {str(i): name for i, name in model.id2label.items()},
            "label2id": {name: i for i, name in model.id2label.items()},
            "problem_type": "multi_label_classification" if model.multi_label else "single_label_classification",
            "num_labels": model.num_labels, "backbone": model.backbone.name, "modality": model.modality,
            "decision": ("sigmoid(logit) > 0.5 per label" if model.multi_label else "argmax of the logits "
                         "(softmax gives the scores)")}


def _export(graph: nn.Module, args: tuple, names: list[str], axes: dict[int, str], path: Path, opset: int) -> str:
    """torch's dynamo exporter, else its TorchScript one; the name of the one that worked."""
    require("onnxscript")
    dims = {i: torch.export.Dim(name) for i, name in axes.items()}
    dynamic_shapes = (tuple({i: d for i, d in dims.items() if i < a.dim()} for a in args),)  # forward(*inputs)
    quiet = contextlib.redirect_stdout(io.StringIO())  # the dynamo exporter prints its steps
    try:
        with quiet, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, args, str(path), dynamo=True, input_names=names, output_names=["logits"],
                              dynamic_shapes=dynamic_shapes, opset_version=opset, external_data=False, verbose=False)
        return "torch.onnx (dynamo)"
    except Exception as e:  # noqa: BLE001 - torch.export raises many types for code it cannot trace
        logger.warning(f"torch.onnx's dynamo exporter failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                       "falling back to the TorchScript exporter")
    dynamic_axes = {n: {i: name for i, name in axes.items() if i < a.dim()} for n, a in zip(names, args)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, args, str(path), dynamo=False, input_names=names, output_names=["logits"],
                          dynamic_axes=dynamic_axes, opset_version=opset)
    return "torch.onnx (TorchScript)"
