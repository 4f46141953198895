"""A whole recipe run: prepare the output folder, ``fit``, compare with training from scratch, report, publish.

The layers below do the work: ``training`` (the loop), ``scratch`` (the from-scratch twins),
``report`` and ``card`` (what the run shows), ``hub`` (publishing).
"""
from __future__ import annotations

from .card import write_model_card
from .checkpoint import prepare_output_dir
from .config import TrainConfig
from .errors import HFTransferError
from .hub import push_output_dir
from .report import write_report
from .runtime import configure_threads, create_accelerator
from .scratch import compare_with_scratch
from .training import fit


def train(cfg: TrainConfig, modality: str) -> dict:
    """Run a fine-tune described by ``cfg``, export the best model and its report to ``cfg.output_dir``.

    With ``compare_scratch`` the same architecture is then trained from random init with the same
    budget (``scratch_seeds`` times, on the same data split) and the transfer gain is added to
    ``all_results.json`` and the model card. Returns ``all_results`` (empty on other processes).
    """
    cfg.validate()
    accelerator = create_accelerator(cfg)
    threads = configure_threads(cfg.num_threads, accelerator)
    output_dir = prepare_output_dir(cfg.output_dir, cfg.overwrite_output_dir, bool(cfg.resume_from_checkpoint),
                                    accelerator.is_main_process)
    results = fit(cfg, modality, accelerator, output_dir, threads)
    if cfg.compare_scratch:
        compare_with_scratch(cfg, modality, accelerator, output_dir, threads, results)
    failure = None
    if accelerator.is_main_process:
        write_report(output_dir)
        write_model_card(output_dir, repo_id=cfg.hub_model_id)
        if cfg.push_to_hub:
            # the local output_dir is complete before any network call: a failed push loses nothing
            try:
                push_output_dir(output_dir, cfg.hub_model_id, cfg.hub_private, cfg.hub_revision, cfg.hub_create_pr)
            except HFTransferError as e:
                failure = e  # raised after the barrier, so the other ranks are not left waiting
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if failure is not None:
        raise failure
    return results.to_dict() if results is not None else {}
