"""Does ``hftransfer rank`` predict which backbone fine-tunes best? Kendall tau on real image data.

    python bench/rank_validation.py            # hymenoptera + digits, 4 candidates, about 20-30 min on 2 cores
    python bench/rank_validation.py --quick    # smoke check: tiny subsets, records nothing

Candidates: the bundled ImageNet ``tf_efficientnet_lite0/1/2`` and ``random:tf_efficientnet_lite0``
(random init, a sanity floor). Datasets (real photos / scans, offline):

* hymenoptera, full size (``../shared/data``; train 244 / val 153, the placeholder GIF left out),
  or the repo's 160 px copy when the shared folder is missing;
* UCI optical digits as bundled with scikit-learn (1,797 8x8 scans of handwritten digits, 10 classes),
  upscaled to 64 px RGB images, split 50/50 per class with a fixed seed.

For each dataset: ``hftransfer rank`` scores every candidate on the training split, then every
candidate is fine-tuned with the same recipe (the image recipe's default LP-FT job, one seed) and
scored on the validation split. Both share one ``--feature_cache_dir``, so the probe phase reuses
the features the ranking computed. Prints and appends to bench/RESULTS.md the scores, accuracies
and the Kendall tau (tau-b) between each score's ranking and the fine-tuned accuracy.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CANDIDATES = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2", "random:tf_efficientnet_lite0"]


def hymenoptera(tmp: Path) -> tuple[Path, Path, str]:
    src = SHARED / "hymenoptera" / "hymenoptera_data"
    if not src.is_dir():
        src = ROOT / "data" / "hymenoptera_160"
        return src / "train", src / "val", "hymenoptera_160 (bundled; shared full-size set not found)"
    dst = tmp / "hymenoptera"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("imageNotFound.gif"))
    return dst / "train", dst / "val", "hymenoptera full size (train 244 / val 153)"


def digits(tmp: Path, size: int = 64, seed: int = 0) -> tuple[Path, Path, str]:
    """scikit-learn's copy of the UCI optical digits as an image folder, split 50/50 per class."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(seed)
    root = tmp / "digits"
    counts = {"train": 0, "val": 0}
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(data.target == label))
        for split, part in (("train", idx[: len(idx) // 2]), ("val", idx[len(idx) // 2:])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                pixels = (data.images[i] / 16.0 * 255).astype("uint8")
                Image.fromarray(pixels).resize((size, size), Image.BILINEAR).convert("RGB").save(folder / f"{i}.png")
                counts[split] += 1
    return root / "train", root / "val", f"sklearn digits (UCI optdigits), {size} px, train {counts['train']} / val {counts['val']}"


def subset_flags(quick: bool, eval_too: bool = True) -> list[str]:
    return (["--max_train_samples", "40"] + (["--max_eval_samples", "40"] if eval_too else [])) if quick else []


def rank(train: Path, val: Path, out: Path, cache: Path, quick: bool) -> list[dict]:
    # the recipe's data flags (--validation_dir too): the same training split, so the runs share its features
    cmd = [sys.executable, "-m", "hftransfer", "rank", "--candidates", *CANDIDATES, "--train_dir", str(train),
           "--validation_dir", str(val), "--output_dir", str(out), "--feature_cache_dir", str(cache), "--num_threads", "2", *subset_flags(quick, eval_too=False)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"rank failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "rank.json").read_text())["ranking"]


def finetune(candidate: str, train: Path, val: Path, out: Path, cache: Path, quick: bool) -> tuple[float, float, bool, str]:
    """Validation accuracy, wall time, whether the probe loaded the ranking's cached features, command."""
    weights = ["--weights", "random"] if candidate.startswith("random:") else []
    args = ["--model_name_or_path", candidate.removeprefix("random:"), *weights, "--train_dir", str(train),
            "--validation_dir", str(val), "--output_dir", str(out), "--feature_cache_dir", str(cache),
            "--num_threads", "2", "--checkpointing_steps", "no", "--seed", "42", *subset_flags(quick)]
    if quick:
        args += ["--num_train_epochs", "2", "--lp_epochs", "1"]
    start = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "image_cls.py"), *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"fine-tune of {candidate} failed:\n{proc.stderr[-3000:]}")
    results = json.loads((out / "all_results.json").read_text())
    reused = "feature cache: train" in proc.stdout and "loaded" in proc.stdout.split("feature cache: train", 1)[1].split("\n", 1)[0]
    return results["eval_accuracy"], time.time() - start, reused, " ".join(["python", "recipes/image_cls.py", *args])


def kendall_tau(scores: list[float], accuracies: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(scores, accuracies).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40-image subsets, 2 epochs; records nothing")
    parser.add_argument("--only", choices=["hymenoptera", "digits"], default=None)
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hftransfer-rankval-"))
    cache = tmp / "feature_cache"
    sections, commands = [], []
    for name, make in (("hymenoptera", hymenoptera), ("digits", digits)):
        if opts.only and name != opts.only:
            continue
        train, val, note = make(tmp)
        start = time.time()
        ranking = rank(train, val, tmp / f"rank-{name}", cache, opts.quick)
        rank_wall = time.time() - start
        commands.append(f"hftransfer rank --candidates {' '.join(CANDIDATES)} --train_dir <{name}>/train "
                        f"--validation_dir <{name}>/val --feature_cache_dir <cache> --num_threads 2")
        rows = []
        for r in ranking:
            acc, wall, reused, cmd = finetune(r["candidate"], train, val, tmp / f"ft-{name}-{r['rank']}", cache, opts.quick)
            commands.append(cmd.replace(str(tmp), "<tmp>"))
            rows.append({**r, "accuracy": acc, "finetune_s": wall, "reused": reused})
            print(f"{name:11s} {r['candidate']:30s} LogME {r['logme']:8.4f}  H {r['h_score']:7.4f}  "
                  f"fine-tuned val acc {acc:.4f}  ({wall:.0f}s)", flush=True)
        accs = [r["accuracy"] for r in rows]
        taus = {m: kendall_tau([r[m] for r in rows], accs) for m in ("logme", "h_score")}
        pretrained = [r for r in rows if not r["candidate"].startswith("random:")]
        taus_pre = {m: kendall_tau([r[m] for r in pretrained], [r["accuracy"] for r in pretrained])
                    for m in ("logme", "h_score")}
        table = ["| candidate | LogME | H-score | rank s | fine-tuned val accuracy | fine-tune s | probe reused rank's features |",
                 "|---|---|---|---|---|---|---|"]
        table += [f"| {r['candidate']} | {r['logme']:.4f} | {r['h_score']:.4f} | {r['seconds']:.0f} | {r['accuracy']:.4f} | "
                  f"{r['finetune_s']:.0f} | {'yes' if r['reused'] else 'no'} |" for r in rows]
        text = (f"**{name}**: {note}; ranking wall time {rank_wall:.0f} s for {len(rows)} candidates.\n\n" + "\n".join(table)
                + f"\n\nKendall tau (all 4 candidates): LogME {taus['logme']:+.3f}, H-score {taus['h_score']:+.3f}. "
                f"Among the 3 pretrained ones: LogME {taus_pre['logme']:+.3f}, H-score {taus_pre['h_score']:+.3f}.\n")
        print("\n" + text, flush=True)
        sections.append(text)
    if not opts.quick:
        body = (f"\n## Transferability ranking vs fine-tuned accuracy, {datetime.date.today().isoformat()}\n\n"
                f"Command: `python bench/rank_validation.py {' '.join(sys.argv[1:])}`; machine: {os.cpu_count()} cores, "
                f"torch threads 2; fine-tuning: the image recipe's default LP-FT job (10 probe epochs on cached features "
                f"+ 1 full epoch), seed 42, one run per candidate.\n\n" + "\n".join(sections)
                + "\n<details><summary>every command</summary>\n\n" + "\n".join(f"    {c}" for c in commands)
                + "\n\n</details>\n")
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(body)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
