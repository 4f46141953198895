"""Quality benchmark: which transfer strategy wins, and does transfer beat training from scratch?

    python bench/quality.py                  # full: both datasets, every strategy, 3 seeds
    python bench/quality.py --quick          # smoke check: tiny subsets, 1 seed, 1 epoch
    python bench/quality.py --only image --seeds 0 1 2
    python bench/quality.py --table_from bench/quality_runs.jsonl   # one table over every recorded run

Every run is also appended as one JSON line to bench/quality_runs.jsonl, so seeds run in separate
sessions combine into one mean +- std table.

Fine-tunes the bundled real backbones (EfficientNet-Lite0 ImageNet, all-MiniLM-L6-v2) with every
strategy plus a from-scratch baseline (same architecture, random init) through the real recipes,
on full-size hymenoptera (val) and rotten_tomatoes (validation; the test split is scored on the
exported model and never used for selection). Prints and appends a mean +- std table to
bench/RESULTS.md with the exact command of every run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# strategy name -> recipe flags; epochs and LRs chosen once a priori, not tuned on validation
IMAGE_RUNS = {
    "linear_probe": ["--strategy", "linear_probe", "--num_train_epochs", "10", "--head_learning_rate", "3e-3"],
    "full": ["--strategy", "full", "--num_train_epochs", "4", "--learning_rate", "1e-4", "--head_learning_rate", "3e-3"],
    "lp_ft": ["--strategy", "lp_ft", "--lp_epochs", "10", "--num_train_epochs", "12", "--learning_rate", "3e-5",
              "--head_learning_rate", "3e-3"],
    "full+llrd": ["--strategy", "full", "--num_train_epochs", "4", "--learning_rate", "2e-4", "--layer_decay", "0.7",
                  "--head_learning_rate", "3e-3"],
    "full+l2sp": ["--strategy", "full", "--num_train_epochs", "4", "--learning_rate", "1e-4", "--head_learning_rate", "3e-3",
                  "--l2sp_alpha", "0.1", "--l2sp_beta", "0.01"],
    "gradual": ["--strategy", "gradual", "--unfreeze_every", "1", "--num_train_epochs", "5", "--learning_rate", "1e-4",
                "--head_learning_rate", "3e-3"],
    "scratch": ["--strategy", "full", "--weights", "random", "--num_train_epochs", "4", "--learning_rate", "1e-3",
                "--head_learning_rate", "1e-3", "--bn_stats", "none"],
}
TEXT_RUNS = {
    "linear_probe": ["--strategy", "linear_probe", "--num_train_epochs", "10", "--head_learning_rate", "3e-3"],
    "full": ["--strategy", "full", "--num_train_epochs", "1", "--learning_rate", "5e-5", "--head_learning_rate", "1e-3"],
    "lp_ft": ["--strategy", "lp_ft", "--lp_epochs", "5", "--num_train_epochs", "6", "--learning_rate", "3e-5",
              "--head_learning_rate", "3e-3"],
    "full+llrd": ["--strategy", "full", "--num_train_epochs", "1", "--learning_rate", "8e-5", "--layer_decay", "0.8",
                  "--head_learning_rate", "1e-3"],
    "full+l2sp": ["--strategy", "full", "--num_train_epochs", "1", "--learning_rate", "5e-5", "--head_learning_rate", "1e-3",
                  "--l2sp_alpha", "0.1", "--l2sp_beta", "0.01"],
    "gradual": ["--strategy", "gradual", "--unfreeze_every", "1", "--num_train_epochs", "3", "--learning_rate", "5e-5",
                "--head_learning_rate", "1e-3"],
    "scratch": ["--strategy", "full", "--weights", "random", "--num_train_epochs", "1", "--learning_rate", "5e-4",
                "--head_learning_rate", "5e-4"],
}


def image_data(tmp: Path) -> tuple[Path, Path, str]:
    """Full-size hymenoptera without the tutorial zip's 'image not found' placeholder GIF."""
    src = SHARED / "hymenoptera" / "hymenoptera_data"
    if not src.is_dir():
        src, note = ROOT / "data" / "hymenoptera_160", "bundled hymenoptera_160 (shared full-size set not found)"
        return src / "train", src / "val", note
    dst = tmp / "hymenoptera"
    if not dst.exists():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("imageNotFound.gif"))
    return dst / "train", dst / "val", "hymenoptera full-size (train 244 / val 153, placeholder GIF removed)"


