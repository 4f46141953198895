"""``--streaming`` vs the cached path on the same Parquet shards: throughput and peak disk use, side by side, one run.

    python bench/streaming.py                    # 100k images (about 20-30 min on 2 cores); appends to RESULTS.md
    python bench/streaming.py --images 5000 --steps 40 --no-record   # smoke test

A shard set of ``--images`` 64x64 PNG images (10 classes, the class sets the mean colour, seeded: the same bytes on
every run) is written as ``train-000NN-of-000MM.parquet`` + a 1,000-image validation shard, in the layout of a Hub
dataset (an Image column and a ClassLabel), under a temporary folder deleted at the end. Both sides run
``recipes/image_cls.py --dataset_name SHARD_FOLDER`` as a subprocess, with the same model (random-init
``--model``), batch size, ``--max_steps``, seed, torch threads and no loader workers; they differ in ``--streaming``
only:

* cached: ``datasets`` converts the shards to Arrow in its cache and the image pipeline decodes every image once
  into its decode cache (both on disk), then training reads decoded images.
* streaming: each batch is read from the shards and decoded on the fly; nothing but the run folder is written.

Per side: wall time of the whole subprocess, the time before training starts (loading; for the cached path the
decode of every image), training throughput (images trained / the run's ``train_runtime``), and peak disk use of
its ``HF_DATASETS_CACHE`` + output folder (polled every 0.2 s while the child runs).
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [f"class_{i}" for i in range(10)]


def write_shards(folder: Path, images: int, shards: int, size: int = 64) -> None:
    """``images`` training images in ``shards`` Parquet files plus a 1,000-image validation shard, deterministic."""
    import datasets
    import numpy as np
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})

    def shard(name: str, count: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, len(CLASSES), count)
        rows = []
        for i, label in enumerate(labels):
            base = np.array([25 * label, 255 - 25 * label, 128], dtype=float)
            pixels = np.clip(rng.normal(base, 40, (size, size, 3)), 0, 255).astype("uint8")
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            rows.append({"bytes": buffer.getvalue(), "path": f"{name}-{i}.png"})
        datasets.Dataset.from_dict({"image": rows, "label": labels.tolist()}, features=features).to_parquet(
            str(folder / f"{name}.parquet"))

    per_shard = -(-images // shards)
    for k in range(shards):
        shard(f"train-{k:05d}-of-{shards:05d}", min(per_shard, images - k * per_shard), seed=k)
    shard("validation-00000-of-00001", 1000, seed=10_000)


def folder_bytes(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        for root, _, files in os.walk(path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    pass  # a file removed while we counted (temporary files of a cache write)
    return total


def run_side(name: str, data: Path, work: Path, args) -> dict:
    """One recipe run as a subprocess, its disk use polled; returns its row."""
    cache, out = work / f"{name}_cache", work / f"{name}_run"
    cache.mkdir()
    command = [sys.executable, str(ROOT / "recipes" / "image_cls.py"), "--dataset_name", str(data),
               "--model_name_or_path", args.model, "--weights", "random", "--strategy", "full",
               "--per_device_train_batch_size", str(args.batch_size), "--per_device_eval_batch_size", "128",
               "--max_steps", str(args.steps), "--num_train_epochs", "1", "--num_threads", str(args.threads),
               "--dataloader_num_workers", "0", "--checkpointing_steps", "no", "--seed", "0", "--output_dir", str(out),
               *(["--streaming"] if name == "streaming" else [])]
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    peak, done = [0], threading.Event()

    def poll() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], folder_bytes([cache, out]))

    watcher = threading.Thread(target=poll, daemon=True)
    start = time.time()
    watcher.start()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.time() - start
    done.set()
    watcher.join()
    peak[0] = max(peak[0], folder_bytes([cache, out]))
    if proc.returncode != 0:
        raise SystemExit(f"{name} run failed:\n{proc.stderr[-3000:]}")
    results = json.loads((out / "all_results.json").read_text())
    trained = args.steps * args.batch_size
    train_runtime = results["train_runtime"]
    return {"side": name, "wall_s": wall, "before_training_s": wall - results["total_runtime"],
            "train_runtime_s": train_runtime, "images_per_s": trained / train_runtime, "peak_disk_mb": peak[0] / 2**20,
            "eval_accuracy": results["eval_accuracy"], "command": " ".join(command[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of each side")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--model", default="test_efficientnet", help="a timm name (random init): small, so the data "
                        "path is what is timed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-record", dest="record", action="store_false")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hftransfer_streaming_bench_"))
    try:
        data = work / "shards"
        data.mkdir()
        start = time.time()
        write_shards(data, args.images, args.shards)
        generated = time.time() - start
        shard_mb = folder_bytes([data]) / 2**20
        print(f"{args.images} images in {args.shards} shards: {shard_mb:.0f} MB, written in {generated:.0f}s")
        rows = [run_side(name, data, work, args) for name in ("cached", "streaming")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rows, args, shard_mb, generated)


def report(rows: list[dict], args, shard_mb: float, generated: float) -> None:
    lines = [f"## Streaming vs the cached path, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC", "",
             f"- command: `{' '.join(['python bench/streaming.py', *sys.argv[1:]])}`",
             f"- machine: nproc {os.cpu_count()}, {platform.machine()}; {args.threads} torch thread(s), CPU only, no "
             f"loader workers; load average at the end {os.getloadavg()[0]:.2f}",
             f"- data: {args.images} 64x64 PNG images in {args.shards} Parquet shards ({shard_mb:.0f} MB, written in "
             f"{generated:.0f}s) + 1,000 validation images; model {args.model} (random init), --strategy full, batch "
             f"{args.batch_size}, --max_steps {args.steps} ({args.steps * args.batch_size} images trained per side)",
             "", "| path | wall s | before training s | train images/s | peak disk MB | eval accuracy |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['side']} | {row['wall_s']:.0f} | {row['before_training_s']:.0f} | "
                     f"{row['images_per_s']:.0f} | {row['peak_disk_mb']:.0f} | {row['eval_accuracy']:.4f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    for row in rows:
        print(f"{row['side']}: {row['command']}")
    if args.record:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
