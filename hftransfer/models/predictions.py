"""What a prediction looks like: one dict per input (``to_predictions``), the skipped inputs and the whole result."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class Skipped:
    """An input that could not be read: what it was (path, ``file:line``, ``image 3``) and why."""

    input: str
    reason: str


@dataclass
class PredictionResult:
    """``predictions`` for the readable inputs, in input order, and the ``skipped`` ones."""

    predictions: list[dict] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    logits: torch.Tensor | None = field(default=None, repr=False)  # [kept inputs, labels], in input order


def to_predictions(logits: torch.Tensor, id2label: dict[int, str], multi_label: bool, top_k: int = 5,
                   threshold: float = 0.5) -> list[dict]:
    """One dict per row of ``logits``, shaped like transformers' classification pipelines plus the label:

    * single-label: ``label`` (the argmax, as evaluation picks it), ``score`` (its softmax
      probability), ``top_k`` (the ``top_k`` most probable ``{"label", "score"}``, capped at the
      number of labels);
    * multi-label: ``label`` / ``score`` are *lists*, the labels whose sigmoid probability exceeds
      ``threshold`` (most probable first; possibly empty: "none of them"), and ``top_k`` the
      ``top_k`` most probable labels whatever the threshold.
    """
    if logits.numel() == 0:
        return []
    names = [id2label[i] for i in range(logits.shape[1])]
    probs = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)
    k = min(top_k, logits.shape[1])
    top_scores, top_ids = probs.topk(k, dim=-1)
    out = []
    if multi_label:
        # decided on the logits: sigmoid(x) > t  <=>  x > logit(t), and logit(0.5) = 0 is evaluation's rule exactly
        cut = math.log(threshold / (1 - threshold)) if 0 < threshold < 1 else (-math.inf if threshold == 0 else math.inf)
        chosen = logits > cut
    else:
        best = logits.argmax(dim=-1)
    for r in range(logits.shape[0]):
        ranked = [{"label": names[i], "score": float(s)} for s, i in zip(top_scores[r].tolist(), top_ids[r].tolist())]
        if multi_label:
            ids = sorted(chosen[r].nonzero().flatten().tolist(), key=lambda i: -float(probs[r, i]))
            out.append({"label": [names[i] for i in ids], "score": [float(probs[r, i]) for i in ids], "top_k": ranked})
        else:
            i = int(best[r])
            out.append({"label": names[i], "score": float(probs[r, i]), "top_k": ranked})
    return out
