"""Audio transfer on a held-out speaker: an ImageNet CNN on log-mel spectrograms vs the same CNN from scratch vs MFCC +
logistic regression.

    python bench/audio.py --threads 2                 # 3 seeds; appends the table to RESULTS.md with --record
    python bench/audio.py --quick                     # smoke test: 1 seed, 10 clips per digit and speaker, 2 epochs
    python bench/audio.py --report                    # only the table of the recorded runs

Data: the Free Spoken Digit Dataset (``../shared/data/fsdd``: 5 speakers x 10 digits x 50 recordings, 8 kHz).
Seed ``s`` holds out speaker ``HELD_OUT[s]``: its 500 recordings are the **test** split, scored once with the
exported model; the other four speakers' recordings train (``--per_speaker`` per digit), and a seeded stratified
15 % of them is the validation split that chooses the epoch (it mixes the training speakers' voices, so it reads
high: only the test speaker measures transfer to a new voice). Each seed thus differs in its test speaker as well
as its initialisation; the table shows every seed.

Rows (``--rows``), each ``recipes/audio_cls.py`` in a subprocess with explicit flags beside the recipe's defaults
(tf_efficientnet_lite0 with its bundled ImageNet weights, 1 s clips, 64 mel bands, speed perturbation; ``--sampling_rate
8000``, the recordings' own, as the default job):

* ``linear_probe``  frozen ImageNet features (computed once) and a linear head;
* ``lp_ft``         linear probe, then everything fine-tuned (``--lp_epochs`` half the epochs);
* ``full``          everything fine-tuned from the ImageNet weights (the recipe's default strategy);
* ``scratch``       the same architecture and budget as ``full`` from random init (``--weights random``);
* ``mfcc_lr``       20 MFCCs + deltas (mean and std over time) and scikit-learn's logistic regression, no network;
* ``adapt_mcc``     ``full`` plus ``--domain_adaptation mcc`` with the test speaker's recordings as the unlabelled
                    target (``--compare_source_only``: the label-free criterion picks adapted or source-only).

Every finished run is appended to ``bench/audio_runs.jsonl`` at once; a rerun skips the (row, seed) runs recorded
there (``--fresh`` forgets them).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FSDD = ROOT.parent / "shared" / "data" / "fsdd" / "recordings"
RUNS = ROOT / "bench" / "audio_runs.jsonl"
RESULTS = ROOT / "bench" / "RESULTS.md"
SPEAKERS = ("george", "jackson", "nicolas", "theo", "yweweler")
HELD_OUT = ("theo", "jackson", "nicolas")  # seed s tests on HELD_OUT[s]
ROWS = ("linear_probe", "lp_ft", "full", "scratch", "mfcc_lr", "adapt_mcc")
NEURAL = {"linear_probe": ["--strategy", "linear_probe"], "lp_ft": ["--strategy", "lp_ft"],
          "full": ["--strategy", "full"], "scratch": ["--strategy", "full", "--weights", "random"],
          "adapt_mcc": ["--strategy", "full", "--domain_adaptation", "mcc", "--compare_source_only", "true"]}


def write_split(work: Path, held_out: str, per_speaker: int) -> Path:
    """Symlinked class folders: ``train/<digit>`` (the other speakers, ``per_speaker`` recordings per digit each) and
    ``test/<digit>`` (every recording of ``held_out``)."""
    root = work / f"fsdd-{held_out}-{per_speaker}"
    if (root / "done").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for wav in sorted(FSDD.glob("*.wav")):
        digit, speaker, index = wav.stem.split("_")
        if speaker == held_out:
            split = "test"
        elif int(index) < per_speaker:
            split = "train"
        else:
            continue
        (root / split / digit).mkdir(parents=True, exist_ok=True)
        (root / split / digit / wav.name).symlink_to(wav)
    (root / "done").write_text("")
    return root


def run_recipe(row: str, seed: int, split: Path, out: Path, threads: int, epochs: int) -> dict:
    args = ["recipes/audio_cls.py", "--train_dir", split / "train", "--test_dir", split / "test",
            "--validation_fraction", "0.15", "--num_train_epochs", str(epochs), "--seed", str(seed),
            "--output_dir", out, "--overwrite_output_dir", "--num_threads", str(threads),
            "--checkpointing_steps", "no", "--sampling_rate", "8000", *NEURAL[row]]
    if row == "lp_ft":
        args += ["--lp_epochs", str(max(1, epochs // 2))]
    if row == "adapt_mcc":
        args += ["--target_train_dir", split / "test", "--target_test_dir", split / "test"]
    args = list(map(str, args))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "HF_DATASETS_CACHE": str(out.parent / f"datasets-{out.name}")}
    start = time.time()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{row} seed {seed} failed:\n{proc.stderr[-3000:]}")
    results = json.loads((out / "all_results.json").read_text())
    row_out = {"test_accuracy": results["test_accuracy"], "eval_accuracy": results.get("eval_accuracy"),
               "best_epoch": results.get("best_epoch"), "wall_s": time.time() - start,
               "command": "python " + " ".join(args)}
    da = results.get("domain_adaptation") or {}
    if da:
        row_out["exported"] = da.get("exported")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.parent / f"datasets-{out.name}", ignore_errors=True)
    return row_out


def mfcc_features(path: Path, rate: int = 8000) -> np.ndarray:
    """80 values per clip: 20 MFCCs (25 ms Hann frames, 10 ms hop, 40 mel bands) and their deltas, each averaged over
    time, plus their standard deviations (80 in all)."""
    import scipy.fft
    import soundfile
    from transformers.audio_utils import mel_filter_bank

    wave, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    assert sr == rate, (path, sr)
    n_fft, hop = 256, rate // 100
    wave = np.pad(wave, (n_fft // 2, n_fft // 2))
    frames = np.lib.stride_tricks.sliding_window_view(wave, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = power @ mel_filter_bank(n_fft // 2 + 1, 40, 0.0, rate / 2, rate, norm="slaney", mel_scale="slaney")
    mfcc = scipy.fft.dct(np.log(mel + 1e-10), type=2, axis=1, norm="ortho")[:, :20]
    delta = np.gradient(mfcc, axis=0) if len(mfcc) > 1 else np.zeros_like(mfcc)
    both = np.concatenate([mfcc, delta], axis=1)
    return np.concatenate([both.mean(axis=0), both.std(axis=0)])


def run_mfcc(seed: int, split: Path) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.time()
    data = {}
    for name in ("train", "test"):
        files = sorted((split / name).glob("*/*.wav"))
        data[name] = (np.stack([mfcc_features(f) for f in files]), np.array([f.parent.name for f in files]))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))
    model.fit(*data["train"])
    accuracy = float((model.predict(data["test"][0]) == data["test"][1]).mean())
    return {"test_accuracy": accuracy, "eval_accuracy": None, "best_epoch": None, "wall_s": time.time() - start,
            "command": "bench/audio.py mfcc_features + StandardScaler + LogisticRegression(max_iter=5000)"}


def table(rows: list[dict]) -> list[str]:
    seeds = sorted({r["seed"] for r in rows})
    speakers = [HELD_OUT[s] for s in seeds]
    lines = [f"| row | test accuracy, held-out speaker (mean ± sd) | per seed ({' / '.join(speakers)}) | "
             "validation accuracy (mean; chose the epoch) | wall s (mean) |", "|---|---|---|---|---|"]
    for name in ROWS:
        group = sorted((r for r in rows if r["row"] == name), key=lambda r: r["seed"])
        if not group:
            continue
        acc = [r["test_accuracy"] for r in group]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        evals = [r["eval_accuracy"] for r in group if r["eval_accuracy"] is not None]
        shown = f"{statistics.mean(evals):.4f}" if evals else ""
        exported = [r.get("exported") for r in group if r.get("exported")]
        note = f" (exported: {', '.join(exported)})" if exported else ""
        lines.append(f"| {name}{note} | {statistics.mean(acc):.4f} ± {sd:.4f} | "
                     f"{' / '.join(f'{a:.3f}' for a in acc)} | {shown} | "
                     f"{statistics.mean(r['wall_s'] for r in group):.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--per_speaker", type=int, default=20, help="training recordings per digit and speaker")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="/tmp/hftransfer-audio-bench")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    if not FSDD.is_dir():
        raise SystemExit(f"the FSDD recordings are not at {FSDD}")
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    per_speaker, epochs = (10, 2) if args.quick else (args.per_speaker, args.epochs)
    runs_file = RUNS.with_suffix(".quick.jsonl") if args.quick else RUNS
    if args.fresh:
        runs_file.unlink(missing_ok=True)
    rows = [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.exists() else []
    done = {(r["row"], r["seed"]) for r in rows}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for seed in seeds if not args.report else []:
        split = write_split(work, HELD_OUT[seed], per_speaker)
        for name in args.rows.split(","):
            if (name, seed) in done:
                continue
            result = run_mfcc(seed, split) if name == "mfcc_lr" else run_recipe(
                name, seed, split, work / f"{name}-{seed}", args.threads, epochs)
            row = {"row": name, "seed": seed, "held_out": HELD_OUT[seed], "per_speaker": per_speaker,
                   "epochs": epochs, **result}
            with runs_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
            print(f"{name:13s} seed {seed} ({HELD_OUT[seed]}): test {row['test_accuracy']:.4f}, "
                  f"wall {row['wall_s']:.0f}s", flush=True)
    rows = [r for r in rows if r["seed"] in seeds]
    lines = table(rows)
    print("\n".join(lines))
    if not args.record or args.quick:
        return
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, {args.threads} torch threads"
    section = [f"\n## Audio: transfer to a held-out speaker (FSDD), {dt.date.today().isoformat()}\n",
               f"Command: `python bench/audio.py --seeds {args.seeds} --per_speaker {per_speaker} --epochs {epochs} "
               f"--threads {args.threads} --record`. Machine: {machine}. Train: 4 speakers x 10 digits x {per_speaker} "
               "recordings (15 % of them, seeded and stratified, validate and choose the epoch); test: every recording "
               "of the held-out speaker, scored once. Per-run commands: `bench/audio_runs.jsonl`.\n", *lines, ""]
    with RESULTS.open("a") as f:
        f.write("\n".join(section) + "\n")


if __name__ == "__main__":
    main()
