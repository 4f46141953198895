"""Classification metrics as an ``evaluate`` module that needs no Hub download.

``evaluate.load("accuracy")`` fetches the metric script from the Hub, which fails offline, so the
two numbers every run reports (accuracy and macro-F1) are computed by a local ``evaluate.Metric``
with the usual ``add_batch`` / ``compute`` interface. Multi-label: accuracy is the exact-match
ratio and F1 the macro average over labels of the thresholded predictions.
"""
from __future__ import annotations

import datasets
import evaluate
import numpy as np


class ClassificationMetrics(evaluate.Metric):
    """Accuracy, macro-F1 and per-class precision/recall/F1 (``per_class=True``)."""

    def __init__(self, num_labels: int, multi_label: bool = False, per_class: bool = False, **kwargs):
        self.num_labels, self.multi_label, self.per_class = num_labels, multi_label, per_class
        super().__init__(keep_in_memory=True, **kwargs)

    def _info(self):
        value = datasets.Sequence(datasets.Value("int8")) if self.multi_label else datasets.Value("int64")
        return evaluate.MetricInfo(
            description="Accuracy and macro-averaged F1 over all labels.",
            citation="",
            features=datasets.Features({"predictions": value, "references": value}),
        )

    def _compute(self, predictions, references):
        from sklearn.metrics import f1_score, precision_recall_fscore_support

        preds, refs = np.asarray(predictions), np.asarray(references)
        labels = list(range(self.num_labels))
        if self.multi_label:
            accuracy = float((preds == refs).all(axis=1).mean())
            f1 = f1_score(refs, preds, average="macro", zero_division=0)
        else:
            accuracy = float((preds == refs).mean())
            f1 = f1_score(refs, preds, labels=labels, average="macro", zero_division=0)
        result = {"accuracy": accuracy, "f1": float(f1)}
        if self.per_class:
            kwargs = {} if self.multi_label else {"labels": labels}
            p, r, f, s = precision_recall_fscore_support(refs, preds, zero_division=0, **kwargs)
            result["per_class"] = [
                {"precision": float(pi), "recall": float(ri), "f1": float(fi), "support": int(si)}
                for pi, ri, fi, si in zip(p, r, f, s)
            ]
        return result
