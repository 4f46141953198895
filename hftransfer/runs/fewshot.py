"""``--shots K --shot_draws N``: a few-shot result over N seeded draws of K examples per class.

Draw 0 is the run itself: ``train`` fits, compares and exports it in ``output_dir`` like any run. ``run_draws``
then fits draws 1..N-1, draw d exactly as the run with ``--seed`` seed + d (its own K examples per class, and
its own training randomness; a held-out validation split is held out with that seed too), each into
``output_dir/draws/draw_<d>`` without the extras (no Hub push, ONNX export, from-scratch or source-only twins,
trackers). A draw that a resumed run already finished with the same settings is kept.

Every ``--shots`` run records its draw under ``few_shot`` in its ``all_results.json`` (``record_few_shot``); with
N > 1 the record of ``output_dir`` also holds each draw's eval (and test) accuracy and F1 with their mean, sample
std and the half-width of the 95% Student-t interval, also written to ``few_shot_results.json``.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

from ..config.fewshot_options import FEW_SHOT_METRICS
from ..files import BEST_DIR, DRAWS_DIR, RESULTS_NAME, RUN_CONFIG_NAME, read_json, read_yaml, write_json
from ..records import RunResults

FEW_SHOT_RESULTS_NAME = "few_shot_results.json"
FEW_SHOT_KEY = "few_shot"  # all_results.json's key


def draw_config(cfg, output_dir: Path, draw: int):
    """Draw ``draw``'s run: ``cfg`` with seed + draw, one draw, in ``output_dir/draws/draw_<draw>``, no extras."""
    return dataclasses.replace(
        cfg, seed=cfg.seed + draw, shot_draws=1, output_dir=str(output_dir / DRAWS_DIR / f"draw_{draw}"),
        overwrite_output_dir=True, resume_from_checkpoint=None, checkpointing_steps="no", push_to_hub=False,
        export_onnx=False, compare_scratch=False, compare_source_only=False, report_to=["none"], tune=False)


def draw_done(draw_cfg) -> bool:
    """A resumed run keeps a draw that finished with the same settings."""
    out = Path(draw_cfg.output_dir)
    return (out / RESULTS_NAME).is_file() and read_yaml(out / RUN_CONFIG_NAME) == draw_cfg.to_dict()


def draw_row(draw: int, seed: int, folder: str, results: RunResults) -> dict:
    """One draw's line of the summary: where it is, its training examples and its scores."""
    scores = {**results.metrics, **results.test_metrics}
    return {"draw": draw, "seed": seed, "output_dir": folder, "train_samples": results.train_samples,
            **{name: scores[name] for name in FEW_SHOT_METRICS if scores.get(name) is not None}}


def run_draws(cfg, accelerator, output_dir: Path, results: RunResults | None, fit_draw) -> dict | None:
    """After draw 0 (``results``: its records, on the main process), fit draws 1..N-1 with ``fit_draw(draw_cfg,
    folder)`` (the run's own fit, phases before it included: ``--strategy contrastive`` tunes every draw's backbone on
    that draw's pairs); returns the run's few-shot record (main process; None on the others and without
    ``--shots``), which ``record_few_shot`` writes."""
    if not cfg.shots:
        return None
    main = accelerator.is_main_process
    rows = [draw_row(0, cfg.seed, ".", results)] if main else []
    if cfg.num_draws > 1:
        accelerator.print(f"few-shot: draw 0 of draws 0-{cfg.num_draws - 1} done (seed {cfg.seed}, the exported run)")
    for draw in range(1, cfg.num_draws):
        draw_cfg = draw_config(cfg, output_dir, draw)
        folder = Path(draw_cfg.output_dir)
        if draw_done(draw_cfg):
            accelerator.print(f"few-shot: draw {draw} of draws 0-{cfg.num_draws - 1} already done: {folder}")
            draw_results = RunResults.read(folder) if main else None
        else:
            accelerator.print(f"few-shot: draw {draw} of draws 0-{cfg.num_draws - 1} (seed {draw_cfg.seed}, "
                              f"{cfg.shots} per class) -> {folder}")
            draw_results = fit_draw(draw_cfg, folder)
        if main:
            shutil.rmtree(folder / BEST_DIR, ignore_errors=True)  # the exported copy in the folder is all it needs
            row = draw_row(draw, draw_cfg.seed, str(folder.relative_to(output_dir)), draw_results)
            record_few_shot(folder, draw_record(draw_cfg, row))
            rows.append(row)
    accelerator.wait_for_everyone()
    if not main:
        return None
    if cfg.num_draws == 1:
        return draw_record(cfg, rows[0])
    summary = summarize(cfg, rows)
    write_json(output_dir / FEW_SHOT_RESULTS_NAME, summary)
    accelerator.print(summary["summary"])
    return {**draw_record(cfg, rows[0]), **summary}


def draw_record(cfg, row: dict) -> dict:
    """What a ``--shots`` run records about its own draw."""
    return {"shots": cfg.shots, "draw": row["draw"], "seed": row["seed"], "train_samples": row["train_samples"],
            "head": cfg.head_type, "head_init": cfg.head_init}


def summarize(cfg, rows: list[dict]) -> dict:
    """``few_shot_results.json``: the draws' scores and, per metric every draw has, their mean, sample std and the
    half-width of the 95% Student-t interval (mean ± t(0.975, n-1) * std / sqrt(n))."""
    from scipy.stats import t

    metrics = {}
    for name in FEW_SHOT_METRICS:
        values = [row[name] for row in rows if name in row]
        if len(values) != len(rows):
            continue
        n, mean = len(values), sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        metrics[name] = {"mean": mean, "std": std, "ci95_half_width": float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)}
    shown = [f"{name} {m['mean']:.3f} ± {m['ci95_half_width']:.3f}" for name, m in metrics.items()]
    summary = f"{cfg.shots}-shot over {len(rows)} draws: " + ", ".join([f"{shown[0]} (95% t-interval)", *shown[1:]])
    return {"shots": cfg.shots, "draws": len(rows), "head": cfg.head_type, "head_init": cfg.head_init, "per_draw": rows,
            "metrics": metrics, "summary": summary}


def record_few_shot(output_dir: Path, record: dict | None) -> None:
    """Add ``record`` under ``few_shot`` to ``output_dir``'s ``all_results.json`` (which ``RunResults`` writes
    without it: call this after the last rewrite, before the card and the push)."""
    if record is None:
        return
    path = Path(output_dir) / RESULTS_NAME
    write_json(path, {**read_json(path, {}), FEW_SHOT_KEY: record})
