"""Did transfer help? The same architecture trained from random init with the same budget.

``compare_with_scratch`` trains ``scratch_seeds`` from-scratch twins of a finished run on the same
data split (same eval examples), keeps any that a resumed run already finished, and adds the
transfer gain (``report.transfer_gain``) to the run's ``all_results.json``.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from ..evaluation.report import transfer_gain
from ..files import BEST_DIR, PREDICTIONS_NAME, RESULTS_NAME, RUN_CONFIG_NAME, SCRATCH_DIR, read_yaml
from ..records import RunResults
from ..training.loop import fit


def scratch_config(cfg, output_dir: Path, k: int):
    """The from-scratch twin of ``cfg``: same architecture, head, data, epochs, batch and augmentation;
    random init, every layer training (BatchNorm statistics included) at ``scratch_learning_rate``."""
    seed = cfg.seed + k
    return dataclasses.replace(
        cfg, weights="random", strategy="full", learning_rate=cfg.scratch_learning_rate,
        head_learning_rate=cfg.scratch_learning_rate, layer_decay=1.0, l2sp_alpha=0.0, l2sp_beta=0.0,
        train_norm=False, bn_stats="frozen", feature_cache="off", seed=seed,
        output_dir=str(output_dir / SCRATCH_DIR / f"seed_{seed}"), overwrite_output_dir=True,
        resume_from_checkpoint=None, checkpointing_steps="no", push_to_hub=False, compare_scratch=False)


def scratch_run_done(scratch_cfg) -> bool:
    """A resumed run keeps a from-scratch run that finished with the same settings."""
    out = Path(scratch_cfg.output_dir)
    if not (out / RESULTS_NAME).is_file() or not (out / PREDICTIONS_NAME).is_file():
        return False
    return read_yaml(out / RUN_CONFIG_NAME) == scratch_cfg.to_dict()


def compare_with_scratch(cfg, modality: str, accelerator, output_dir: Path, threads: int,
                         results: RunResults | None, stop=None) -> None:
    """Train (or reuse) the from-scratch twins, then record the transfer gain in ``results`` and on disk."""
    scratch_dirs = []
    for k in range(cfg.scratch_seeds):
        scratch_cfg = scratch_config(cfg, output_dir, k)
        scratch_dirs.append(Path(scratch_cfg.output_dir))
        if scratch_run_done(scratch_cfg):
            accelerator.print(f"from-scratch run {k + 1}/{cfg.scratch_seeds} already done: {scratch_cfg.output_dir}")
            continue
        accelerator.print(f"from-scratch run {k + 1}/{cfg.scratch_seeds} (random init, seed {scratch_cfg.seed}, "
                          f"same budget) -> {scratch_cfg.output_dir}")
        # overwrite_output_dir: an unfinished earlier attempt is replaced once this one has loaded
        fit(scratch_cfg, modality, accelerator, Path(scratch_cfg.output_dir), threads, data_seed=cfg.seed, stop=stop)
        if accelerator.is_main_process:  # no resume for scratch runs: the exported copy is all that is needed
            shutil.rmtree(Path(scratch_cfg.output_dir) / BEST_DIR, ignore_errors=True)
    if accelerator.is_main_process:
        results.transfer_gain = transfer_gain(output_dir, scratch_dirs)
        results.write(output_dir)
        accelerator.print(results.transfer_gain.summary.replace("**", ""))
