"""Few-shot classification: hftransfer's plain fine-tune, prototype head and contrastive (SetFit-style) strategy
against the setfit library itself, on the same model, the same K-shot draws and the same evaluation examples;
for images the same rows with the episodic (prototypical) strategy in setfit's place.

    python bench/fewshot.py                        # K = 8, 16; 3 draws; rows appended to bench/fewshot_runs.jsonl
    python bench/fewshot.py --report --record      # the table, appended to bench/RESULTS.md
    python bench/fewshot.py --modality image       # hymenoptera; rows in bench/fewshot_image_runs.jsonl

Images: the bundled ants/bees photos (data/hymenoptera_160): K photos per class drawn from its 244 training photos,
its 153 validation photos split once (seeded) into 76 that choose the epoch and 77 that score every row once.
Model: tf_efficientnet_lite0 (the bundled ImageNet checkpoint). Rows: ``full`` (the recipe's LP-FT defaults),
``prototypes``, ``contrastive`` (5 positive + 5 negative pairs per photo: images cost more than sentences) and
``episodic`` (30 prototypical episodes at lr 1e-4), each with ``--head_init prototypes`` but ``full``; every row
at 160 px (``--image_size 160``, the photos' own size) to halve the cost on 2 CPU cores.

Data: the bundled rotten-tomatoes sentences (data/rt_polarity): K examples per class drawn from its 3,000 training
sentences by hftransfer's own draw (``data.shots``, seed = draw), a fixed seeded subset of ``--eval_samples``
validation sentences chooses the epoch of the hftransfer rows, and all 1,066 test sentences score every row once.
Model: all-MiniLM-L6-v2 (the bundled offline checkpoint) everywhere. Rows:

* ``full``: ``recipes/text_cls.py --shots K`` with the recipe's defaults (full fine-tune, 3 epochs, batch 32);
* ``prototypes``: ``--strategy linear_probe --head_init prototypes`` (the frozen encoder, a cosine head that starts
  at the class means);
* ``contrastive``: ``--strategy contrastive --head_init prototypes --per_device_train_batch_size 16`` (20 positive
  + 20 negative label pairs per example, 1 epoch at lr 2e-5, then the head);
* ``setfit``: ``setfit.Trainer`` with the same pairs budget (``num_iterations=20``, 1 epoch, batch 16, body lr
  2e-5) and its default logistic-regression head. Equal compute with ``contrastive`` in the pair phase.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "rt_polarity"
RUNS = ROOT / "bench" / "fewshot_runs.jsonl"
IMAGES = ROOT / "data" / "hymenoptera_160"
IMAGE_METHODS = ("full", "prototypes", "contrastive", "episodic")
IMAGE_FLAGS = {"full": [], "prototypes": ["--strategy", "linear_probe", "--head_init", "prototypes"],
               "contrastive": ["--strategy", "contrastive", "--head_init", "prototypes", "--contrastive_iterations",
                               "5", "--per_device_train_batch_size", "16"],
               "episodic": ["--strategy", "episodic", "--head_init", "prototypes", "--episodes", "30"]}
RESULTS = ROOT / "bench" / "RESULTS.md"
METHODS = ("full", "prototypes", "contrastive", "setfit")
RECIPE_FLAGS = {"full": [], "prototypes": ["--strategy", "linear_probe", "--head_init", "prototypes"],
                "contrastive": ["--strategy", "contrastive", "--head_init", "prototypes",
                                "--per_device_train_batch_size", "16"]}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def eval_file(work: Path, samples: int) -> Path:
    """A fixed seeded subset of the validation sentences: every row and every draw chooses on the same ones."""
    rows = read_jsonl(DATA / "validation.jsonl")
    random.Random(0).shuffle(rows)
    path = work / f"validation_{samples}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:samples]))
    return path


def image_splits(work: Path) -> tuple[Path, Path]:
    """The 153 validation photos split once, seeded: (76 that choose the epoch, 77 that score), as class folders of
    links."""
    choose, score = work / "images_validation", work / "images_test"
    if not score.is_dir():
        for cls in sorted(p.name for p in (IMAGES / "val").iterdir()):
            photos = sorted((IMAGES / "val" / cls).iterdir())
            random.Random(0).shuffle(photos)
            for folder, part in ((choose, photos[: len(photos) // 2]), (score, photos[len(photos) // 2:])):
                (folder / cls).mkdir(parents=True, exist_ok=True)
                for photo in part:
                    (folder / cls / photo.name).symlink_to(photo)
    return choose, score


def hftransfer_run(method: str, shots: int, draw: int, work: Path, validation: Path, threads: int,
                   modality: str = "text") -> dict:
    out = work / f"{modality}_{method}_k{shots}_d{draw}"
    if modality == "image":
        choose, score = image_splits(work)
        # 160 px, the bundled photos' size (not the model's 224): every row costs half, on 2 CPU cores
        data = ["--train_dir", str(IMAGES / "train"), "--validation_dir", str(choose), "--test_dir", str(score),
                "--image_size", "160"]
    else:
        data = ["--train_file", str(DATA / "train.jsonl"), "--validation_file", str(validation), "--test_file",
                str(DATA / "test.jsonl")]
    flags = (IMAGE_FLAGS if modality == "image" else RECIPE_FLAGS)[method]
    cmd = [sys.executable, str(ROOT / "recipes" / f"{modality}_cls.py"), *data, "--shots", str(shots),
           "--shot_draws", "1", "--seed", str(draw), "--output_dir", str(out), "--overwrite_output_dir", "true",
           "--num_threads", str(threads), "--report_to", "none", "--save_total_limit", "0", *flags]
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} K={shots} draw {draw} failed:\n{proc.stderr[-3000:]}")
    results = json.loads((out / "all_results.json").read_text())
    return {"test_accuracy": results["test_accuracy"], "eval_accuracy": results["eval_accuracy"],
            "wall_s": time.time() - started, "command": " ".join(cmd[1:]).replace(str(ROOT) + "/", "")}


def setfit_run(shots: int, draw: int, work: Path, threads: int) -> dict:
    """The setfit library on hftransfer's draw of the same examples (``data.shots.draw_shots``, seed = draw)."""
    import torch
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from hftransfer.config import TrainConfig
    from hftransfer.data.shots import draw_shots
    from hftransfer.models.bundled import bundled_text_model_path
    from hftransfer.training.inputs import load_data

    torch.set_num_threads(threads)
    cfg = TrainConfig(train_file=str(DATA / "train.jsonl"), validation_file=str(DATA / "validation.jsonl"),
                      seed=draw)
    bundle = load_data(cfg, "text")
    train = draw_shots(bundle.train, shots, draw, bundle.id2label, False)
    texts, labels = list(train[bundle.input_column]), [int(x) for x in train["labels"]]
    names = [bundle.id2label[i] for i in range(len(bundle.id2label))]  # hftransfer's label order
    test = read_jsonl(DATA / "test.jsonl")
    started = time.time()
    model = SetFitModel.from_pretrained(str(bundled_text_model_path("all-MiniLM-L6-v2")))
    args = TrainingArguments(output_dir=str(work / f"setfit_k{shots}_d{draw}"), num_iterations=20, num_epochs=1,
                             batch_size=16, body_learning_rate=2e-5, seed=draw,
                             report_to="none", eval_strategy="no", save_strategy="no")
    Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts, "label": labels})).train()
    predicted = model.predict([r["text"] for r in test], as_numpy=True)
    truth = [names.index(str(r["label"])) if str(r["label"]) in names else int(r["label"]) for r in test]
    accuracy = sum(int(p) == t for p, t in zip(predicted, truth)) / len(test)
    return {"test_accuracy": accuracy, "wall_s": time.time() - started,
            "command": f"setfit.Trainer(num_iterations=20, num_epochs=1, batch_size=16, body_learning_rate=2e-5, "
                       f"seed={draw}) on hftransfer's draw"}


