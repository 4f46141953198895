"""What a finished run achieved: confusion matrix, per-class table, training curves, transfer gain.

``write_report(output_dir)`` reads the run's ``all_results.json`` and ``eval_predictions.jsonl``
(the exported epoch's predictions) and writes ``confusion_matrix.png``, ``per_class_metrics.csv``
and ``training_curves.png`` next to them; the model card links all three. ``transfer_gain`` compares
the run against from-scratch runs of the same architecture and budget on the same eval examples.

Plots use matplotlib's object API on an Agg canvas (no pyplot state, no display needed), so
reports can be written from worker processes and headless machines alike.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from ..errors import HFTransferError
from ..files import (
    CONFUSION_PNG,
    CURVES_PNG,
    PER_CLASS_CSV,
    PREDICTIONS_NAME,
    RESULTS_NAME,
    RUN_CONFIG_NAME,
    atomic_path,
    read_yaml,
    write_text,
)
from ..records import RunResults, ScratchRun, TransferGain

MAX_ANNOTATED_CLASSES = 20  # beyond this the cell counts are unreadable; colours still tell the story


def read_predictions(path: Path) -> list[dict]:
    if not path.is_file():
        raise HFTransferError(f"'{path}' not found: the report needs the eval predictions of a finished run")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _label_names(results: RunResults, num_labels: int) -> list[str]:
    names = list(results.eval_per_class) or (results.transfer.label_names if results.transfer else [])
    return names if len(names) == num_labels else [str(i) for i in range(num_labels)]


def confusion_matrix(records: list[dict], num_labels: int, multi_label: bool = False) -> np.ndarray:
    """Single-label: ``[true, predicted]`` counts. Multi-label: one row per label of (TP, FN, FP, TN)."""
    if multi_label:
        out = np.zeros((num_labels, 4), dtype=np.int64)
        for r in records:
            y, p = np.asarray(r["label"], dtype=bool), np.asarray(r["prediction"], dtype=bool)
            out[:, 0] += y & p
            out[:, 1] += y & ~p
            out[:, 2] += ~y & p
            out[:, 3] += ~y & ~p
        return out
    out = np.zeros((num_labels, num_labels), dtype=np.int64)
    for r in records:
        out[int(r["label"]), int(r["prediction"])] += 1
    return out


def save_figure(fig, path: Path) -> Path:
    """Render ``fig`` to ``path`` atomically (the format follows the suffix)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def new_figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas: no pyplot global state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_confusion_matrix(matrix: np.ndarray, labels: list[str], path: Path, multi_label: bool = False,
                          title: str = "") -> Path:
    """Counts coloured by row share (recall per true class), so rare classes are as visible as common ones."""
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    n = len(labels)
    side = min(14.0, 2.5 + 0.45 * n)
    fig = new_figure(side if not multi_label else 6.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    fig.colorbar(image, ax=ax, label="share of the row", shrink=0.8)
    columns = ["TP", "FN", "FP", "TN"] if multi_label else labels
    short = [c if len(c) <= 18 else c[:17] + "…" for c in columns]
    ax.set_xticks(range(len(columns)), short, rotation=45 if not multi_label and n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), [c if len(c) <= 18 else c[:17] + "…" for c in labels])
    ax.set_xlabel("" if multi_label else "predicted")
    ax.set_ylabel("label" if multi_label else "true")
    if n <= MAX_ANNOTATED_CLASSES:
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=9,
                        color="white" if share[i, j] > 0.5 else "black")
    # multi-label rows are one label's TP/FN/FP/TN, so any row adds up to the number of examples
    examples = int(matrix[0].sum() if multi_label else matrix.sum())
    ax.set_title(title or f"confusion matrix ({examples} eval examples)")
    return save_figure(fig, path)


def plot_training_curves(history: list[dict], path: Path, best_epoch: int | None = None, phases: list[dict] | None = None,
                         scratch_histories: list[list[dict]] | None = None) -> Path:
    """Loss (train, eval) and eval accuracy/F1 per epoch; phase boundaries and the exported epoch marked."""
    fig = new_figure(10.0, 4.0)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    loss_ax.plot(epochs, [h.get("train_loss") for h in history], "o-", label="train loss")
    loss_ax.plot(epochs, [h.get("eval_loss") for h in history], "s-", label="eval loss")
    acc_ax.plot(epochs, [h.get("eval_accuracy") for h in history], "o-", label="eval accuracy")
    acc_ax.plot(epochs, [h.get("eval_f1") for h in history], "s--", label="eval F1 (macro)", alpha=0.7)
    for k, scratch in enumerate(scratch_histories or []):
        acc_ax.plot([h["epoch"] for h in scratch], [h.get("eval_accuracy") for h in scratch], ":", color="grey",
                    label="from scratch" if k == 0 else None)
    for ax in (loss_ax, acc_ax):
        for phase in (phases or [])[1:]:  # a new phase starts before its first epoch
            ax.axvline(phase["epochs"][0] + 0.5, color="grey", lw=0.8, ls="--")
        if best_epoch and best_epoch > 0:
            ax.axvline(best_epoch, color="tab:green", lw=1.0, alpha=0.6, label="exported epoch" if ax is acc_ax else None)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
    loss_ax.set_title("loss")
    acc_ax.set_title("eval accuracy")
    return save_figure(fig, path)


