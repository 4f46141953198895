"""``hftransfer predict MODEL INPUT...``: label image files / folders / globs, or text files, with a trained model.

MODEL is a run's output folder (or any ``save_pretrained`` folder) or a Hub repo id; the run's
``config.yaml`` (next to the model, or fetched from the repo) gives the preprocessing settings the
run evaluated with, so predictions for the validation split equal its ``eval_predictions.jsonl``.

INPUT, by the model's modality:

* image model: image files, folders (every file with an image extension, recursively, hidden ones
  left out), globs (``'photos/*.jpg'``, ``**`` recursive), or ``-``: one path per stdin line;
* text model: ``.csv`` / ``.tsv`` (the ``--text_column_name`` column), ``.jsonl`` / ``.json`` (that key of
  each object; a JSON array may also hold plain strings), any other file one text per line, folders
  and globs of such files, or ``-``: one text per stdin line. Blank lines are not inputs.

An INPUT that matches nothing is refused before the model loads. An input that cannot be read (a
corrupt or non-image file, an empty text cell, a broken JSON line, a file in an undetectable
encoding, a table without the text column) or that is of the other modality (a text file given to
an image model, a folder of images given to a text model) is **skipped**: the run goes on, and at
the end prints on stderr how many were skipped and which, with the reason. ``--strict`` refuses
instead: one ``error:`` line naming the first such input, exit status 2, nothing written. When no
input is left to predict, the run is refused the same way (one line, exit 2): it never reports
success for nothing. Input expansion and reading live in ``inputs``.

``--backend onnxruntime`` runs the same batches through the model's ONNX export (``hftransfer export``;
``MODEL/onnx/`` unless ``--onnx_file`` names it) on the CPU; ``--quantized`` picks its int8 graph and
prints the validation accuracy its export measured against fp32 on stderr.

Output: ``--output preds.jsonl`` or ``preds.csv`` (columns ``input, label, score, top_k``), else JSON
Lines on stdout (the progress bar and messages go to stderr). See ``models.predictions.to_predictions`` for
the fields, the multi-label form included.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import json
import logging
import sys
import time
from pathlib import Path

from ..config import UsageErrorParser
from ..errors import ConsoleHandler, HFTransferError
from ..files import EXPORT_RESULTS_NAME, atomic_path
from ..models.devices import PRECISIONS
from ..models.inference import predict
from ..models.onnx_export import require
from ..models.onnx_runtime import BACKENDS, find_onnx_file
from ..models.predictions import Skipped
from ..models.saved import hub_onnx_file, load_saved_model
from ..records import OnnxExport
from .inputs import expand_inputs, nothing_to_predict, read_texts

DESCRIPTION = "label images or texts with a trained hftransfer model (an output folder or a Hub repo id)"
OUTPUT_SUFFIXES = (".jsonl", ".csv")
SHOWN_SKIPPED = 50  # stderr lists this many skipped inputs, then a count of the rest


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: a mistyped --top would otherwise be taken as --top_k
    parser = UsageErrorParser(prog="hftransfer predict", description=DESCRIPTION, allow_abbrev=False,
                     epilog="Unreadable inputs are skipped and listed on stderr at the end; --strict refuses them.")
    parser.add_argument("model", help="a run's output_dir / save_pretrained folder, or a Hub repo id (user/name)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders or globs; or CSV/TSV/JSONL/JSON/TXT files of texts; - reads stdin")
    parser.add_argument("--output", help="write predictions to this .jsonl or .csv file (default: JSON Lines on stdout)")
    parser.add_argument("--batch_size", type=int, help="inputs per forward pass (default: 8 images on a CPU, where "
                        "cache-sized batches run fastest, else 32)")
    parser.add_argument("--top_k", type=int, default=5, help="most probable labels listed per input (default: 5, "
                        "capped at the number of labels)")
    parser.add_argument("--threshold", type=float, default=0.5, help="multi-label models: a label is predicted when its "
                        "sigmoid probability exceeds this (default: 0.5, the rule evaluation uses)")
    parser.add_argument("--text_column_name", default="text", help="the text column of CSV/TSV/JSON inputs (default: text)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps")
    parser.add_argument("--mixed_precision", default="auto", choices=PRECISIONS,
                        help="autocast dtype (default: auto = the run's setting, else bf16 on GPUs that support it)")
    parser.add_argument("--strict", action="store_true", help="refuse unreadable inputs with one error line (exit 2) "
                        "instead of skipping and listing them")
    parser.add_argument("--max_seq_length", type=int, help="text: truncation length (default: the run's, else 128)")
    parser.add_argument("--decode_size", type=int, help="image: shorter side images are shrunk to before the eval "
                        "transform (default: the run's, else the model's resize size; 0 = keep)")
    parser.add_argument("--num_workers", type=int, help="image decoding threads (default: by core count)")
    parser.add_argument("--revision", help="Hub branch, tag or commit of MODEL")
    parser.add_argument("--backend", default="torch", choices=BACKENDS, help="torch, or onnxruntime: the same batches "
                        "through the model's ONNX export (hftransfer export), on the CPU (default: torch)")
    parser.add_argument("--quantized", action="store_true", help="with --backend onnxruntime: the int8 graph "
                        "(model_int8.onnx; its validation accuracy against fp32 is printed on stderr)")
    parser.add_argument("--onnx_file", help="with --backend onnxruntime: the .onnx file or export folder (default: "
                        "MODEL/onnx)")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse and check every option before anything is loaded."""
    args = build_parser().parse_args(argv)
    if args.output and Path(args.output).suffix.lower() not in OUTPUT_SUFFIXES:
        raise HFTransferError(f"--output '{args.output}' must end in .jsonl or .csv")
    if args.output and Path(args.output).is_dir():
        raise HFTransferError(f"--output '{args.output}' is a folder: pass a file name ending in .jsonl or .csv")
    for flag, low in (("batch_size", 1), ("top_k", 1), ("max_seq_length", 2), ("decode_size", 0), ("num_workers", 0)):
        value = getattr(args, flag)
        if value is not None and value < low:
            raise HFTransferError(f"--{flag} {value} is out of range: use a number >= {low}")
    if not 0.0 <= args.threshold <= 1.0:
        raise HFTransferError(f"--threshold {args.threshold} is out of range: use a probability in [0, 1]")
    check_backend(args)
    if args.inputs.count("-") > 1:
        raise HFTransferError("- (stdin) is given more than once: pass it once")
    for item in args.inputs:
        if item != "-" and not Path(item).exists() and not glob.glob(item, recursive=True):
            raise HFTransferError(f"input '{item}' matches no file or folder: check the path (quote globs so the "
                                  "shell does not expand them)")
    return args


