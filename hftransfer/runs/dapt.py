"""``--domain_adaptation dapt``'s phase of a run: masked-language-model pretraining on the target text, then the
fine-tune starts from the adapted encoder (``fit(..., init_backbone=path)``).

``pretrain_on_target`` reads the run's data as the fine-tune will, holds out a seeded 10% (at most 200) of the
unlabelled target texts to score the phase, trains on the rest (plus the source training texts with
``--dapt_source_text``) through ``adaptation.dapt.continue_pretraining``, and writes ``output_dir/dapt/``:

* ``backbone.safetensors``: the adapted ``backbone.state_dict()``, the file ``init_backbone`` names;
* ``dapt.json``: ``settings`` (everything that determines the result: model, weights, pooling, the ``dapt_*``
  options, seed, lengths and batch sizes, processes, the data options, and a digest of the texts themselves)
  and ``phase`` (the ``DaptPhase`` record; null while the phase has not finished);
* ``checkpoint/``: the phase's checkpoint while it runs (gone once it finishes).

A later run whose settings match reuses the finished phase (``reused``); a phase interrupted with the same
settings continues from its checkpoint; other settings clear the folder and train afresh.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
from pathlib import Path

from ..adaptation.dapt import continue_pretraining, dapt_steps
from ..errors import HFTransferError
from ..files import DAPT_DIR, read_json, save_safetensors, write_json
from ..models.bundled import bundled_text_model_path
from ..models.factory import create_backbone
from ..records import DaptPhase
from ..training.runtime import RunInterrupted, from_main_process
from ..training.setup import load_bundle

BACKBONE_NAME = "backbone.safetensors"
RECORD_NAME = "dapt.json"
HELD_OUT_SHARE = 0.1
MAX_HELD_OUT = 200
# the run's options that decide the phase's result (besides the texts, whose digest the settings hold too)
SETTING_FIELDS = ("model_name_or_path", "weights", "pooling", "dapt_epochs", "dapt_max_steps", "dapt_learning_rate",
                  "dapt_mlm_probability", "dapt_source_text", "seed", "max_seq_length", "per_device_train_batch_size",
                  "gradient_accumulation_steps", "dataset_name", "dataset_config_name", "train_file",
                  "validation_file", "validation_fraction", "max_train_samples", "text_column_name",
                  "label_column_name", "label_names", "text_encoding", "target_dataset_name", "target_train_file")


class DaptInterrupted(RunInterrupted):
    """SIGTERM / SIGINT during the DAPT phase; ``checkpoint`` is the phase's, which the same command continues."""

    def message(self) -> str:
        return (f"interrupted by {signal.Signals(self.signum).name} during DAPT at step {self.step}: checkpoint saved "
                f"to {self.checkpoint}; run the same command again to continue from it")


def split_held_out(texts: list[str], seed: int) -> tuple[list[str], list[str]]:
    """(texts to train on, held-out texts): a seeded 10% (at least 1 of 2 or more, at most 200) held out."""
    count = min(MAX_HELD_OUT, max(1, int(len(texts) * HELD_OUT_SHARE))) if len(texts) >= 2 else 0
    held = set(random.Random(f"dapt-held-out/{seed}").sample(range(len(texts)), count))
    return [t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held]


def dapt_settings(cfg, accelerator, texts: list[str], held_out: list[str]) -> dict:
    """What decides the phase's result, as JSON values: the options, the processes, the texts' digest."""
    digest = hashlib.sha256()
    for text in [*texts, "\0held out\0", *held_out]:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    settings = {name: getattr(cfg, name) for name in SETTING_FIELDS}
    settings.update(processes=accelerator.num_processes, mixed_precision=str(accelerator.mixed_precision),
                    texts=len(texts), held_out_texts=len(held_out), texts_sha256=digest.hexdigest())
    return json.loads(json.dumps(settings))  # as read back from dapt.json (tuples -> lists)


def finished_phase(folder: Path, settings: dict, record_name: str = RECORD_NAME) -> dict | None:
    """The recorded phase of ``folder`` when it finished with these settings and its weights are there (the DAPT
    phase's, or another phase's ``record_name`` beside its ``backbone.safetensors``)."""
    earlier = read_json(folder / record_name) or {}
    if earlier.get("settings") == settings and earlier.get("phase") and (folder / BACKBONE_NAME).is_file():
        return earlier["phase"]
    return None


def start_phase(folder: Path, settings: dict, accelerator) -> None:
    """Clear what an earlier phase of other settings left (its checkpoint included), then record these settings;
    an unfinished phase of the same settings keeps its checkpoint."""
    if accelerator.is_main_process:
        earlier = read_json(folder / RECORD_NAME) or {}
        if earlier.get("settings") != settings:
            shutil.rmtree(folder, ignore_errors=True)
        (folder / BACKBONE_NAME).unlink(missing_ok=True)
        write_json(folder / RECORD_NAME, {"settings": settings, "phase": None})
    accelerator.wait_for_everyone()


