"""The machine a model runs on: usable CPU cores, the device, and the mixed-precision default.

One definition of each, shared by training (``training.runtime``, ``training.loaders``) and inference.
"""
from __future__ import annotations

import os

import torch

from ..errors import HFTransferError

PRECISIONS = ("auto", "no", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def numel(param: torch.Tensor) -> int:
    """A parameter's element count, also under DeepSpeed ZeRO-3, which leaves each process an empty placeholder
    and keeps the real size in ``ds_numel``."""
    return getattr(param, "ds_numel", param.numel())


def usable_cores() -> int:
    """CPU cores this process may run on (respects taskset / container CPU sets)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_precision(device_type: str) -> str | None:
    """The mixed precision used when none is asked for: bf16 on CUDA GPUs that support it (free speed there;
    on CPUs bf16 is slower), none elsewhere, and none when accelerate's own setting decides
    (``ACCELERATE_MIXED_PRECISION``, e.g. from ``accelerate config``)."""
    if "ACCELERATE_MIXED_PRECISION" in os.environ:
        return None
    if device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return None


def default_device() -> torch.device:
    """CUDA, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device) -> torch.device:
    """``device`` (None = ``default_device()``) as a ``torch.device``, with a one-line error if it is unusable."""
    if device is None or device == "auto":
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise HFTransferError(f"unknown device '{device}': use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HFTransferError(f"device '{device}' asked for, but no CUDA GPU is usable here: use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise HFTransferError(f"device '{device}' does not exist ({torch.cuda.device_count()} GPU(s)): use cuda:0 .. "
                              f"cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise HFTransferError(f"device '{device}' asked for, but MPS is not available here: use --device cpu or auto")
    return dev


def autocast_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (``auto``/None: bf16 on CUDA GPUs that support it, like the
    recipes' default; ``no``: none), or None for plain float32."""
    if precision not in (None, *PRECISIONS):
        raise HFTransferError(f"unknown mixed precision '{precision}': use one of {', '.join(PRECISIONS)}")
    if precision in (None, "auto"):
        return torch.bfloat16 if default_precision(device.type) == "bf16" else None
    return _AUTOCAST_DTYPES.get(precision)
