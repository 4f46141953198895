"""DAPT (Gururangan et al., "Don't Stop Pretraining", ACL 2020): masked-language-model pretraining of a text
encoder on unlabelled domain text, continued from its pretrained weights, before the usual fine-tune.

``continue_pretraining`` puts the ``TextBackbone``'s encoder into the ``AutoModelForMaskedLM`` of its config (as
its base model, ``mlm.base_model_prefix``), trains it on ``DataCollatorForLanguageModeling``'s masks and copies
the trained base model back into ``backbone.encoder``, in place. The masked-LM head comes from ``mlm_source``
where that checkpoint has one (bert-base, roberta-base); sentence-transformers checkpoints such as
all-MiniLM-L6-v2 ship none, so there it starts random (its decoder tied to the word embeddings).

RoBERTa's (and the paper's) recipe: AdamW (betas 0.9/0.98, eps 1e-6, weight decay 0.01, none on biases and
norms), linear warmup over 6% of the steps then linear decay, gradients clipped at 1; through
``accelerator.prepare`` (DDP, gradient accumulation, mixed precision), ``free_memory`` at the end. Randomness
is a function of ``seed`` alone: each epoch's order (the same on every process), each micro-batch's masks and
dropout (of its epoch, batch and process), and the held-out masks, drawn once, so the held-out loss (mean
masked-LM loss per masked token) is measured on the same masks before and after.

Resuming: a checkpoint (MLM weights, optimizer, schedule, progress) goes to ``work_dir/checkpoint`` at the end
of every epoch but the last and when ``stop`` asks, and is deleted when the phase finishes; a call with the
same plan (text count, batch size, processes, steps, seed, ...) continues from it, exactly: as nothing random
depends on what ran before, with the same number of processes the result is the uninterrupted phase's (bit
for bit on CPU; on GPU up to its kernels' nondeterminism). ``stop``: any object with ``requested(accelerator)
-> int`` (0: go on; ``training.runtime.StopSignals``), asked after every optimizer step on every process. An
interrupted phase checkpoints and returns ``stopped`` (the signal) and ``checkpoint``, ``backbone`` untouched;
nothing is raised here, the caller decides what it means (``runs.dapt`` raises ``RunInterrupted``).
"""
from __future__ import annotations

import inspect
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from ..errors import HFTransferError
from ..files import atomic_path

WARMUP_RATIO = 0.06
WEIGHT_DECAY = 0.01
ADAM_BETAS = (0.9, 0.98)
ADAM_EPS = 1e-6
MAX_GRAD_NORM = 1.0
CHECKPOINT_DIR = "checkpoint"  # work_dir/checkpoint/state.pt
STATE_NAME = "state.pt"


def dapt_steps(num_texts: int, *, batch_size: int, epochs: float, max_steps: int = 0, num_processes: int = 1,
               accumulation: int = 1) -> tuple[int, int]:
    """(optimizer steps per epoch, steps of the phase): ``max_steps`` if positive, else ``epochs`` passes rounded
    up. Batches per process as accelerate shards them (even batches: the last one wraps around)."""
    batches = math.ceil(math.ceil(num_texts / batch_size) / num_processes)
    per_epoch = max(1, math.ceil(batches / accumulation))
    return per_epoch, (max_steps if max_steps > 0 else max(1, math.ceil(epochs * per_epoch)))


def batch_seed(seed: int, *where) -> int:
    """The RNG seed of one micro-batch (masks and dropout), a function of ``seed`` and its place alone."""
    return random.Random("/".join(map(str, ("dapt", seed, *where)))).getrandbits(63)


