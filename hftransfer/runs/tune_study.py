"""The Optuna side of ``--tune`` (main process only): the SQLite study, what counts against the budget, and
trials a crash or a signal cut short.

A study remembers the recipe it searches around (``fingerprint``): a resumed study refuses another one. A
trial left ``RUNNING`` by a killed process, or stopped by SIGTERM, is marked failed, listed in the study's
``interrupted`` attribute (so it does not count against ``--tune_trials``) and enqueued again with the same
parameters. The sampler is seeded with ``--seed`` plus the trials the study already has, so a resumed study
does not draw again the random start-up trials it drew before the interruption.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..config import TrainConfig
from ..errors import HFTransferError
from ..files import TUNE_STUDY_NAME

STUDY_NAME = "hftransfer"
N_STARTUP_TRIALS = 5  # random trials before TPE models the results (the two enqueued ones among them)
PRUNER = "Hyperband over evaluations (min 1, reduction factor 3)"
# options that do not change what a trial learns: a resumed study may be given other values
RUN_ONLY_KEYS = (
    "config", "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "tune_trials", "tune_timeout",
    "num_threads", "dataloader_num_workers", "feature_cache_dir", "per_device_eval_batch_size", "checkpointing_steps",
    "save_total_limit", "ddp_timeout", "do_predict", "compare_scratch", "scratch_learning_rate", "scratch_seeds",
    "compare_source_only", "report_to", "run_name", "project", "logging_dir", "logging_steps", "push_to_hub",
    "hub_model_id", "hub_private", "hub_revision", "hub_create_pr", "export_onnx", "quantize", "onnx_opset",
    "max_int8_accuracy_drop")
AUTO_KEYS = ("model_name_or_path", "weights", "candidates")  # under auto the ranked candidates stand for them


def fingerprint(cfg: TrainConfig, backbones: list[str]) -> str:
    """What the study searches around: a resumed study must be given the same recipe."""
    skipped = RUN_ONLY_KEYS + (AUTO_KEYS if backbones else ())
    values = {k: v for k, v in cfg.to_dict().items() if k not in skipped}
    return json.dumps({**values, "auto_candidates": sorted(backbones)}, sort_keys=True, default=str)


def open_study(cfg: TrainConfig, tune_dir: Path, recipe: str):
    """The study in ``tune_dir``: a new one, or the earlier one when resuming (refused for another recipe)."""
    import optuna

    path = tune_dir / TUNE_STUDY_NAME
    if path.exists() and not cfg.resume_from_checkpoint:
        if not cfg.overwrite_output_dir:
            raise HFTransferError(f"'{tune_dir}' holds an interrupted --tune study: pass --resume_from_checkpoint "
                                  "latest to continue it, or --overwrite_output_dir to start a new one")
        shutil.rmtree(tune_dir)
    tune_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{path.resolve()}"
    direction = "maximize" if cfg.best_metric[1] else "minimize"
    earlier = None
    if path.exists() and STUDY_NAME in optuna.get_all_study_names(storage):
        earlier = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    if earlier is not None and earlier.user_attrs.get("recipe", recipe) != recipe:
        changed = changed_options(json.loads(earlier.user_attrs["recipe"]), json.loads(recipe))
        raise HFTransferError(f"the --tune study in '{tune_dir}' searched another recipe ({', '.join(changed)} "
                              "changed): pass the same options to continue it, or start a new study with "
                              "--overwrite_output_dir")
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction, load_if_exists=True,
                                pruner=optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3))
    # seeded by how far the study got, so a resumed study does not draw the start-up trials it drew before
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.get_trials(deepcopy=False)),
                                               n_startup_trials=N_STARTUP_TRIALS)
    return study


def changed_options(before: dict, now: dict) -> list[str]:
    names = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    return [f"--{name}" for name in names[:3]] + (["..."] if len(names) > 3 else [])


def trial_state(name: str):
    import optuna

    return getattr(optuna.trial.TrialState, name)


def counted_trials(study) -> int:
    """Trials that count against ``--tune_trials``: every finished one but those a crash cut short (run again)."""
    interrupted = set(study.user_attrs.get("interrupted", []))
    finished = (trial_state("COMPLETE"), trial_state("PRUNED"), trial_state("FAIL"))
    return sum(t.state in finished and t.number not in interrupted for t in study.get_trials(deepcopy=False))


def requeue(study, number: int) -> None:
    """Mark trial ``number`` failed (a crash or a signal cut it short) and enqueue its parameters again."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    study.tell(number, state=trial_state("FAIL"), skip_if_finished=True)
    study.set_user_attr("interrupted", sorted({*study.user_attrs.get("interrupted", []), number}))
    study.enqueue_trial(dict(trial.params), user_attrs={"origin": trial.user_attrs.get("origin", "search"),
                                                        "rerun_of": trial.user_attrs.get("rerun_of", number)})


def best_trial(study):
    """The best complete trial, or None; ties go to the earliest (the user's recipe is trial 0)."""
    complete = study.get_trials(deepcopy=False, states=(trial_state("COMPLETE"),))
    sign = -1 if study.direction.name == "MAXIMIZE" else 1
    return min(complete, key=lambda t: (sign * t.value, t.number)) if complete else None
