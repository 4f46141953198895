"""``hftransfer predict`` vs a plain ``transformers.pipeline`` loop: same model, same files, same threads, one run.

    python bench/predict.py                    # images + text (10-15 min on 2 busy CPU cores); prints the table
    python bench/predict.py --record           # ... and appends it to bench/RESULTS.md
    python bench/predict.py --only image --repeats 5 --threads 2

Images: the default image job's output (``outputs/image_cls``, trained with ``python recipes/image_cls.py``
when missing: ~45 s), whose export is in timm's layout, so ``pipeline("image-classification",
model=DIR)`` loads the very same weights. Files: the full-size hymenoptera validation photos from
``../shared/data`` (what users predict on: camera-sized JPEGs), else the bundled 160 px ones.

Text: the default text job's output (``outputs/text_cls``), loaded by ``pipeline("text-classification",
model=DIR, trust_remote_code=True)``. While its mean-pooling export does not load in plain
transformers, the text side falls back to a ``--pooling pooler`` model of the same encoder
(all-MiniLM-L6-v2, bundled weights, untrained head), exported in the native BERT layout: the speed
comparison and the top-1 agreement are then of that model, and the table says so. Texts: the
first ``--max_texts`` (320) sentences of the rotten_tomatoes validation split; both sides truncate at
the run's ``max_seq_length``.

Sides, each timed over every file with the model already loaded (load times are printed apart):

* ``hftransfer``: ``TransferModel.predict(files, batch_size, settings=run_dir)``, the code
  ``hftransfer predict`` runs (decode + shrink on a helper thread one batch ahead, uint8 batches,
  normalization in the model, channels_last; texts longest first);
* ``pipeline, per file``: ``for f in files: pipe(f)``, what most snippets do;
* ``pipeline, batch_size=B``: ``pipe(files, batch_size=B)``, the pipeline's own batching, at the batch
  size hftransfer uses (its CPU default: 8 images, 32 texts; ``--batch_size`` sets both);
* ablations of hftransfer (images): ``batch_size=1``, and the contiguous (not channels_last) layout.

``torch.set_num_threads(--threads)`` applies to both sides (same process); no GPU (CUDA hidden), Hub
offline. Each repeat runs every side once, in rotating order, so background load hits all sides
alike; the table shows the median images (texts) per second, each round's rate, and the median over
rounds of the per-round ratio hftransfer / side, against the target of >= 1.5x over the batched
pipeline for images (the per-file loop is shown too: on a quiet CPU it beats the pipeline's batching).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

import torch

from hftransfer.models.inference import default_batch_size

# before anything touches CUDA or imports huggingface_hub (both read these lazily / at their import)
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # a CPU benchmark: the same device for both sides
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED_VAL = ROOT.parent / "shared" / "data" / "hymenoptera" / "hymenoptera_data" / "val"
BUNDLED_VAL = ROOT / "data" / "hymenoptera_160" / "val"
TEXT_FILE = ROOT / "data" / "rt_polarity" / "validation.jsonl"
IMAGE_RUN = ROOT / "outputs" / "image_cls"
TEXT_RUN = ROOT / "outputs" / "text_cls"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
TARGET = 1.5  # hftransfer / batched pipeline, images on CPU


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


def run_sides(sides: dict, items: list, repeats: int) -> dict[str, dict]:
    """Warm every side on a few items, then ``repeats`` rounds over all ``items`` in rotating order; items/s
    per round and the last round's output. Each side is a function of the item list."""
    results = {name: {"rates": [], "output": None} for name in sides}
    for fn in sides.values():
        fn(items[:8])  # warm-up: lazy inits, first-touch allocations, file cache
    names = list(sides)
    n_items = len(items)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds, out = timed(lambda fn=sides[name]: fn(items))
            results[name]["rates"].append(n_items / seconds)
            results[name]["output"] = out
            print(f"  round {r + 1}: {name:34s} {n_items / seconds:8.1f}/s", flush=True)
    for res in results.values():
        res["median"] = statistics.median(res["rates"])
    return results


