"""What a run leaves in its output_dir: the best epoch's model and predictions, then ``all_results.json``.

During training the best epoch so far is kept in ``best_model/`` (model, its eval metrics and
per-example predictions); at the end ``write_run_outputs`` copies it to ``output_dir`` and writes the
results record the card and report read.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import HFTransferError
from ..files import (
    ADAPTER_DIR,
    BEST_DIR,
    CONFIG_NAME,
    EVAL_RESULTS_NAME,
    PREDICTIONS_NAME,
    TEST_PREDICTIONS_NAME,
    atomic_dir,
    copy_file,
    read_json,
    write_json,
    write_jsonl,
)
from ..records import BackboneChoice, EpochRecord, RunDescription, RunResults


def save_best_epoch(model, output_dir: Path, metrics: dict, records: list[dict]) -> Path:
    """Replace ``best_model/`` with ``model``, its ``eval_*`` metrics and its per-example predictions, as one unit."""
    with atomic_dir(output_dir / BEST_DIR) as tmp:
        model.save_pretrained(tmp)
        write_json(tmp / EVAL_RESULTS_NAME, {f"eval_{k}": v for k, v in metrics.items()})
        write_jsonl(tmp / PREDICTIONS_NAME, sorted(records, key=lambda r: r["index"]))
    return output_dir / BEST_DIR


def export_best_model(output_dir: Path) -> Path:
    """Copy ``best_model/`` (the model, its eval results and predictions, a LoRA run's adapter) into ``output_dir``:
    the folder ``from_pretrained``, timm / transformers and ``hftransfer predict`` read. Returns ``best_model/``."""
    best = output_dir / BEST_DIR
    if not best.is_dir():
        raise HFTransferError("no epoch finished, so there is no model to export: train for at least one epoch")
    for item in best.iterdir():
        if item.is_file():
            copy_file(item, output_dir / item.name)
    adapter = output_dir / ADAPTER_DIR
    if (best / ADAPTER_DIR).is_dir():  # a LoRA run's peft adapter, beside the merged model
        shutil.rmtree(adapter, ignore_errors=True)
        shutil.copytree(best / ADAPTER_DIR, adapter)
    elif (adapter / CONFIG_NAME).is_file():  # left by an earlier LoRA run in this folder: not these weights
        shutil.rmtree(adapter)
    return best


def write_run_outputs(output_dir: Path, state, bundle, timing: dict, world_size: int, description: RunDescription,
               test: tuple[dict, list[dict]] | None = None, backbone_choice: BackboneChoice | None = None,
               sharding: str | None = None) -> RunResults:
    """Copy the best epoch's model to ``output_dir`` and write ``all_results.json`` (with ``test_*`` metrics
    and ``test_predictions.jsonl`` when ``test`` holds the exported model's test metrics and predictions, and
    how ``--model_name_or_path auto`` chose the backbone when ``backbone_choice`` is given)."""
    best = export_best_model(output_dir)
    eval_results = read_json(best / EVAL_RESULTS_NAME)
    per_class = eval_results.pop("eval_per_class", [])
    results = RunResults(
        metrics=eval_results,
        eval_per_class={bundle.id2label[i]: m for i, m in enumerate(per_class)},
        best_epoch=state.best_epoch,
        epochs=state.epoch,
        train_samples=len(bundle.train),
        train_loss=state.history[-1]["train_loss"] if state.history else None,
        world_size=world_size,
        sharding=sharding,
        history=[EpochRecord.from_dict(h) for h in state.history],
        transfer=description,
        backbone_choice=backbone_choice,
        best_step=state.best_step,
        exported_weights=state.best_weights,
        stop_reason=state.stop_reason,
        **timing,
    )
    if test is not None:
        metrics, records = test
        per_class = metrics.pop("per_class", [])
        results.test_metrics = {f"test_{k}": v for k, v in metrics.items()}
        results.test_per_class = {bundle.id2label[i]: m for i, m in enumerate(per_class)}
        write_jsonl(output_dir / TEST_PREDICTIONS_NAME, sorted(records, key=lambda r: r["index"]))
    results.write(output_dir)
    return results
