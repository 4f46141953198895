"""The processes a run spans: the Accelerator, CPU threads, and keeping DDP ranks in step.

accelerate handles devices, mixed precision and process groups; what it leaves to us is choosing
thread counts on CPU (``accelerate launch`` pins one thread per process), re-wrapping DDP when the
trainable set changes mid-run, and checking that every rank still holds the same weights.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs
from accelerate.utils import DistributedType, ProjectConfiguration

from ..errors import HFTransferError
from ..models.devices import default_precision, usable_cores
from .sharding import build_models_whole, complete_cpu_deepspeed, complete_cpu_fsdp, engine_name
from .tracking import log_with, logging_dir


def create_accelerator(cfg) -> Accelerator:
    """An Accelerator for ``cfg`` (a ``TrainConfig``): accumulation, precision, compile, seedable sampling,
    and the ``--report_to`` trackers (started later by ``init_trackers``, once output_dir is ready)."""
    kwargs = {}
    trackers = log_with(cfg)
    if trackers:  # the logging dir is also accelerate's check that directory-based trackers (aim) have one
        kwargs["log_with"] = trackers
        kwargs["project_config"] = ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(logging_dir(cfg)))
    precision = cfg.mixed_precision or default_precision("cuda" if torch.cuda.is_available() else "cpu")
    if precision:
        kwargs["mixed_precision"] = precision
    if cfg.torch_compile:
        kwargs["dynamo_backend"] = "inductor"
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        # seedable sampler + set_epoch: a resumed run sees the same shuffle order as an uninterrupted one
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.ddp_timeout))],
        **kwargs,
    )
    complete_cpu_fsdp(accelerator)
    complete_cpu_deepspeed(accelerator)
    build_models_whole(accelerator)
    check_launch(accelerator)
    return accelerator


def check_launch(accelerator: Accelerator) -> None:
    """Refuse a launch that accelerate silently turned into independent runs: ``accelerate launch --num_processes N``
    on a machine without GPUs (``--multi_gpu``, ``--use_fsdp``, ``--use_deepspeed``) starts N processes that each
    come up as a single-process run (``DistributedType.NO``): N unsynchronised trainings writing one output folder.
    The launcher's ``WORLD_SIZE`` and the engine it asked for (``ACCELERATE_USE_FSDP`` / ``_DEEPSPEED``) are
    compared with what accelerate set up."""
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    engine = next((name for name, var in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
                   if os.environ.get(var, "").lower() in ("1", "true")), None)
    distributed = accelerator.distributed_type.name
    if launched != accelerator.num_processes:
        cpu_hint = ("; on a machine without GPUs launch with ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
                    f"--num_processes {launched} (DDP over gloo)" if not torch.cuda.is_available() else "")
        raise HFTransferError(f"launched as {launched} processes but accelerate set up {accelerator.num_processes} "
                              f"({distributed}): each process would train alone into the same output_dir{cpu_hint}")
    if engine == "DeepSpeed" and accelerator.distributed_type == DistributedType.MULTI_CPU:
        # accelerate's CPU flag (ACCELERATE_USE_CPU, use_cpu: true) skips DeepSpeed; without it DeepSpeed brings up
        # CPU processes itself, through its CPU accelerator
        raise HFTransferError("launched with DeepSpeed but accelerate set up MULTI_CPU: the CPU flag turns DeepSpeed "
                              "off; drop ACCELERATE_USE_CPU (or use_cpu: true in the accelerate config), DeepSpeed "
                              "runs on CPU processes without it")
    if engine and engine.upper() not in distributed.upper():
        cpu_hint = ("; FSDP2 also runs on CPU processes: ACCELERATE_USE_CPU=1 accelerate launch --use_fsdp "
                    "--fsdp_version 2" if engine == "FSDP" else "")
        raise HFTransferError(f"launched with {engine} but accelerate set up {distributed}: drop {engine} from the "
                              "launch (or the accelerate config) to run without it" + cpu_hint)


def configure_threads(num_threads: int | None, accelerator: Accelerator) -> int:
    """On CPU use all cores: ``accelerate launch`` sets OMP_NUM_THREADS=1, halving speed on 2 cores."""
    if accelerator.device.type != "cpu":
        return torch.get_num_threads()
    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    threads = num_threads or max(1, usable_cores() // max(1, local_procs))
    torch.set_num_threads(threads)
    return threads


def rewrap_ddp(accelerator: Accelerator, model):
    """Rebuild the DDP wrapper after the trainable set changed.

    DDP registers gradient hooks only for parameters that required grad when it was built: a group
    unfrozen later would train on each rank's own gradient, silently unsynchronized, and a group
    frozen later makes DDP wait for gradients that never come. Accelerate has no public re-wrap; its
    checkpoint list may hold the wrapper or the bare module, so a wrapper there is swapped too.
    """
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model
    device_ids = [accelerator.device.index] if accelerator.device.type == "cuda" else None
    wrapped = torch.nn.parallel.DistributedDataParallel(model.module, device_ids=device_ids)
    accelerator._models = [wrapped if m is model else m for m in accelerator._models]
    return wrapped


def check_ranks_in_sync(accelerator: Accelerator, module: torch.nn.Module) -> None:
    """Fail loudly if processes hold different weights (e.g. a group trained without gradient sync)."""
    if accelerator.num_processes == 1 or engine_name(accelerator):  # sharded: each process holds its own part
        return
    sums = torch.stack([p.detach().double().sum() for p in module.parameters()]).to(accelerator.device)
    gathered = accelerator.gather(sums[None])
    if not torch.allclose(gathered, gathered[:1].expand_as(gathered), rtol=1e-6, atol=1e-6):
        raise RuntimeError("model weights differ between processes: gradient synchronization is broken")


def max_over_processes(accelerator: Accelerator, value: int) -> int:
    """The largest ``value`` of any process (every process gets the same answer)."""
    if accelerator.num_processes == 1:
        return value
    return int(accelerator.gather(torch.tensor([value], device=accelerator.device)).max().item())


def any_process(accelerator: Accelerator, flag: bool) -> bool:
    """Whether ``flag`` is true on any process (every process gets the same answer)."""
    return max_over_processes(accelerator, int(flag)) > 0


def from_main_process(accelerator: Accelerator, value):
    """The main process's ``value`` (any picklable object) on every process: one decision for all ranks."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def mean_over_processes(accelerator: Accelerator, total: float, count: int) -> float:
    """``total / count`` summed over every process: the epoch's train loss as one number, not one per rank."""
    if accelerator.num_processes > 1:
        both = accelerator.gather(torch.tensor([[total, float(count)]], dtype=torch.float64, device=accelerator.device))
        total, count = both[:, 0].sum().item(), int(both[:, 1].sum().item())
    return total / max(1, count)


