"""``hftransfer export MODEL --format onnx [--quantize int8]``: a trained model as an ONNX graph, checked, then kept.

MODEL is a run's output folder (or any ``save_pretrained`` folder) or a Hub repo id. The graph goes to
``MODEL/onnx/`` (``--output`` elsewhere) with its labels and preprocessing; its onnxruntime logits are
compared with torch's first (``runs.export``). ``--quantize int8`` also writes ``model_int8.onnx`` and
measures it on the run's validation split (the data its ``config.yaml`` names, or the data flags here);
an int8 graph that loses more than ``--max_accuracy_drop`` points is deleted, the fp32 export kept, and
the command ends with one ``error:`` line giving the measured drop (exit status 2).

Every option is checked before the model is loaded or anything written. The summary goes to stdout,
progress messages to stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import UsageErrorParser
from ..config.export_options import (
    EXPORT_DATA_OPTIONS,
    ONNX_MODULES,
    ONNX_OPSETS,
    QUANTIZE_CHOICES,
    check_export_values,
)
from ..config.fields import check_paths
from ..errors import HFTransferError
from ..files import CONFIG_NAME, ONNX_DIR
from ..models.devices import usable_cores
from ..models.onnx_export import DEFAULT_OPSET, require
from ..records import OnnxExport
from .predict import messages_on_stderr

DESCRIPTION = "export a trained hftransfer model as an ONNX graph (and int8), checked against torch"
FORMATS = ("onnx",)
# the data options (EXPORT_DATA_OPTIONS, less max_eval_samples) and their help
DATA_OPTIONS = {
    "dataset_name": "a Hub dataset (or save_to_disk folder) with train / validation splits",
    "train_dir": "image training folder (calibration sample), one subfolder per class",
    "validation_dir": "image validation folder (the int8 accuracy check)",
    "train_file": "training CSV/TSV/JSON(L) file (texts) or image manifest",
    "validation_file": "validation file (the int8 accuracy check)",
    "text_column_name": "the text column of the data files",
    "label_column_name": "the label column of the data",
    "image_column_name": "the image column of a manifest or Hub dataset",
}


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: a mistyped --quant would otherwise be taken as --quantize
    parser = UsageErrorParser(prog="hftransfer export", description=DESCRIPTION, allow_abbrev=False,
                              epilog="The int8 graph is measured on the run's validation split (its config.yaml "
                                     "names the data; the data options here replace it).")
    parser.add_argument("model", help="a run's output_dir / save_pretrained folder, or a Hub repo id (user/name)")
    parser.add_argument("--format", default="onnx", choices=FORMATS, help="export format (default: onnx)")
    parser.add_argument("--quantize", default="none", choices=QUANTIZE_CHOICES,
                        help="int8: also an int8 graph (static for CNNs, calibrated on the training split; dynamic "
                             "for text encoders), kept only if its validation accuracy holds (default: none)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, {ONNX_OPSETS.lo:g} to {ONNX_OPSETS.hi:g} (default: {DEFAULT_OPSET})")
    parser.add_argument("--output",
                        help=f"folder for the graphs (default: MODEL/{ONNX_DIR}; ./{ONNX_DIR} for a Hub repo)")
    parser.add_argument("--max_accuracy_drop", type=float, default=1.0,
                        help="int8: most validation accuracy points it may lose against fp32 (default: 1.0)")
    parser.add_argument("--calibration_samples", type=int, default=128,
                        help="int8 static: training examples that calibrate the activation ranges (default: 128)")
    data = parser.add_argument_group("data", "what --quantize int8 measures on (default: the data in the run's "
                                             "config.yaml)")
    for name, text in DATA_OPTIONS.items():
        data.add_argument(f"--{name}", help=text)
    data.add_argument("--max_eval_samples", type=int, help="validation examples the int8 check reads (default: all)")
    parser.add_argument("--num_threads", type=int, help="torch threads (default: every usable core)")
    parser.add_argument("--revision", help="Hub branch, tag or commit of MODEL")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse and check every option before anything is loaded or written."""
    args = build_parser().parse_args(argv)
    check_export_values(quantize=args.quantize, opset=args.opset, max_accuracy_drop=args.max_accuracy_drop,
                        calibration_samples=args.calibration_samples)
    for flag in ("max_eval_samples", "num_threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise HFTransferError(f"--{flag} {getattr(args, flag)} is out of range: use a number >= 1")
    check_model(args.model)
    if args.output and Path(args.output).exists() and not Path(args.output).is_dir():
        raise HFTransferError(f"--output '{args.output}' is a file: pass a folder (created if missing)")
    for module in ONNX_MODULES:
        require(module)
    if args.quantize == "int8":
        check_data(args)
    return args


def check_model(model: str) -> None:
    """A local MODEL must be a folder with an hftransfer model; anything else must look like a repo id."""
    path = Path(model)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise HFTransferError(f"'{model}' has no {CONFIG_NAME}: pass a run's output_dir or a folder written by "
                                  "save_pretrained")
        return
    if path.exists():
        raise HFTransferError(f"MODEL '{model}' is a file: pass a run's output_dir or a Hub repo id (user/name)")
    if model.startswith((".", "/", "~")) or model.count("/") != 1 or path.parent.is_dir():
        raise HFTransferError(f"model folder '{model}' does not exist: pass a run's output_dir or a Hub repo id "
                              "(user/name)")


def data_options(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in EXPORT_DATA_OPTIONS if getattr(args, name) is not None}


def check_data(args: argparse.Namespace) -> None:
    """--quantize int8 needs data to measure on: the run's, or named here (paths that exist)."""
    from ..runs.export import names_data, run_config

    folder = Path(args.model) if Path(args.model).is_dir() else None
    cfg = run_config(folder, data_options(args))
    if not names_data(cfg):
        raise HFTransferError("--quantize int8 checks the int8 model's accuracy on the validation split, and no data "
                              "is named: export a run folder (its config.yaml names the data) or pass "
                              "--train_dir / --train_file (and --validation_dir / --validation_file)")
    check_paths(cfg, ("train_dir", "validation_dir"), ("train_file", "validation_file"),
                "pass an existing folder with one subfolder per class (the run's data moved? name it with the data "
                "options)", "pass an existing data file (the run's data moved? name it with the data options)")


def summary(record: OnnxExport, output: Path) -> list[str]:
    """What the export wrote and how it checked out, a few lines for stdout."""
    files = sorted(p for p in output.iterdir() if p.is_file())
    shown = ", ".join(f"{p.name} ({_size(p.stat().st_size)})" if p.suffix == ".onnx" else p.name for p in files)
    lines = [f"exported to {output}: {shown}",
             f"  exporter: {record.exporter}, opset {record.opset}; inputs: {', '.join(record.input_names)}",
             (f"  fp32 check: onnxruntime logits within {record.max_abs_logit_diff:.1e} of torch's on "
              f"{record.checked_examples} examples (tolerance {record.tolerance:g})")]
    check = record.int8
    if check is not None:
        verdict = "refused, deleted" if check.refused else f"kept as {check.file}"
        lines.append(f"  int8 ({check.method}): validation accuracy {check.int8_accuracy:.4f} vs fp32 "
                     f"{check.fp32_accuracy:.4f} on {check.eval_samples} examples (a drop of "
                     f"{check.accuracy_drop_points + 0.0:.2f} points, limit {check.max_accuracy_drop_points:g}): "
                     f"{verdict}")
    return lines


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def run(argv: list[str], stdout=None) -> OnnxExport:
    """The whole command: check, export, print the summary; an int8 graph refused for its accuracy ends it with
    one error line after the fp32 export is kept."""
    import torch

    from ..runs.export import export_run

    args = parse_args(argv)
    stdout = stdout or sys.stdout
    torch.set_num_threads(args.num_threads or usable_cores())
    with messages_on_stderr():
        record = export_run(args.model, output=args.output, quantize=args.quantize, opset=args.opset,
                            max_accuracy_drop=args.max_accuracy_drop, calibration_samples=args.calibration_samples,
                            data_options=data_options(args), revision=args.revision)
    output = Path(args.output) if args.output else (Path(args.model) / ONNX_DIR if Path(args.model).is_dir()
                                                    else Path(ONNX_DIR))
    stdout.write("\n".join(summary(record, output)) + "\n")
    stdout.flush()
    if record.int8 is not None and record.int8.refused:
        raise HFTransferError(f"the int8 graph was not kept: {record.int8.refused}; the fp32 graph is in {output} "
                              "(raise --max_accuracy_drop to accept the loss)")
    return record


__all__ = ["build_parser", "parse_args", "run"]
