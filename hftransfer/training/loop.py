"""The training loop: ``setup`` -> per epoch ``train_one_epoch`` + ``evaluate`` -> export; ``fit`` runs it.

An explicit loop in the style of accelerate's examples, every accelerate call visible. Each epoch
applies the strategy's frozen set (re-wrapping DDP when it changes), trains with gradient
accumulation and the phase-aware schedule (``train_step`` is one micro-batch, the same code the
benchmarks time), evaluates with ``gather_for_metrics`` (each sample counted once however many
processes), keeps the best model, and ``save_state``s a checkpoint that ``--resume_from_checkpoint``
continues exactly. A tracked run (``--report_to``) also ``accelerator.log``s what ``tracking.RunLog`` holds.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..adaptation.domain_gap import domain_gap
from ..adaptation.methods import (
    SELECTION_RULES,
    AdaptationMethod,
    DomainAdaptationModel,
    create_method,
    selection_score,
    target_scores,
)
from ..config import TrainConfig
from ..config import save_config
from ..data import INDEX_COLUMN, DataBundle
from .inputs import load_data, load_target_data
from ..errors import HFTransferError
from ..evaluation.metrics import ClassificationMetrics
from ..files import ADAPTER_DIR, BEST_DIR, CHECKPOINT_DIR, CONFIG_NAME, RUN_CONFIG_NAME, read_json
from ..models.layouts import load_weights
from ..models.lora import add_lora, load_adapter_files
from ..models.transfer_model import TransferModel, create_transfer_model
from ..records import BackboneChoice, DomainAdaptation, RunResults
from ..tuning.regularizers import L2SP, decoupled_weight_decay_groups
from ..tuning.strategies import LORA_STRATEGIES, Strategy, TransferScheduler, apply_trainable, param_groups
from .checkpoint import RunState, clear_earlier_run, holds_earlier_run, resume, save_checkpoint
from .describe import describe_run
from .feature_cache import fill_feature_cache, uses_feature_cache
from .loaders import Loaders, create_dataloaders
from .outputs import export_run, save_best_epoch
from .runtime import (
    RunInterrupted,
    StopSignals,
    check_ranks_in_sync,
    from_main_process,
    mean_over_processes,
    rewrap_ddp,
    step_seed,
)
from .tracking import RunLog, continue_tensorboard_after, hparams, init_kwargs


@dataclass
class TrainingRun:
    """What ``setup`` prepared for one fit. ``model`` is as prepared (a DDP wrapper in multi-process
    runs, replaced when the trainable set changes); ``module`` is the bare ``TransferModel``."""

    cfg: TrainConfig
    accelerator: Accelerator
    output_dir: Path
    bundle: DataBundle
    model: torch.nn.Module
    module: TransferModel
    strategy: Strategy
    group_names: list[str]
    loaders: Loaders
    optimizer: torch.optim.Optimizer
    scheduler: TransferScheduler
    state: RunState
    l2sp: L2SP | None
    with_cache: bool
    stop: StopSignals
    resumed_from: Path | None = None
    log: RunLog | None = None  # what goes to the --report_to trackers; None: this run is not tracked
    adaptation: AdaptationMethod | None = None  # --domain_adaptation: its loss module (inside ``model``)

    def on_cached_features(self, epoch: int) -> bool:
        """Whether ``epoch`` trains the head on the frozen backbone's stored features."""
        return self.with_cache and self.strategy.trainable_groups(epoch) == 0

    def eval_loader(self, epoch: int):
        return self.loaders.cached_eval if self.on_cached_features(epoch) else self.loaders.eval


