"""The training loop: data -> model -> strategy -> accelerate loop -> export.

An explicit loop in the style of accelerate's examples. Every epoch: apply the strategy's frozen set
(re-wrapping DDP when it changes), train with gradient accumulation and the phase-aware schedule,
evaluate with ``gather_for_metrics`` (each sample counted once however many processes), keep the
best model, and ``save_state`` a checkpoint that ``--resume_from_checkpoint`` continues exactly.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .config import TrainConfig, save_config
from .data import (INDEX_COLUMN, DataBundle, LengthGroupedSampler, available_cores, collate_images, decode_images, resize_size,
                   default_num_workers, image_transforms, load_raw_splits, prepare_splits, tokenize, with_image_transform)
from .card import write_model_card
from .errors import HFTransferError
from .features import FeatureDataset, cache_key, load_or_extract
from .regularizers import L2SP, decoupled_weight_decay_groups
from .report import transfer_gain, write_report
from .hub import push_output_dir
from .metrics import ClassificationMetrics
from .model import TransferModel, create_transfer_model
from .strategies import Strategy, TransferScheduler, apply_trainable, param_groups

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best_model"
SCRATCH_DIR = "scratch"


@dataclass
class RunState:
    """Progress that a checkpoint must restore besides model/optimizer/scheduler/RNG."""

    epoch: int = 0
    batches_done: int = 0  # within ``epoch``
    global_step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    history: list = field(default_factory=list)

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


def create_accelerator(cfg: TrainConfig) -> Accelerator:
    kwargs = {}
    if cfg.mixed_precision:
        kwargs["mixed_precision"] = cfg.mixed_precision
    elif "ACCELERATE_MIXED_PRECISION" not in os.environ and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        kwargs["mixed_precision"] = "bf16"  # free speed on GPUs with bf16; on CPUs without it bf16 is slower
    if cfg.torch_compile:
        kwargs["dynamo_backend"] = "inductor"
    return Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        # seedable sampler + set_epoch: a resumed run sees the same shuffle order as an uninterrupted one
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.ddp_timeout))],
        **kwargs,
    )


def configure_threads(cfg: TrainConfig, accelerator: Accelerator) -> int:
    """On CPU use all cores: ``accelerate launch`` sets OMP_NUM_THREADS=1, halving speed on 2 cores."""
    if accelerator.device.type != "cpu":
        return torch.get_num_threads()
    cores = available_cores()
    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    threads = cfg.num_threads or max(1, cores // max(1, local_procs))
    torch.set_num_threads(threads)
    return threads


def prepare_output_dir(cfg: TrainConfig, is_main_process: bool) -> Path:
    out = Path(cfg.output_dir)
    earlier = out.is_dir() and any(out.iterdir())
    if earlier and not cfg.overwrite_output_dir and not cfg.resume_from_checkpoint:
        raise HFTransferError(
            f"output_dir '{out}' already holds a run: pass --resume_from_checkpoint latest to continue it, "
            "--overwrite_output_dir to replace it, or another --output_dir"
        )
    if earlier and cfg.overwrite_output_dir and not cfg.resume_from_checkpoint and is_main_process:
        shutil.rmtree(out)  # stale files of the earlier run must not be exported or pushed with this one
    return out


def load_data(cfg: TrainConfig, modality: str, data_seed: int | None = None) -> DataBundle:
    input_column = cfg.image_column_name if modality == "image" else cfg.text_column_name
    raw = load_raw_splits(modality, cfg.dataset_name, cfg.dataset_config_name, cfg.train_dir, cfg.validation_dir,
                          cfg.train_file, cfg.validation_file)
    bundle = prepare_splits(raw, input_column, cfg.label_column_name, cfg.validation_fraction,
                            cfg.seed if data_seed is None else data_seed,
                            cfg.max_train_samples, cfg.max_eval_samples, cfg.label_names)
    return bundle


@dataclass
class Loaders:
    """The run's DataLoaders; the ``cached_*`` ones exist when some epochs train on cached features."""

    train: DataLoader
    eval: DataLoader
    train_extract: DataLoader | None = None  # train split, eval preprocessing, in order: feeds the cache
    cached_train: DataLoader | None = None
    cached_eval: DataLoader | None = None
    preprocessing: str = ""

    def prepare(self, accelerator: Accelerator) -> None:
        """``accelerator.prepare`` every loader, in a fixed order so checkpoints line up on resume."""
        names = [n for n in ("train", "eval", "train_extract", "cached_train", "cached_eval") if getattr(self, n) is not None]
        for name, loader in zip(names, accelerator.prepare(*[getattr(self, n) for n in names])):
            setattr(self, name, loader)