def text_data() -> tuple[Path, Path, Path, str]:
    src = SHARED / "rt_polarity" / "hf_splits"
    if not src.is_dir():
        src = ROOT / "data" / "rt_polarity"
    return src / "train.jsonl", src / "validation.jsonl", src / "test.jsonl", f"rotten_tomatoes ({src})"


def score_text_test(model_dir: Path, test_file: Path, limit: int | None) -> float:
    """Accuracy of the exported model on the test split (scored once, after selection on validation)."""
    import torch

    from hftransfer import TransferModel

    model = TransferModel.from_pretrained(model_dir).eval()
    rows = [json.loads(line) for line in test_file.read_text().splitlines()][:limit]
    label2id = model.label2id  # the runs name the integer labels 0/1 negative/positive
    correct = 0
    for start in range(0, len(rows), 64):
        chunk = rows[start:start + 64]
        batch = model.backbone.tokenizer([r["text"] for r in chunk], padding=True, truncation=True, max_length=128,
                                         return_tensors="pt")
        with torch.no_grad():
            preds = model(**batch).logits.argmax(-1).tolist()
        gold = [label2id[("negative", "positive")[r["label"]]] for r in chunk]
        correct += sum(p == g for p, g in zip(preds, gold))
    return correct / len(rows)


RUNS_FILE = ROOT / "bench" / "quality_runs.jsonl"


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {sd:.4f}"


def print_table(rows: list[tuple]) -> str:
    table = ["| data | strategy | val accuracy (mean +- std) | test accuracy | wall s / run | seeds |",
             "|---|---|---|---|---|---|"]
    for modality, name, accs, tests, walls, _note in rows:
        table.append(f"| {modality} | {name} | {_fmt(accs)} | {_fmt(tests)} | {statistics.mean(walls):.0f} | {len(accs)} |")
    text = "\n".join(table)
    print("\n" + text)
    return text


def records_to_rows(records: list[dict]) -> list[tuple]:
    """Group recorded runs by (data, strategy), keeping the last record per seed, in first-seen order."""
    grouped: dict[tuple, dict[int, dict]] = {}
    for rec in records:
        grouped.setdefault((rec["data"], rec["strategy"]), {})[rec["seed"]] = rec
    rows = []
    for (modality, name), by_seed in grouped.items():
        recs = [by_seed[s] for s in sorted(by_seed)]
        tests = [r["test_accuracy"] for r in recs if r.get("test_accuracy") is not None]
        rows.append((modality, name, [r["val_accuracy"] for r in recs], tests, [r["wall_s"] for r in recs],
                     recs[-1].get("dataset", "")))
    return rows


