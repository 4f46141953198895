"""What travels between server and clients: exactly the tensors the strategy trains, and their size.

After ``apply_trainable`` the trainable parameters are the head, plus the top groups (``partial``), the LoRA
adapters (``lora``) or everything (``full``); the frozen rest is identical on every party (the same pretrained
weights, or the same seeded random init) and never moves. Floating-point buffers of a module whose
parameters train (BatchNorm's running statistics in a trained group) travel too: the exported global model
must hold the statistics its averaged weights were trained with.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from ..errors import HFTransferError


def travelling_names(model: nn.Module) -> list[str]:
    """The ``state_dict`` keys that travel, in order: trainable parameters, then their modules' float buffers."""
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    trained_modules = {name.rpartition(".")[0] for name in names}
    for module_name, module in model.named_modules():
        if module_name in trained_modules:
            prefix = f"{module_name}." if module_name else ""
            names += [prefix + b for b, buf in module.named_buffers(recurse=False)
                      if buf is not None and buf.is_floating_point()]
    if not names:
        raise HFTransferError("the strategy trains no parameter, so a federated round has nothing to send: use "
                              "--strategy linear_probe, partial, lora or full")
    return names


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def model_bytes(model: nn.Module) -> int:
    """The whole model's weights in bytes (parameters and float buffers): what a full-model round would send."""
    return tensor_bytes(t for t in model.state_dict().values() if t.is_floating_point())


def get_arrays(model: nn.Module, names: list[str]) -> dict[str, np.ndarray]:
    """The travelling tensors as float32 numpy arrays (bf16 has no numpy type; averaging wants float32 anyway)."""
    state = model.state_dict()
    return {name: state[name].detach().float().cpu().numpy() for name in names}


def set_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Copy received arrays into the model in place (each tensor keeps its dtype and device)."""
    state = model.state_dict()
    missing = sorted(set(arrays) - set(state))
    if missing:
        raise HFTransferError(f"the server sent {len(missing)} tensor(s) this model does not have (e.g. {missing[0]}): "
                              "server and clients must run the same --model_name_or_path, --strategy and LoRA options")
    with torch.no_grad():
        for name, value in arrays.items():
            target = state[name]
            if tuple(target.shape) != tuple(value.shape):
                raise HFTransferError(f"'{name}' has shape {tuple(value.shape)} from the server but "
                                      f"{tuple(target.shape)} here: server and clients must build the same model "
                                      "(same labels, head and LoRA rank)")
            target.copy_(torch.from_numpy(np.asarray(value)).to(dtype=target.dtype, device=target.device))


def frozen_fingerprint(model: nn.Module, names: list[str]) -> str:
    """A digest of every tensor that does not travel: server and clients must agree on it, or averaging the
    travelling ones would mix models built on different frozen weights."""
    digest = hashlib.sha256()
    travelling = set(names)
    for name, tensor in model.state_dict().items():
        if name not in travelling and tensor.is_floating_point():
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