def uses_feature_cache(cfg: TrainConfig, strategy: Strategy) -> bool:
    """The cache applies when some epoch freezes the whole backbone and nothing inside it still learns
    (``--train_norm`` trains norm layers; ``--bn_stats none`` lets frozen BatchNorm statistics move)."""
    if cfg.feature_cache not in ("auto", "off"):
        raise HFTransferError(f"unknown feature_cache '{cfg.feature_cache}': use auto or off")
    if cfg.feature_cache_dtype not in ("float32", "float16"):
        raise HFTransferError(f"unknown feature_cache_dtype '{cfg.feature_cache_dtype}': use float32 or float16")
    frozen_epochs = any(strategy.trainable_groups(e) == 0 for e in range(cfg.num_train_epochs))
    return cfg.feature_cache == "auto" and frozen_epochs and not cfg.train_norm and cfg.bn_stats != "none"


def create_dataloaders(cfg: TrainConfig, bundle: DataBundle, model: TransferModel, with_cache: bool) -> Loaders:
    workers = cfg.dataloader_num_workers if cfg.dataloader_num_workers is not None else default_num_workers()
    common = {"num_workers": workers, "persistent_workers": workers > 0}
    train_sampler = None
    if model.modality == "image":
        data_config = model.backbone.data_config
        shorter = cfg.decode_size if cfg.decode_size is not None else resize_size(data_config)
        for split in ("train", "eval"):
            setattr(bundle, split, decode_images(getattr(bundle, split), bundle.input_column, shorter or None,
                                                 desc=f"decoding {split} images"))
        train_tf = image_transforms(data_config, True, cfg.crop_scale, color_jitter=cfg.color_jitter or None,
                                    augment=cfg.augment, as_uint8=True)
        eval_tf = image_transforms(data_config, False, as_uint8=True)
        train_ds = with_image_transform(bundle.train, bundle.input_column, train_tf)
        eval_ds = with_image_transform(bundle.eval, bundle.input_column, eval_tf)
        extract_ds = with_image_transform(bundle.train, bundle.input_column, eval_tf)
        common["collate_fn"] = collate_images
        preprocessing = repr(eval_tf)
    else:
        from transformers import DataCollatorWithPadding

        tokenizer = model.backbone.tokenizer
        train_ds = tokenize(bundle.train, bundle.input_column, tokenizer, cfg.max_seq_length)
        eval_ds = tokenize(bundle.eval, bundle.input_column, tokenizer, cfg.max_seq_length)
        extract_ds = train_ds
        common["collate_fn"] = DataCollatorWithPadding(tokenizer)
        if cfg.group_by_length:
            lengths = [len(ids) for ids in train_ds["input_ids"]]
            train_sampler = LengthGroupedSampler(lengths, cfg.per_device_train_batch_size, seed=cfg.seed)
        preprocessing = f"{type(tokenizer).__name__}|{tokenizer.name_or_path}|max_length={cfg.max_seq_length}"
    loaders = Loaders(
        train=DataLoader(train_ds, batch_size=cfg.per_device_train_batch_size, shuffle=train_sampler is None,
                         sampler=train_sampler, **common),
        eval=DataLoader(eval_ds, batch_size=cfg.per_device_eval_batch_size, shuffle=False, **common),
        preprocessing=preprocessing,
    )
    if with_cache:
        loaders.train_extract = DataLoader(extract_ds, batch_size=cfg.per_device_eval_batch_size, shuffle=False, **common)
        loaders.cached_train = DataLoader(FeatureDataset(len(bundle.train)), batch_size=cfg.per_device_train_batch_size,
                                          shuffle=True)
        loaders.cached_eval = DataLoader(FeatureDataset(len(bundle.eval)), batch_size=cfg.per_device_eval_batch_size,
                                         shuffle=False)
    return loaders


