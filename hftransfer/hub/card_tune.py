"""The card's "Hyper-parameter search" section, from the ``tune_results.json`` a ``--tune`` run leaves beside its model.

Rendered as markdown here (a trial's row lists the parameters it tried) and placed before
"Transfer recipe", which then describes the recipe the search chose. Local paths (a backbone given as a
folder or weight file) are named by their last parts, as everywhere in the card.
"""
from __future__ import annotations

from pathlib import Path

from ..files import TUNE_IMPORTANCE_PNG, TUNE_RESULTS_NAME, read_json
from .card_format import (
    format_learning_rate,
    format_value,
    insert_section,
    looks_like_local_path,
    markdown_escape,
    public_path_name,
)
from .card_results import public_candidate_name

SECTION_TITLE = "## Hyper-parameter search"
BEFORE = "## Transfer recipe"
MAX_TRIAL_ROWS = 50
METRIC_NAMES = {"accuracy": "accuracy", "f1": "F1 (macro)", "loss": "loss"}


def with_tune_section(text: str, output_dir: Path) -> str:
    """The card ``text`` with the search section before "Transfer recipe" (unchanged without a study)."""
    return insert_section(text, tune_section(output_dir), BEFORE)


def tune_section(output_dir: Path) -> str | None:
    """The section's markdown, or None when the run did not tune."""
    record = read_json(Path(output_dir) / TUNE_RESULTS_NAME)
    if not record or not record.get("trials"):
        return None
    lines = [SECTION_TITLE, "", summary(record), ""]
    lines += trials_table(record)
    settings = record.get("settings") or {}
    if settings:
        lines += ["", "Chosen settings (the rest of the recipe is as given; `" + str(record.get("best_recipe")) +
                  "` holds all of it, to repeat this run without search with `--config`):", "",
                  "| setting | value |", "|---|---|"]
        lines += [f"| `{markdown_escape(name)}` | {setting_value(name, value)} |" for name, value in settings.items()]
    png = record.get("importance_png")
    if png and (Path(output_dir) / png).is_file():
        lines += ["", f"![parameter importance for validation {metric_name(record)}]({TUNE_IMPORTANCE_PNG})"]
    elif record.get("importance_note"):
        lines += ["", f"Parameter importance: {markdown_escape(record['importance_note'])}."]
    return "\n".join(lines) + "\n"


def metric_name(record: dict) -> str:
    return METRIC_NAMES.get(record.get("metric"), str(record.get("metric")))


def summary(record: dict) -> str:
    """The search in words: sampler, pruner, budget, outcome, and that the test split played no part."""
    counts = record.get("counts") or {}
    outcome = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    elapsed = record.get("elapsed_s")
    took = f" in {elapsed:.0f} s" if isinstance(elapsed, (int, float)) else ""
    better = "higher" if record.get("direction") == "maximize" else "lower"
    text = (f"The recipe was tuned automatically (`--tune`): Optuna ran {len(record['trials'])} trials "
            f"({outcome}){took}, sampler {record.get('sampler')}, pruner {record.get('pruner')}. Each trial was "
            f"scored by validation {metric_name(record)} ({better} is better, ties to the earliest trial); the test "
            "split played no part in the search.")
    best = record.get("best")
    if best is None:
        return text + " No trial completed within the budget, so the recipe was trained as given."
    baseline = next((t for t in record["trials"] if t.get("origin") == "recipe as given" and t["state"] == "complete"),
                    None)
    text += (f" Trial {best['number']} ({markdown_escape(best.get('origin', 'search'))}) scored best, "
             f"{format_value(best.get('value'))}")
    if baseline is not None and baseline["number"] != best["number"]:
        text += f" (the recipe as given, trial {baseline['number']}: {format_value(baseline.get('value'))})"
    return text + "; this model is that recipe, trained again."


def trials_table(record: dict) -> list[str]:
    """One row per trial: its strategy, score, state and the other parameters it tried."""
    trials = record["trials"]
    best = (record.get("best") or {}).get("number")
    lines = [f"| trial | strategy | validation {metric_name(record)} | state | evaluations | seconds | settings |",
             "|---|---|---|---|---|---|---|"]
    for trial in trials[:MAX_TRIAL_ROWS]:
        params = dict(trial.get("params") or {})
        strategy = params.pop("strategy", "n/a")
        number = f"**{trial['number']}**" if trial["number"] == best else str(trial["number"])
        state = trial["state"] + (f": {trial['note']}" if trial.get("note") else "")
        origin = trial.get("origin")
        if origin and origin != "search":
            state += f" ({origin})"
        settings = ", ".join(f"{name} {setting_value(name, value)}" for name, value in params.items())
        lines.append(f"| {number} | `{markdown_escape(strategy)}` | {format_value(trial.get('value'))} | "
                     f"{markdown_escape(state)} | {format_value(trial.get('evaluations'))} | "
                     f"{format_value(trial.get('seconds'), 0)} | {settings or 'n/a'} |")
    if len(trials) > MAX_TRIAL_ROWS:
        lines += ["", f"First {MAX_TRIAL_ROWS} of {len(trials)} trials; all of them are in `{TUNE_RESULTS_NAME}`."]
    return lines


def setting_value(name: str, value) -> str:
    """A parameter or option as the card writes it: learning rates in e-notation, no local paths."""
    if name == "backbone":
        return markdown_escape(public_candidate_name(str(value)))
    if name in ("model_name_or_path", "weights") and isinstance(value, str) and looks_like_local_path(value):
        return markdown_escape(public_path_name(value))
    if value is None:
        return "none"
    if "learning_rate" in name and isinstance(value, (int, float)):
        return format_learning_rate(value)
    if isinstance(value, list):
        return markdown_escape(" ".join(map(str, value)))
    return format_value(value)