class EpochShuffle(torch.utils.data.Sampler):
    """A permutation per epoch drawn from (seed, epoch) alone: every process, and a resumed phase, agree."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(batch_seed(self.seed, "order", self.epoch))
        return iter(torch.randperm(self.size, generator=generator).tolist())


@dataclass
class Progress:
    """Where a phase stands; saved in its checkpoint."""

    step: int = 0  # optimizer steps done
    runtime: float = 0.0  # seconds spent before the last checkpoint
    epoch: int = 0
    batches_done: int = 0  # micro-batches of ``epoch`` done
    loss_sum: float = 0.0  # this epoch's micro-batch losses (this process)
    loss_count: int = 0
    held_out_loss_before: float | None = None


@dataclass
class Phase:
    """What one phase prepared: the (prepared) model, optimizer, schedule and loader, and its plan."""

    accelerator: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: object
    collator: object
    examples: list[dict]  # the training texts, tokenized
    held_out: list[dict]  # the held-out texts as masked batches, fixed for the phase
    plan: dict  # what a checkpoint must have been made with to be resumed
    checkpoint: Path
    progress: Progress
    per_epoch: int
    total: int

    @property
    def module(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)


def build_mlm(config, mlm_source: str | None) -> tuple[torch.nn.Module, str]:
    """The masked-LM model of ``config`` and where its head came from (``pretrained`` or ``random``)."""
    from transformers import AutoModelForMaskedLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    if config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise HFTransferError(f"DAPT: transformers has no masked-language model for {config.model_type} encoders: "
                              "drop dapt from --domain_adaptation, or use a BERT-style encoder")
    if mlm_source is None:
        return AutoModelForMaskedLM.from_config(config).float(), "random"
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a checkpoint without a head is expected: no "newly initialized" report
    try:
        mlm, info = AutoModelForMaskedLM.from_pretrained(mlm_source, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    head_missing = [k for k in info["missing_keys"] if not k.startswith(mlm.base_model_prefix + ".")]
    return mlm.float(), "random" if head_missing else "pretrained"


def copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """``source``'s weights into ``target`` (an encoder and an MLM base model); only a pooler may differ."""
    missing, unexpected = target.load_state_dict(source.state_dict(), strict=False)
    odd = [k for k in [*missing, *unexpected] if not k.startswith("pooler.")]
    if odd:
        raise HFTransferError(f"DAPT: the {type(target).__name__} of the masked-LM model does not match the encoder "
                              f"({len(odd)} weights differ, e.g. {odd[:2]})")


def mlm_loss_sum(model, batch: dict, accepted: set[str]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the masked tokens of ``batch`` and their count (0 masked: a zero loss)."""
    labels = batch["labels"]
    logits = model(**{k: v for k, v in batch.items() if k in accepted and k != "labels"}).logits
    masked = labels != -100  # the collator's label of unmasked tokens
    return F.cross_entropy(logits[masked].float(), labels[masked], reduction="sum"), int(masked.sum())


def masked(collator, examples: list[dict], seed: int, *where) -> dict:
    """``examples`` padded and masked by the collator, its randomness drawn from ``seed`` at ``where``."""
    torch.manual_seed(batch_seed(seed, *where))
    return dict(collator(examples))


def held_out_loss(phase: Phase) -> float | None:
    """Mean masked-LM loss per masked token of the fixed held-out batches (None without any)."""
    module, accelerator = phase.module, phase.accelerator
    accepted = set(inspect.signature(module.forward).parameters)
    total, count = 0.0, 0
    module.eval()
    with torch.no_grad(), accelerator.autocast():
        for batch in phase.held_out:
            loss, n = mlm_loss_sum(module, {k: v.to(accelerator.device) for k, v in batch.items()}, accepted)
            total, count = total + loss.item(), count + n
    module.train()
    return total / count if count else None


def create_optimizer(model: torch.nn.Module, learning_rate: float) -> torch.optim.AdamW:
    """AdamW with RoBERTa's betas and epsilon; weight decay on matrices, none on biases and norm weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=ADAM_BETAS, eps=ADAM_EPS)


def setup(backbone, texts: list[str], held_out: list[str], *, accelerator, work_dir: Path, epochs: float,
          max_steps: int, learning_rate: float, batch_size: int, max_seq_length: int | None, mlm_probability: float,
          seed: int, mlm_source: str | None) -> Phase:
    """Tokenize, mask the held-out batches, build the masked-LM model from the encoder, prepare, schedule."""
    from transformers import DataCollatorForLanguageModeling, get_linear_schedule_with_warmup

    tokenizer, config = backbone.tokenizer, backbone.encoder.config
    if tokenizer.mask_token is None:
        raise HFTransferError(f"DAPT: the tokenizer of '{backbone.name}' has no mask token to pretrain with: drop dapt")
    max_length = max_seq_length or min(tokenizer.model_max_length, getattr(config, "max_position_embeddings", 512))
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
    examples, held = ([dict(zip(encoded, values)) for values in zip(*encoded.values())] for encoded in (
        tokenizer(list(t), truncation=True, max_length=max_length, return_special_tokens_mask=True) if t else {}
        for t in (texts, held_out)))  # unpadded token ids with their special-tokens masks
    held_batches = [masked(collator, held[i:i + batch_size], seed, "held_out", i)
                    for i in range(0, len(held), batch_size)]
    torch.manual_seed(seed)  # a random head's initialisation
    mlm, head = build_mlm(config, mlm_source)
    copy_weights(backbone.encoder, mlm.base_model)
    loader = torch.utils.data.DataLoader(range(len(examples)), batch_size=batch_size,
                                         sampler=EpochShuffle(len(examples), seed), collate_fn=list)
    model, optimizer, loader = accelerator.prepare(mlm, create_optimizer(mlm, learning_rate), loader)
    accumulation = accelerator.gradient_accumulation_steps
    per_epoch, total = dapt_steps(len(examples), batch_size=batch_size, epochs=epochs, max_steps=max_steps,
                                  num_processes=accelerator.num_processes, accumulation=accumulation)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(WARMUP_RATIO * total), total)
    plan = {"seed": seed, "texts": len(examples), "held_out": len(held), "batch_size": batch_size,
            "processes": accelerator.num_processes, "accumulation": accumulation, "steps": total,
            "steps_per_epoch": per_epoch, "learning_rate": learning_rate, "mlm_probability": mlm_probability,
            "max_length": max_length, "mlm_head": head}
    return Phase(accelerator, model, optimizer, scheduler, loader, collator, examples, held_batches, plan,
                 Path(work_dir) / CHECKPOINT_DIR, Progress(), per_epoch, total)