def feature_cache_file(cfg: TrainConfig, backbone, bundle: DataBundle, split: str, preprocessing: str) -> Path | None:
    """Where ``--feature_cache_dir`` keeps a split's features (``hftransfer rank`` reads the same files)."""
    if not cfg.feature_cache_dir:
        return None
    fingerprint = (bundle.train if split == "train" else bundle.eval)._fingerprint
    key = cache_key(backbone, fingerprint, preprocessing, cfg.feature_cache_dtype)
    return Path(cfg.feature_cache_dir) / f"{split}-{key}.safetensors"


def fill_feature_cache(accelerator: Accelerator, model, loaders: Loaders, cfg: TrainConfig, bundle: DataBundle) -> None:
    """Compute (or load from ``--feature_cache_dir``) the frozen backbone's features of both splits."""
    dtype = getattr(torch, cfg.feature_cache_dtype)
    backbone = accelerator.unwrap_model(model).backbone
    for split, source, target in (("train", loaders.train_extract, loaders.cached_train),
                                  ("eval", loaders.eval, loaders.cached_eval)):
        dataset = target.dataset
        if dataset.ready:
            continue
        cache_file = feature_cache_file(cfg, backbone, bundle, split, loaders.preprocessing)
        how = load_or_extract(accelerator, model, source, dataset, dtype, f"features ({split})", cache_file)
        accelerator.print(f"feature cache: {split} {tuple(dataset.features.shape)} {cfg.feature_cache_dtype}, {how}")


def rewrap_ddp(accelerator: Accelerator, model):
    """Rebuild the DDP wrapper after the trainable set changed.

    DDP registers gradient hooks only for parameters that required grad when it was built: a group
    unfrozen later would train on each rank's own gradient, silently unsynchronized, and a group
    frozen later makes DDP wait for gradients that never come. Accelerate has no public re-wrap; its
    checkpoint list may hold the wrapper or the bare module, so a wrapper there is swapped too.
    """
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model
    module = model.module
    device_ids = [accelerator.device.index] if accelerator.device.type == "cuda" else None
    wrapped = torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
    accelerator._models = [wrapped if m is model else m for m in accelerator._models]
    return wrapped


def check_ranks_in_sync(accelerator: Accelerator, module: torch.nn.Module) -> None:
    """Fail loudly if processes hold different weights (e.g. a group trained without gradient sync)."""
    if accelerator.num_processes == 1:
        return
    sums = torch.stack([p.detach().double().sum() for p in module.parameters()]).to(accelerator.device)
    gathered = accelerator.gather(sums[None])
    if not torch.allclose(gathered, gathered[:1].expand_as(gathered), rtol=1e-6, atol=1e-6):
        raise RuntimeError("model weights differ between processes: gradient synchronization is broken")


def evaluate_model(accelerator: Accelerator, model, eval_dl, num_labels: int, multi_label: bool) -> tuple[dict, list[dict]]:
    """Loss, accuracy, macro-F1 over every eval sample exactly once, plus per-sample predictions."""
    model.eval()
    metric = ClassificationMetrics(num_labels, multi_label, per_class=True)
    total_loss, count, records = 0.0, 0, []
    for batch in eval_dl:
        index = batch.pop(INDEX_COLUMN)
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
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


def find_latest_checkpoint(output_dir: Path) -> Path | None:
    root = output_dir / CHECKPOINT_DIR
    found = [(int(m.group(1)), p) for p in root.glob("step_*") if (m := re.fullmatch(r"step_(\d+)", p.name))]
    return max(found)[1] if found else None


def adopt_best_model(ckpt: Path, output_dir: Path, state: RunState, accelerator: Accelerator) -> None:
    """A run resumed into another output_dir brings the best model so far along with it.

    Without it the restored best score would block every later epoch from being exported; if the
    original run's best model is gone, the score is reset so the next epoch becomes the best.
    """
    source, target = ckpt.resolve().parent.parent / BEST_DIR, output_dir / BEST_DIR
    if target.is_dir():
        return
    if source.is_dir():
        if accelerator.is_main_process:
            shutil.copytree(source, target)
    else:
        state.best_metric, state.best_epoch = -math.inf, -1
    accelerator.wait_for_everyone()


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: RunState, keep: int) -> None:
    root = output_dir / CHECKPOINT_DIR
    accelerator.save_state(str(root / f"step_{state.global_step}"))
    if accelerator.is_main_process and keep > 0:
        done = sorted((int(p.name.split("_")[1]), p) for p in root.glob("step_*"))
        for _, old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)  # atomic: a crash never leaves a half-written results file


