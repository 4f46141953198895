"""The training loop: per epoch ``train_one_epoch`` + ``evaluate`` + ``finish_epoch``, then export; ``fit`` runs it.

An explicit loop in the style of accelerate's examples, every accelerate call of an epoch visible here
(``setup`` holds ``prepare``, ``evaluate`` the gathering): each epoch applies the strategy's frozen set
(re-wrapping DDP when it changes), trains with gradient accumulation and the phase-aware schedule
(``train_step`` is one micro-batch, the same code the benchmarks time), evaluates, keeps the best model,
and ``save_state``s a checkpoint that ``--resume_from_checkpoint`` continues exactly. A tracked run
(``--report_to``) also ``accelerator.log``s what ``tracking.RunLog`` holds.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..config import TrainConfig, save_config
from ..data import INDEX_COLUMN
from ..files import CHECKPOINT_DIR, RUN_CONFIG_NAME
from ..records import BackboneChoice, RunResults
from ..tuning.regularizers import L2SP
from ..tuning.strategies import apply_trainable
from . import crash_tests
from .checkpoint import clear_earlier_run, holds_earlier_run, save_checkpoint
from .describe import describe_run
from .evaluate import score_target_test_split, score_test_split
from .feature_cache import fill_feature_cache
from .outputs import write_run_outputs
from .runtime import RunInterrupted, StopSignals, check_ranks_in_sync, mean_over_processes, rewrap_ddp, step_seed
from .selection import EARLY_STOPPING, MAX_STEPS, STOPPED_BY_CALLER, evaluate_and_keep
from .setup import TrainingRun, setup
from .sharding import engine_name
from .target_domain import adaptation_record, measure_domain_gap, prepare_target_epoch
from .tracking import RunLog, continue_tensorboard_after, hparams, init_kwargs


def train_step(accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict,
               l2sp: L2SP | None = None, max_grad_norm: float = 0.0) -> torch.Tensor:
    """One micro-batch: loss (+ L2-SP), backward, and, when gradients sync, clipping and the optimizer step.

    Returns the detached loss. The LR scheduler is stepped by the caller, once per optimizer step.
    """
    batch.pop(INDEX_COLUMN, None)
    with accelerator.accumulate(model):
        # the penalty before the forward: FSDP2 parameters are still the sharded ones its reference matches
        penalty = l2sp(accelerator.unwrap_model(model)) if l2sp is not None else None
        loss = model(**batch).loss
        if penalty is not None:
            loss = loss + penalty
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm > 0:
            accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def train_one_epoch(run: TrainingRun, epoch: int) -> float:
    """Train ``epoch`` (from where a mid-epoch checkpoint left it), evaluating every ``--eval_steps`` with
    ``--eval_strategy steps``; returns the epoch's mean train loss. Ends early at ``--max_steps`` or when an
    evaluation stops the run (early stopping, the caller's ``on_evaluate``)."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    trainable_groups = run.strategy.trainable_groups(epoch)
    if apply_trainable(run.module, trainable_groups, cfg.train_norm, run.strategy.adapter_only):
        run.model = rewrap_ddp(accelerator, run.model)
    share = run.module.num_parameters(trainable_only=True) / run.module.num_parameters()
    accelerator.print(f"epoch {epoch + 1}/{run.num_epochs}: {trainable_groups}/{len(run.group_names)} "
                      f"backbone groups trainable ({share:.1%} of parameters), "
                      f"lr head {run.scheduler.get_last_lr()[-1]:.2e}")
    if run.log is not None and not state.batches_done and run.log.phase_changes(run.strategy, epoch):
        # at the first optimizer step trained this way (mid-epoch resumes logged it before their checkpoint)
        accelerator.log(run.log.phase_values(run.strategy, epoch, run.module), step=state.global_step + 1)
    cached = run.on_cached_features(epoch)
    if cached:
        fill_feature_cache(accelerator, run.model, run.loaders, cache_dir=cfg.feature_cache_dir,
                           dtype_name=cfg.feature_cache_dtype)
    train_dl = run.loaders.cached_train if cached else run.loaders.train
    if run.adaptation is not None:  # self-training: this epoch's pseudo-labels (kept in a resumed epoch's checkpoint)
        prepare_target_epoch(run, epoch)
    run.model.train()
    train_dl.set_epoch(epoch)
    run.loaders.set_epoch(epoch)
    skip = state.batches_done
    if not skip:
        state.epoch_loss_sum, state.epoch_loss_batches = 0.0, 0
    # a streamed loader was restored to its position with the checkpoint: nothing to skip by replay
    loader = accelerator.skip_first_batches(train_dl, skip) if skip and not run.loaders.streamed else train_dl
    bar = tqdm(loader, total=len(train_dl), initial=skip, desc=f"epoch {epoch + 1}", unit="batch",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    for batch in bar:
        # the step's randomness (dropout, mixup) depends on (seed, epoch, batch) only, and augmentation on
        # (seed, epoch, example): a run resumed at any batch repeats the uninterrupted one exactly
        seed = step_seed(cfg.seed, epoch, state.batches_done, accelerator.process_index)
        torch.manual_seed(seed)
        if run.adaptation is not None:  # DANN's reversal schedule: a function of the step, so resumes match
            run.adaptation.progress = state.global_step / max(1, run.total_steps)
            run.adaptation.step = state.global_step
        if run.mixer is not None and not cached:  # mixup / cutmix mix images: never cached features
            batch = run.mixer(batch, seed=seed)
        loss = train_step(accelerator, run.model, run.optimizer, batch, run.l2sp, cfg.max_grad_norm).item()
        state.batches_done += 1
        state.epoch_loss_sum += loss
        state.epoch_loss_batches += 1
        bar.set_postfix(loss=f"{loss:.4f}")
        if run.log is not None:
            run.log.window.add(loss)
        if accelerator.sync_gradients and after_optimizer_step(run, epoch):
            break
    bar.close()
    return mean_over_processes(accelerator, state.epoch_loss_sum, state.epoch_loss_batches)


def after_optimizer_step(run: TrainingRun, epoch: int) -> bool:
    """Log, step the schedule and the EMA, checkpoint and evaluate as due; whether training ends here."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    step = state.global_step + 1  # the optimizer step just taken
    if run.log is not None and run.log.step_due(step):
        # before the scheduler moves them: the learning rates this step trained with
        window_loss = mean_over_processes(accelerator, *run.log.window.take())
        accelerator.log(run.log.step_values(window_loss, run.optimizer, step), step=step)
    run.scheduler.step()
    state.global_step += 1
    if run.ema is not None:
        run.ema.update(run.module, step=state.global_step)
    if state.global_step >= run.total_steps:
        state.stop_reason = state.stop_reason or (MAX_STEPS if run.stops_at_max_steps else None)
    elif cfg.eval_strategy == "steps" and state.global_step % cfg.eval_steps == 0:
        evaluate_and_keep(run, epoch, mean_over_processes(accelerator, state.epoch_loss_sum, state.epoch_loss_batches))
    if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0:
        save_checkpoint(accelerator, run.output_dir, state, cfg.save_total_limit)
    crash_tests.after_step(state.global_step, accelerator.is_main_process)
    stop_if_requested(run, epoch)
    return state.global_step >= run.total_steps or state.stop_reason is not None


def finish_epoch(run: TrainingRun, epoch: int, train_loss: float) -> None:
    """Evaluate at the epoch end (or at the end of a steps-evaluated run), and checkpoint."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    ended = state.global_step >= run.total_steps or epoch + 1 >= run.num_epochs
    last_evaluated = state.history[-1]["step"] if state.history else -1
    if state.stop_reason not in (EARLY_STOPPING, STOPPED_BY_CALLER) and last_evaluated != state.global_step and (
            cfg.eval_strategy == "epoch" or ended):
        evaluate_and_keep(run, epoch, train_loss)  # steps runs: the final weights are scored too
    state.epoch, state.batches_done = epoch + 1, 0
    state.epoch_loss_sum, state.epoch_loss_batches = 0.0, 0
    accelerator.wait_for_everyone()
    if cfg.checkpointing_steps != "no":
        save_checkpoint(accelerator, run.output_dir, state, cfg.save_total_limit)
    stop_if_requested(run, epoch + 1, saved=cfg.checkpointing_steps != "no")


def stop_if_requested(run: TrainingRun, epoch: int, saved: bool = False) -> None:
    """After a SIGTERM / SIGINT on any process: checkpoint (unless just done) and raise ``RunInterrupted``."""
    signum = run.stop.requested(run.accelerator)
    if not signum:
        return
    path = run.output_dir / CHECKPOINT_DIR / f"step_{run.state.global_step}"
    if not saved:
        path = save_checkpoint(run.accelerator, run.output_dir, run.state, run.cfg.save_total_limit)
    raise RunInterrupted(signum, min(epoch, run.num_epochs - 1), run.state.global_step, path)


def prepare_output_dir(run: TrainingRun, backbone_choice: BackboneChoice | None) -> None:
    """Replace an earlier run (``--overwrite_output_dir``), then write ``config.yaml`` (and how auto chose)."""
    cfg, accelerator, output_dir = run.cfg, run.accelerator, run.output_dir
    if accelerator.is_main_process:
        if cfg.overwrite_output_dir and not cfg.resume_from_checkpoint and holds_earlier_run(output_dir):
            # only now that data and model loaded: a command that fails earlier leaves the old run intact
            accelerator.print(f"replacing the earlier run in {output_dir} (--overwrite_output_dir)")
            clear_earlier_run(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, output_dir / RUN_CONFIG_NAME)
        if backbone_choice is not None:
            backbone_choice.write(output_dir)
    accelerator.wait_for_everyone()


def start_tracking(run: TrainingRun, description) -> None:
    """Start the ``--report_to`` trackers; only now, since ``--overwrite_output_dir`` has cleared the old logs."""
    accelerator = run.accelerator
    continue_tensorboard_after(accelerator, run.state.global_step)
    accelerator.init_trackers(run.cfg.project, config=hparams(run.cfg, description), init_kwargs=init_kwargs(run.cfg))
    run.log = RunLog(run.cfg.logging_steps, run.scheduler.steps_per_epoch)


def train_epochs(run: TrainingRun) -> float:
    """Every remaining epoch: train, check the ranks agree, evaluate, keep the best. Returns the training time
    (feature extraction included, like Trainer's ``train_runtime``)."""
    accelerator, train_time = run.accelerator, 0.0
    run.stop.in_training = True  # from here a signal means: checkpoint at the next step, then stop
    for epoch in range(run.state.epoch, run.num_epochs):
        if run.state.stop_reason is not None:  # a resumed run that had already stopped (early stopping)
            break
        epoch_start = time.time()
        train_loss = train_one_epoch(run, epoch)
        train_time += time.time() - epoch_start
        check_ranks_in_sync(accelerator, run.module)
        finish_epoch(run, epoch, train_loss)
    return train_time


def fit(cfg: TrainConfig, modality: str, accelerator: Accelerator, output_dir: Path, threads: int,
        data_seed: int | None = None, stop: StopSignals | None = None, track: bool = False,
        backbone_choice: BackboneChoice | None = None,
        on_evaluate: Callable[[int, dict], bool] | None = None,
        init_backbone: Path | None = None) -> RunResults | None:
    """Train, evaluate every epoch, and export the best epoch; returns the results (main process).

    ``data_seed`` fixes the held-out split and subsets independently of ``cfg.seed``, so from-scratch
    runs with other seeds are scored on exactly the same examples. ``track``: start the accelerator's
    trackers (``--report_to``) and log this run to them; the trainer's run is tracked, its from-scratch
    twins (same accelerator, steps from 0 again) are not. ``backbone_choice`` (``--model_name_or_path
    auto``) is written next to ``config.yaml`` before the first epoch (a resume reuses it) and into
    ``all_results.json``. ``on_evaluate(evaluation, metrics)`` is called on every process after each
    evaluation (1-based count; the validation ``accuracy``, ``f1``, ``loss``, and ``epoch``, ``step``);
    True stops the run there (its best model is still exported): ``--tune`` prunes trials this way.
    ``init_backbone``: backbone weights to start from (``--domain_adaptation dapt``'s continued pretraining).
    """
    registered = len(accelerator._custom_objects)
    try:
        return fit_run(cfg, modality, accelerator, output_dir, threads, data_seed, stop, track, backbone_choice,
                       on_evaluate, init_backbone)
    finally:
        # this fit's scheduler, run state and EMA are checkpointed with it only: a later fit on the same
        # accelerator (the from-scratch twins, --tune's trials and final run) must neither save nor load them
        del accelerator._custom_objects[registered:]


def fit_run(cfg: TrainConfig, modality: str, accelerator: Accelerator, output_dir: Path, threads: int,
            data_seed: int | None, stop: StopSignals | None, track: bool, backbone_choice: BackboneChoice | None,
            on_evaluate: Callable[[int, dict], bool] | None, init_backbone: Path | None) -> RunResults | None:
    """``fit``'s body: setup, the epochs, the test split, the outputs."""
    run = setup(cfg, modality, accelerator, output_dir, data_seed, stop, init_backbone)
    run.on_evaluate = on_evaluate
    if run.resumed_from is not None:
        accelerator.print(f"resumed from {run.resumed_from} at epoch {run.state.epoch}, step {run.state.global_step}")
    prepare_output_dir(run, backbone_choice)
    accelerator.print(f"model: {cfg.model_name_or_path} ({run.module.num_parameters() / 1e6:.1f}M parameters, "
                      f"{len(run.group_names)} layer groups), strategy {cfg.strategy}: {run.strategy_description()}; "
                      f"{run.num_epochs} epochs x {run.scheduler.steps_per_epoch} steps"
                      + (f" (stopping at step {run.total_steps})" if run.stops_at_max_steps else "") + ", "
                      f"{accelerator.num_processes} process(es) on {accelerator.device}, {threads} thread(s)")
    description = describe_run(cfg, modality, run.bundle, run.module, run.strategy, run.group_names,
                               num_epochs=run.num_epochs, total_steps=run.total_steps)
    if track and accelerator.log_with:
        start_tracking(run, description)
    if run.bundle.target is not None:
        measure_domain_gap(run)
    start_time, first_epoch = time.time(), run.state.epoch
    train_time = train_epochs(run)
    runtime = time.time() - start_time
    accelerator.wait_for_everyone()
    test = score_test_split(run)
    target_test = score_target_test_split(run)
    if run.log is not None and test is not None:
        accelerator.log(run.log.test_values(test[0]), step=run.state.global_step)
    results = None
    if accelerator.is_main_process:
        timing = {"train_runtime": train_time, "total_runtime": runtime, "train_samples_per_second":
                  len(run.bundle.train) * (run.state.epoch - first_epoch) / max(train_time, 1e-9)}
        results = write_run_outputs(output_dir, run.state, run.bundle, timing, accelerator.num_processes, description,
                                    test, backbone_choice, sharding=engine_name(accelerator))
        if run.bundle.target is not None:
            results.domain_adaptation = adaptation_record(run, results, run.state.domain_gap, target_test)
            results.write(output_dir)
        accelerator.print(f"done in {runtime:.0f}s: best epoch {run.state.best_epoch}, eval_accuracy "
                          f"{results.metrics['eval_accuracy']:.4f}, eval_f1 {results.metrics['eval_f1']:.4f} -> {output_dir}")
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # a following from-scratch run prepares its own model, optimizer and loaders
    return results