def step_seed(seed: int, epoch: int, batch: int, process: int = 0) -> int:
    """The RNG seed of one training batch (dropout and any other randomness in the step).

    A function of (seed, epoch, batch, process) alone, so a run resumed at any batch draws exactly
    what the uninterrupted run drew there, whatever ran before it.
    """
    import random

    return random.Random(f"{seed}/{epoch}/{batch}/{process}").getrandbits(63)


class RunInterrupted(Exception):
    """SIGTERM / SIGINT stopped the run; ``checkpoint`` is where it was saved (None: nothing to save yet)."""

    def __init__(self, signum: int, epoch: int | None = None, step: int | None = None, checkpoint=None):
        self.signum, self.epoch, self.step, self.checkpoint = signum, epoch, step, checkpoint
        super().__init__(self.message())

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT

    def message(self) -> str:
        import signal

        name = signal.Signals(self.signum).name
        if self.checkpoint is None:
            return f"interrupted by {name} before training started: nothing to save"
        return (f"interrupted by {name} at epoch {self.epoch + 1}, step {self.step}: checkpoint saved to "
                f"{self.checkpoint}; continue with --resume_from_checkpoint latest")


class StopSignals:
    """SIGTERM (what SLURM and Kubernetes send before preempting) and SIGINT (Ctrl-C) as a stop request.

    Inside the training loop a signal only sets a flag: the loop finishes the optimizer step, saves a
    checkpoint and raises ``RunInterrupted``. Before the loop there is nothing to save, so the run
    stops at once. A second Ctrl-C aborts immediately. ``requested`` agrees across processes, so every
    rank of a distributed run stops after the same step.
    """

    def __init__(self):
        self.signum: int | None = None
        self.in_training = False
        self._previous = {}

    def install(self) -> "StopSignals":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # signal handlers only work there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        import signal
        import sys

        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            print("aborted by a second Ctrl-C: nothing saved", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        if not self.in_training:
            raise RunInterrupted(signum)

    def requested(self, accelerator: Accelerator) -> int:
        """The signal every process agrees to stop for (0: keep going)."""
        return max_over_processes(accelerator, self.signum or 0)
