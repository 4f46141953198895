"""One evaluation inside a run and what follows from it: the history entry, keeping the best model (raw or
EMA weights), early stopping, and the caller's ``on_evaluate`` hook (``--tune``'s pruning).

``evaluate_and_keep`` runs at every epoch end (``--eval_strategy epoch``) or every ``--eval_steps``
optimizer steps (``steps``), always on every process (the metrics are gathered, so every rank takes the
same decisions). Early stopping follows transformers' ``EarlyStoppingCallback``: an evaluation counts as
an improvement when it beats the best one by more than ``--early_stopping_threshold``; after
``--early_stopping_patience`` evaluations in a row without one, the run stops and exports its best.
"""
from __future__ import annotations

from .evaluate import evaluate, evaluate_target, selection_metric
from .outputs import save_best_epoch
from .setup import TrainingRun

EARLY_STOPPING = "early_stopping"
STOPPED_BY_CALLER = "stopped_by_caller"
MAX_STEPS = "max_steps"


def evaluate_and_keep(run: TrainingRun, epoch: int, train_loss: float) -> None:
    """Score the validation split (and the EMA weights beside the raw ones), record it, keep the best."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    eval_loader = run.eval_loader(epoch)
    metrics, records = evaluate(accelerator, run.model, eval_loader, run.module.num_labels, run.module.multi_label)
    if run.bundle.target is not None:
        evaluate_target(run, metrics)
    ema_metrics, ema_records = None, None
    if run.ema is not None:
        ema_metrics, ema_records = evaluate(accelerator, run.ema.module, eval_loader, run.module.num_labels,
                                            run.module.multi_label)
    run.model.train()  # step evaluations continue training afterwards
    # target-domain runs select by a label-free score of the raw weights: the EMA is reported beside them
    state.evaluations += 1
    entry = history_entry(epoch, state.global_step, train_loss, metrics, ema_metrics)
    state.history.append(entry)
    if run.log is not None:
        accelerator.log(run.log.epoch_values(train_loss, metrics), step=state.global_step)
    print_evaluation(run, entry, metrics, ema_metrics)
    name, higher_is_better = selection_metric(cfg)
    score, weights = metrics[name], "raw"
    if ema_metrics is not None and name in ema_metrics and better(ema_metrics[name], score, higher_is_better):
        score, weights = ema_metrics[name], "ema"
    improved = state.best_metric is None or better(score, state.best_metric, higher_is_better)
    counts = state.best_metric is None or abs(score - state.best_metric) > cfg.early_stopping_threshold
    if improved:
        state.best_metric, state.best_epoch, state.best_step, state.best_weights = score, epoch + 1, state.global_step, weights
        kept = run.ema.module if weights == "ema" else run.module
        if run.host_copy is not None:  # sharded: every process takes part in gathering the whole weights
            kept = run.host_copy.gather(accelerator, run.model)
        if accelerator.is_main_process:
            save_best_epoch(kept, run.output_dir, ema_metrics if weights == "ema" else metrics,
                            ema_records if weights == "ema" else records)
    state.evals_without_improvement = 0 if improved and counts else state.evals_without_improvement + 1
    accelerator.wait_for_everyone()
    patience = cfg.early_stopping_patience
    if patience and state.evals_without_improvement >= patience:
        state.stop_reason = EARLY_STOPPING
        accelerator.print(f"early stopping: {patience} evaluation(s) without an improvement of {name} by more than "
                          f"{cfg.early_stopping_threshold:g}; exporting evaluation {state.best_epoch} (epoch) / "
                          f"step {state.best_step}")
    if run.on_evaluate is not None and run.on_evaluate(state.evaluations, {**metrics, "epoch": epoch + 1,
                                                                             "step": state.global_step}):
        state.stop_reason = state.stop_reason or STOPPED_BY_CALLER


def better(score: float, than: float, higher_is_better: bool) -> bool:
    return score > than if higher_is_better else score < than


def history_entry(epoch: int, step: int, train_loss: float, metrics: dict, ema_metrics: dict | None) -> dict:
    entry = {"epoch": epoch + 1, "step": step, "train_loss": train_loss, "eval_loss": metrics["loss"],
             "eval_accuracy": metrics["accuracy"], "eval_f1": metrics["f1"]}
    for key in ("target_im", "selection_score", "target_oracle_accuracy", "selection_scores"):
        if key in metrics:
            entry[key] = metrics[key]
    if ema_metrics is not None:
        entry.update({"ema_eval_loss": ema_metrics["loss"], "ema_eval_accuracy": ema_metrics["accuracy"],
                      "ema_eval_f1": ema_metrics["f1"]})
    return entry


def print_evaluation(run: TrainingRun, entry: dict, metrics: dict, ema_metrics: dict | None) -> None:
    where = f"epoch {entry['epoch']}" if run.cfg.eval_strategy == "epoch" else f"step {entry['step']} (epoch {entry['epoch']})"
    print_ = run.accelerator.print
    print_(f"{where}: train_loss {entry['train_loss']:.4f}  eval_loss {metrics['loss']:.4f}  eval_accuracy "
           f"{metrics['accuracy']:.4f}  eval_f1 {metrics['f1']:.4f}  ({metrics['samples']} samples)")
    if ema_metrics is not None:
        print_(f"  ema weights: eval_loss {ema_metrics['loss']:.4f}  eval_accuracy {ema_metrics['accuracy']:.4f}  "
               f"eval_f1 {ema_metrics['f1']:.4f}")
    if "selection_score" in metrics:
        oracle = metrics.get("target_oracle_accuracy")
        others = "  ".join(f"{k} {v:.4f}" for k, v in metrics.get("selection_scores", {}).items())
        print_(f"  target: im {metrics['target_im']:.4f} (entropy {metrics['target_entropy']:.4f}, diversity "
               f"{metrics['target_diversity']:.4f})  selection_score ({run.cfg.selection_criterion}) "
               f"{metrics['selection_score']:.4f}  [criteria: {others}]"
               + (f"  oracle accuracy {oracle:.4f} (target labels: reported, not used to select)"
                  if oracle is not None else ""))
