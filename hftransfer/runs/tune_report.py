"""What a ``--tune`` study found, as files: the trials and the best one as data (``tune_results.json``), the
parameter importances as a bar chart (``tune_importance.png``) and the chosen recipe as a config that repeats
the run without search (``best_recipe.yaml``).

They are written into ``output_dir/tune/`` when the search ends, before the final run replaces what an earlier
run left in ``output_dir``; ``publish_study`` then copies the record and the chart next to the model and adds the
record to ``all_results.json`` under ``tune``, where the card (``hub/card_tune``) reads it.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import yaml

from ..config import TrainConfig
from ..config.data_options import PATH_FIELDS
from ..files import (
    BEST_RECIPE_NAME,
    RESULTS_NAME,
    TUNE_DIR,
    TUNE_IMPORTANCE_PNG,
    TUNE_RESULTS_NAME,
    copy_file,
    read_json,
    write_json,
    write_text,
)
from .tune_space import chosen_settings

LOCATION_KEYS = ("config", "output_dir", "overwrite_output_dir", "resume_from_checkpoint")  # the rerun chooses these
LOCAL_KEYS = (*PATH_FIELDS, "feature_cache_dir", "logging_dir", "weights", "model_name_or_path")


def write_best_recipe(recipe: TrainConfig, tune_dir: Path) -> Path:
    """``tune/best_recipe.yaml``: every option of the chosen recipe (``--tune`` off), local paths absolute, so
    ``--config best_recipe.yaml`` reruns it from anywhere; where the run goes is the rerun's to say."""
    data = dataclasses.replace(recipe, tune=False, tune_trials=None, tune_timeout=None).to_dict()
    for key in LOCATION_KEYS:
        data.pop(key, None)
    for key in LOCAL_KEYS:
        value = data.get(key)
        if isinstance(value, str) and value not in ("pretrained", "random") and Path(value).exists():
            data[key] = str(Path(value).resolve())
    header = ("# The recipe --tune chose on the validation split. Repeat the run without search:\n"
              "#   accelerate launch recipes/<image|text>_cls.py --config best_recipe.yaml --output_dir DIR\n")
    return write_text(tune_dir / BEST_RECIPE_NAME, header + yaml.safe_dump(data, sort_keys=False))


def write_study_record(study, tune_dir: Path, recipe: TrainConfig, best_number: int | None, cfg: TrainConfig,
                       sampler: str, pruner: str) -> dict:
    """``tune/tune_results.json`` (and the importance chart when there are importances to show)."""
    metric, higher = cfg.best_metric
    rows = trial_rows(study)
    best = next((row for row in rows if row["number"] == best_number), None)
    importances, note = param_importances(study, cfg.seed)
    record = {
        "metric": metric, "direction": "maximize" if higher else "minimize", "sampler": sampler, "pruner": pruner,
        "budget": {"trials": cfg.trial_budget, "timeout_s": cfg.tune_timeout},
        "elapsed_s": study.user_attrs.get("elapsed_s"),
        "counts": {state: sum(row["state"] == state for row in rows)
                   for state in ("complete", "pruned", "failed", "interrupted")},
        "trials": rows, "best": best,
        "settings": chosen_settings(recipe, best["params"]) if best else {},
        "importances": importances, "importance_note": note,
        "importance_png": None, "best_recipe": f"{TUNE_DIR}/{BEST_RECIPE_NAME}",
    }
    if importances:
        plot_importances(importances, tune_dir / TUNE_IMPORTANCE_PNG, metric, record["counts"]["complete"])
        record["importance_png"] = TUNE_IMPORTANCE_PNG
    else:
        (tune_dir / TUNE_IMPORTANCE_PNG).unlink(missing_ok=True)
    write_json(tune_dir / TUNE_RESULTS_NAME, record)
    return record


def trial_rows(study) -> list[dict]:
    """Every finished trial: number, state, parameters, value, evaluations, seconds, where it came from."""
    interrupted = set(study.user_attrs.get("interrupted", []))
    states = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state.name not in states:  # waiting or running: not a result
            continue
        attrs = trial.user_attrs
        note = attrs.get("stopped") or attrs.get("error")
        if "rerun_of" in attrs:
            note = "; ".join(filter(None, [f"rerun of trial {attrs['rerun_of']}", note]))
        rows.append({"number": trial.number,
                     "state": "interrupted" if trial.number in interrupted else states[trial.state.name],
                     "params": dict(trial.params), "value": trial.value, "evaluations": attrs.get("evaluations"),
                     "seconds": attrs.get("seconds"), "origin": attrs.get("origin", "search"), "note": note})
    return rows


def param_importances(study, seed: int) -> tuple[dict, str | None]:
    """fANOVA importances of the parameters every complete trial has (normalized to sum 1), or why there are none."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return {}, f"{len(complete)} complete trial(s): importances need at least two"
    if len({t.value for t in complete}) < 2:
        return {}, "every complete trial scored the same: no parameter made a difference"
    try:
        from optuna.importance import FanovaImportanceEvaluator, get_param_importances

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    except Exception as e:  # noqa: BLE001 - optuna refuses some spaces (e.g. no parameter shared by all trials)
        return {}, f"not computed ({type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''})"
    if not values:
        return {}, "no parameter was searched in every complete trial"
    return {name: round(float(value), 4) for name, value in values.items()}, None


def plot_importances(importances: dict, path: Path, metric: str, complete: int) -> Path:
    """A horizontal bar per parameter, the most important on top."""
    from ..evaluation.report import new_figure, save_figure

    names = list(importances)[::-1]
    fig = new_figure(6.5, 1.2 + 0.35 * len(names))
    ax = fig.add_subplot()
    ax.barh(names, [importances[name] for name in names], color="tab:blue")
    ax.set_xlabel("importance (fANOVA share of the variance)")
    ax.set_xlim(0, 1)
    ax.set_title(f"what moved validation {metric} ({complete} complete trials)", fontsize=10)
    return save_figure(fig, path)


def publish_study(output_dir: Path) -> dict | None:
    """Once the final run has written ``output_dir``: the study's record and chart next to the model, and the record
    in ``all_results.json`` (``tune``). Main process. Returns the record (None: no study)."""
    output_dir = Path(output_dir)
    tune_dir = output_dir / TUNE_DIR
    record = read_json(tune_dir / TUNE_RESULTS_NAME)
    if record is None:
        return None
    copy_file(tune_dir / TUNE_RESULTS_NAME, output_dir / TUNE_RESULTS_NAME)
    if record.get("importance_png") and (tune_dir / TUNE_IMPORTANCE_PNG).is_file():
        copy_file(tune_dir / TUNE_IMPORTANCE_PNG, output_dir / TUNE_IMPORTANCE_PNG)
    else:
        (output_dir / TUNE_IMPORTANCE_PNG).unlink(missing_ok=True)
    results = read_json(output_dir / RESULTS_NAME)
    if results is not None:
        write_json(output_dir / RESULTS_NAME, {**results, "tune": record})
    return record