def runs_file(modality: str) -> Path:
    return RUNS if modality == "text" else RUNS.with_name("fewshot_image_runs.jsonl")


def recorded(modality: str = "text") -> list[dict]:
    return read_jsonl(runs_file(modality)) if runs_file(modality).is_file() else []


def table(rows: list[dict], shots: list[int], methods=METHODS) -> list[str]:
    lines = ["| K per class | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for k in shots:
        cells = []
        for method in methods:
            accs = [r["test_accuracy"] for r in rows if r["method"] == method and r["shots"] == k]
            if not accs:
                cells.append("")
                continue
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.3f} ± {sd:.3f} ({' / '.join(f'{a:.3f}' for a in accs)})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", default="8,16")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--methods", default=None, help="default: every row of the modality")
    parser.add_argument("--modality", default="text", choices=("text", "image"))
    parser.add_argument("--eval_samples", type=int, default=500)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work_dir", default="/tmp/hftransfer_fewshot_bench")
    parser.add_argument("--report", action="store_true", help="only print (and record) the table of recorded runs")
    parser.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    shots = [int(k) for k in args.shots.split(",")]
    methods = tuple(args.methods.split(",")) if args.methods else (IMAGE_METHODS if args.modality == "image" else
                                                                    METHODS)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if not args.report:
        validation = eval_file(work, args.eval_samples)
        done = {(r["method"], r["shots"], r["draw"]) for r in recorded(args.modality)}
        for k in shots:
            for draw in range(args.draws):
                for method in methods:
                    if (method, k, draw) in done:
                        continue
                    row = (setfit_run(k, draw, work, args.threads) if method == "setfit"
                           else hftransfer_run(method, k, draw, work, validation, args.threads, args.modality))
                    row = {"method": method, "shots": k, "draw": draw, **row}
                    print(f"K={k} draw {draw} {method:12s} test accuracy {row['test_accuracy']:.4f} "
                          f"({row['wall_s']:.0f}s)", flush=True)
                    with runs_file(args.modality).open("a") as f:
                        f.write(json.dumps(row) + "\n")
    rows = recorded(args.modality)
    lines = table(rows, shots, methods)
    print("\n".join(lines))
    if args.record and args.modality == "image":
        record_image_table(args, rows, lines, methods)
    elif args.record:
        walls = {m: statistics.mean([r["wall_s"] for r in rows if r["method"] == m] or [0]) for m in METHODS}
        section = [f"\n## Few-shot text classification: hftransfer vs setfit, {dt.date.today().isoformat()}\n",
                   f"Command: `python bench/fewshot.py --shots {args.shots} --draws {args.draws} --eval_samples "
                   f"{args.eval_samples}`. Machine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} torch "
                   "threads, one run at a time. Data: rt_polarity (bundled): K training sentences per class drawn by "
                   "hftransfer's `--shots` draw (seed = draw, the same examples for every row), the epoch of the "
                   f"hftransfer rows chosen on a fixed {args.eval_samples}-sentence validation subset, test accuracy "
                   "on all 1,066 test sentences. Model: all-MiniLM-L6-v2. Cells: mean ± sd over draws (per draw). "
                   "Mean wall time per run: " + ", ".join(f"{m} {w:.0f} s" for m, w in walls.items()) + ".\n",
                   *lines, ""]
        with RESULTS.open("a") as f:
            f.write("\n".join(section) + "\n")
        print(f"recorded in {RESULTS}")


def record_image_table(args, rows: list[dict], lines: list[str], methods) -> None:
    walls = {m: statistics.mean([r["wall_s"] for r in rows if r["method"] == m] or [0]) for m in methods}
    section = [f"\n## Few-shot image classification: full fine-tune vs prototype head vs contrastive vs episodic, "
               f"{dt.date.today().isoformat()}\n",
               f"Command: `python bench/fewshot.py --modality image --shots {args.shots} --draws {args.draws}`. "
               f"Machine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads, one run at a time. Data: "
               "hymenoptera (bundled, 160 px, trained and scored at 160 px): K training photos per class drawn by hftransfer's `--shots` draw "
               "(seed = draw, the same photos for every row); the 153 validation photos split once (seeded) into 76 "
               "that choose the epoch and 77 that score each row once (test accuracy below). Model: "
               "tf_efficientnet_lite0 (ImageNet). Cells: mean ± sd over draws (per draw). Mean wall time per run: "
               + ", ".join(f"{m} {w:.0f} s" for m, w in walls.items()) + ".\n", *lines, ""]
    with RESULTS.open("a") as f:
        f.write("\n".join(section) + "\n")
    print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
