"""``--strategy contrastive``'s first phase: SetFit-style contrastive fine-tuning of the backbone on label pairs of
the training split (``tuning.contrastive``), then the run fits the head on the frozen, tuned backbone
(``fit(..., init_backbone=path)``; the strategy trains no backbone group, so the feature cache applies).

``contrastive_phase`` reads the data as the fine-tune will (``--shots`` included), builds the backbone and its
training preprocessing as the fine-tune does, trains, and writes ``output_dir/contrastive/``:

* ``backbone.safetensors``: the tuned ``backbone.state_dict()``, the file ``init_backbone`` names;
* ``contrastive.json``: ``settings`` (what decides the result: model, weights, pooling, the ``contrastive_*``
  options, seed, batch size, processes, and a digest of the training examples' labels and count) and ``phase``
  (its numbers; null until it finishes).

A later run with the same settings (a resumed fine-tune, the same command again) reuses the finished phase. The
phase is short (few labelled examples) and keeps no checkpoint: interrupted, it starts over on the next run.
"""
from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

from ..errors import HFTransferError
from ..files import CONTRASTIVE_DIR, save_safetensors, write_json
from ..models.factory import create_backbone
from ..training.inputs import audio_kwargs
from ..training.loaders import pipeline_kwargs
from ..training.runtime import RunInterrupted, check_ranks_in_sync, from_main_process
from ..training.setup import load_bundle
from ..tuning.contrastive import contrastive_finetune, contrastive_steps
from .dapt import BACKBONE_NAME, finished_phase

RECORD_NAME = "contrastive.json"
SETTING_FIELDS = ("model_name_or_path", "weights", "pooling", "contrastive_iterations", "contrastive_epochs",
                  "contrastive_learning_rate", "seed", "per_device_train_batch_size", "max_seq_length", "decode_size",
                  "crop_scale", "color_jitter")


class ContrastiveInterrupted(RunInterrupted):
    """SIGTERM / SIGINT during the contrastive phase, which keeps no checkpoint."""

    def message(self) -> str:
        return (f"interrupted by {signal.Signals(self.signum).name} during the contrastive phase (step {self.step}): "
                "it keeps no checkpoint; the same command runs it again from the start")


def phase_settings(cfg, accelerator, labels: list[int]) -> dict:
    """What decides the phase's result, as JSON values (as read back from ``contrastive.json``)."""
    digest = hashlib.sha256(json.dumps(labels).encode()).hexdigest()
    settings = {name: getattr(cfg, name, None) for name in SETTING_FIELDS}
    settings.update(processes=accelerator.num_processes, mixed_precision=str(accelerator.mixed_precision),
                    examples=len(labels), labels_sha256=digest)
    return json.loads(json.dumps(settings))


def contrastive_phase(cfg, modality: str, accelerator, output_dir: Path, stop=None) -> tuple[Path, dict]:
    """Run (or reuse) the contrastive phase; returns the tuned backbone's weights file and the phase's record.
    Every process calls this; the main process writes."""
    from accelerate.utils import set_seed

    bundle = load_bundle(cfg, modality, accelerator, data_seed=None)
    if bundle.multi_label:
        raise HFTransferError("--strategy contrastive pairs examples by their single label: the data is multi-label; "
                              "use another --strategy")
    folder = Path(output_dir) / CONTRASTIVE_DIR
    set_seed(cfg.seed)  # --weights random: the same initial backbone every time
    backbone = create_backbone(modality, cfg.model_name_or_path, weights=cfg.weights, pooling=cfg.pooling,
                               **audio_kwargs(cfg, modality))
    pipeline = backbone.data_pipeline(**pipeline_kwargs(cfg, modality))
    with accelerator.main_process_first():
        train = pipeline.prepare(bundle.train, bundle.input_column, "train")
    labels = [int(label) for label in train["labels"]]
    settings = phase_settings(cfg, accelerator, labels)
    earlier = from_main_process(accelerator, finished_phase(folder, settings, RECORD_NAME)
                                if accelerator.is_main_process else None)
    if earlier is not None:
        accelerator.print(f"contrastive phase: reusing the finished phase in {folder} (same settings)")
        return folder / BACKBONE_NAME, {**earlier, "reused": True}
    if accelerator.is_main_process:
        (folder / BACKBONE_NAME).unlink(missing_ok=True)
        write_json(folder / RECORD_NAME, {"settings": settings, "phase": None})
    pairs = 2 * cfg.contrastive_iterations * len(labels)
    _, steps = contrastive_steps(pairs, batch_size=cfg.per_device_train_batch_size, epochs=cfg.contrastive_epochs,
                                 num_processes=accelerator.num_processes)
    accelerator.print(f"contrastive phase: {pairs} label pairs of {len(labels)} training examples "
                      f"({cfg.contrastive_iterations} positive + {cfg.contrastive_iterations} negative each), "
                      f"{cfg.contrastive_epochs} epoch(s), {steps} steps, lr {cfg.contrastive_learning_rate:g}")
    in_training = getattr(stop, "in_training", False)
    if stop is not None:  # a signal now sets a flag: the phase stops after its step
        stop.in_training = True
    try:
        result = contrastive_finetune(
            backbone, pipeline.train_view(train, bundle.input_column), pipeline.collate, labels,
            accelerator=accelerator, iterations=cfg.contrastive_iterations, epochs=cfg.contrastive_epochs,
            learning_rate=cfg.contrastive_learning_rate, batch_size=cfg.per_device_train_batch_size, seed=cfg.seed,
            set_epoch=pipeline.set_epoch, stop=stop)
    finally:
        if stop is not None:
            stop.in_training = in_training
    signum = result.pop("stopped")
    if signum:
        raise ContrastiveInterrupted(signum, 0, result["steps"], None)
    check_ranks_in_sync(accelerator, backbone)  # DDP kept every rank's tuned backbone equal (each loads main's file)
    record = {"iterations": cfg.contrastive_iterations, "learning_rate": cfg.contrastive_learning_rate,
              "examples": len(labels), "loss": "CosineSimilarityLoss (sentence-transformers)", **result}
    if accelerator.is_main_process:  # the weights first: the recorded phase marks them complete
        save_safetensors(folder / BACKBONE_NAME, {k: v.detach().cpu().contiguous().clone()
                                                  for k, v in backbone.state_dict().items()})
        write_json(folder / RECORD_NAME, {"settings": settings, "phase": record})
    accelerator.wait_for_everyone()
    accelerator.print(f"contrastive phase: pair loss {result['loss_start']:.4f} (first tenth of the steps) -> "
                      f"{result['loss_end']:.4f} (last tenth) in {result['runtime']:.1f}s -> {folder / BACKBONE_NAME}")
    return folder / BACKBONE_NAME, record