def check_backend(args: argparse.Namespace) -> None:
    """--quantized / --onnx_file need --backend onnxruntime, which needs onnxruntime and (for a local MODEL, or
    --onnx_file) an export that is there."""
    if args.backend != "onnxruntime":
        given = [flag for flag, value in (("--quantized", args.quantized), ("--onnx_file", args.onnx_file)) if value]
        if given:
            raise HFTransferError(f"{' / '.join(given)} applies to --backend onnxruntime: pass it, or drop "
                                  f"{' / '.join(given)}")
        return
    require("onnxruntime")
    if args.onnx_file or Path(args.model).is_dir():
        find_onnx_file(args.onnx_file or args.model, quantized=args.quantized)


def onnx_source(args: argparse.Namespace) -> str | Path | None:
    """The graph --backend onnxruntime runs: --onnx_file, else MODEL's export (downloaded from a Hub repo)."""
    if args.backend != "onnxruntime":
        return None
    if args.onnx_file or Path(args.model).is_dir():
        return args.onnx_file or args.model
    return hub_onnx_file(args.model, quantized=args.quantized, revision=args.revision)


def report_int8(onnx_file) -> None:
    """With --quantized: the int8 graph's validation accuracy against fp32, as its export recorded it (stderr)."""
    path = find_onnx_file(onnx_file, quantized=True)
    record = OnnxExport.read(path.parent)
    check = record.int8 if record is not None else None
    if check is None or check.int8_accuracy is None:
        print(f"int8 graph {path}: no accuracy check recorded beside it ({EXPORT_RESULTS_NAME})", file=sys.stderr)
        return
    print(f"int8 graph {path}: validation accuracy {check.int8_accuracy:.4f} vs fp32 {check.fp32_accuracy:.4f} "
          f"(a drop of {check.accuracy_drop_points + 0.0:.2f} points on {check.eval_samples} examples, measured at "
          "export)", file=sys.stderr)


