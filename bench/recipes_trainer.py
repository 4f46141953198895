"""The ``trainer`` row of ``bench/recipes.py``: ``bench/trainer_baseline.py`` scored with accuracy *and* macro-F1.

    python bench/recipes_trainer.py [--image_size N] TRAINER_BASELINE_FLAGS...

Runs ``trainer_baseline.main`` unchanged (HF ``Trainer``, transformers' example-script style, no hftransfer
code) with two additions, both outside its training code:

* its ``compute_metrics`` is replaced by one that also returns macro-F1 (scikit-learn, over every label,
  as the recipes compute it); the final ``trainer.evaluate()`` is the only evaluation (``eval_strategy="no"``),
  so the last metrics seen are the scored split's, and ``eval_f1`` is added to ``--results_file``;
* ``--image_size N`` (image task) builds timm's train / eval transforms at N x N pixels instead of the
  model's 224 (what setting the image processor's size does in the example script), for small images
  such as 8x8 digits where 224 costs 12x the compute of the recipe rows' 64.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trainer_baseline  # noqa: E402  (bench/trainer_baseline.py)

LAST: dict = {}


def compute_metrics(eval_pred):
    import numpy as np
    from sklearn.metrics import f1_score

    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    preds = np.argmax(logits, axis=-1)
    out = {"accuracy": float((preds == labels).mean()),
           "f1": float(f1_score(labels, preds, labels=list(range(logits.shape[-1])), average="macro", zero_division=0))}
    LAST.clear()
    LAST.update(out, samples=int(len(labels)))
    return out


def patch_image_size(size: int) -> None:
    import timm.data

    original = timm.data.create_transform

    def create_transform(*args, **kwargs):
        kwargs["input_size"] = (3, size, size)
        return original(*args, **kwargs)

    timm.data.create_transform = create_transform


def main(argv: list[str]) -> int:
    argv = list(argv)
    if "--image_size" in argv:
        i = argv.index("--image_size")
        patch_image_size(int(argv[i + 1]))
        del argv[i:i + 2]
    trainer_baseline.compute_metrics = compute_metrics  # main() looks the name up when it builds the Trainer
    results = trainer_baseline.main(argv)
    if not results:
        return 1
    results.update(eval_f1=LAST.get("f1"), eval_samples_scored=LAST.get("samples"))
    args = trainer_baseline.parse_args(argv)
    path = Path(args.results_file or Path(args.output_dir) / "baseline_results.json")
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"eval_accuracy": results["eval_accuracy"], "eval_f1": results["eval_f1"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