def build_model(cfg: TrainConfig, modality: str, bundle: DataBundle) -> TransferModel:
    model = create_transfer_model(modality, cfg.model_name_or_path, bundle.id2label, head=cfg.head, weights=cfg.weights,
                                  multi_label=bundle.multi_label, label_smoothing=cfg.label_smoothing,
                                  head_hidden_sizes=tuple(cfg.head_hidden_sizes), head_dropout=cfg.head_dropout,
                                  pooling=cfg.pooling)
    model.bn_stats = cfg.bn_stats
    if cfg.image_size:
        if modality != "image":
            raise HFTransferError("--image_size applies to image models: drop it for text (see --max_seq_length)")
        model.backbone.set_input_size(cfg.image_size)
    model.backbone.use_fast_layout()
    if cfg.strategy in LORA_STRATEGIES:  # before prepare: the optimizer, DDP and checkpoints must see the adapters
        add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules, cfg.train_norm)
    return model


def setup(cfg: TrainConfig, modality: str, accelerator: Accelerator, output_dir: Path,
          data_seed: int | None = None, stop: StopSignals | None = None) -> TrainingRun:
    """Data, model, strategy, loaders, optimizer and schedule, all prepared; resumed if asked to."""
    set_seed(cfg.seed)
    with accelerator.main_process_first():
        bundle = load_data(cfg, modality, data_seed)
    if cfg.uses_target_data():
        if bundle.multi_label:
            raise HFTransferError("domain adaptation supports single-label classification: the source labels are "
                                  "multi-label; drop the --target_* options")
        with accelerator.main_process_first():
            bundle.target = load_target_data(cfg, modality, bundle.id2label, data_seed)
        accelerator.print(f"target domain: {len(bundle.target.train)} unlabelled train examples"
                          + "".join(f", {len(split)} labelled {name} (reported only)" for name, split in
                                    (("validation", bundle.target.validation), ("test", bundle.target.test)) if split))
    if cfg.do_predict and bundle.test is None:
        raise HFTransferError("--do_predict: the data has no test split: pass --test_dir / --test_file (or a dataset "
                              "with a 'test' split), or drop --do_predict")
    accelerator.print(f"data: {len(bundle.train)} train / {len(bundle.eval)} eval examples, "
                      f"{len(bundle.id2label)} labels ({', '.join(list(bundle.id2label.values())[:10])})")
    model = build_model(cfg, modality, bundle)
    if cfg.gradient_checkpointing:
        # before prepare: DDP and torch.compile wrap the model as it will run
        model.backbone.set_gradient_checkpointing(True)
    group_names = [g.name for g in model.layer_groups()[:-1]]
    strategy = Strategy(cfg.strategy, len(group_names), cfg.unfreeze_top_k, cfg.unfreeze_every, cfg.lp_epochs,
                        cfg.lora_r, cfg.lora_alpha)
    # adaptation needs the target batch beside every source batch: no cached-feature epochs
    with_cache = uses_feature_cache(cfg, strategy) and cfg.domain_adaptation == "none"
    with accelerator.main_process_first():
        loaders = create_dataloaders(cfg, bundle, model.backbone, with_cache)
    apply_trainable(model, strategy.trainable_groups(0), cfg.train_norm, strategy.adapter_only)
    groups = param_groups(model, cfg.learning_rate, cfg.effective_head_lr, cfg.weight_decay, cfg.layer_decay)
    method = create_method(cfg.domain_adaptation, model.backbone.feature_dim, model.num_labels, cfg.seed,
                           cfg.mcc_temperature)
    trained = model
    if method is not None:
        # the adversary trains from the first step at the head's learning rate, like a second head
        adversary = [p for p in method.parameters()]
        if adversary:
            groups.append({"params": adversary, "lr": cfg.effective_head_lr, "base_lr": cfg.effective_head_lr,
                           "weight_decay": cfg.weight_decay, "name": "domain_adversary", "is_head": True,
                           "layer": len(groups)})
        trained = DomainAdaptationModel(model, method, cfg.adaptation_weight)
    optimizer = torch.optim.AdamW(decoupled_weight_decay_groups(groups, cfg.l2sp_active))
    model, optimizer = accelerator.prepare(trained, optimizer)
    module = accelerator.unwrap_model(model)
    if method is not None:
        module, method = module.model, module.method
    # after prepare (every rank holds rank 0's weights) and before load_state (a resumed run is still
    # pulled towards the starting weights, not the checkpoint's)
    l2sp = L2SP(module, cfg.l2sp_alpha, cfg.l2sp_beta) if cfg.l2sp_active else None
    loaders.prepare(accelerator)
    steps_per_epoch = math.ceil(len(loaders.train) / cfg.gradient_accumulation_steps)
    scheduler = TransferScheduler(optimizer, strategy, steps_per_epoch, cfg.num_train_epochs, cfg.learning_rate,
                                  cfg.warmup_ratio, schedule=cfg.lr_scheduler_type)
    state = RunState()
    accelerator.register_for_checkpointing(scheduler, state)  # also with --checkpointing_steps no: SIGTERM saves one
    run = TrainingRun(cfg, accelerator, output_dir, bundle, model, module, strategy, group_names, loaders, optimizer,
                      scheduler, state, l2sp, with_cache, stop or StopSignals(), adaptation=method)
    if cfg.resume_from_checkpoint:
        run.resumed_from = resume(accelerator, cfg.resume_from_checkpoint, output_dir, state)
    return run