def train(cfg: TrainConfig, modality: str) -> dict:
    """Run a fine-tune described by ``cfg``, export the best model and its report to ``cfg.output_dir``.

    With ``compare_scratch`` the same architecture is then trained from random init with the same
    budget (``scratch_seeds`` times, on the same data split) and the transfer gain is added to
    ``all_results.json`` and the model card.
    """
    accelerator = create_accelerator(cfg)
    threads = configure_threads(cfg, accelerator)
    output_dir = prepare_output_dir(cfg, accelerator.is_main_process)
    if cfg.checkpointing_steps not in ("epoch", "no") and not str(cfg.checkpointing_steps).isdigit():
        raise HFTransferError(f"--checkpointing_steps '{cfg.checkpointing_steps}': use epoch, no or a number of steps")
    if cfg.compare_scratch and cfg.weights == "random":
        raise HFTransferError("--compare_scratch compares pretrained weights with random init, but --weights is already random")
    if cfg.scratch_seeds < 1:
        raise HFTransferError(f"--scratch_seeds {cfg.scratch_seeds}: use 1 or more")
    results = fit(cfg, modality, accelerator, output_dir, threads)
    if cfg.compare_scratch:
        scratch_dirs = []
        for k in range(cfg.scratch_seeds):
            scratch_cfg = scratch_config(cfg, output_dir, k)
            scratch_dirs.append(Path(scratch_cfg.output_dir))
            if scratch_run_done(scratch_cfg):
                accelerator.print(f"from-scratch run {k + 1}/{cfg.scratch_seeds} already done: {scratch_cfg.output_dir}")
                continue
            accelerator.print(f"from-scratch run {k + 1}/{cfg.scratch_seeds} (random init, seed {scratch_cfg.seed}, "
                              f"same budget) -> {scratch_cfg.output_dir}")
            prepare_output_dir(scratch_cfg, accelerator.is_main_process)
            fit(scratch_cfg, modality, accelerator, Path(scratch_cfg.output_dir), threads, data_seed=cfg.seed)
            if accelerator.is_main_process:  # no resume for scratch runs: the exported copy is all that is needed
                shutil.rmtree(Path(scratch_cfg.output_dir) / BEST_DIR, ignore_errors=True)
        if accelerator.is_main_process:
            results["transfer_gain"] = transfer_gain(output_dir, scratch_dirs)
            _write_json(output_dir / "all_results.json", results)
            accelerator.print(results["transfer_gain"]["summary"].replace("**", ""))
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
    return results


def scratch_config(cfg: TrainConfig, output_dir: Path, k: int) -> TrainConfig:
    """The from-scratch twin of ``cfg``: same architecture, head, data, epochs, batch and augmentation;
    random init, every layer training (BatchNorm statistics included) at ``scratch_learning_rate``."""
    seed = cfg.seed + k
    return dataclasses.replace(
        cfg, weights="random", strategy="full", learning_rate=cfg.scratch_learning_rate,
        head_learning_rate=cfg.scratch_learning_rate, layer_decay=1.0, l2sp_alpha=0.0, l2sp_beta=0.0,
        train_norm=False, bn_stats="frozen", feature_cache="off", seed=seed,
        output_dir=str(output_dir / SCRATCH_DIR / f"seed_{seed}"), overwrite_output_dir=True,
        resume_from_checkpoint=None, checkpointing_steps="no", push_to_hub=False, compare_scratch=False)


def scratch_run_done(scratch_cfg: TrainConfig) -> bool:
    """A resumed run keeps a from-scratch run that finished with the same settings."""
    out = Path(scratch_cfg.output_dir)
    if not (out / "all_results.json").is_file() or not (out / "eval_predictions.jsonl").is_file():
        return False
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else None
    return saved == scratch_cfg.to_dict()