def announce(cfg, accelerator, target: int, source: int, held_out: int) -> None:
    per_epoch, steps = dapt_steps(target + source, batch_size=cfg.per_device_train_batch_size, epochs=cfg.dapt_epochs,
                                  max_steps=cfg.dapt_max_steps, num_processes=accelerator.num_processes,
                                  accumulation=accelerator.gradient_accumulation_steps)
    accelerator.print(f"DAPT: masked-language-model pretraining on {target} target + {source} source texts, {steps} "
                      f"steps ({steps / per_epoch:.3g} epochs of {per_epoch}), lr {cfg.dapt_learning_rate:g}, "
                      f"{cfg.dapt_mlm_probability:.0%} of tokens masked; {held_out} held-out target texts score it")


def pretrain_on_target(cfg, modality: str, accelerator, output_dir: Path, stop=None) -> tuple[Path, DaptPhase]:
    """Run (or reuse) the DAPT phase; returns the adapted backbone's weights file and the phase's record.

    ``stop`` (a ``StopSignals``) interrupts the phase after an optimizer step: it checkpoints and raises
    ``DaptInterrupted`` (a ``RunInterrupted``). Every process calls this; the main process writes."""
    if modality != "text":
        raise HFTransferError(f"--domain_adaptation {cfg.domain_adaptation}: dapt is masked-language-model pretraining "
                              "of a text encoder; for images use mcc, self_training, dann or cdan")
    folder = Path(output_dir) / DAPT_DIR
    bundle = load_bundle(cfg, modality, accelerator, data_seed=None)
    if bundle.target is None:
        raise HFTransferError(f"--domain_adaptation {cfg.domain_adaptation} needs unlabelled target text: pass "
                              "--target_train_file or --target_dataset_name")
    target, held_out = split_held_out(list(bundle.target.train[bundle.input_column]), cfg.seed)
    source = list(bundle.train[bundle.input_column]) if cfg.dapt_source_text else []
    settings = dapt_settings(cfg, accelerator, target + source, held_out)
    earlier = from_main_process(accelerator, finished_phase(folder, settings) if accelerator.is_main_process else None)
    if earlier is not None:
        record = DaptPhase.from_dict({**earlier, "reused": True})
        accelerator.print(f"DAPT: reusing the finished phase in {folder} (same settings): held-out masked-LM loss "
                          f"{loss_text(record)}")
        return folder / BACKBONE_NAME, record
    start_phase(folder, settings, accelerator)
    announce(cfg, accelerator, len(target), len(source), len(held_out))
    record, head = run_phase(cfg, accelerator, folder, target, source, held_out, stop)
    accelerator.print(f"DAPT: held-out masked-LM loss {loss_text(record)} ({record.steps} steps in "
                      f"{record.runtime:.1f}s, {head} masked-LM head) -> {folder / BACKBONE_NAME}")
    return folder / BACKBONE_NAME, record


def run_phase(cfg, accelerator, folder: Path, target: list[str], source: list[str], held_out: list[str],
              stop) -> tuple[DaptPhase, str]:
    """Build the backbone as the fine-tune does, pretrain it, save it; (the record, where the MLM head came from)."""
    from accelerate.utils import set_seed

    set_seed(cfg.seed)  # --weights random: the same initial encoder every time
    backbone = create_backbone("text", cfg.model_name_or_path, weights=cfg.weights, pooling=cfg.pooling)
    mlm_source = None
    if cfg.weights == "pretrained":  # its masked-LM head, where the checkpoint has one
        mlm_source = str(bundled_text_model_path(cfg.model_name_or_path) or cfg.model_name_or_path)
    in_training = getattr(stop, "in_training", False)
    if stop is not None:  # a signal now sets a flag: the phase checkpoints after its step, then stops
        stop.in_training = True
    try:
        result = continue_pretraining(
            backbone, target + source, held_out, accelerator=accelerator, work_dir=folder, epochs=cfg.dapt_epochs,
            max_steps=cfg.dapt_max_steps, learning_rate=cfg.dapt_learning_rate,
            batch_size=cfg.per_device_train_batch_size, max_seq_length=cfg.max_seq_length,
            mlm_probability=cfg.dapt_mlm_probability, seed=cfg.seed, stop=stop, mlm_source=mlm_source)
    finally:
        if stop is not None:
            stop.in_training = in_training
    if result["stopped"]:
        raise DaptInterrupted(result["stopped"], int(result["epochs"]), result["steps"], result["checkpoint"])
    record = DaptPhase(target_texts=len(target), source_texts=len(source), held_out_texts=len(held_out),
                       epochs=result["epochs"], steps=result["steps"], learning_rate=cfg.dapt_learning_rate,
                       mlm_probability=cfg.dapt_mlm_probability, max_seq_length=cfg.max_seq_length,
                       **{k: result[k] for k in ("held_out_loss_before", "held_out_loss_after", "train_loss_last",
                                                 "runtime")})
    if accelerator.is_main_process:  # the weights first: dapt.json's phase marks them complete
        save_safetensors(folder / BACKBONE_NAME, {k: v.detach().cpu().contiguous().clone()
                                                  for k, v in backbone.state_dict().items()})
        record_file = read_json(folder / RECORD_NAME) or {}
        write_json(folder / RECORD_NAME, {**record_file, "phase": record.to_dict(), "mlm_head": result["mlm_head"]})
    accelerator.wait_for_everyone()
    return record, result["mlm_head"]


def loss_text(record: DaptPhase) -> str:
    if record.held_out_loss_before is None or record.held_out_loss_after is None:
        return "not measured (no held-out target texts)"
    return f"{record.held_out_loss_before:.4f} -> {record.held_out_loss_after:.4f}"
