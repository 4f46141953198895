"""``--model_name_or_path auto``: rank the candidate backbones on the training split, fine-tune the best.

``choose_backbone`` runs before ``fit``. It scores every candidate (``TrainConfig.auto_candidates``:
the installed bundled checkpoints of the modality plus ``--candidates``) with the ranker of
``hftransfer rank`` on the training split only: validation examples never influence the choice.
The features go to ``--feature_cache_dir`` (default ``output_dir/feature_cache``) under the same keys
the recipe's feature cache uses, so the linear-probe epochs that follow load the chosen backbone's
features instead of recomputing them.

The rule (``select``): the highest ``--auto_metric`` (default H-score) among the candidates that are
not ``random:`` floors; ties go to the other score. H-score is the default because in
``bench/RESULTS.md`` it kept its order when the training split was resampled (LogME swapped lite1 and
lite2) and it ordered the pretrained backbones correctly on digits (LogME did not). Whether LogME
agrees is recorded; a ``random:`` floor that scores as high as the pick is a warning that transfer
may not help (``--compare_scratch`` measures it).

The main process's choice is broadcast, so every rank fine-tunes the same backbone. The choice is
written to ``output_dir/backbone_choice.json`` before the first epoch; ``--resume_from_checkpoint``
reuses it instead of ranking again, so a resumed run can never switch backbones.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import TrainConfig
from ..config.options import AUTO_METRICS, RANDOM_PREFIX
from ..errors import HFTransferError
from ..files import FEATURE_CACHE_DIR
from ..records import BackboneChoice
from ..training.inputs import load_data
from ..training.runtime import from_main_process
from .rank import check_modalities, format_table, parse_candidate, score_candidates

METRIC_NAMES = {"h_score": "H-score", "logme": "LogME"}


def choose_backbone(cfg: TrainConfig, modality: str, accelerator, output_dir: Path) -> tuple[TrainConfig, BackboneChoice]:
    """The config that fine-tunes the chosen backbone, and how it was chosen (ranked now, or reused on resume)."""
    specs = cfg.auto_candidates(modality)
    cache_dir = cfg.feature_cache_dir or str(output_dir / FEATURE_CACHE_DIR)
    if cfg.resume_from_checkpoint:
        recorded = BackboneChoice.read(output_dir)
        if recorded is not None:
            if recorded.candidates != specs or recorded.metric != cfg.auto_metric:
                raise HFTransferError(
                    f"this run chose {recorded.chosen} by {recorded.metric} among {', '.join(recorded.candidates)}; "
                    f"resuming with other candidates or --auto_metric could switch backbones: pass the same ones, "
                    f"or start afresh with --overwrite_output_dir")
            accelerator.print(f"backbone: {recorded.chosen}, as chosen before the interruption ({recorded.reason})")
            return resolved_config(cfg, recorded, cache_dir), recorded
    candidates = [parse_candidate(spec) for spec in specs]
    check_modalities(candidates, modality)
    ranked_cfg = dataclasses.replace(cfg, feature_cache_dir=cache_dir)
    with accelerator.main_process_first():
        bundle = load_data(ranked_cfg, modality)
    rows = score_candidates(accelerator, candidates, bundle, lambda c: training_config(ranked_cfg, c.name, c.weights),
                            key=cfg.auto_metric)
    choice = from_main_process(accelerator, select(rows, cfg.auto_metric, specs))
    names = {c.spec: c for c in candidates}
    choice.name, choice.weights = names[choice.chosen].name, names[choice.chosen].weights
    choice.train_samples = len(bundle.train)
    accelerator.print(format_table(choice.ranking))
    accelerator.print(f"backbone: {choice.reason}")
    if choice.warning:
        accelerator.print(f"warning: {choice.warning}")
    return resolved_config(cfg, choice, cache_dir), choice


def training_config(cfg: TrainConfig, name: str, weights: str) -> TrainConfig:
    """``cfg`` fine-tuning one backbone: what the run trains, and what keys a candidate's cached features."""
    return dataclasses.replace(cfg, model_name_or_path=name, weights=weights, candidates=[])


def resolved_config(cfg: TrainConfig, choice: BackboneChoice, cache_dir: str) -> TrainConfig:
    """The run's config once the backbone is chosen: ``config.yaml`` then reruns that backbone as it is."""
    return dataclasses.replace(training_config(cfg, choice.name, choice.weights), feature_cache_dir=cache_dir)


def select(rows: list[dict], metric: str, candidates: list[str]) -> BackboneChoice:
    """Apply the rule to ``rank_backbones``-style rows: the highest ``metric`` among non-``random:`` candidates,
    ties broken by the other score. ``candidates`` is the ranked list as given (recorded for resume)."""
    if metric not in AUTO_METRICS:
        raise HFTransferError(f"unknown auto_metric '{metric}': use one of {', '.join(AUTO_METRICS)}")
    other = next(m for m in AUTO_METRICS if m != metric)
    choosable = [r for r in rows if not r["candidate"].startswith(RANDOM_PREFIX)]
    if len(choosable) < 2:
        raise HFTransferError(f"--model_name_or_path auto needs at least two candidates to choose from, got "
                              f"{len(choosable)}: add backbones with --candidates NAME [NAME ...]")
    ordered = sorted(rows, key=lambda r: (r[metric], r[other]), reverse=True)
    ranking = [{**r, "rank": i} for i, r in enumerate(ordered, 1)]
    best = max(choosable, key=lambda r: (r[metric], r[other]))
    runner_up = max((r for r in choosable if r is not best), key=lambda r: (r[metric], r[other]))
    other_best = max(choosable, key=lambda r: (r[other], r[metric]))
    agrees = other_best is best
    name, other_name = METRIC_NAMES[metric], METRIC_NAMES[other]
    top, next_ = distinct(best[metric], runner_up[metric])
    reason = f"{best['candidate']}: highest {name} on the training split ({top}, next {runner_up['candidate']} {next_}); "
    if agrees:
        reason += f"{other_name} agrees"
    else:
        theirs, ours = distinct(other_best[other], best[other])
        reason += f"{other_name} prefers {other_best['candidate']} ({theirs} vs {ours}), {name} decides"
    floors = [r for r in rows if r["candidate"].startswith(RANDOM_PREFIX) and r[metric] >= best[metric]]
    warning = (f"the random-init floor {floors[0]['candidate']} scores as high as {best['candidate']} by {name}: "
               "transfer may not help on this data (--compare_scratch measures it)") if floors else None
    return BackboneChoice(metric=metric, candidates=list(candidates), ranking=ranking, chosen=best["candidate"],
                          agrees=agrees, reason=reason, warning=warning)


def distinct(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` with 4 decimals, or as many more as it takes to show that they differ."""
    for digits in range(4, 12):
        if f"{a:.{digits}f}" != f"{b:.{digits}f}":
            break
    return f"{a:.{digits}f}", f"{b:.{digits}f}"
