"""A phase before the run that tunes the backbone alone, then the run fits the head on the frozen, tuned backbone
(``fit(..., init_backbone=path)``; the strategy trains no backbone group, so the feature cache applies):
``--strategy contrastive`` (SetFit's label pairs) and ``--strategy episodic`` (prototypical episodes).

``run_phase`` reads the data as the fine-tune will (``--shots`` included), builds the backbone and its training
preprocessing as the fine-tune does, trains it with the phase's own ``tuning`` function, and writes
``output_dir/<phase>/``:

* ``backbone.safetensors``: the tuned ``backbone.state_dict()``, the file ``init_backbone`` names;
* ``<phase>.json``: ``settings`` (what decides the result: model, weights, pooling, the phase's options, seed, batch
  size, processes, and a digest of the training examples' labels and count) and ``phase`` (its numbers; null until
  it finishes).

A later run with the same settings (a resumed fine-tune, the same command again) reuses the finished phase. The
phase is short (few labelled examples) and keeps no checkpoint: interrupted, it starts over on the next run.
"""
from __future__ import annotations

import hashlib
import json
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import HFTransferError
from ..files import save_safetensors, write_json
from ..models.factory import create_backbone
from ..training.inputs import audio_kwargs
from ..training.loaders import pipeline_kwargs
from ..training.runtime import RunInterrupted, check_ranks_in_sync, from_main_process
from ..training.setup import load_bundle
from .dapt import BACKBONE_NAME, finished_phase

# what decides every phase's result besides its own options
COMMON_SETTINGS = ("model_name_or_path", "weights", "pooling", "seed", "per_device_train_batch_size", "max_seq_length",
                   "decode_size", "crop_scale", "color_jitter")


@dataclass(frozen=True)
class BackbonePhase:
    """One kind of phase: its name (the strategy, the folder, ``<name>.json``), the options that decide its result,
    ``plan(cfg, labels, processes)`` -> (the line printed before it trains, the keyword arguments of ``tune``), and
    ``tune(backbone, examples, collate, labels, *, accelerator, seed, set_epoch, stop, **planned)`` -> its numbers."""

    name: str
    options: tuple[str, ...]
    plan: Callable[..., tuple[str, dict]]
    tune: Callable[..., dict]
    loss: str  # the loss's name, as the record and the card give it

    @property
    def record_name(self) -> str:
        return f"{self.name}.json"


class PhaseInterrupted(RunInterrupted):
    """SIGTERM / SIGINT during a backbone phase, which keeps no checkpoint."""

    def __init__(self, phase: str, signum: int, step: int):
        self.phase = phase
        super().__init__(signum, 0, step, None)

    def message(self) -> str:
        return (f"interrupted by {signal.Signals(self.signum).name} during the {self.phase} phase (step {self.step}): "
                "it keeps no checkpoint; the same command runs it again from the start")


def phase_settings(phase: BackbonePhase, cfg, accelerator, labels: list[int]) -> dict:
    """What decides the phase's result, as JSON values (as read back from its record)."""
    digest = hashlib.sha256(json.dumps(labels).encode()).hexdigest()
    settings = {name: getattr(cfg, name, None) for name in COMMON_SETTINGS + phase.options}
    settings.update(processes=accelerator.num_processes, mixed_precision=str(accelerator.mixed_precision),
                    examples=len(labels), labels_sha256=digest)
    return json.loads(json.dumps(settings))


def run_phase(phase: BackbonePhase, cfg, modality: str, accelerator, output_dir: Path, stop=None) -> tuple[Path, dict]:
    """Run (or reuse) ``phase``; returns the tuned backbone's weights file and the phase's record. Every process
    calls this; the main process writes."""
    from accelerate.utils import set_seed

    bundle = load_bundle(cfg, modality, accelerator, data_seed=None)
    if bundle.multi_label:
        raise HFTransferError(f"--strategy {phase.name} needs one label per example: the data is multi-label; use "
                              "another --strategy")
    folder = Path(output_dir) / phase.name
    set_seed(cfg.seed)  # --weights random: the same initial backbone every time
    backbone = create_backbone(modality, cfg.model_name_or_path, weights=cfg.weights, pooling=cfg.pooling,
                               **audio_kwargs(cfg, modality))
    pipeline = backbone.data_pipeline(**pipeline_kwargs(cfg, modality))
    with accelerator.main_process_first():
        train = pipeline.prepare(bundle.train, bundle.input_column, "train")
    labels = [int(label) for label in train["labels"]]
    settings = phase_settings(phase, cfg, accelerator, labels)
    earlier = from_main_process(accelerator, finished_phase(folder, settings, phase.record_name)
                                if accelerator.is_main_process else None)
    if earlier is not None:
        accelerator.print(f"{phase.name} phase: reusing the finished phase in {folder} (same settings)")
        return folder / BACKBONE_NAME, {**earlier, "reused": True}
    line, planned = phase.plan(cfg, labels, accelerator.num_processes)  # refuses bad settings before any write
    if accelerator.is_main_process:
        (folder / BACKBONE_NAME).unlink(missing_ok=True)
        write_json(folder / phase.record_name, {"settings": settings, "phase": None})
    accelerator.print(f"{phase.name} phase: {line}")
    in_training = getattr(stop, "in_training", False)
    if stop is not None:  # a signal now sets a flag: the phase stops after its step
        stop.in_training = True
    try:
        result = phase.tune(backbone, pipeline.train_view(train, bundle.input_column), pipeline.collate, labels,
                            accelerator=accelerator, seed=cfg.seed, set_epoch=pipeline.set_epoch, stop=stop, **planned)
    finally:
        if stop is not None:
            stop.in_training = in_training
    signum = result.pop("stopped")
    if signum:
        raise PhaseInterrupted(phase.name, signum, result["steps"])
    check_ranks_in_sync(accelerator, backbone)  # DDP kept every rank's tuned backbone equal (each loads main's file)
    record = {**{k: v for k, v in planned.items() if k != "batch_size"}, "examples": len(labels), "loss": phase.loss,
              **result}
    if accelerator.is_main_process:  # the weights first: the recorded phase marks them complete
        save_safetensors(folder / BACKBONE_NAME, {k: v.detach().cpu().contiguous().clone()
                                                  for k, v in backbone.state_dict().items()})
        write_json(folder / phase.record_name, {"settings": settings, "phase": record})
    accelerator.wait_for_everyone()
    accelerator.print(f"{phase.name} phase: loss {result['loss_start']:.4f} (first tenth of the steps) -> "
                      f"{result['loss_end']:.4f} (last tenth) in {result['runtime']:.1f}s -> {folder / BACKBONE_NAME}")
    return folder / BACKBONE_NAME, record