def write_per_class_csv(per_class: dict, path: Path) -> Path:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["label", "precision", "recall", "f1", "support"])
    for label, m in per_class.items():
        writer.writerow([label, *(f"{m.get(k, 0):.4f}" for k in ("precision", "recall", "f1")), m.get("support", 0)])
    return write_text(path, buffer.getvalue())


def write_report(output_dir: str | Path) -> list[Path]:
    """Write the confusion matrix, per-class table and training curves of a finished run's output_dir."""
    output_dir = Path(output_dir)
    results = RunResults.read(output_dir)
    if results is None:
        raise HFTransferError(f"'{output_dir}' has no {RESULTS_NAME}: write the report of a finished run")
    recipe = results.transfer
    multi_label = bool(recipe and recipe.multi_label)
    records = read_predictions(output_dir / PREDICTIONS_NAME)
    num_labels = (len(results.eval_per_class) or len(recipe.label_names if recipe else [])
                  or 1 + max(int(r["label"]) for r in records))
    labels = _label_names(results, num_labels)
    written = [plot_confusion_matrix(confusion_matrix(records, num_labels, multi_label), labels,
                                     output_dir / CONFUSION_PNG, multi_label)]
    if results.eval_per_class:
        written.append(write_per_class_csv(results.eval_per_class, output_dir / PER_CLASS_CSV))
    if results.history:
        history = [h.to_dict() for h in results.history]
        scratch = [[h.to_dict() for h in s.history] for s in (results.transfer_gain.scratch_runs
                                                              if results.transfer_gain else []) if s.history]
        phases = [p.to_dict() for p in recipe.phases] if recipe else None
        written.append(plot_training_curves(history, output_dir / CURVES_PNG, results.best_epoch, phases, scratch))
    return written


def _correct(records: list[dict]) -> dict[int, float]:
    """Per eval example: 1.0 if predicted right (exact match for multi-label), keyed by example index."""
    return {int(r["index"]): float(np.array_equal(np.asarray(r["label"]), np.asarray(r["prediction"]))) for r in records}


def transfer_gain(pretrained_dir: Path, scratch_dirs: list[Path]) -> TransferGain:
    """Accuracy of the pretrained-init run minus that of same-budget runs from random init.

    The noise margin is two standard errors of the gain: the paired standard error over eval examples
    (both models scored on the same examples) and, with two or more scratch seeds, their seed-to-seed
    spread (taken as the spread of the pretrained run too, which has one seed). Transfer counts as
    negative when the gain does not clear that margin.
    """
    main = _correct(read_predictions(Path(pretrained_dir) / PREDICTIONS_NAME))
    scratch_runs, scratch_correct = [], []
    for d in scratch_dirs:
        res = RunResults.read(d)
        correct = _correct(read_predictions(Path(d) / PREDICTIONS_NAME))
        if set(correct) != set(main):
            raise HFTransferError(f"the scratch run in '{d}' was evaluated on other examples than the pretrained run")
        scratch_correct.append(correct)
        scratch_runs.append(ScratchRun(seed=read_yaml(Path(d) / RUN_CONFIG_NAME).get("seed"),
                                       accuracy=res.metrics["eval_accuracy"], best_epoch=res.best_epoch,
                                       train_runtime=res.train_runtime, history=res.history))
    index = sorted(main)
    pre = np.array([main[i] for i in index])
    scr = np.mean([[c[i] for i in index] for c in scratch_correct], axis=0)
    accs = np.array([s.accuracy for s in scratch_runs])
    gain = float(pre.mean() - accs.mean())
    diff = pre - scr
    se_examples = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    sd_seeds = float(accs.std(ddof=1)) if len(accs) > 1 else 0.0
    noise = math.sqrt(se_examples ** 2 + sd_seeds ** 2 * (1 + 1 / len(accs)))
    margin = 2 * noise
    negative = gain <= margin
    pre_acc = float(pre.mean())
    if gain > margin:
        verdict = "Transfer helped: the gain clears the noise margin."
    elif gain < -margin:
        verdict = "**Negative transfer**: random init did better, beyond the noise margin."
    else:
        verdict = ("**Flagged as negative transfer**: the gain is within the noise margin, so the pretrained start "
                   "shows no measurable benefit here.")
    summary = (f"Fine-tuned from the pretrained weights: accuracy {pre_acc:.4f}. The same architecture trained from "
               f"random init with the same budget ({len(accs)} seed{'s' if len(accs) > 1 else ''}): {accs.mean():.4f}. "
               f"Transfer gain {gain:+.4f} (noise margin ±{margin:.4f}, two standard errors). {verdict}")
    return TransferGain(summary=summary, pretrained_accuracy=pre_acc, scratch_accuracy=float(accs.mean()), gain=gain,
                        noise_margin=margin, se_examples=se_examples, sd_scratch_seeds=sd_seeds,
                        negative_transfer=bool(negative), scratch_seeds=len(accs), scratch_runs=scratch_runs)