def fit(cfg: TrainConfig, modality: str, accelerator: Accelerator, output_dir: Path, threads: int,
        data_seed: int | None = None) -> dict:
    """Train, evaluate every epoch, and export the best epoch; returns ``all_results`` (main process).

    ``data_seed`` fixes the held-out split and subsets independently of ``cfg.seed``, so from-scratch
    runs with other seeds are scored on exactly the same examples.
    """
    set_seed(cfg.seed)

    # data
    with accelerator.main_process_first():
        bundle = load_data(cfg, modality, data_seed)
    accelerator.print(f"data: {len(bundle.train)} train / {len(bundle.eval)} eval examples, "
                      f"{len(bundle.id2label)} labels ({', '.join(list(bundle.id2label.values())[:10])})")

    # model
    model = create_transfer_model(modality, cfg.model_name_or_path, bundle.id2label, head=cfg.head, weights=cfg.weights,
                                  multi_label=bundle.multi_label, label_smoothing=cfg.label_smoothing,
                                  head_hidden_sizes=tuple(cfg.head_hidden_sizes), head_dropout=cfg.head_dropout,
                                  pooling=cfg.pooling)
    if cfg.bn_stats not in TransferModel.BN_STATS:
        raise HFTransferError(f"unknown bn_stats '{cfg.bn_stats}': use one of {', '.join(TransferModel.BN_STATS)}")
    model.bn_stats = cfg.bn_stats
    if modality == "image":  # CNN convolutions are faster in NHWC, on CPU and GPU alike
        model = model.to(memory_format=torch.channels_last)

    # strategy
    group_names = [g.name for g in model.layer_groups()[:-1]]
    strategy = Strategy(cfg.strategy, len(group_names), cfg.unfreeze_top_k, cfg.unfreeze_every, cfg.lp_epochs)
    with_cache = uses_feature_cache(cfg, strategy)
    with accelerator.main_process_first():
        loaders = create_dataloaders(cfg, bundle, model, with_cache)
    apply_trainable(model, strategy.trainable_groups(0), cfg.train_norm)
    l2sp_active = cfg.l2sp_alpha > 0 or cfg.l2sp_beta > 0
    groups = param_groups(model, cfg.learning_rate, cfg.effective_head_lr, cfg.weight_decay, cfg.layer_decay)
    optimizer = torch.optim.AdamW(decoupled_weight_decay_groups(groups, l2sp_active))
    model, optimizer = accelerator.prepare(model, optimizer)
    # after prepare (every rank holds rank 0's weights) and before load_state (a resumed run is still
    # pulled towards the starting weights, not the checkpoint's)
    l2sp = L2SP(accelerator.unwrap_model(model), cfg.l2sp_alpha, cfg.l2sp_beta) if l2sp_active else None
    loaders.prepare(accelerator)
    steps_per_epoch = math.ceil(len(loaders.train) / cfg.gradient_accumulation_steps)
    scheduler = TransferScheduler(optimizer, strategy, steps_per_epoch, cfg.num_train_epochs, cfg.learning_rate,
                                  cfg.warmup_ratio, schedule=cfg.lr_scheduler_type)
    state = RunState()
    if cfg.checkpointing_steps != "no" or cfg.resume_from_checkpoint:
        accelerator.register_for_checkpointing(scheduler, state)

    if cfg.resume_from_checkpoint:
        ckpt = find_latest_checkpoint(output_dir) if cfg.resume_from_checkpoint == "latest" else Path(cfg.resume_from_checkpoint)
        if ckpt is None or not ckpt.is_dir():
            raise HFTransferError(f"no checkpoint at '{cfg.resume_from_checkpoint}': pass a checkpoint folder or 'latest' with the run's --output_dir")
        accelerator.load_state(str(ckpt))
        adopt_best_model(ckpt, output_dir, state, accelerator)
        accelerator.print(f"resumed from {ckpt} at epoch {state.epoch}, step {state.global_step}")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, output_dir / "config.yaml")

    unwrapped = accelerator.unwrap_model(model)
    total = unwrapped.num_parameters()
    accelerator.print(f"model: {cfg.model_name_or_path} ({total / 1e6:.1f}M parameters, {len(group_names)} layer groups), "
                      f"strategy {cfg.strategy}, {cfg.num_train_epochs} epochs x {steps_per_epoch} steps, "
                      f"{accelerator.num_processes} process(es) on {accelerator.device}, {threads} thread(s)")
    run_info = describe_run(cfg, modality, bundle, unwrapped, strategy, group_names)
    every = int(cfg.checkpointing_steps) if str(cfg.checkpointing_steps).isdigit() else 0
    start_time, train_time, train_loss_sum, train_batches = time.time(), 0.0, 0.0, 0
    first_epoch = state.epoch
    for epoch in range(state.epoch, cfg.num_train_epochs):
        epoch_start = time.time()
        if apply_trainable(unwrapped, strategy.trainable_groups(epoch), cfg.train_norm):
            model = rewrap_ddp(accelerator, model)
        trainable = unwrapped.num_parameters(trainable_only=True)
        accelerator.print(f"epoch {epoch + 1}/{cfg.num_train_epochs}: {strategy.trainable_groups(epoch)}/{len(group_names)} "
                          f"backbone groups trainable ({trainable / total:.1%} of parameters), "
                          f"lr head {scheduler.get_last_lr()[-1]:.2e}")
        cached = with_cache and strategy.trainable_groups(epoch) == 0
        if cached:
            fill_feature_cache(accelerator, model, loaders, cfg, bundle)
        train_dl = loaders.cached_train if cached else loaders.train
        eval_dl = loaders.cached_eval if cached else loaders.eval
        model.train()
        train_dl.set_epoch(epoch)
        skip = state.batches_done
        if not skip:
            # each epoch's randomness (augmentation, dropout) is a function of (seed, epoch), not of
            # everything that ran before, so a run resumed at an epoch boundary repeats it exactly
            set_seed(cfg.seed + epoch)
        loader = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
        bar = tqdm(loader, total=len(train_dl), initial=skip, desc=f"epoch {epoch + 1}", unit="batch",
                   disable=not accelerator.is_local_main_process, dynamic_ncols=True)
        for batch in bar:
            batch.pop(INDEX_COLUMN, None)
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                if l2sp is not None:
                    loss = loss + l2sp(unwrapped)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.batches_done += 1
            train_loss_sum += loss.item()
            train_batches += 1
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if accelerator.sync_gradients:
                scheduler.step()
                state.global_step += 1
                if every and state.global_step % every == 0:
                    save_checkpoint(accelerator, output_dir, state, cfg.save_total_limit)
        bar.close()
        train_time += time.time() - epoch_start  # training only (feature extraction included), like Trainer's train_runtime

        check_ranks_in_sync(accelerator, unwrapped)
        metrics, records = evaluate_model(accelerator, model, eval_dl, unwrapped.num_labels, unwrapped.multi_label)
        state.epoch, state.batches_done = epoch + 1, 0
        epoch_train_loss = train_loss_sum / max(1, train_batches)
        train_loss_sum, train_batches = 0.0, 0
        state.history.append({"epoch": epoch + 1, "train_loss": epoch_train_loss, "eval_loss": metrics["loss"],
                              "eval_accuracy": metrics["accuracy"], "eval_f1": metrics["f1"]})
        accelerator.print(f"epoch {epoch + 1}: train_loss {epoch_train_loss:.4f}  eval_loss {metrics['loss']:.4f}  "
                          f"eval_accuracy {metrics['accuracy']:.4f}  eval_f1 {metrics['f1']:.4f}  ({metrics['samples']} samples)")
        score = metrics[cfg.metric_for_best_model]
        if score > state.best_metric:
            state.best_metric, state.best_epoch = score, epoch + 1
            if accelerator.is_main_process:
                unwrapped.save_pretrained(output_dir / BEST_DIR)
                _write_json(output_dir / BEST_DIR / "eval_results.json", {f"eval_{k}": v for k, v in metrics.items()})
                _write_predictions(output_dir / BEST_DIR / "eval_predictions.jsonl", records)
        accelerator.wait_for_everyone()
        if cfg.checkpointing_steps != "no":
            save_checkpoint(accelerator, output_dir, state, cfg.save_total_limit)

    runtime = time.time() - start_time
    accelerator.wait_for_everyone()
    results = {}
    if accelerator.is_main_process:
        timing = {"train_runtime": train_time, "total_runtime": runtime,
                  "train_samples_per_second": len(bundle.train) * (state.epoch - first_epoch) / max(train_time, 1e-9)}
        results = export(output_dir, state, bundle, timing, accelerator.num_processes, run_info)
        accelerator.print(f"done in {runtime:.0f}s: best epoch {state.best_epoch}, eval_accuracy "
                          f"{results['eval_accuracy']:.4f}, eval_f1 {results['eval_f1']:.4f} -> {output_dir}")
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # a following from-scratch run prepares its own model, optimizer and loaders
    return results


