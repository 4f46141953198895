"""The card's results: metrics, per-class and history tables, the model-index entries, what came of the
run's evaluation schedule (the exported evaluation, EMA or raw weights, why training stopped), and the
optional "Did transfer help?", "Backbone choice" and "Domain adaptation" blocks.

Formatted from the run's typed ``RunResults`` (``None`` for a model saved outside a run, whose card
has no results).
"""
from __future__ import annotations

from pathlib import Path

from ..records import BackboneChoice, DomainAdaptation, EpochRecord, RunResults, TransferGain
from .card_format import format_value, looks_like_local_path, markdown_escape, public_path_name

MAX_CLASS_ROWS = 100
NO_RESULTS = {"results": None, "per_class": None, "per_class_note": None, "history": None, "history_header": None,
              "best_epoch": None, "epochs_run": None, "best_at": None, "exported_at": None,
              "metric_for_best_model": None, "test_results": None, "test_samples": None}
NO_OUTCOME = {"stop_note": None, "stop_summary": None}
# history columns: (header, EpochRecord attribute); the step and EMA ones only when the run has them
HISTORY_COLUMNS = (("epoch", "epoch"), ("step", "step"), ("train loss", "train_loss"), ("eval loss", "eval_loss"),
                   ("eval accuracy", "eval_accuracy"), ("eval F1", "eval_f1"), ("EMA eval loss", "ema_eval_loss"),
                   ("EMA eval accuracy", "ema_eval_accuracy"), ("EMA eval F1", "ema_eval_f1"))
WEIGHTS_NAMES = {"ema": "EMA weights", "raw": "raw weights"}
SCORE_NAMES = {"h_score": "H-score", "logme": "LogME"}
ADAPTATION_METHODS = {"none": "no adaptation (source-only training)", "dann": "DANN (Ganin et al. 2016)",
                      "cdan": "CDAN+E (Long et al. 2018)", "mcc": "MCC (Jin et al. 2020)",
                      "self_training": "self-training on confident pseudo-labels (refreshed each epoch)",
                      "dapt": "domain-adaptive pretraining (masked-LM on the target text, Gururangan et al. 2020)"}
# dapt+<method>: the continued pretraining, then the method's fine-tune
ADAPTATION_METHODS.update({f"dapt+{m}": f"{ADAPTATION_METHODS['dapt']}, then {ADAPTATION_METHODS[m]}"
                           for m in ("dann", "cdan", "mcc", "self_training")})


def few_shot_text(record: dict) -> str:
    """``--shots``: K per class, and over several draws the mean and 95% interval of each score (this model is
    draw 0's)."""
    trained = f"{record['shots']} training examples per class (draw {record.get('draw', 0)}, seed {record.get('seed')})"
    if not record.get("metrics"):
        return trained
    spread = ", ".join(f"{name} {m['mean']:.4f} ± {m['ci95_half_width']:.4f}" for name, m in record["metrics"].items())
    return f"{trained}; over {record['draws']} draws: {spread} (mean ± 95% t-interval; this model is draw 0)"


def has_eval_results(results: RunResults | None) -> bool:
    return results is not None and "eval_accuracy" in results.metrics


def results_context(results: RunResults | None) -> dict:
    """The "Results" section's template variables; all empty without eval results."""
    if not has_eval_results(results):
        return {**NO_RESULTS, **outcome_context(results)}
    rows = metric_rows(values=results.metrics, prefix="eval_")
    if uses_ema(results):
        rows.append(("exported weights", WEIGHTS_NAMES["ema"] + " (exponential moving average)"
                     if results.exported_weights == "ema" else WEIGHTS_NAMES["raw"] + " (their EMA scored no better)"))
    if results.few_shot:
        rows.append(("few-shot", few_shot_text(results.few_shot)))
    if results.train_runtime is not None:
        sharded = f", weights sharded by {results.sharding}" if results.sharding else ""
        rows.append(("training time", f"{results.train_runtime:.0f} s on {results.world_size} process(es){sharded}"))
    per_class, per_class_note = per_class_rows(results.eval_per_class)
    header, history = history_table(results)
    test = results.test_metrics
    return {"results": rows, "per_class": per_class, "per_class_note": per_class_note, "history": history,
            "history_header": header,
            "test_results": metric_rows(values=test, prefix="test_") if "test_accuracy" in test else None,
            "test_samples": test.get("test_samples"),
            "best_epoch": results.best_epoch, "epochs_run": results.epochs or len(history),
            **exported_evaluation(results),
            "metric_for_best_model": results.transfer.metric_for_best_model if results.transfer else "accuracy",
            **outcome_context(results)}


