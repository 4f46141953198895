"""A whole recipe run: lock the output folder, ``fit``, compare with training from scratch, export, report, publish.

The layers below do the work: ``training`` (the loop), ``scratch`` (the from-scratch twins),
``export`` (``--export_onnx``: the ONNX graphs), ``report`` and ``card`` (what the run shows), ``hub``
(publishing), ``checkpoint`` (the folder, its lock and checkpoints), ``runtime`` (processes and stop signals).
"""
from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig
from ..config.options import AUTO_MODEL
from ..errors import HFTransferError
from ..evaluation.report import write_report
from ..hub.card import write_model_card
from ..hub.push import check_push_target, push_output_dir
from ..models.onnx_export import DEFAULT_OPSET
from ..training.checkpoint import RunLock, check_output_dir
from ..training.loop import fit
from ..training.runtime import StopSignals, any_process, configure_threads, create_accelerator
from .auto_backbone import choose_backbone
from .export import export_run
from .fewshot import record_few_shot, run_draws
from .scratch import compare_with_scratch
from .source_only import compare_with_source_only
from .tune import publish_study, tune_recipe


def train(cfg: TrainConfig, modality: str) -> dict:
    """Run a fine-tune described by ``cfg``, export the best model and its report to ``cfg.output_dir``.

    With ``compare_scratch`` the same architecture is then trained from random init with the same
    budget (``scratch_seeds`` times, on the same data split) and the transfer gain is added to
    ``all_results.json`` and the model card. Returns ``all_results`` (empty on other processes).
    SIGTERM / SIGINT save a checkpoint and raise ``runtime.RunInterrupted``. With ``--model_name_or_path
    auto`` the candidates are ranked first and the best one is fine-tuned (``auto.choose_backbone``); with
    ``--tune`` a hyper-parameter search picks the recipe that is then fine-tuned (``tune.tune_recipe``). With
    ``--export_onnx`` the exported model is then written as ONNX (and int8) to ``output_dir/onnx``
    (``export.export_run``); a failed export ends the run with its error after the report and card are written.
    With ``--domain_adaptation dapt[+method]`` the encoder is first pretrained on the target text
    (``dapt.pretrain_on_target``) and the fine-tune starts from it; with a source-only twin
    (``--compare_source_only``), whichever of the two the label-free criterion prefers is exported
    (``source_only.compare_with_source_only``). With ``--shots K --shot_draws N``, few-shot draws 1..N-1 follow
    (``fewshot.run_draws``).
    """
    cfg.validate(modality)
    stop = StopSignals().install()
    accelerator = create_accelerator(cfg)
    lock, locked_out = None, None
    if accelerator.is_main_process:
        try:
            lock = RunLock(cfg.output_dir).acquire()
        except HFTransferError as e:
            locked_out = e
    if any_process(accelerator, locked_out is not None):  # every rank stops, none waits for the others
        stop.uninstall()
        raise locked_out or HFTransferError("the main process could not lock output_dir")
    try:
        repo_id = check_hub_target(cfg, accelerator)  # before the first step, and before an earlier run is touched
        output_dir = check_output_dir(cfg.output_dir, cfg.overwrite_output_dir, bool(cfg.resume_from_checkpoint))
        threads = configure_threads(cfg.num_threads, accelerator)
        tuned = cfg.tune
        cfg, choice = choose_recipe(cfg, modality, accelerator, output_dir, threads, stop)
        results = fit_recipe(cfg, modality, accelerator, output_dir, threads, stop, choice)
        if cfg.compare_scratch:
            compare_with_scratch(cfg, modality, accelerator, output_dir, threads, results, stop)
        if cfg.runs_source_only_twin:
            compare_with_source_only(cfg, modality, accelerator, output_dir, threads, results, stop)
        few_shot = run_draws(cfg, accelerator, output_dir, results,  # --shots: draws 1..N-1, untracked
                             lambda draw_cfg, folder: fit_recipe(draw_cfg, modality, accelerator, folder, threads, stop,
                                                                 None, track=False))
        failure = (finish_on_main(cfg, output_dir, repo_id, tuned, results, few_shot) if accelerator.is_main_process
                   else None)
        accelerator.wait_for_everyone()  # the failure is raised after the barrier: no rank is left waiting
        if failure is not None:
            raise failure
        out = results.to_dict() if results is not None else {}
        return {**out, "few_shot": few_shot} if few_shot else out
    finally:
        try:
            # also when interrupted (every rank stopped after the same step) or failed: the trackers flush
            # what they logged and close their runs
            accelerator.end_training()
        finally:
            if lock is not None:
                lock.release()
            stop.uninstall()