def _write_predictions(path: Path, records: list[dict]) -> None:
    with open(path.with_suffix(".tmp"), "w") as f:
        for r in sorted(records, key=lambda r: r["index"]):
            f.write(json.dumps(r) + "\n")
    path.with_suffix(".tmp").replace(path)


def describe_run(cfg: TrainConfig, modality: str, bundle: DataBundle, model: TransferModel, strategy: Strategy,
                 group_names: list[str]) -> dict:
    """What a model card needs to record the transfer recipe: phases, frozen groups, LRs, sizes, versions."""
    import accelerate
    import datasets
    import timm
    import transformers

    from . import __version__

    sizes = {}
    for g in model.layer_groups():
        sizes[g.name] = sum(p.numel() for n, p in model.named_parameters() if n in set(g.params))
    total = sum(sizes.values())
    phases = strategy.describe(cfg.num_train_epochs, group_names)
    for phase in phases:
        trainable = sizes["head"] + sum(sizes[n] for n in phase["trainable_backbone_groups"])
        if cfg.train_norm and phase["frozen_backbone_groups"]:
            phase["note"] = "normalization layers train inside frozen groups"
        phase["trainable_fraction"] = trainable / total
        phase["head_learning_rate"] = cfg.learning_rate if strategy.uses_backbone_lr_for_head(phase["epochs"][0]) else cfg.effective_head_lr
    source = cfg.dataset_name or cfg.train_dir or cfg.train_file
    return {
        "modality": modality,
        "base_model": cfg.model_name_or_path,
        "weights": cfg.weights,
        "strategy": cfg.strategy,
        "phases": phases,
        "learning_rate": cfg.learning_rate,
        "head_learning_rate": cfg.effective_head_lr,
        "layer_decay": cfg.layer_decay,
        "weight_decay": cfg.weight_decay,
        "lr_scheduler": f"{cfg.lr_scheduler_type}, warmup {cfg.warmup_ratio:.0%} of each phase",
        "regularizer": ({"name": "L2-SP", "alpha": cfg.l2sp_alpha, "beta": cfg.l2sp_beta,
                         "note": "decoupled weight decay off"} if cfg.l2sp_alpha > 0 or cfg.l2sp_beta > 0 else None),
        "epochs": cfg.num_train_epochs,
        "batch_size": cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps,
        "dataset": str(source),
        "train_samples": len(bundle.train),
        "eval_samples": len(bundle.eval),
        "label_names": list(bundle.id2label.values()),
        "multi_label": bundle.multi_label,
        "parameters": total,
        "framework_versions": {"hftransfer": __version__, "torch": torch.__version__, "timm": timm.__version__,
                               "transformers": transformers.__version__, "datasets": datasets.__version__,
                               "accelerate": accelerate.__version__},
    }


def export(output_dir: Path, state: RunState, bundle: DataBundle, timing: dict, world_size: int,
           run_info: dict) -> dict:
    """Copy the best epoch's model to ``output_dir`` and write ``all_results.json``."""
    best = output_dir / BEST_DIR
    if not best.is_dir():
        raise HFTransferError("no epoch finished, so there is no model to export: train for at least one epoch")
    for item in best.iterdir():
        if item.is_file():
            shutil.copy2(item, output_dir / item.name)
    eval_results = json.loads((best / "eval_results.json").read_text())
    results = {
        **{k: v for k, v in eval_results.items() if k != "eval_per_class"},
        "eval_per_class": {bundle.id2label[i]: m for i, m in enumerate(eval_results.get("eval_per_class", []))},
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "train_samples": len(bundle.train),
        **timing,
        "train_loss": state.history[-1]["train_loss"] if state.history else None,
        "world_size": world_size,
        "history": state.history,
        "transfer": run_info,
    }
    _write_json(output_dir / "all_results.json", results)
    return results