def save_checkpoint(phase: Phase, elapsed: float) -> Path:
    """The phase so far into ``work_dir/checkpoint/state.pt`` (written by the main process, atomically)."""
    accelerator, progress = phase.accelerator, phase.progress
    # each process's share of the epoch's loss, so a resumed epoch reports the same mean
    losses = accelerator.gather(torch.tensor([[progress.loss_sum, progress.loss_count]], dtype=torch.float64,
                                             device=accelerator.device)).cpu().tolist()
    if accelerator.is_main_process:
        state = {"plan": phase.plan, "progress": {**asdict(progress), "runtime": progress.runtime + elapsed},
                 "losses": losses, "model": phase.module.state_dict(), "optimizer": phase.optimizer.state_dict(),
                 "scheduler": phase.scheduler.state_dict()}
        with atomic_path(phase.checkpoint / STATE_NAME) as tmp:
            torch.save(state, tmp)
    accelerator.wait_for_everyone()
    return phase.checkpoint


def restore_checkpoint(phase: Phase) -> bool:
    """Continue from ``work_dir/checkpoint`` if it holds this plan's phase; whether it did."""
    path, accelerator = phase.checkpoint / STATE_NAME, phase.accelerator
    if not path.is_file():
        return False
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("plan") != phase.plan:
        accelerator.print(f"DAPT: the checkpoint in {phase.checkpoint} is of another plan: starting afresh")
        return False
    phase.module.load_state_dict(state["model"])
    phase.optimizer.load_state_dict(state["optimizer"])  # optimizer first: the schedule then sets its rates
    phase.scheduler.load_state_dict(state["scheduler"])
    loss_sum, loss_count = state["losses"][accelerator.process_index]
    phase.progress = Progress(**{**state["progress"], "loss_sum": loss_sum, "loss_count": int(loss_count)})
    accelerator.print(f"DAPT: resumed from {phase.checkpoint} at step {phase.progress.step}/{phase.total}")
    return True


def train_epoch(phase: Phase, accepted: set[str], bar, stop) -> int:
    """The rest of the current epoch, or up to the last step; the stop signal if ``stop`` asked (else 0)."""
    accelerator, progress = phase.accelerator, phase.progress
    if not progress.batches_done:
        progress.loss_sum, progress.loss_count = 0.0, 0
    phase.loader.set_epoch(progress.epoch)
    skip = progress.batches_done
    loader = accelerator.skip_first_batches(phase.loader, skip) if skip else phase.loader
    for indices in loader:
        batch = masked(phase.collator, [phase.examples[i] for i in indices], phase.plan["seed"], progress.epoch,
                       progress.batches_done, accelerator.process_index)  # also seeds this batch's dropout
        with accelerator.accumulate(phase.model):
            loss_sum, count = mlm_loss_sum(phase.model, {k: v.to(accelerator.device) for k, v in batch.items()},
                                           accepted)
            loss = loss_sum / max(1, count)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(phase.model.parameters(), MAX_GRAD_NORM)
            phase.optimizer.step()
            phase.optimizer.zero_grad(set_to_none=True)
        progress.batches_done += 1
        progress.loss_sum, progress.loss_count = progress.loss_sum + loss.item(), progress.loss_count + 1
        if not accelerator.sync_gradients:
            continue
        phase.scheduler.step()
        progress.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        signum = stop.requested(accelerator) if stop is not None else 0
        if signum or progress.step >= phase.total:
            if hasattr(loader, "end"):  # left mid-epoch: accelerate's gradient state forgets this loader
                loader.end()
            return signum
    progress.epoch, progress.batches_done = progress.epoch + 1, 0
    return 0