def fit_recipe(cfg: TrainConfig, modality: str, accelerator, output_dir: Path, threads: int, stop, choice,
               track: bool = True):
    """The run's fit; with ``--domain_adaptation dapt[+method]`` the encoder first learns the target's text
    (masked-LM pretraining, ``dapt.pretrain_on_target``) and the fine-tune starts from it; with ``--strategy
    contrastive`` (``episodic``) the backbone first learns from label pairs (prototypical episodes) in a phase of its
    own (``backbone_phase``) and the head then trains on it, frozen."""
    init_backbone, dapt, phase = None, None, None
    if cfg.continued_pretraining:
        from .dapt import pretrain_on_target  # transformers' masked-LM classes load only for these runs

        init_backbone, dapt = pretrain_on_target(cfg, modality, accelerator, output_dir, stop)
    if cfg.strategy == "contrastive":
        from .contrastive import contrastive_phase  # setfit and sentence-transformers load only for these runs

        init_backbone, phase = contrastive_phase(cfg, modality, accelerator, output_dir, stop)
    elif cfg.strategy == "episodic":
        from .episodic import episodic_phase

        init_backbone, phase = episodic_phase(cfg, modality, accelerator, output_dir, stop)
    results = fit(cfg, modality, accelerator, output_dir, threads, stop=stop, track=track, backbone_choice=choice,
                  init_backbone=init_backbone)
    if results is not None and (dapt is not None or phase is not None):
        if dapt is not None:
            results.domain_adaptation.dapt = dapt
        if phase is not None:  # results.transfer.contrastive / .episodic
            setattr(results.transfer, cfg.strategy, phase)
        results.write(output_dir)
    return results


def finish_on_main(cfg: TrainConfig, output_dir: Path, repo_id: str | None, tuned: bool, results,
                   few_shot: dict | None = None) -> HFTransferError | None:
    """The main process's last steps: the ONNX export (``--export_onnx``), the study, report and card, the push.
    Returns the user error that ends the run (raised by every rank after the barrier), else None."""
    failure = None
    if cfg.export_onnx:
        try:  # reads the exported model back from output_dir; records itself in all_results.json
            record = export_run(output_dir, quantize=cfg.quantize, opset=cfg.onnx_opset or DEFAULT_OPSET,
                                max_accuracy_drop=cfg.max_int8_accuracy_drop)
            if results is not None:
                results.onnx = record
        except HFTransferError as e:
            failure = HFTransferError(f"the run finished, but its ONNX export failed: {e}")
    record_few_shot(output_dir, few_shot)  # --shots: after the export's rewrite, before the card and the push
    if tuned:
        publish_study(output_dir)
    write_report(output_dir)
    write_model_card(output_dir, repo_id=repo_id)
    if cfg.push_to_hub and failure is None:
        # the local output_dir is complete before any network call: a failed push loses nothing
        try:
            push_output_dir(output_dir, repo_id, cfg.hub_private, cfg.hub_revision, cfg.hub_create_pr)
        except HFTransferError as e:
            failure = e
    return failure


def choose_recipe(cfg: TrainConfig, modality: str, accelerator, output_dir: Path, threads: int, stop):
    """What the run fits, and how its backbone was chosen: with ``--model_name_or_path auto`` the best-ranked
    backbone (``auto_backbone.choose_backbone``), with ``--tune`` the best recipe of a search
    (``tune.tune_recipe``); else ``cfg`` as given."""
    choice = None
    if cfg.model_name_or_path == AUTO_MODEL:  # from here on cfg names the chosen backbone
        cfg, choice = choose_backbone(cfg, modality, accelerator, output_dir)
    if cfg.tune:  # from here on cfg is the best recipe the search found, --tune off
        cfg, choice = tune_recipe(cfg, modality, accelerator, output_dir, threads, stop, backbone_choice=choice)
    return cfg, choice


def check_hub_target(cfg: TrainConfig, accelerator) -> str | None:
    """With ``--push_to_hub``: check token and repo on the main process, as transformers' ``Trainer`` does at
    start-up, so a push that cannot succeed fails now, not after training; the repo id to push to (and
    name in the card). Every rank raises the main process's failure: none is left waiting."""
    if not cfg.push_to_hub:
        return cfg.hub_model_id
    repo_id, failure = cfg.hub_model_id, None
    if accelerator.is_main_process:
        try:
            repo_id = check_push_target(cfg.hub_model_id, cfg.hub_private, cfg.hub_revision, cfg.hub_create_pr,
                                        output_dir_name=Path(cfg.output_dir).name)
        except HFTransferError as e:
            failure = e
    if any_process(accelerator, failure is not None):
        raise failure or HFTransferError("the main process could not check the --push_to_hub target: see its error")
    return repo_id