def train_step(accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict,
               l2sp: L2SP | None = None, max_grad_norm: float = 0.0) -> torch.Tensor:
    """One micro-batch: loss (+ L2-SP), backward, and, when gradients sync, clipping and the optimizer step.

    Returns the detached loss. The LR scheduler is stepped by the caller, once per optimizer step.
    """
    batch.pop(INDEX_COLUMN, None)
    with accelerator.accumulate(model):
        loss = model(**batch).loss
        if l2sp is not None:
            loss = loss + l2sp(accelerator.unwrap_model(model))
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm > 0:
            accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def train_one_epoch(run: TrainingRun, epoch: int) -> float:
    """Train ``epoch`` (from where a mid-epoch checkpoint left it); returns the epoch's mean train loss."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    trainable_groups = run.strategy.trainable_groups(epoch)
    if apply_trainable(run.module, trainable_groups, cfg.train_norm, run.strategy.adapter_only):
        run.model = rewrap_ddp(accelerator, run.model)
    share = run.module.num_parameters(trainable_only=True) / run.module.num_parameters()
    accelerator.print(f"epoch {epoch + 1}/{cfg.num_train_epochs}: {trainable_groups}/{len(run.group_names)} "
                      f"backbone groups trainable ({share:.1%} of parameters), "
                      f"lr head {run.scheduler.get_last_lr()[-1]:.2e}")
    if run.log is not None and not state.batches_done and run.log.phase_changes(run.strategy, epoch):
        # at the first optimizer step trained this way (mid-epoch resumes logged it before their checkpoint)
        accelerator.log(run.log.phase_values(run.strategy, epoch, run.module), step=state.global_step + 1)
    if run.on_cached_features(epoch):
        fill_feature_cache(accelerator, run.model, run.loaders, cfg)
    train_dl = run.loaders.cached_train if run.on_cached_features(epoch) else run.loaders.train
    run.model.train()
    train_dl.set_epoch(epoch)
    run.loaders.set_epoch(epoch)
    skip = state.batches_done
    if not skip:
        state.epoch_loss_sum, state.epoch_loss_batches = 0.0, 0
    loader = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
    bar = tqdm(loader, total=len(train_dl), initial=skip, desc=f"epoch {epoch + 1}", unit="batch",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    for batch in bar:
        # the step's randomness (dropout) depends on (seed, epoch, batch) only, and augmentation on
        # (seed, epoch, example): a run resumed at any batch repeats the uninterrupted one exactly
        torch.manual_seed(step_seed(cfg.seed, epoch, state.batches_done, accelerator.process_index))
        if run.adaptation is not None:  # DANN's reversal schedule: a function of the step, so resumes match
            run.adaptation.progress = state.global_step / max(1, run.scheduler.steps_per_epoch * cfg.num_train_epochs)
        loss = train_step(accelerator, run.model, run.optimizer, batch, run.l2sp, cfg.max_grad_norm).item()
        state.batches_done += 1
        state.epoch_loss_sum += loss
        state.epoch_loss_batches += 1
        bar.set_postfix(loss=f"{loss:.4f}")
        if run.log is not None:
            run.log.window.add(loss)
        if accelerator.sync_gradients:
            step = state.global_step + 1  # the optimizer step just taken
            if run.log is not None and run.log.step_due(step):
                # before the scheduler moves them: the learning rates this step trained with
                window_loss = mean_over_processes(accelerator, *run.log.window.take())
                accelerator.log(run.log.step_values(window_loss, run.optimizer, step), step=step)
            run.scheduler.step()
            state.global_step += 1
            if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0:
                save_checkpoint(accelerator, run.output_dir, state, cfg.save_total_limit)
            crash_test_hooks(state.global_step, accelerator.is_main_process)
            stop_if_requested(run, epoch)
    bar.close()
    return mean_over_processes(accelerator, state.epoch_loss_sum, state.epoch_loss_batches)


def evaluate(accelerator: Accelerator, model, eval_dl, num_labels: int, multi_label: bool) -> tuple[dict, list[dict]]:
    """Loss, accuracy, macro-F1 over every eval sample exactly once, plus per-sample predictions."""
    model.eval()
    metric = ClassificationMetrics(num_labels, multi_label, per_class=True)
    total_loss, count, records = 0.0, 0, []
    for batch in eval_dl:
        index = batch.pop(INDEX_COLUMN)
        with torch.no_grad():
            out = model(**batch)
        preds = (out.logits > 0).long() if multi_label else out.logits.argmax(dim=-1)
        losses = out.loss.detach().float().repeat(len(index))
        preds, refs, index, losses = accelerator.gather_for_metrics((preds, batch["labels"], index, losses))
        refs = refs.long()
        metric.add_batch(predictions=preds.cpu().numpy(), references=refs.cpu().numpy())
        total_loss += losses.sum().item()
        count += len(index)
        records += [{"index": int(i), "label": r.tolist(), "prediction": p.tolist()} for i, r, p in zip(index, refs, preds)]
    result = metric.compute()
    result["loss"] = total_loss / max(1, count)
    result["samples"] = count
    return result, records


def evaluate_target(run: TrainingRun, metrics: dict) -> None:
    """Target-domain runs: add the label-free scores of the target predictions, the selection score and,
    with labelled target validation data, the oracle accuracy (reported, never used to select) to ``metrics``."""
    accelerator = run.accelerator
    run.model.eval()
    probs = []
    for batch in run.loaders.target_selection:
        batch.pop(INDEX_COLUMN, None)
        batch.pop("labels", None)
        with torch.no_grad():
            logits = run.model(**batch).logits
        probs.append(accelerator.gather_for_metrics(torch.softmax(logits.float(), dim=-1)).cpu())
    metrics.update(target_scores(torch.cat(probs)))
    metrics["selection_score"] = selection_score(run.cfg.selection_criterion, metrics["accuracy"], metrics["target_im"])
    if run.loaders.target_eval is not None:
        oracle, _ = evaluate(accelerator, run.model, run.loaders.target_eval, run.module.num_labels, False)
        metrics["target_oracle_accuracy"], metrics["target_oracle_f1"] = oracle["accuracy"], oracle["f1"]


def selection_metric(cfg: TrainConfig) -> tuple[str, bool]:
    """(metric, higher is better) that picks the exported epoch: the label-free criterion in target-domain runs."""
    return ("selection_score", True) if cfg.uses_target_data() else cfg.best_metric


def finish_epoch(run: TrainingRun, epoch: int, train_loss: float, metrics: dict, records: list[dict]) -> None:
    """Record the epoch, keep the model if it is the best so far, and checkpoint."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    state.epoch, state.batches_done = epoch + 1, 0
    state.epoch_loss_sum, state.epoch_loss_batches = 0.0, 0
    entry = {"epoch": epoch + 1, "train_loss": train_loss, "eval_loss": metrics["loss"],
             "eval_accuracy": metrics["accuracy"], "eval_f1": metrics["f1"]}
    for key in ("target_im", "selection_score", "target_oracle_accuracy"):
        if key in metrics:
            entry[key] = metrics[key]
    state.history.append(entry)
    if run.log is not None:
        accelerator.log(run.log.epoch_values(train_loss, metrics), step=state.global_step)
    accelerator.print(f"epoch {epoch + 1}: train_loss {train_loss:.4f}  eval_loss {metrics['loss']:.4f}  "
                      f"eval_accuracy {metrics['accuracy']:.4f}  eval_f1 {metrics['f1']:.4f}  ({metrics['samples']} samples)")
    if "selection_score" in metrics:
        oracle = metrics.get("target_oracle_accuracy")
        accelerator.print(f"  target: im {metrics['target_im']:.4f} (entropy {metrics['target_entropy']:.4f}, diversity "
                          f"{metrics['target_diversity']:.4f})  selection_score {metrics['selection_score']:.4f}"
                          + (f"  oracle accuracy {oracle:.4f} (target labels: reported, not used to select)"
                             if oracle is not None else ""))
    name, higher_is_better = selection_metric(cfg)
    score = metrics[name]
    if state.best_metric is None or (score > state.best_metric if higher_is_better else score < state.best_metric):
        state.best_metric, state.best_epoch = score, epoch + 1
        if accelerator.is_main_process:
            save_best_epoch(run.module, run.output_dir, metrics, records)
    accelerator.wait_for_everyone()
    if cfg.checkpointing_steps != "no":
        save_checkpoint(accelerator, run.output_dir, state, cfg.save_total_limit)
    stop_if_requested(run, epoch + 1, saved=cfg.checkpointing_steps != "no")