def train(phase: Phase, stop, started: float) -> int:
    """Every remaining step, checkpointing at each epoch end but the last; the stop signal, or 0 when done."""
    from tqdm.auto import tqdm

    accepted = set(inspect.signature(phase.module.forward).parameters)
    phase.model.train()
    bar = tqdm(total=phase.total, initial=phase.progress.step, desc="DAPT", unit="step", dynamic_ncols=True,
               disable=not phase.accelerator.is_local_main_process)
    signum = 0
    try:
        while not signum and phase.progress.step < phase.total:
            signum = train_epoch(phase, accepted, bar, stop)
            if signum or phase.progress.step < phase.total:
                save_checkpoint(phase, time.time() - started)
    finally:
        bar.close()
    return signum


def continue_pretraining(backbone, texts: list[str], held_out: list[str], *, accelerator, work_dir: Path,
                         epochs: float, max_steps: int, learning_rate: float, batch_size: int,
                         max_seq_length: int | None, mlm_probability: float, seed: int, stop=None,
                         mlm_source: str | None = None) -> dict:
    """Masked-LM training of ``backbone.encoder`` on ``texts``; the trained weights replace its own, in place.

    ``held_out`` texts are only scored (before and after). ``max_steps`` > 0 ends the phase there, else
    ``epochs`` (a float) passes decide; ``max_seq_length`` None: the tokenizer's and model's limit. Returns
    ``steps``, ``epochs`` (passes done), ``held_out_loss_before`` / ``_after``, ``train_loss_last``, ``runtime``
    (seconds, earlier interrupted attempts included), ``mlm_head`` (``pretrained`` / ``random``),
    ``resumed_from_step`` (None: started afresh), ``stopped`` (the signal that interrupted it, 0: finished),
    ``checkpoint`` (where an interrupted phase was saved; its ``backbone`` is left untouched).
    """
    if not texts:
        raise HFTransferError("DAPT: no text to pretrain on: the unlabelled target data (and source text) is empty")
    started = time.time()
    with torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda" else []):
        try:  # seeded throughout, in a fork of the RNG: the caller's RNG state is left as it was
            phase = setup(backbone, texts, held_out, accelerator=accelerator, work_dir=work_dir, epochs=epochs,
                          max_steps=max_steps, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                          max_seq_length=max_seq_length, mlm_probability=mlm_probability, mlm_source=mlm_source)
            resumed = restore_checkpoint(phase)
            first_step, progress = phase.progress.step, phase.progress
            if not resumed:
                progress.held_out_loss_before = held_out_loss(phase)
            signum, after, train_loss = train(phase, stop, started), None, None
            if not signum:
                after = held_out_loss(phase)
                loss_sum, count = accelerator.reduce(torch.tensor([progress.loss_sum, progress.loss_count],
                                                                  dtype=torch.float64, device=accelerator.device))
                train_loss = (loss_sum / count).item() if count else None  # the last epoch's, all processes
                copy_weights(phase.module.base_model, backbone.encoder)
                if accelerator.is_main_process:
                    shutil.rmtree(phase.checkpoint, ignore_errors=True)  # done: the checkpoint goes
                accelerator.wait_for_everyone()
            return {"steps": progress.step, "epochs": progress.step / phase.per_epoch,
                    "held_out_loss_before": progress.held_out_loss_before,
                    "held_out_loss_after": after, "train_loss_last": train_loss,
                    "runtime": progress.runtime + time.time() - started, "mlm_head": phase.plan["mlm_head"],
                    "resumed_from_step": first_step if resumed else None, "stopped": signum,
                    "checkpoint": phase.checkpoint if signum else None}
        finally:
            accelerator.free_memory()