def agreement(ours: list[str], theirs: list[str]) -> str:
    same = sum(a == b for a, b in zip(ours, theirs))
    return f"{same}/{len(ours)}"


# ---- images ---------------------------------------------------------------------------------------------
def image_benchmark(args) -> dict:
    from transformers import pipeline

    from hftransfer import TransferModel

    ensure_run(IMAGE_RUN, "image_cls")
    folder = Path(args.images) if args.images else (SHARED_VAL if SHARED_VAL.is_dir() else BUNDLED_VAL)
    files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    load_ours, model = timed(lambda: TransferModel.from_pretrained(IMAGE_RUN))
    contiguous = TransferModel.from_pretrained(IMAGE_RUN)
    contiguous.backbone.use_fast_layout = lambda: contiguous.backbone  # the ablation: keep NCHW weights and inputs
    load_pipe, pipe = timed(lambda: pipeline("image-classification", model=str(IMAGE_RUN), device="cpu"))
    b = args.batch_size or default_batch_size("image", torch.device("cpu"))  # the pipeline's batched call gets the same
    sides = {
        f"hftransfer predict, batch_size={b}": lambda xs: model.predict(xs, batch_size=b, settings=IMAGE_RUN, device="cpu"),
        "pipeline, per file": lambda xs: [pipe(f, top_k=1)[0] for f in xs],
        f"pipeline, batch_size={b}": lambda xs: [r[0] for r in pipe(xs, batch_size=b, top_k=1)],
        "hftransfer, batch_size=1": lambda xs: model.predict(xs, batch_size=1, settings=IMAGE_RUN, device="cpu"),
        f"hftransfer, batch_size={b}, contiguous": lambda xs: contiguous.predict(xs, batch_size=b, settings=IMAGE_RUN,
                                                                                 device="cpu"),
    }
    print(f"images: {len(files)} files from {folder}, model {IMAGE_RUN}", flush=True)
    results = run_sides(sides, files, args.repeats)
    ours = [p["label"] for p in results[f"hftransfer predict, batch_size={b}"]["output"]]
    return {"modality": "image", "items": len(files), "source": str(folder.relative_to(ROOT.parent)
                                                                      if folder.is_relative_to(ROOT.parent) else folder),
            "model": str(IMAGE_RUN.relative_to(ROOT)), "results": results, "ours": f"hftransfer predict, batch_size={b}",
            "baselines": ["pipeline, per file", f"pipeline, batch_size={b}"],
            "agreement": {name: agreement(ours, [r["label"] for r in results[name]["output"]])
                          for name in ("pipeline, per file", f"pipeline, batch_size={b}")},
            "load_seconds": {"hftransfer": load_ours, "pipeline": load_pipe}, "note": ""}


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
            "instead: all-MiniLM-L6-v2 with --pooling pooler + an untrained linear head, native BERT export")
    print(note, flush=True)
    return folder, note


def text_benchmark(args) -> dict:
    from transformers import pipeline

    from hftransfer import TransferModel
    from hftransfer.models.inference import InferenceSettings

    folder, note = text_model_dir()
    texts = [json.loads(line)["text"] for line in TEXT_FILE.read_text().splitlines() if line.strip()][:args.max_texts]
    max_length = InferenceSettings.from_run(folder).max_seq_length
    load_ours, model = timed(lambda: TransferModel.from_pretrained(folder))
    load_pipe, pipe = timed(lambda: pipeline("text-classification", model=str(folder), trust_remote_code=True,
                                             device="cpu"))
    b = args.batch_size or default_batch_size("text", torch.device("cpu"))
    tokenizer_kwargs = {"truncation": True, "max_length": max_length}  # the run's truncation, on both sides
    sides = {
        f"hftransfer predict, batch_size={b}": lambda xs: model.predict(xs, batch_size=b, settings=folder, device="cpu"),
        "pipeline, per text": lambda xs: [pipe(t, **tokenizer_kwargs)[0] for t in xs],
        f"pipeline, batch_size={b}": lambda xs: pipe(xs, batch_size=b, **tokenizer_kwargs),
    }
    print(f"text: {len(texts)} sentences from {TEXT_FILE.relative_to(ROOT)}, model {folder}", flush=True)
    results = run_sides(sides, texts, args.repeats)
    ours = [p["label"] for p in results[f"hftransfer predict, batch_size={b}"]["output"]]
    return {"modality": "text", "items": len(texts), "source": str(TEXT_FILE.relative_to(ROOT)),
            "model": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else "minilm_pooler (temporary)",
            "results": results, "ours": f"hftransfer predict, batch_size={b}",
            "baselines": ["pipeline, per text", f"pipeline, batch_size={b}"],
            "agreement": {name: agreement(ours, [r["label"] for r in results[name]["output"]])
                          for name in ("pipeline, per text", f"pipeline, batch_size={b}")},
            "load_seconds": {"hftransfer": load_ours, "pipeline": load_pipe}, "note": note}


