"""``--strategy contrastive``'s phase (``runs.backbone_phase``): SetFit-style contrastive fine-tuning of the backbone
on label pairs of the training split (``tuning.contrastive``), written to ``output_dir/contrastive/``; then the run
fits the head on the frozen, tuned backbone."""
from __future__ import annotations

from pathlib import Path

from ..tuning.contrastive import contrastive_finetune, contrastive_steps
from .backbone_phase import BackbonePhase, run_phase


def plan(cfg, labels: list[int], processes: int) -> tuple[str, dict]:
    pairs = 2 * cfg.contrastive_iterations * len(labels)
    _, steps = contrastive_steps(pairs, batch_size=cfg.per_device_train_batch_size, epochs=cfg.contrastive_epochs,
                                 num_processes=processes)
    line = (f"{pairs} label pairs of {len(labels)} training examples ({cfg.contrastive_iterations} positive + "
            f"{cfg.contrastive_iterations} negative each), {cfg.contrastive_epochs} epoch(s), {steps} steps, lr "
            f"{cfg.contrastive_learning_rate:g}")
    return line, {"iterations": cfg.contrastive_iterations, "epochs": cfg.contrastive_epochs,
                  "learning_rate": cfg.contrastive_learning_rate, "batch_size": cfg.per_device_train_batch_size}


CONTRASTIVE = BackbonePhase(name="contrastive", options=("contrastive_iterations", "contrastive_epochs",
                                                         "contrastive_learning_rate"),
                            plan=plan, tune=contrastive_finetune, loss="CosineSimilarityLoss (sentence-transformers)")


def contrastive_phase(cfg, modality: str, accelerator, output_dir: Path, stop=None) -> tuple[Path, dict]:
    """Run (or reuse) the contrastive phase; returns the tuned backbone's weights file and the phase's record."""
    return run_phase(CONTRASTIVE, cfg, modality, accelerator, output_dir, stop)
