"""LoRA vs full fine-tuning vs LP-FT (and LP-LoRA), side by side in one run, 3 seeds each.

    python bench/lora.py                       # the benchmark (about 15 min on 2 quiet CPU cores); appends to RESULTS.md
    python bench/lora.py --quick               # smoke test: 1 seed, tiny subsets; records nothing unless --record
    python bench/lora.py --methods lora,full --seeds 0,1,2

Each run is ``recipes/{image,text}_cls.py`` in a subprocess with explicit flags (``--num_threads``,
``--checkpointing_steps no``, a fresh ``--output_dir``), the Hub offline. Per run: the exported
epoch's eval accuracy, the parameters that train in the fine-tuning phase (``all_results.json``:
``transfer.phases[-1].trainable_fraction`` x ``transfer.parameters``), the mean optimizer-step time
(``train_runtime`` / optimizer steps; LP-FT / LP-LoRA's cached-feature probe epochs are counted, so
their step time is the mean over both phases), and the child's peak RSS (``os.wait4``; on CPU there
is no device memory to report).

Budget, chosen to fit 2 CPU cores in ~15 minutes (said in RESULTS.md):

* images: bundled ``data/hymenoptera_160``, a seeded 64-photo subset of train and 100 val photos,
  tf_efficientnet_lite0 (bundled ImageNet weights), 2 epochs, batch 16, ``--bn_stats all`` (as the
  default image job); a LoRA step on 2 shared cores costs seconds, so the full split did not fit;
* text: all-MiniLM-L6-v2 (bundled weights) on a seeded 400-sentence subset of the bundled
  rotten_tomatoes train split, 200 validation sentences, 2 epochs, max length 64, batch 16.

Learning rates: full and LP-FT use the recipes' defaults for their backbone (image 1e-4 full / 3e-5
LP-FT fine-tune phase, text 5e-5); LoRA trains only small adapters and, as usual for LoRA, gets a
10x higher rate (1e-3, r 8, alpha 16, default targets: EfficientNet's 1x1 convolutions, MiniLM's
query/key/value). The head learning rate is 3e-3 (image) / 1e-3 (text) for every method.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"

IMAGE = ["recipes/image_cls.py", "--model_name_or_path", "tf_efficientnet_lite0",
         "--train_dir", "data/hymenoptera_160/train", "--validation_dir", "data/hymenoptera_160/val",
         "--bn_stats", "all", "--crop_scale", "0.5", "1.0", "--color_jitter", "0", "--head_learning_rate", "3e-3",
         "--per_device_train_batch_size", "16"]
TEXT = ["recipes/text_cls.py", "--model_name_or_path", "all-MiniLM-L6-v2",
        "--train_file", "data/rt_polarity/train.jsonl", "--validation_file", "data/rt_polarity/validation.jsonl",
        "--label_names", "negative", "positive", "--max_seq_length", "64", "--head_learning_rate", "1e-3",
        "--per_device_train_batch_size", "16", "--do_predict", "false"]
# per (task, method): the flags that differ
METHODS = {
    "image": {
        "full": ["--strategy", "full", "--learning_rate", "1e-4", "--num_train_epochs", "2"],
        "lp_ft": ["--strategy", "lp_ft", "--lp_epochs", "1", "--learning_rate", "3e-5", "--num_train_epochs", "2"],
        "lora": ["--strategy", "lora", "--learning_rate", "1e-3", "--num_train_epochs", "2"],
        "lp_lora": ["--strategy", "lp_lora", "--lp_epochs", "1", "--learning_rate", "1e-3", "--num_train_epochs", "2"],
    },
    "text": {
        "full": ["--strategy", "full", "--learning_rate", "5e-5", "--num_train_epochs", "2"],
        "lp_ft": ["--strategy", "lp_ft", "--lp_epochs", "1", "--learning_rate", "5e-5", "--num_train_epochs", "2"],
        "lora": ["--strategy", "lora", "--learning_rate", "1e-3", "--num_train_epochs", "2"],
        "lp_lora": ["--strategy", "lp_lora", "--lp_epochs", "1", "--learning_rate", "1e-3", "--num_train_epochs", "2"],
    },
}


def run_one(task: str, method: str, seed: int, work: Path, threads: int, samples: dict) -> dict:
    """One recipe run in a child process; its accuracy, trainable parameters, step time and peak RSS."""
    out = work / f"{task}-{method}-{seed}"
    args = [*(IMAGE if task == "image" else TEXT), *METHODS[task][method], "--seed", str(seed), "--output_dir", str(out),
            "--num_threads", str(threads), "--checkpointing_steps", "no", "--overwrite_output_dir"]
    n_train, n_eval = samples[task]
    args += ["--max_train_samples", str(n_train), "--max_eval_samples", str(n_eval)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(work / "datasets_cache"), "CUDA_VISIBLE_DEVICES": ""}
    start = time.time()
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{task} {method} seed {seed} failed:\n{stderr[-3000:]}")
    results = json.loads((out / "all_results.json").read_text())
    transfer = results["transfer"]
    fraction = transfer["phases"][-1]["trainable_fraction"]
    steps = -(-results["train_samples"] // 16) * results["epochs"]  # ceil(samples / batch) per epoch
    return {"task": task, "method": method, "seed": seed, "accuracy": results["eval_accuracy"],
            "trainable": round(fraction * transfer["parameters"]), "fraction": fraction,
            "step_s": results["train_runtime"] / steps, "wall_s": time.time() - start,
            "command": "python " + " ".join(args)}


def peak_rss_runner(fn, *args) -> dict:
    """Run ``fn`` and add the peak RSS of the child it started (RUSAGE_CHILDREN's max is over all children so far,
    so each run is measured in its own short-lived helper process)."""
    import multiprocessing as mp

    with mp.get_context("fork").Pool(1) as pool:
        return pool.apply(_measured, (fn, *args))


def _measured(fn, *args) -> dict:
    import resource

    row = fn(*args)
    row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2  # KiB on Linux
    return row


def summarize(rows: list[dict]) -> list[str]:
    lines = ["| task | method | eval accuracy (mean ± sd, 3 seeds) | per seed | trainable params (fine-tune phase) | "
             "step time | peak RSS |", "|---|---|---|---|---|---|---|"]
    keys = dict.fromkeys((r["task"], r["method"]) for r in rows)
    for task, method in keys:
        group = [r for r in rows if r["task"] == task and r["method"] == method]
        accs = [r["accuracy"] for r in group]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {task} | {method} | {statistics.mean(accs):.4f} ± {sd:.4f} | "
                     f"{' / '.join(f'{a:.3f}' for a in accs)} | {group[0]['trainable']:,} ({group[0]['fraction']:.2%}) | "
                     f"{statistics.mean(r['step_s'] for r in group):.2f} s | "
                     f"{max(r['peak_rss_gb'] for r in group):.2f} GB |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lora,full,lp_ft")
    parser.add_argument("--tasks", default="image,text")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 seed, 200 text sentences: a smoke test")
    parser.add_argument("--record", action="store_true", help="append to RESULTS.md even with --quick")
    args = parser.parse_args()
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    # (train, eval) examples per task
    samples = {"image": (32, 40), "text": (96, 50)} if args.quick else {"image": (64, 100), "text": (400, 200)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="hftransfer-lora-") as tmp:
        for task in args.tasks.split(","):
            for seed in seeds:  # seeds outermost within a task: methods of one seed run back to back, side by side
                for method in args.methods.split(","):
                    row = peak_rss_runner(run_one, task, method, seed, Path(tmp), args.threads, samples)
                    print(f"{task:5s} {method:8s} seed {seed}: accuracy {row['accuracy']:.4f}, trainable "
                          f"{row['trainable']:,}, step {row['step_s']:.2f}s, peak RSS {row['peak_rss_gb']:.2f} GB, "
                          f"wall {row['wall_s']:.0f}s", flush=True)
                    rows.append(row)
    table = summarize(rows)
    print("\n".join(table))
    (ROOT / "bench" / "lora_runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if args.quick and not args.record:
        return
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, {args.threads} torch threads"
    section = [f"\n## LoRA vs full vs LP-FT, {dt.date.today().isoformat()}\n",
               f"Command: `python bench/lora.py --methods {args.methods} --seeds {args.seeds}`. Machine: {machine}.",
               "Per-run commands and numbers: `bench/lora_runs.jsonl`.\n", *table, ""]
    with RESULTS.open("a") as f:
        f.write("\n".join(section) + "\n")


if __name__ == "__main__":
    main()