# ---- report ---------------------------------------------------------------------------------------------
def paired_ratio(ours: list[float], theirs: list[float]) -> float:
    """Median over rounds of ours / theirs: the sides of one round run back to back, so a change in
    background load between rounds cancels, where a ratio of medians would mix rounds minutes apart."""
    return statistics.median(a / b for a, b in zip(ours, theirs))


def table(report: dict) -> str:
    res, ours = report["results"], report["ours"]
    unit = "images/s" if report["modality"] == "image" else "texts/s"
    lines = [f"**{report['modality']}**: {report['items']} inputs from `{report['source']}`, model `{report['model']}`"
             + (f". {report['note']}" if report["note"] else ""), "",
             f"| side | {unit} (median) | rounds | hftransfer / side | top-1 agreement |", "|---|---|---|---|---|"]
    for name, r in res.items():
        ratio = "" if name == ours else f"{paired_ratio(res[ours]['rates'], r['rates']):.2f}x"
        rounds = ", ".join(f"{x:.1f}" for x in r["rates"])
        lines.append(f"| {name} | {r['median']:.1f} | {rounds} | {ratio} | {report['agreement'].get(name, '')} |")
    loads = report["load_seconds"]
    lines += ["", f"Model load (not timed above): hftransfer {loads['hftransfer']:.1f} s, pipeline {loads['pipeline']:.1f} s."]
    if report["modality"] == "image":
        batched = paired_ratio(res[ours]["rates"], res[report["baselines"][1]]["rates"])
        lines.append(f"Target >= {TARGET}x over the batched pipeline: {batched:.2f}x, "
                     f"{'met' if batched >= TARGET else 'NOT met'}.")
    return "\n".join(lines)


def machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("torch", "timm", "transformers", "pillow"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores}-core {cpu}, CPU only, torch threads {threads}; {versions}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--only", choices=("image", "text"), help="run one modality")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per side (median reported)")
    parser.add_argument("--batch_size", type=int, help="both sides' batch (default: hftransfer's, 8 images / 32 texts "
                        "on a CPU)")
    parser.add_argument("--max_texts", type=int, default=320, help="the first N validation sentences, on every side "
                        "(the per-text pipeline loop is slow)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads, both sides (default: every core)")
    parser.add_argument("--images", help="folder of images to predict (default: full-size hymenoptera val photos)")
    parser.add_argument("--record", action="store_true", help="append the results to bench/RESULTS.md")
    args = parser.parse_args()
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    reports = []
    if args.only in (None, "image"):
        reports.append(image_benchmark(args))
    if args.only in (None, "text"):
        reports.append(text_benchmark(args))
    command = "python bench/predict.py" + "".join(f" {a}" for a in sys.argv[1:] if a != "--record")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n\n".join([f"## Predict vs transformers.pipeline, {stamp}",
                           f"`{command}` on {machine(threads)}; {args.repeats} rounds per side, rotating order.",
                           *map(table, reports)])
    print("\n" + section)
    if args.record:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write("\n" + section + "\n")
        print("\n-> appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
