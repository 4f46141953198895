"""Evaluation inside a run: every eval example counted once across processes, the target domain's label-free
scores, the metric that picks the exported epoch, and the exported model scored once on the test split."""
from __future__ import annotations

import torch
from accelerate import Accelerator

from ..adaptation.methods import selection_score, target_scores
from ..config import TrainConfig
from ..data import INDEX_COLUMN
from ..evaluation.metrics import ClassificationMetrics
from ..files import ADAPTER_DIR, BEST_DIR, CONFIG_NAME, read_json
from ..models.layouts import load_weights
from ..models.lora import load_adapter_files
from .setup import TrainingRun


def evaluate(accelerator: Accelerator, model, eval_dl, num_labels: int, multi_label: bool) -> tuple[dict, list[dict]]:
    """Loss, accuracy, macro-F1 over every eval sample exactly once, plus per-sample predictions."""
    model.eval()
    metric = ClassificationMetrics(num_labels, multi_label, per_class=True)
    total_loss, count, records = 0.0, 0, []
    for batch in eval_dl:
        index = batch.pop(INDEX_COLUMN)
        with torch.no_grad():
            out = model(**batch)
        preds = (out.logits > 0).long() if multi_label else out.logits.argmax(dim=-1)
        losses = out.loss.detach().float().repeat(len(index))
        preds, refs, index, losses = accelerator.gather_for_metrics((preds, batch["labels"], index, losses))
        refs = refs.long()
        metric.add_batch(predictions=preds.cpu().numpy(), references=refs.cpu().numpy())
        total_loss += losses.sum().item()
        count += len(index)
        records += [{"index": int(i), "label": r.tolist(), "prediction": p.tolist()} for i, r, p in zip(index, refs, preds)]
    result = metric.compute()
    result["loss"] = total_loss / max(1, count)
    result["samples"] = count
    return result, records


def evaluate_target(run: TrainingRun, metrics: dict) -> None:
    """Target-domain runs: add the label-free scores of the target predictions, the selection score and,
    with labelled target validation data, the oracle accuracy (reported, never used to select) to ``metrics``."""
    accelerator = run.accelerator
    run.model.eval()
    probs = []
    for batch in run.loaders.target_selection:
        batch.pop(INDEX_COLUMN, None)
        batch.pop("labels", None)
        with torch.no_grad():
            logits = run.model(**batch).logits
        probs.append(accelerator.gather_for_metrics(torch.softmax(logits.float(), dim=-1)).cpu())
    metrics.update(target_scores(torch.cat(probs)))
    metrics["selection_score"] = selection_score(run.cfg.selection_criterion, metrics["accuracy"], metrics["target_im"])
    if run.loaders.target_eval is not None:
        oracle, _ = evaluate(accelerator, run.model, run.loaders.target_eval, run.module.num_labels, False)
        metrics["target_oracle_accuracy"], metrics["target_oracle_f1"] = oracle["accuracy"], oracle["f1"]


def selection_metric(cfg: TrainConfig) -> tuple[str, bool]:
    """(metric, higher is better) that picks the exported epoch: the label-free criterion in target-domain runs."""
    return ("selection_score", True) if cfg.uses_target_data() else cfg.best_metric


def load_best_epoch(run: TrainingRun) -> None:
    """Put the exported (best-epoch) weights back into the model in training."""
    best = run.output_dir / BEST_DIR
    if run.module.lora is not None:  # best_model/ holds merged weights; the adapter fits the model in training
        load_adapter_files(run.module, best / ADAPTER_DIR)
    else:
        run.module.load_state_dict(load_weights(best, read_json(best / CONFIG_NAME)))


def score_test_split(run: TrainingRun) -> tuple[dict, list[dict]] | None:
    """Metrics and predictions of the exported (best-epoch) model on the test split, scored once; None
    without a test split or with ``--do_predict false``. The test split never picks anything."""
    if run.loaders.test is None or run.cfg.do_predict is False:
        return None
    load_best_epoch(run)
    metrics, records = evaluate(run.accelerator, run.model, run.loaders.test, run.module.num_labels,
                                run.module.multi_label)
    run.accelerator.print(f"test: accuracy {metrics['accuracy']:.4f}  f1 {metrics['f1']:.4f}  loss {metrics['loss']:.4f}  "
                          f"({metrics['samples']} samples, the model of epoch {run.state.best_epoch})")
    return metrics, records


def score_target_test_split(run: TrainingRun) -> dict | None:
    """The exported model's metrics on the labelled target test split (reported only), or None without one."""
    if run.loaders.target_test is None:
        return None
    load_best_epoch(run)
    metrics, _ = evaluate(run.accelerator, run.model, run.loaders.target_test, run.module.num_labels, False)
    run.accelerator.print(f"target test: accuracy {metrics['accuracy']:.4f}  f1 {metrics['f1']:.4f}  "
                          f"({metrics['samples']} samples, the model of epoch {run.state.best_epoch})")
    return metrics