def crash_test_hooks(step: int, is_main_process: bool) -> None:
    """For the crash and preemption tests: ``HFTRANSFER_TEST_KILL_AT_STEP=N`` SIGKILLs every process after
    optimizer step N; ``HFTRANSFER_TEST_SIGNAL_AT_STEP=N:TERM`` sends the main process SIGTERM (or INT) there."""
    import os
    import signal

    if os.environ.get("HFTRANSFER_TEST_KILL_AT_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
    at, _, name = os.environ.get("HFTRANSFER_TEST_SIGNAL_AT_STEP", "").partition(":")
    if at == str(step) and is_main_process:
        os.kill(os.getpid(), getattr(signal, f"SIG{name or 'TERM'}"))


def stop_if_requested(run: TrainingRun, epoch: int, saved: bool = False) -> None:
    """After a SIGTERM / SIGINT on any process: checkpoint (unless just done) and raise ``RunInterrupted``."""
    signum = run.stop.requested(run.accelerator)
    if not signum:
        return
    path = run.output_dir / CHECKPOINT_DIR / f"step_{run.state.global_step}"
    if not saved:
        path = save_checkpoint(run.accelerator, run.output_dir, run.state, run.cfg.save_total_limit)
    raise RunInterrupted(signum, min(epoch, run.cfg.num_train_epochs - 1), run.state.global_step, path)


def load_best_epoch(run: TrainingRun) -> None:
    """Put the exported (best-epoch) weights back into the model in training."""
    best = run.output_dir / BEST_DIR
    if run.module.lora is not None:  # best_model/ holds merged weights; the adapter fits the model in training
        load_adapter_files(run.module, best / ADAPTER_DIR)
    else:
        run.module.load_state_dict(load_weights(best, read_json(best / CONFIG_NAME)))


def score_test_split(run: TrainingRun) -> tuple[dict, list[dict]] | None:
    """Metrics and predictions of the exported (best-epoch) model on the test split, scored once; None
    without a test split or with ``--do_predict false``. The test split never picks anything."""
    if run.loaders.test is None or run.cfg.do_predict is False:
        return None
    load_best_epoch(run)
    metrics, records = evaluate(run.accelerator, run.model, run.loaders.test, run.module.num_labels,
                                run.module.multi_label)
    run.accelerator.print(f"test: accuracy {metrics['accuracy']:.4f}  f1 {metrics['f1']:.4f}  loss {metrics['loss']:.4f}  "
                          f"({metrics['samples']} samples, the model of epoch {run.state.best_epoch})")
    return metrics, records


def measure_domain_gap(run: TrainingRun) -> dict:
    """Proxy A-distance and MMD between source and target train features of the backbone before training
    (``--domain_gap_samples`` per domain), kept in the run state: a resumed run reports the same gap."""
    cfg, accelerator = run.cfg, run.accelerator
    if run.state.global_step > 0 or run.state.epoch > 0 or not cfg.domain_gap_samples:
        return {}
    gap = {}
    if accelerator.is_main_process:
        from torch.utils.data import DataLoader

        pipeline, column = run.loaders.pipeline, run.bundle.input_column
        features = []
        was_training = run.module.training
        run.module.eval()
        for split in ("train", "target_train"):
            prepared = run.loaders.prepared[split]
            n = min(cfg.domain_gap_samples, len(prepared))
            subset = prepared.select(torch.randperm(len(prepared), generator=torch.Generator().manual_seed(cfg.seed))[:n].tolist())
            loader = DataLoader(pipeline.eval_view(subset, column), batch_size=cfg.per_device_eval_batch_size,
                                collate_fn=pipeline.collate)
            rows = []
            for batch in tqdm(loader, desc=f"domain gap: {split.replace('_', ' ')} features", leave=False,
                              dynamic_ncols=True):
                batch = {k: v.to(accelerator.device) for k, v in batch.items() if k not in ("labels", INDEX_COLUMN)}
                with torch.no_grad():
                    rows.append(run.module.forward_features(**batch).float().cpu())
            features.append(torch.cat(rows))
        run.module.train(was_training)
        gap = domain_gap(*features, max_per_domain=None, seed=cfg.seed)
        accelerator.print(f"domain gap of the backbone before training ({gap['samples_per_domain']} examples per "
                          f"domain): proxy A-distance {gap['proxy_a_distance']:.3f} (0 = indistinguishable, 2 = "
                          f"separable), MMD {gap['mmd']:.4f}")
    run.state.domain_gap = from_main_process(accelerator, gap)
    return run.state.domain_gap


def adaptation_record(run: TrainingRun, results: RunResults, gap: dict, target_test: dict | None) -> DomainAdaptation:
    """What a target-domain run tells about the target: method, gap, the selected epoch's scores, the oracle."""
    cfg, m = run.cfg, results.metrics
    record = DomainAdaptation(method=cfg.domain_adaptation, weight=cfg.adaptation_weight,
                              selection_criterion=cfg.selection_criterion,
                              selection_rule=SELECTION_RULES[cfg.selection_criterion],
                              target_train_samples=len(run.bundle.target.train), domain_gap=gap,
                              selected_epoch=run.state.best_epoch, source_accuracy=m.get("eval_accuracy"),
                              selection_score=m.get("eval_selection_score"), target_im=m.get("eval_target_im"),
                              target_entropy=m.get("eval_target_entropy"),
                              target_diversity=m.get("eval_target_diversity"),
                              target_oracle_accuracy=m.get("eval_target_oracle_accuracy"),
                              target_oracle_f1=m.get("eval_target_oracle_f1"))
    oracle = [(h["target_oracle_accuracy"], h["epoch"]) for h in run.state.history if h.get("target_oracle_accuracy") is not None]
    if oracle:
        best_accuracy, best_epoch = max(oracle, key=lambda x: (x[0], -x[1]))
        record.target_oracle_best_accuracy, record.target_oracle_best_epoch = best_accuracy, best_epoch
    if target_test is not None:
        record.target_test_accuracy, record.target_test_f1 = target_test["accuracy"], target_test["f1"]
        record.target_test_samples = target_test["samples"]
    return record


def fit(cfg: TrainConfig, modality: str, accelerator: Accelerator, output_dir: Path, threads: int,
        data_seed: int | None = None, stop: StopSignals | None = None, track: bool = False,
        backbone_choice: BackboneChoice | None = None) -> RunResults | None:
    """Train, evaluate every epoch, and export the best epoch; returns the results (main process).

    ``data_seed`` fixes the held-out split and subsets independently of ``cfg.seed``, so from-scratch
    runs with other seeds are scored on exactly the same examples. ``track``: start the accelerator's
    trackers (``--report_to``) and log this run to them; the trainer's run is tracked, its from-scratch
    twins (same accelerator, steps from 0 again) are not. ``backbone_choice`` (``--model_name_or_path
    auto``) is written next to ``config.yaml`` before the first epoch (a resume reuses it) and into
    ``all_results.json``.
    """
    run = setup(cfg, modality, accelerator, output_dir, data_seed, stop)
    if run.resumed_from is not None:
        accelerator.print(f"resumed from {run.resumed_from} at epoch {run.state.epoch}, step {run.state.global_step}")
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
    steps_per_epoch = run.scheduler.steps_per_epoch
    accelerator.print(f"model: {cfg.model_name_or_path} ({run.module.num_parameters() / 1e6:.1f}M parameters, "
                      f"{len(run.group_names)} layer groups), strategy {cfg.strategy}: {run.strategy.description()}; "
                      f"{cfg.num_train_epochs} epochs x {steps_per_epoch} steps, "
                      f"{accelerator.num_processes} process(es) on {accelerator.device}, {threads} thread(s)")
    description = describe_run(cfg, modality, run.bundle, run.module, run.strategy, run.group_names)
    if track and accelerator.log_with:  # only now: --overwrite_output_dir has cleared output_dir, with its old logs
        continue_tensorboard_after(accelerator, run.state.global_step)
        accelerator.init_trackers(cfg.project, config=hparams(cfg, description), init_kwargs=init_kwargs(cfg))
        run.log = RunLog(cfg.logging_steps, steps_per_epoch)
    if run.bundle.target is not None:
        measure_domain_gap(run)
    start_time, train_time, first_epoch = time.time(), 0.0, run.state.epoch
    run.stop.in_training = True  # from here a signal means: checkpoint at the next step, then stop
    for epoch in range(run.state.epoch, cfg.num_train_epochs):
        epoch_start = time.time()
        train_loss = train_one_epoch(run, epoch)
        train_time += time.time() - epoch_start  # training only (feature extraction included), like Trainer's train_runtime
        check_ranks_in_sync(accelerator, run.module)
        metrics, records = evaluate(accelerator, run.model, run.eval_loader(epoch), run.module.num_labels,
                                    run.module.multi_label)
        if run.bundle.target is not None:
            evaluate_target(run, metrics)
        finish_epoch(run, epoch, train_loss, metrics, records)
    runtime = time.time() - start_time
    accelerator.wait_for_everyone()
    test = score_test_split(run)
    target_test = None
    if run.loaders.target_test is not None:
        load_best_epoch(run)
        target_test, _ = evaluate(accelerator, run.model, run.loaders.target_test, run.module.num_labels, False)
        accelerator.print(f"target test: accuracy {target_test['accuracy']:.4f}  f1 {target_test['f1']:.4f}  "
                          f"({target_test['samples']} samples, the model of epoch {run.state.best_epoch})")
    if run.log is not None and test is not None:
        accelerator.log(run.log.test_values(test[0]), step=run.state.global_step)
    results = None
    if accelerator.is_main_process:
        timing = {"train_runtime": train_time, "total_runtime": runtime,
                  "train_samples_per_second": len(run.bundle.train) * (run.state.epoch - first_epoch) / max(train_time, 1e-9)}
        results = export_run(output_dir, run.state, run.bundle, timing, accelerator.num_processes, description, test,
                             backbone_choice)
        if run.bundle.target is not None:
            results.domain_adaptation = adaptation_record(run, results, run.state.domain_gap, target_test)
            results.write(output_dir)
        accelerator.print(f"done in {runtime:.0f}s: best epoch {run.state.best_epoch}, eval_accuracy "
                          f"{results.metrics['eval_accuracy']:.4f}, eval_f1 {results.metrics['eval_f1']:.4f} -> {output_dir}")
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # a following from-scratch run prepares its own model, optimizer and loaders
    return results