def evaluates_per_step(results: RunResults) -> bool:
    """``--eval_strategy steps`` (or a history with several evaluations in one epoch)."""
    evaluation = results.transfer.evaluation if results.transfer else {}
    epochs = [entry.epoch for entry in results.history]
    return evaluation.get("eval_strategy") == "steps" or len(set(epochs)) < len(epochs)


def uses_ema(results: RunResults) -> bool:
    """``--model_ema``: recorded in the recipe, or EMA scores in the history."""
    return bool(results.transfer and results.transfer.model_ema) or results.exported_weights == "ema" or any(
        entry.ema_eval_accuracy is not None for entry in results.history)


def exported_index(results: RunResults) -> int | None:
    """The history row of the exported evaluation: by its step when recorded, else by its epoch."""
    for index, entry in enumerate(results.history):
        if results.best_step is not None and entry.step is not None:
            if entry.step == results.best_step:
                return index
        elif entry.epoch == results.best_epoch:
            return index
    return None


def history_table(results: RunResults) -> tuple[list[str], list[list[str]]]:
    """The history's header and rows: a step column when evaluations are per step, the EMA's scores beside the
    raw ones when present, and then a column marking the exported row (naming its weights with EMA on)."""
    per_step, ema = evaluates_per_step(results), uses_ema(results)
    columns = [(name, key) for name, key in HISTORY_COLUMNS
               if (key != "step" or per_step) and (not key.startswith("ema_") or ema)]
    rows = [[format_value(getattr(entry, key)) for _, key in columns] for entry in results.history]
    header = [name for name, _ in columns]
    if per_step or ema:
        exported = exported_index(results)
        mark = f"**exported** ({WEIGHTS_NAMES.get(results.exported_weights, results.exported_weights)})" if ema \
            else "**exported**"
        header.append("")
        for index, row in enumerate(rows):
            row.append(mark if index == exported else "")
    return header, rows


def exported_evaluation(results: RunResults) -> dict:
    """``best_at`` (the Results sentence: "Best epoch 3 of 3", or the step of a per-step run) and
    ``exported_at`` (where the exported model comes from, as the test split names it)."""
    epochs_run = results.epochs or len(results.history)
    if evaluates_per_step(results) and results.best_step is not None:
        best_at = (f"evaluation at step {results.best_step} (epoch {results.best_epoch} of {epochs_run}; "
                   f"{len(results.history)} evaluations in all)")
        exported_at = f"step {results.best_step}, epoch {results.best_epoch}"
    else:
        best_at, exported_at = f"epoch {results.best_epoch} of {epochs_run}", f"epoch {results.best_epoch}"
    if results.exported_weights == "ema":
        best_at += ", with the EMA weights"
        exported_at += ", EMA weights"
    return {"best_at": best_at, "exported_at": exported_at}


def outcome_context(results: RunResults | None) -> dict:
    """Why training stopped before its budget: ``stop_note`` for the recipe's evaluation line, ``stop_summary``
    for the Results section; both None when the run used its whole budget."""
    if results is None or results.stop_reason is None:
        return dict(NO_OUTCOME)
    last = results.history[-1] if results.history else EpochRecord(epoch=results.epochs or 0)
    planned = results.transfer.epochs if results.transfer else None
    of = f" of {planned} planned" if planned and planned > last.epoch else ""
    where = f"step {last.step} (epoch {last.epoch}{of})" if last.step is not None else f"epoch {last.epoch}{of}"
    if results.stop_reason == "early_stopping":
        return {"stop_note": f"the run stopped early at {where}",
                "stop_summary": f"Training stopped early (early stopping) at {where}."}
    if results.stop_reason == "max_steps":
        steps = (results.transfer.max_steps if results.transfer else None) or last.step
        return {"stop_note": f"the run ended at `--max_steps` ({steps} optimizer steps), part way through epoch "
                             f"{last.epoch}",
                "stop_summary": f"Training ended at `--max_steps` ({steps} optimizer steps)."}
    if results.stop_reason == "stopped_by_caller":
        return {"stop_note": f"the run was stopped by its caller at {where} (e.g. a pruned `--tune` trial)",
                "stop_summary": f"Training was stopped by its caller at {where}."}
    reason = markdown_escape(results.stop_reason.replace("_", " "))
    return {"stop_note": f"the run stopped at {where} ({reason})",
            "stop_summary": f"Training stopped before its budget at {where} ({reason})."}