def run(recipe: str, args: list[str], out: Path) -> tuple[dict, float, str]:
    cmd = [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), *args, "--output_dir", str(out),
           "--overwrite_output_dir", "--checkpointing_steps", "no"]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return json.loads((out / "all_results.json").read_text()), wall, " ".join(["python", f"recipes/{recipe}.py", *args])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny subsets, 1 seed, 1 epoch: a smoke check")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", choices=["image", "text"], default=None)
    parser.add_argument("--strategies", nargs="+", default=None, help="subset of strategy names")
    parser.add_argument("--image_model", default=None,
                        help="another bundled timm backbone for the image runs (default: the recipe's tf_efficientnet_lite0)")
    parser.add_argument("--text_train_samples", type=int, default=None, help="subset of rotten_tomatoes train (default: all 8530)")
    parser.add_argument("--no_results_file", action="store_true", help="print only, do not append to bench/RESULTS.md")
    parser.add_argument("--table_from", type=Path, default=None,
                        help="build the table from recorded runs (JSON lines) instead of training")
    opts = parser.parse_args()
    if opts.table_from:
        print_table(records_to_rows([json.loads(line) for line in opts.table_from.read_text().splitlines() if line]))
        return
    seeds = opts.seeds[:1] if opts.quick else opts.seeds
    tmp = Path(tempfile.mkdtemp(prefix="hftransfer-quality-"))
    cache = tmp / "feature_cache"  # frozen features are shared by the runs that probe the same backbone
    rows, commands = [], []
    env_note = f"{os.cpu_count()} cores, torch threads 2"

    jobs = []
    if opts.only in (None, "image"):
        train, val, note = image_data(tmp)
        base = ["--train_dir", str(train), "--validation_dir", str(val), "--num_threads", "2",
                "--feature_cache_dir", str(cache)]
        label = "image"
        if opts.image_model:
            base += ["--model_name_or_path", opts.image_model]
            label = f"image ({opts.image_model})"
        jobs.append((label, "image_cls", IMAGE_RUNS, base, note, None))
    if opts.only in (None, "text"):
        train, val, test, note = text_data()
        base = ["--train_file", str(train), "--validation_file", str(val), "--label_names", "negative", "positive",
                "--num_threads", "2", "--max_seq_length", "64", "--feature_cache_dir", str(cache)]
        if opts.text_train_samples:
            base += ["--max_train_samples", str(opts.text_train_samples)]
            note += f", train subset {opts.text_train_samples}"
        jobs.append(("text", "text_cls", TEXT_RUNS, base, note, test))

    for modality, recipe, runs, base, note, test in jobs:
        for name, flags in runs.items():
            if opts.strategies and name not in opts.strategies:
                continue
            accs, tests, walls = [], [], []
            for seed in seeds:
                args = [*base, *flags, "--seed", str(seed)]
                if opts.quick:
                    args += ["--max_train_samples", "32", "--max_eval_samples", "32", "--num_train_epochs", "1",
                             "--lp_epochs", "0" if name == "lp_ft" else "1"]
                out = tmp / f"{modality.replace(' ', '_')}-{name}-{seed}"
                results, wall, cmd = run(recipe, args, out)
                accs.append(results["eval_accuracy"])
                walls.append(wall)
                if test is not None:
                    tests.append(score_text_test(out, test, 64 if opts.quick else None))
                commands.append(cmd)
                if not opts.quick:
                    record = {"data": modality, "strategy": name, "seed": seed, "val_accuracy": accs[-1],
                              "test_accuracy": tests[-1] if tests else None, "wall_s": round(wall, 1),
                              "date": datetime.date.today().isoformat(), "dataset": note, "command": cmd}
                    with open(RUNS_FILE, "a") as f:
                        f.write(json.dumps(record) + "\n")
                print(f"{modality:5s} {name:13s} seed {seed}: val {accs[-1]:.4f}"
                      + (f"  test {tests[-1]:.4f}" if tests else "") + f"  {wall:.0f}s", flush=True)
            rows.append((modality, name, accs, tests, walls, note))

    text = print_table(rows)
    if not opts.no_results_file:
        notes = "\n".join(f"- {m}: {note}" for m, *_rest, note in {r[0]: r for r in rows}.values())
        section = (f"\n## Quality benchmark{' (quick smoke check)' if opts.quick else ''}, "
                   f"{datetime.date.today().isoformat()}\n\n"
                   f"Command: `python bench/quality.py {' '.join(sys.argv[1:])}`; machine: {env_note}; seeds {seeds}.\n"
                   f"{notes}\n\n{text}\n\n<details><summary>every run's command</summary>\n\n"
                   + "\n".join(f"    {c}" for c in commands) + "\n\n</details>\n")
        results_file = ROOT / "bench" / "RESULTS.md"
        if not results_file.exists():
            results_file.write_text("# Benchmark results\n")
        with open(results_file, "a") as f:
            f.write(section)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