# ---- outputs ----------------------------------------------------------------------------------------
def write_predictions(predictions: list[dict], output: str | None, stream=None) -> None:
    """``predictions`` as ``.jsonl`` / ``.csv`` at ``output`` (written atomically), or JSON Lines on ``stream``."""
    if output is None:
        stream = stream or sys.stdout
        for row in predictions:
            stream.write(json.dumps(row) + "\n")
        stream.flush()
        return
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        if Path(output).suffix.lower() == ".csv":
            writer = csv.writer(f)
            writer.writerow(["input", "label", "score", "top_k"])
            for row in predictions:
                # multi-label rows hold lists: JSON keeps them one unambiguous cell
                label, score = (json.dumps(row[k]) if isinstance(row[k], list) else row[k] for k in ("label", "score"))
                writer.writerow([row["input"], label, score, json.dumps(row["top_k"])])
        else:
            for row in predictions:
                f.write(json.dumps(row) + "\n")


def report_skipped(skipped: list[Skipped], total: int) -> None:
    """The count and the list of skipped inputs, on stderr."""
    if not skipped:
        return
    print(f"skipped {len(skipped)} of {total} input(s) that could not be read (--strict refuses them instead):",
          file=sys.stderr)
    for s in skipped[:SHOWN_SKIPPED]:
        # a reason that starts with its input is a whole sentence (inputs.py): the input is not repeated
        print(f"  {s.reason if s.reason.startswith(s.input) else f'{s.input}: {s.reason}'}", file=sys.stderr)
    if len(skipped) > SHOWN_SKIPPED:
        print(f"  ... and {len(skipped) - SHOWN_SKIPPED} more", file=sys.stderr)


@contextlib.contextmanager
def messages_on_stderr():
    """hftransfer's progress messages (``errors.show_progress_messages``) on stderr while predictions own stdout."""
    handlers = [h for h in logging.getLogger("hftransfer").handlers if isinstance(h, ConsoleHandler)]
    targets = [h.target for h in handlers]
    for handler in handlers:
        handler.target = "stderr"
    try:
        yield
    finally:
        for handler, target in zip(handlers, targets):
            handler.target = target


def run(argv: list[str], stdin=None, stdout=None) -> list[dict]:
    """The whole command: parse, load, expand, predict, write; returns the predictions written."""
    with messages_on_stderr():
        return _run(parse_args(argv), stdin, stdout)


def _run(args: argparse.Namespace, stdin, stdout) -> list[dict]:
    start = time.perf_counter()
    model, settings = load_saved_model(args.model, args.revision)
    onnx_file = onnx_source(args)
    settings = settings.replace(max_seq_length=args.max_seq_length, decode_size=args.decode_size)
    inputs, names, skipped = expand_inputs(args.inputs, model.modality, args.text_column_name, stdin, args.strict)
    if not inputs:
        raise nothing_to_predict(args.inputs, model.modality, skipped)
    result = predict(model, inputs, batch_size=args.batch_size, top_k=args.top_k, threshold=args.threshold,
                     device=args.device, settings=settings, skip_unreadable=not args.strict, progress=None,
                     mixed_precision=args.mixed_precision, num_workers=args.num_workers, input_names=names,
                     backend=args.backend, onnx_file=onnx_file, quantized=args.quantized)
    if not result.predictions:  # a run that skipped everything never reports success
        raise nothing_to_predict(args.inputs, model.modality, skipped + result.skipped)
    write_predictions(result.predictions, args.output, stdout)
    if args.quantized:
        report_int8(onnx_file)
    report_skipped(skipped + result.skipped, total=len(inputs) + len(skipped))  # expansion skips never reach predict
    rate = len(result.predictions) / max(result.seconds, 1e-9)
    where = f" -> {args.output}" if args.output else ""
    print(f"predicted {len(result.predictions)} {model.modality} input(s) with {args.model} on {result.device} in "
          f"{time.perf_counter() - start:.1f}s ({rate:.1f}/s in the model loop){where}", file=sys.stderr)
    return result.predictions


__all__ = ["build_parser", "expand_inputs", "read_texts", "run", "write_predictions"]