def metric_rows(values: dict, prefix: str) -> list[tuple[str, str]]:
    """Accuracy, macro F1 and loss of one split (``eval_`` or ``test_`` keys)."""
    return [("accuracy", format_value(values[f"{prefix}accuracy"])),
            ("F1 (macro)", format_value(values.get(f"{prefix}f1"))),
            ("loss", format_value(values.get(f"{prefix}loss")))]


def per_class_rows(per_class: dict) -> tuple[list[dict], str | None]:
    """One row per class, cut at ``MAX_CLASS_ROWS`` (with a note saying so: all of them stay in the JSON)."""
    rows = [{"label": markdown_escape(label),
             **{key: format_value(scores.get(key)) for key in ("precision", "recall", "f1", "support")}}
            for label, scores in per_class.items()]
    if len(rows) <= MAX_CLASS_ROWS:
        return rows, None
    note = f"First {MAX_CLASS_ROWS} of {len(rows)} classes; all of them are in `all_results.json`."
    return rows[:MAX_CLASS_ROWS], note


def hub_eval_results(results: RunResults | None, dataset_type: str, dataset_name: str, dataset_config: str | None,
                     pipeline_tag: str, multi_label: bool) -> list:
    """The model-index entries: accuracy and macro F1 on the validation split, and on the test split if scored."""
    from huggingface_hub import EvalResult

    if not has_eval_results(results):
        return []
    common = {"task_type": pipeline_tag, "task_name": pipeline_tag.replace("-", " ").capitalize(),
              "dataset_type": dataset_type, "dataset_name": dataset_name}
    if dataset_config:
        common["dataset_config"] = dataset_config
    entries = []
    for split, prefix, values in (("validation", "eval_", results.metrics), ("test", "test_", results.test_metrics)):
        if f"{prefix}accuracy" not in values:
            continue
        entries.append(EvalResult(metric_type="accuracy", metric_value=round(float(values[f"{prefix}accuracy"]), 4),
                                  metric_name="Accuracy (exact match)" if multi_label else "Accuracy",
                                  dataset_split=split, **common))
        if f"{prefix}f1" in values:
            entries.append(EvalResult(metric_type="f1", metric_value=round(float(values[f"{prefix}f1"]), 4),
                                      metric_name="F1 (macro)", metric_config="macro", dataset_split=split, **common))
    return entries


def transfer_gain_block(gain: TransferGain) -> dict:
    """The "did transfer help" block: the summary line and one row per scalar (per-run lists stay in the JSON)."""
    rows = [(label, format_value(getattr(gain, key))) for key, label in TransferGain.LABELS.items()]
    rows += [(key.replace("_", " "), format_value(value)) for key, value in gain.extra.items()
             if not isinstance(value, (dict, list))]
    return {"summary": gain.summary or None, "rows": rows}


def public_candidate_name(spec: str) -> str:
    """A ranked candidate as the card names it: local folders and weight files by their last path parts."""
    prefix = "random:" if spec.startswith("random:") else ""
    name, _, weights = spec.removeprefix(prefix).partition("=")
    name = public_path_name(name) if looks_like_local_path(name) else name
    return prefix + name + (f"={Path(weights).name if looks_like_local_path(weights) else weights}" if weights else "")


def backbone_choice_block(choice: BackboneChoice) -> dict:
    """The "Backbone choice" block: the rule and its outcome in words, then one row per ranked candidate."""
    rows = [{"rank": row.get("rank"), "candidate": markdown_escape(public_candidate_name(row["candidate"])),
             "h_score": format_value(row.get("h_score")), "logme": format_value(row.get("logme")),
             "dim": format_value(row.get("feature_dim")),
             "chosen": candidate_mark(candidate=row["candidate"], chosen=choice.chosen)} for row in choice.ranking]
    reason, warning = choice.reason, choice.warning or ""
    # no local paths in a public card; longest first, so that a spec containing another's is replaced whole
    for spec in sorted(choice.candidates, key=len, reverse=True):
        reason = reason.replace(spec, public_candidate_name(spec))
        warning = warning.replace(spec, public_candidate_name(spec))
    return {"reason": markdown_escape(reason), "warning": markdown_escape(warning) if warning else None, "rows": rows,
            "metric": SCORE_NAMES.get(choice.metric, choice.metric), "train_samples": choice.train_samples}


