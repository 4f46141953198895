"""Evaluation inside a run: every eval example counted once across processes, the target domain's label-free
scores, the metric that picks the exported epoch, and the exported model scored once on the test split."""
from __future__ import annotations

import torch
from accelerate import Accelerator

from ..adaptation.criteria import selection_score, selection_scores, target_scores
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


def collect_outputs(accelerator: Accelerator, module, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(features, logits, labels or None) of every example of ``loader`` once, gathered over processes, on the CPU.
    ``module`` is the bare ``TransferModel``: its features are what the label-free criteria look at."""
    module.eval()
    features, logits, labels = [], [], []
    for batch in loader:
        batch = dict(batch)
        batch.pop(INDEX_COLUMN, None)
        label = batch.pop("labels", None)
        with torch.no_grad():
            f = module.forward_features(**batch)
            out = module.forward_head(f.to(next(module.head.parameters(), f).dtype))
        gathered = accelerator.gather_for_metrics((f.float(), out.float()) + ((label,) if label is not None else ()))
        features.append(gathered[0].cpu())
        logits.append(gathered[1].cpu())
        if label is not None:
            labels.append(gathered[2].cpu())
    return torch.cat(features), torch.cat(logits), torch.cat(labels) if labels else None


def evaluate_target(run: TrainingRun, metrics: dict) -> None:
    """Target-domain runs: add every label-free criterion's score (``selection_scores``), the configured one as
    ``selection_score``, the target predictions' entropy / diversity / IM and, with labelled target validation
    data, the oracle accuracy (reported, never used to select) to ``metrics``."""
    accelerator, module = run.accelerator, run.module
    target_features, target_logits, _ = collect_outputs(accelerator, module, run.loaders.target_selection)
    target_probs = torch.softmax(target_logits, dim=-1)
    metrics.update(target_scores(target_probs))
    # DEV's source side: the raw source validation split (the eval loader may hold cached features)
    source_features, source_logits, source_labels = collect_outputs(accelerator, module, run.loaders.eval)
    losses = torch.nn.functional.cross_entropy(source_logits, source_labels.long(), reduction="none")
    errors = (source_logits.argmax(-1) != source_labels.long()).double()
    scores = selection_scores(source_accuracy=metrics["accuracy"], target_probs=target_probs,
                              source_features=source_features, source_losses=losses, source_errors=errors,
                              target_features=target_features, seed=run.cfg.seed)
    metrics["selection_scores"] = scores
    metrics["selection_score"] = selection_score(run.cfg.selection_criterion, scores)
    if run.loaders.target_eval is not None:
        oracle, _ = evaluate(accelerator, run.model, run.loaders.target_eval, run.module.num_labels, False)
        metrics["target_oracle_accuracy"], metrics["target_oracle_f1"] = oracle["accuracy"], oracle["f1"]


def selection_metric(cfg: TrainConfig) -> tuple[str, bool]:
    """(metric, higher is better) that picks the exported epoch: the label-free criterion in target-domain runs."""
    return ("selection_score", True) if cfg.uses_target_data() else cfg.best_metric


def load_best_epoch(run: TrainingRun) -> None:
    """Put the exported (best-epoch) weights back into the model in training (under FSDP / DeepSpeed: into the
    main process's whole copy, then from there into every process's shards)."""
    best = run.output_dir / BEST_DIR
    module = run.host_copy.module if run.host_copy is not None else run.module
    if module is not None:
        if module.lora is not None:  # best_model/ holds merged weights; the adapter fits the model in training
            load_adapter_files(module, best / ADAPTER_DIR)
        else:
            module.load_state_dict(load_weights(best, read_json(best / CONFIG_NAME)))
    if run.host_copy is not None:
        run.host_copy.scatter(run.accelerator, run.model)


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
