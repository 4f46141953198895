"""Inference at the limit: every way to run the default models on this CPU, against the machine's ceiling, in one run.

    python bench/predict.py                    # images + text (roughly 15-30 min on 2 CPU cores); prints the tables
    python bench/predict.py --record           # ... and appends them to bench/RESULTS.md
    python bench/predict.py --only image --repeats 5 --threads 2
    python bench/predict.py --max_files 8 --max_texts 16 --repeats 1 --no_compile   # smoke test, a few minutes

Models. Images: the default image job's output (``outputs/image_cls``, trained with ``python
recipes/image_cls.py`` when missing: ~1 min), whose export is in timm's layout, so
``pipeline("image-classification", model=DIR)`` loads the very same weights. Files: the full-size
hymenoptera validation photos from ``../shared/data`` (camera-sized JPEGs, what users predict on),
else the bundled 160 px ones; ``--max_files`` keeps N spread over the sorted list (both classes).
Text: the default text job's output (``outputs/text_cls``), loaded by ``pipeline("text-classification",
model=DIR, trust_remote_code=True)``; should that fail, the text side falls back to a ``--pooling
pooler`` model of the same encoder (all-MiniLM-L6-v2, untrained head, native BERT layout) and says so.
Texts: the first ``--max_texts`` (320) sentences of the rotten_tomatoes validation split
(``data/rt_polarity/validation.jsonl``), truncated at the run's ``max_seq_length`` on every side.

Ceiling (``bench/ceiling.py``), measured first with the same threads: achievable GFLOP/s of a 2048^3 fp32
matmul in torch and in onnxruntime (the better one is *the ceiling*), of layers shaped like the models'
(EfficientNet-Lite0's 1x1 and depthwise 3x3 convolutions, MiniLM's feed-forward linear), and
onnxruntime's int8 GEMM (GOP/s); the ceiling's kernel is timed again at the start of every round, so each
side is set against the ceiling of its own round (background load moves both). Model cost: FLOPs of
one forward at batch 1 (``torch.utils.flop_counter``, a multiply-add = 2 FLOPs): the image at its eval
crop, the text at the median token length of the texts used (padding in batches is extra work, not counted).

Sides. End to end (files / texts in, labels out; decoding and tokenizing included):

* ``hftransfer predict, batch_size=B``: ``TransferModel.predict(files, batch_size, settings=run_dir)``, the code
  ``hftransfer predict`` runs (decode on a helper thread one batch ahead, uint8 batches, normalization in
  the model, channels_last; texts longest first), B = its CPU default (8 images, 32 texts; ``--batch_size``);
* ``pipeline, per file`` (``for f in files: pipe(f)``) and ``pipeline, batch_size=B`` (``pipe(files,
  batch_size=B)``): the plain transformers loops; the batched one is the baseline of ``vs batched pipeline``;
* ``onnxruntime fp32 / int8, batch_size=B``: the same eval pipeline's batches (same decode thread) through
  onnxruntime sessions of the model's ONNX export (``onnx_export.export_onnx``) and its int8 version
  (``quantize.quantize_int8``: static QDQ for the CNN, calibrated on 64 seeded training images; dynamic
  for the text encoder), what ``predict --backend onnxruntime`` does, timed without depending on it;
* ``preprocessing only``: the eval pipeline's batches with no model (the bound on any end-to-end rate);
* images, ablations of hftransfer: ``batch_size=1``, and the contiguous (not channels_last) layout.

Model only (``model only: PATH, batch N``), each path on the same pre-made batches of all inputs (N = 1 and B):
``torch eager`` (channels_last, as hftransfer runs it); images ``torch, BN folded`` (every BatchNorm folded
into its convolution, ``ceiling.fold_batchnorm``); ``torch.compile`` (inductor, default mode, ``freezing``
on: constant folding, BN folding and weight prepacking; compiled before timing on every batch shape,
its compile time printed; ``--no_compile`` skips it, a failure is printed and the row left out);
``onnxruntime fp32`` and ``onnxruntime int8`` (the sessions above, ``--threads`` intra-op threads).

Columns: median items/s over rounds and each round's rate; achieved GFLOP/s = FLOPs per example x items/s,
and that as a % of the fp32 ceiling (median over rounds; int8 rows also against the int8 GEMM measured
first); ``vs batched pipeline`` and
``hftransfer / side`` (end-to-end rows): the median over rounds of the per-round ratio; top-1 agreement
with hftransfer predict; accuracy on the labelled inputs (images: their class folder; texts: the
file's labels); max |logit - torch eager's logit| at the same batch size (fp32 paths: float noise; int8:
the quantization error). Targets: hftransfer predict >= 1.5x the batched pipeline (images); int8
onnxruntime end to end >= 2.5x the batched pipeline; the best batched fp32 model-only path >= 50% of the
ceiling; int8 accuracy within 1 point of fp32. A missed target prints the measurements that bound it
(preprocessing rate, kernel rates of layers shaped like the model's).

``torch.set_num_threads(--threads)`` and the onnxruntime sessions' threads apply to every side (one
process); no GPU (CUDA hidden), Hub offline. Each repeat runs every side once, in rotating order, so
background load hits all sides alike; medians over rounds are reported.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

import torch

from hftransfer.models.inference import _decode_workers, default_batch_size

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling import Ceiling, count_flops, fold_batchnorm, measure_ceiling  # bench/ is not a package

# before anything touches CUDA or imports huggingface_hub (both read these lazily / at their import)
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # a CPU benchmark: the same device for every side
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED_VAL = ROOT.parent / "shared" / "data" / "hymenoptera" / "hymenoptera_data" / "val"
BUNDLED_VAL = ROOT / "data" / "hymenoptera_160" / "val"
BUNDLED_TRAIN = ROOT / "data" / "hymenoptera_160" / "train"
TEXT_FILE = ROOT / "data" / "rt_polarity" / "validation.jsonl"
IMAGE_RUN = ROOT / "outputs" / "image_cls"
TEXT_RUN = ROOT / "outputs" / "text_cls"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
TARGET = 1.5  # hftransfer predict / batched pipeline, images on CPU
INT8_TARGET = 2.5  # int8 onnxruntime / batched pipeline
CEILING_TARGET = 0.5  # best batched fp32 model-only path / fp32 ceiling
ACCURACY_POINTS = 1.0  # int8 accuracy within this many points of fp32
CALIBRATION_IMAGES = 64  # static int8: 8 batches of 8 training images
MODEL_ONLY = "model only: "


def ensure_run(run_dir: Path, recipe: str) -> None:
    """Train the default job into ``run_dir`` if it holds no model (the recipe's own defaults)."""
    if (run_dir / "hftransfer_config.json").is_file():
        return
    print(f"{run_dir} has no model: training the default job (python recipes/{recipe}.py) ...", flush=True)
    subprocess.run([sys.executable, str(ROOT / "recipes" / f"{recipe}.py")], check=True, cwd=ROOT)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run_sides(sides: dict, items: list, repeats: int, ceiling: Ceiling) -> tuple[dict[str, dict], list[float]]:
    """Warm every side on a few items, then ``repeats`` rounds over all ``items`` in rotating order; items/s
    per round and the last round's output, and the fp32 ceiling (GFLOP/s) measured at the start of each round.
    Each side is a function of the item list."""
    results = {name: {"rates": [], "output": None} for name in sides}
    for fn in sides.values():
        fn(items[:8])  # warm-up: lazy inits, first-touch allocations, file cache
    names = list(sides)
    n_items, ceilings = len(items), []
    for r in range(repeats):
        ceilings.append(ceiling.measure_fp32())
        print(f"  round {r + 1}: {'fp32 ceiling (GFLOP/s)':44s} {ceilings[-1]:8.1f}", flush=True)
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds, out = timed(lambda fn=sides[name]: fn(items))
            results[name]["rates"].append(n_items / seconds)
            results[name]["output"] = out
            print(f"  round {r + 1}: {name:44s} {n_items / seconds:8.1f}/s", flush=True)
    for res in results.values():
        res["median"] = statistics.median(res["rates"])
    return results, ceilings


def agreement(ours: list[str], theirs: list[str]) -> str:
    same = sum(a == b for a, b in zip(ours, theirs))
    return f"{same}/{len(ours)}"


# ---- inference paths on pre-made batches ----------------------------------------------------------------
def premade_batches(pipeline, items: list, batch_size: int) -> list[tuple[list[int], dict]]:
    """(input indices, model inputs) of every batch the eval pipeline makes of ``items``, made once."""
    batches = []
    for batch in pipeline.inference_batches(items, batch_size):
        if batch.failed:
            i, reason = batch.failed[0]
            raise SystemExit(f"cannot read input {items[i]!r} ({reason}): the benchmark needs readable inputs")
        batches.append((batch.rows, dict(batch.inputs)))
    return batches


def model_only_side(fn, batches: list):
    """A side running ``fn`` (inputs -> logits) over the pre-made batches: logits in input order. Given fewer
    items (the warm-up), only the first batches covering that many."""
    def side(items: list) -> torch.Tensor:
        rows, outputs = [], []
        with torch.inference_mode():
            for batch_rows, inputs in batches:
                if len(rows) >= len(items):
                    break
                outputs.append(fn(inputs))
                rows += batch_rows
        return torch.cat(outputs)[torch.tensor(rows).argsort()]
    return side


def pipeline_side(pipeline, batch_size: int, logits_fn=None):
    """An end-to-end side: the eval pipeline's batches (decoded one batch ahead, as ``predict`` does) through
    ``logits_fn`` (inputs -> logits); without one, preprocessing alone (returns None)."""
    workers = _decode_workers(None, torch.device("cpu"))

    def side(items: list):
        rows, outputs = [], []
        for batch in pipeline.inference_batches(items, batch_size, workers=workers):
            if batch.inputs is not None and logits_fn is not None:
                outputs.append(logits_fn(batch.inputs))
                rows += batch.rows
        return torch.cat(outputs)[torch.tensor(rows).argsort()] if outputs else None
    return side


def calibration_batches(model, run_dir: Path, decode_size) -> list | None:
    """Static int8's calibration feed: a seeded sample of the run's training images through the eval pipeline."""
    if model.backbone.int8_method != "static":
        return None
    from hftransfer.files import read_yaml

    config = read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
    train = Path(config.get("train_dir") or BUNDLED_TRAIN)
    train = train if train.is_dir() else BUNDLED_TRAIN
    files = sorted(str(p) for p in train.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    sample = random.Random(0).sample(files, min(CALIBRATION_IMAGES, len(files)))
    pipeline = model.backbone.data_pipeline(decode_size=decode_size)
    return [{k: v.numpy() for k, v in b.inputs.items()} for b in pipeline.inference_batches(sample, 8)
            if b.inputs is not None]


def onnx_sessions(model, run_dir: Path, settings, threads: int) -> tuple[dict, str]:
    """{"onnxruntime fp32": session, "onnxruntime int8": session} of ``model``'s export, and how they were made."""
    from hftransfer.models.onnx_export import export_onnx
    from hftransfer.models.onnx_runtime import OnnxSession
    from hftransfer.models.quantize import quantize_int8

    calibration = calibration_batches(model, run_dir, settings.decode_size)
    with tempfile.TemporaryDirectory(prefix="bench_predict_onnx_") as tmp:
        folder, cwd = Path(tmp), os.getcwd()
        export_s, info = timed(lambda: export_onnx(model, folder, decode_size=settings.decode_size,
                                                   max_seq_length=settings.max_seq_length))
        os.chdir(folder)  # onnxruntime's symbolic shape inference drops debug files into the working directory
        try:
            quant_s, quant = timed(lambda: quantize_int8(folder / "model.onnx", folder / "model_int8.onnx",
                                                         method=model.backbone.int8_method, calibration=calibration))
        finally:
            os.chdir(cwd)
        sessions = {f"onnxruntime {kind}": OnnxSession(folder / name, threads=threads)
                    for kind, name in (("fp32", "model.onnx"), ("int8", "model_int8.onnx"))}
    calibrated = f", {quant['calibration_examples']} calibration images" if "calibration_examples" in quant else ""
    note = (f"ONNX export: {info['exporter']}, opset {info['opset']}, {export_s:.0f} s; int8: {quant['method']} "
            f"(weights {quant['weights']}, activations {quant['activations']}{calibrated}), {quant_s:.0f} s.")
    return sessions, note


def compiled_forward(model, batches: list, mode: str) -> tuple[object, str]:
    """``torch.compile(model)`` with inductor's ``freezing`` (inference: constants folded, BatchNorm into the
    convolutions, weights prepacked), compiled here on every batch shape it will meet; (inputs -> logits, note),
    or (None, why) when compiling fails."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    text = model.modality == "text"
    compiled = torch.compile(model, mode=None if mode == "default" else mode, dynamic=text)
    shapes = {tuple(tuple(v.shape) for v in inputs.values()): inputs for _, inputs in batches}
    try:
        with torch.inference_mode():
            seconds, _ = timed(lambda: [compiled(**inputs) for inputs in shapes.values()])
    except Exception as e:  # noqa: BLE001 - inductor raises many types (no compiler, unsupported op, ...)
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        return None, f"torch.compile failed, row left out ({reason})."
    kind = "dynamic shapes" if text else f"{len(shapes)} static shapes"
    return (lambda inputs: compiled(**inputs).logits), (f"torch.compile (mode {mode}, freezing, {kind}): compiled "
                                                        f"in {seconds:.0f} s before timing.")


def inference_paths(model, run_dir: Path, settings, batches: list, args) -> tuple[dict, list[str]]:
    """name -> (inputs -> logits) for every model-only path of ``model``, and notes on how each was made."""
    model.backbone.use_fast_layout()
    model.eval()
    paths, notes = {"torch eager": lambda inputs: model(**inputs).logits}, []
    if model.modality == "image":
        folded, n_folded = fold_batchnorm(model)
        folded.backbone.use_fast_layout()
        paths["torch, BN folded"] = lambda inputs: folded(**inputs).logits
        notes.append(f"BN folding: {n_folded} BatchNorms folded into the convolution before them.")
    sessions, note = onnx_sessions(model, run_dir, settings, args.threads)
    notes.append(note)
    if args.compile:
        print("  compiling with torch.compile ...", flush=True)
        fn, note = compiled_forward(model, batches, args.compile_mode)
        notes.append(note)
        if fn is not None:
            paths["torch.compile"] = fn
    paths.update({name: session.logits for name, session in sessions.items()})
    return paths, notes


def add_model_sides(sides: dict, paths: dict, pipeline, batches: dict[int, list], batch_size: int) -> dict[str, str]:
    """The end-to-end onnxruntime sides, preprocessing alone, and the model-only sides (each path on each size's
    pre-made ``batches``), added to ``sides``; returns side -> the torch eager side its logits are compared with."""
    reference = {}
    for name in ("onnxruntime fp32", "onnxruntime int8"):
        side = f"{name}, batch_size={batch_size}"
        sides[side] = pipeline_side(pipeline, batch_size, paths[name])
        reference[side] = f"{MODEL_ONLY}torch eager, batch {batch_size}"
    sides[f"preprocessing only, batch_size={batch_size}"] = pipeline_side(pipeline, batch_size)
    for size, premade in batches.items():
        for name, fn in paths.items():
            sides[f"{MODEL_ONLY}{name}, batch {size}"] = model_only_side(fn, premade)
            if name != "torch eager":
                reference[f"{MODEL_ONLY}{name}, batch {size}"] = f"{MODEL_ONLY}torch eager, batch {size}"
    return reference


def compare_outputs(report: dict, id2label: dict, gold: list[str]) -> None:
    """Agreement with hftransfer predict, accuracy on ``gold``, and max |logit diff| against torch eager, per side."""
    results = report["results"]
    labels = {name: labels_of(r["output"], id2label) for name, r in results.items() if r["output"] is not None}
    report["agreement"] = {name: agreement(labels[report["ours"]], lab) for name, lab in labels.items()
                           if name != report["ours"]}
    report["accuracy"] = {name: sum(a == b for a, b in zip(lab, gold)) / len(gold) for name, lab in labels.items()}
    report["logit_diff"] = {name: (results[name]["output"] - results[ref]["output"]).abs().max().item()
                            for name, ref in report["reference"].items()}


def labels_of(output, id2label: dict) -> list[str]:
    """Top-1 labels of a side's output: logits (argmax) or prediction dicts (``label``)."""
    if isinstance(output, torch.Tensor):
        return [id2label[i] for i in output.argmax(-1).tolist()]
    return [p["label"] for p in output]


def model_cost(model, inputs: dict, what: str) -> dict:
    flops, depthwise = count_flops(model, inputs)
    return {"flops": flops, "depthwise_share": depthwise, "flops_note": what}


# ---- images ---------------------------------------------------------------------------------------------
def image_files(args) -> tuple[Path, list[str]]:
    folder = Path(args.images) if args.images else (SHARED_VAL if SHARED_VAL.is_dir() else BUNDLED_VAL)
    files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if args.max_files and args.max_files < len(files):
        step = len(files) / args.max_files
        files = [files[int(i * step)] for i in range(args.max_files)]  # spread over the classes
    return folder, files


def image_benchmark(args, ceiling: Ceiling) -> dict:
    from transformers import pipeline

    from hftransfer import TransferModel
    from hftransfer.models.inference import InferenceSettings

    ensure_run(IMAGE_RUN, "image_cls")
    folder, files = image_files(args)
    settings = InferenceSettings.from_run(IMAGE_RUN)
    load_ours, model = timed(lambda: TransferModel.from_pretrained(IMAGE_RUN))
    contiguous = TransferModel.from_pretrained(IMAGE_RUN)
    contiguous.backbone.use_fast_layout = lambda: contiguous.backbone  # the ablation: keep NCHW weights and inputs
    load_pipe, pipe = timed(lambda: pipeline("image-classification", model=str(IMAGE_RUN), device="cpu"))
    b = args.batch_size or default_batch_size("image", torch.device("cpu"))  # the pipeline's batched call gets the same
    data = model.backbone.data_pipeline(decode_size=settings.decode_size)
    print(f"images: {len(files)} files from {folder}, model {IMAGE_RUN}; exporting / quantizing ...", flush=True)
    batches = {size: premade_batches(data, files, size) for size in (b, 1)}
    paths, notes = inference_paths(model, IMAGE_RUN, settings, [x for premade in batches.values() for x in premade],
                                   args)
    ours = f"hftransfer predict, batch_size={b}"
    sides = {
        ours: lambda xs: model.predict(xs, batch_size=b, settings=IMAGE_RUN, device="cpu"),
        "pipeline, per file": lambda xs: [pipe(f, top_k=1)[0] for f in xs],
        f"pipeline, batch_size={b}": lambda xs: [r[0] for r in pipe(xs, batch_size=b, top_k=1)],
        "hftransfer, batch_size=1": lambda xs: model.predict(xs, batch_size=1, settings=IMAGE_RUN, device="cpu"),
        f"hftransfer, batch_size={b}, contiguous": lambda xs: contiguous.predict(xs, batch_size=b, settings=IMAGE_RUN,
                                                                                 device="cpu"),
    }
    reference = add_model_sides(sides, paths, data, batches, b)
    crop = model.backbone.data_config["input_size"][-1]
    cost = model_cost(model, batches[1][0][1], f"one {crop}x{crop} image (the eval crop)")
    results, ceilings = run_sides(sides, files, args.repeats, ceiling)
    source = folder.relative_to(ROOT.parent) if folder.is_relative_to(ROOT.parent) else folder
    report = {"modality": "image", "items": len(files), "source": str(source),
              "model": str(IMAGE_RUN.relative_to(ROOT)), "results": results, "ceilings": ceilings, "ours": ours,
              "batch_size": b, "batched_pipeline": f"pipeline, batch_size={b}", "reference": reference, "notes": notes,
              "load_seconds": {"hftransfer": load_ours, "pipeline": load_pipe}, "note": "", **cost}
    compare_outputs(report, model.id2label, [Path(f).parent.name for f in files])
    return report


# ---- text -----------------------------------------------------------------------------------------------
def text_model_dir() -> tuple[Path, str]:
    """The default text job's output if plain transformers loads it, else a native pooler export (and why)."""
    from transformers import pipeline

    ensure_run(TEXT_RUN, "text_cls")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipeline("text-classification", model=str(TEXT_RUN), trust_remote_code=True, device="cpu")
        return TEXT_RUN, ""
    except Exception as e:  # noqa: BLE001 - any failure means: not loadable yet, use the fallback
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else type(e).__name__
    from hftransfer import create_transfer_model

    folder = Path(tempfile.mkdtemp(prefix="bench_predict_")) / "minilm_pooler"
    torch.manual_seed(0)
    model = create_transfer_model("text", "all-MiniLM-L6-v2", {0: "negative", 1: "positive"}, pooling="pooler")
    model.save_pretrained(folder)
    settings = (TEXT_RUN / "config.yaml").read_text() if (TEXT_RUN / "config.yaml").is_file() else ""
    (folder / "config.yaml").write_text(settings)  # the run's max_seq_length for both sides
    note = (f"{TEXT_RUN.relative_to(ROOT)} does not load in pipeline(trust_remote_code=True) yet ({reason}); timed "
            "instead: all-MiniLM-L6-v2 with --pooling pooler + an untrained linear head, native BERT export "
            "(accuracies are then chance)")
    print(note, flush=True)
    return folder, note


def median_text(pipeline, texts: list[str]) -> tuple[dict, int]:
    """Model inputs of the text of median token length (truncated as the pipeline truncates), and that length."""
    ids = pipeline.tokenizer(texts, truncation=True, max_length=pipeline.max_seq_length)["input_ids"]
    median = sorted(range(len(texts)), key=lambda i: len(ids[i]))[len(texts) // 2]
    return premade_batches(pipeline, [texts[median]], 1)[0][1], len(ids[median])


def text_benchmark(args, ceiling: Ceiling) -> dict:
    from transformers import pipeline

    from hftransfer import TransferModel
    from hftransfer.models.inference import InferenceSettings

    folder, note = text_model_dir()
    records = [json.loads(line) for line in TEXT_FILE.read_text().splitlines() if line.strip()][:args.max_texts]
    texts = [record["text"] for record in records]
    settings = InferenceSettings.from_run(folder)
    load_ours, model = timed(lambda: TransferModel.from_pretrained(folder))
    load_pipe, pipe = timed(lambda: pipeline("text-classification", model=str(folder), trust_remote_code=True,
                                             device="cpu"))
    b = args.batch_size or default_batch_size("text", torch.device("cpu"))
    tokenizer_kwargs = {"truncation": True, "max_length": settings.max_seq_length}  # the run's truncation, every side
    data = model.backbone.data_pipeline(max_seq_length=settings.max_seq_length)
    print(f"text: {len(texts)} sentences from {TEXT_FILE.relative_to(ROOT)}, model {folder}; exporting / "
          "quantizing ...", flush=True)
    batches = {size: premade_batches(data, texts, size) for size in (b, 1)}
    paths, notes = inference_paths(model, folder, settings, [x for premade in batches.values() for x in premade], args)
    ours = f"hftransfer predict, batch_size={b}"
    sides = {
        ours: lambda xs: model.predict(xs, batch_size=b, settings=folder, device="cpu"),
        "pipeline, per text": lambda xs: [pipe(t, **tokenizer_kwargs)[0] for t in xs],
        f"pipeline, batch_size={b}": lambda xs: pipe(xs, batch_size=b, **tokenizer_kwargs),
    }
    reference = add_model_sides(sides, paths, data, batches, b)
    inputs, length = median_text(data, texts)
    cost = model_cost(model, inputs, f"one text of {length} tokens, the median length")
    results, ceilings = run_sides(sides, texts, args.repeats, ceiling)
    report = {"modality": "text", "items": len(texts), "source": str(TEXT_FILE.relative_to(ROOT)),
              "model": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else "minilm_pooler (temporary)",
              "results": results, "ceilings": ceilings, "ours": ours, "batch_size": b,
              "batched_pipeline": f"pipeline, batch_size={b}", "reference": reference, "notes": notes,
              "load_seconds": {"hftransfer": load_ours, "pipeline": load_pipe}, "note": note, **cost}
    compare_outputs(report, model.id2label, [model.id2label[int(record["label"])] for record in records])
    return report


# ---- report ---------------------------------------------------------------------------------------------
def paired_ratio(ours: list[float], theirs: list[float]) -> float:
    """Median over rounds of ours / theirs: the sides of one round run back to back, so a change in
    background load between rounds cancels, where a ratio of medians would mix rounds minutes apart."""
    return statistics.median(a / b for a, b in zip(ours, theirs))


def ceiling_share(report: dict, name: str) -> float:
    """Median over rounds of the side's GFLOP/s / the fp32 ceiling measured in the same round."""
    return statistics.median(report["flops"] * rate / 1e9 / top for rate, top in zip(report["results"][name]["rates"],
                                                                                      report["ceilings"]))


def row(report: dict, name: str, ceiling: Ceiling) -> str:
    """One table row: rates, GFLOP/s and share of the ceiling, ratios, agreement, accuracy, logit difference."""
    res, r = report["results"], report["results"][name]
    no_model = name.startswith("preprocessing only")
    gflops = report["flops"] * r["median"] / 1e9
    share = "" if no_model else f"{ceiling_share(report, name):.1%}"
    if "int8" in name and ceiling.int8:
        share += f" ({gflops / ceiling.int8:.1%} of int8)"
    batched, ours = report["batched_pipeline"], report["ours"]
    vs_pipeline = "" if name == batched else f"{paired_ratio(r['rates'], res[batched]['rates']):.2f}x"
    end_to_end = not (name == ours or no_model or name.startswith(MODEL_ONLY))
    vs_ours = f"{paired_ratio(res[ours]['rates'], r['rates']):.2f}x" if end_to_end else ""
    accuracy, diff = report["accuracy"].get(name), report["logit_diff"].get(name)
    cells = [name, f"{r['median']:.1f}", ", ".join(f"{x:.1f}" for x in r["rates"]), "" if no_model else f"{gflops:.1f}",
             share, vs_pipeline, vs_ours, report["agreement"].get(name, ""),
             "" if accuracy is None else f"{accuracy:.1%}", "" if diff is None else f"{diff:.2g}"]
    return "| " + " | ".join(cells) + " |"


def table(report: dict, ceiling: Ceiling) -> str:
    unit = "images/s" if report["modality"] == "image" else "texts/s"
    depthwise = f"; {report['depthwise_share']:.0%} in depthwise convolutions" if report["depthwise_share"] else ""
    title = (f"**{report['modality']}**: {report['items']} inputs from `{report['source']}`, model `{report['model']}`"
             + (f". {report['note']}" if report["note"] else ""))
    cost = (f"FLOPs per example: {report['flops'] / 1e9:.3f} GFLOP ({report['flops_note']}{depthwise}). The fp32 "
            f"ceiling ({ceiling.fp32_kernel}) in each round: {', '.join(f'{c:.0f}' for c in report['ceilings'])} "
            "GFLOP/s; % of ceiling is the median over rounds of a side's GFLOP/s over its round's ceiling.")
    header = (f"| side | {unit} (median) | rounds | GFLOP/s | % of ceiling | vs batched pipeline | hftransfer / side "
              "| top-1 agreement | accuracy | max abs logit diff vs torch eager |")
    loads = report["load_seconds"]
    load = f"Model load (not timed above): hftransfer {loads['hftransfer']:.1f} s, pipeline {loads['pipeline']:.1f} s."
    return "\n".join([title, "", cost, "", header, "|---" * 10 + "|",
                      *(row(report, name, ceiling) for name in report["results"]), "", *report["notes"], load,
                      *targets(report, ceiling)])


def targets(report: dict, ceiling: Ceiling) -> list[str]:
    """The issue's targets, met or not; a missed one says what bounds it."""
    res, b = report["results"], report["batch_size"]

    def ratio(name: str) -> float:
        return paired_ratio(res[name]["rates"], res[report["batched_pipeline"]]["rates"])

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = []
    if report["modality"] == "image":
        ours = ratio(report["ours"])
        lines.append(f"Target hftransfer predict >= {TARGET}x the batched pipeline: {ours:.2f}x, "
                     f"{met(ours >= TARGET)}.")
    int8, int8_model = ratio(f"onnxruntime int8, batch_size={b}"), ratio(f"{MODEL_ONLY}onnxruntime int8, batch {b}")
    line = (f"Target int8 onnxruntime >= {INT8_TARGET}x the batched pipeline: {int8:.2f}x end to end "
            f"({int8_model:.2f}x model only), {met(int8 >= INT8_TARGET)}.")
    preprocessing = ratio(f"preprocessing only, batch_size={b}")
    if int8 < INT8_TARGET:
        line += (f" Preprocessing alone runs at {preprocessing:.2f}x the batched pipeline: "
                 + ("no end-to-end path can reach the target here." if preprocessing < INT8_TARGET else
                    f"the int8 model itself is the bound ({int8_model:.2f}x model only)."))
    lines.append(line)
    fp32 = [n for n in res if n.startswith(MODEL_ONLY) and n.endswith(f", batch {b}") and "int8" not in n]
    best = max(fp32, key=lambda n: res[n]["median"])
    share = ceiling_share(report, best)
    line = (f"Target batched fp32 >= {CEILING_TARGET:.0%} of the ceiling: best is {best.removeprefix(MODEL_ONLY)} at "
            f"{share:.1%}, {met(share >= CEILING_TARGET)}.")
    lines.append(line + ("" if share >= CEILING_TARGET else " " + ceiling_context(report, ceiling)))
    fp32_acc = report["accuracy"][f"{MODEL_ONLY}onnxruntime fp32, batch {b}"]
    int8_acc = report["accuracy"][f"{MODEL_ONLY}onnxruntime int8, batch {b}"]
    drop = (fp32_acc - int8_acc) * 100
    lines.append(f"Target int8 accuracy within {ACCURACY_POINTS:g} point of fp32: {int8_acc:.1%} vs {fp32_acc:.1%} "
                 f"({drop:.1f} points lost; one input is {100 / report['items']:.2g} points), "
                 f"{met(drop <= ACCURACY_POINTS)}.")
    return lines


def ceiling_context(report: dict, ceiling: Ceiling) -> str:
    """What the microbenchmarks say about this model's kernels, for a missed ceiling target."""
    def share(prefix: str) -> str:
        return f"{next(v for k, v in ceiling.rates.items() if k.startswith(prefix)) / ceiling.fp32:.0%}"

    if report["modality"] == "image":
        return (f"Layers shaped like this model's reach {share('conv 1x1')} (1x1 convolution) and "
                f"{share('conv 3x3 depthwise')} (depthwise 3x3) of the ceiling alone; depthwise convolutions are "
                f"{report['depthwise_share']:.0%} of its FLOPs.")
    return (f"A linear shaped like this model's feed-forward (1024 tokens, 384 -> 1536) reaches {share('linear')} of "
            "the ceiling alone; attention's small matmuls and the elementwise work do less.")


def machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("torch", "timm", "transformers", "pillow",
                                                                "onnxruntime"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores}-core {cpu}, CPU only, torch threads {threads}; {versions}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--only", choices=("image", "text"), help="run one modality")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per side (median reported)")
    parser.add_argument("--batch_size", type=int, help="every batched side's batch (default: hftransfer's, 8 images / "
                        "32 texts on a CPU)")
    parser.add_argument("--max_files", type=int, help="N images spread over the sorted files (default: all)")
    parser.add_argument("--max_texts", type=int, default=320, help="the first N validation sentences, on every side "
                        "(the per-text pipeline loop is slow)")
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads, every side "
                        "(default: every core)")
    parser.add_argument("--images", help="folder of images to predict (default: full-size hymenoptera val photos)")
    parser.add_argument("--no_compile", dest="compile", action="store_false", help="leave out the torch.compile "
                        "path (compiling takes minutes on a small CPU)")
    parser.add_argument("--compile_mode", default="default", help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--record", action="store_true", help="append the results to bench/RESULTS.md")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    args.threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                    else os.cpu_count())
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"measuring the ceiling ({args.threads} threads) ...", flush=True)
    ceiling = measure_ceiling(args.threads)
    print(ceiling.describe(), flush=True)
    reports = []
    if args.only in (None, "image"):
        reports.append(image_benchmark(args, ceiling))
    if args.only in (None, "text"):
        reports.append(text_benchmark(args, ceiling))
    command = "python bench/predict.py" + "".join(f" {a}" for a in sys.argv[1:] if a != "--record")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n\n".join([f"## Predict paths vs transformers.pipeline vs the CPU ceiling, {stamp}",
                           f"`{command}` on {machine(args.threads)}; {args.repeats} rounds per side, rotating order.",
                           ceiling.describe(), *(table(report, ceiling) for report in reports)])
    print("\n" + section)
    if args.record:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write("\n" + section + "\n")
        print("\n-> appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