def candidate_mark(candidate: str, chosen: str) -> str:
    if candidate == chosen:
        return "**chosen**"
    return "random-init floor" if candidate.startswith("random:") else ""


def domain_adaptation_block(record: DomainAdaptation) -> dict:
    """The "Domain adaptation" block: method, gap, the label-free selection, the oracle and the source-only twin."""
    gap = record.domain_gap or {}
    gap_text = (f"proxy A-distance {format_value(gap['proxy_a_distance'], 3)} (0 = indistinguishable, "
                f"2 = linearly separable), MMD {format_value(gap['mmd'])}, on {gap['samples_per_domain']} "
                "examples per domain") if gap else None
    return {"method": markdown_escape(ADAPTATION_METHODS.get(record.method, record.method)),
            "rule": markdown_escape(record.selection_rule), "target_train_samples": record.target_train_samples,
            "selected_epoch": record.selected_epoch, "gap": gap_text, "rows": domain_adaptation_rows(record),
            "verdict": markdown_escape(record.verdict) if record.verdict else None,
            "warning": markdown_escape(record.warning) if record.warning else None,
            "dapt": dapt_text(record.dapt) if record.dapt is not None else None,
            "exported": exported_text(record)}


def dapt_text(phase) -> str:
    """The continued-pretraining phase in one paragraph: on what, how long, and what it did to the masked-LM loss."""
    texts = f"{phase.target_texts} unlabelled target texts" + (
        f" and {phase.source_texts} source training texts" if phase.source_texts else "")
    text = (f"Before fine-tuning, the encoder was further pretrained as a masked language model (domain-adaptive "
            f"pretraining, Gururangan et al. 2020) on {texts}: {phase.steps} steps ({format_value(phase.epochs, 2)} "
            f"epochs) at learning rate {phase.learning_rate:g}, masking {phase.mlm_probability:.0%} of the tokens")
    if phase.held_out_loss_before is not None and phase.held_out_loss_after is not None:
        text += (f". Masked-LM loss on {phase.held_out_texts} held-out target texts: "
                 f"{format_value(phase.held_out_loss_before)} before, {format_value(phase.held_out_loss_after)} after")
    return markdown_escape(text)


def exported_text(record: DomainAdaptation) -> str | None:
    """Which model this folder holds when a source-only twin was trained: the label-free choice and why."""
    if record.source_only is None or not record.exported_reason:
        return None
    if record.exported == "source_only":
        return markdown_escape("The exported model is the source-only twin, not the adapted one: "
                               + record.exported_reason)
    return markdown_escape("The exported model is the adapted one: " + record.exported_reason)


def domain_adaptation_rows(record: DomainAdaptation) -> list[tuple[str, str]]:
    """The selected epoch's label-free scores, the oracle (target labels: reported, never used) and the twin."""
    rows = [("source validation accuracy (selected epoch)", format_value(record.source_accuracy)),
            ("target information maximization (label-free)", format_value(record.target_im)),
            ("selection score (label-free)", format_value(record.selection_score))]
    if record.selection_scores:
        rows.append(("every label-free criterion at the selected epoch", ", ".join(
            f"{name} {format_value(value)}" for name, value in record.selection_scores.items())))
    if record.target_oracle_accuracy is not None:
        rows.append(("target validation accuracy (**oracle**: target labels, reported only, never used to select)",
                     format_value(record.target_oracle_accuracy)))
        rows.append(("best target validation accuracy of any epoch (oracle)",
                     f"{format_value(record.target_oracle_best_accuracy)} (epoch {record.target_oracle_best_epoch})"))
    if record.target_test_accuracy is not None:
        rows.append((f"target test accuracy, exported model ({record.target_test_samples} examples)",
                     format_value(record.target_test_accuracy)))
    source_only = record.source_only
    if source_only is not None:
        if source_only.target_oracle_accuracy is not None:
            rows.append(("source-only: target validation accuracy (oracle)",
                         format_value(source_only.target_oracle_accuracy)))
        if source_only.target_test_accuracy is not None:
            rows.append(("source-only: target test accuracy", format_value(source_only.target_test_accuracy)))
        rows.append(("source-only: selection score (label-free)", format_value(source_only.selection_score)))
    return rows
