"""Regularizers toward the pretrained starting point.

L2-SP (Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional
Networks", ICML 2018) replaces weight decay, which pulls every weight toward zero and so forgets
what pretraining learned, by a pull toward the pretrained weights ``w^0`` themselves::

    loss = task_loss + alpha / 2 * ||w_backbone - w_backbone^0||^2 + beta / 2 * ||w_head||^2

The head is new (it has no pretrained value), so it gets plain L2 with its own strength ``beta``.
``alpha=0.1``, ``beta=0.01`` are a common starting point; tune both on validation data.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import HFTransferError


class L2SP(nn.Module):
    """The L2-SP penalty of a ``TransferModel``; call it as ``l2sp(model)`` and add it to the loss.

    ``__init__`` snapshots ``w^0``: a detached copy (same dtype, device and memory format) of every
    *parameter* of ``model.backbone``, frozen or not (a group frozen now may be unfrozen later by a
    gradual or LP-FT strategy). Buffers such as BatchNorm running statistics are not parameters,
    are not trained by gradient, and are left out. The copies are registered as non-persistent
    buffers, so they follow ``l2sp.to(device)`` but never appear in ``parameters()`` (of the model
    or of this module), never receive gradients, and are not written into ``state_dict``. Buffer
    names are the parameter names with ``.`` mangled to ``__`` (``names`` maps one to the other;
    ``reference(name)`` returns ``w^0`` by parameter name, e.g. ``"backbone.model.conv_stem.weight"``).

    ``forward(model)`` returns a 0-dim float32 tensor on the parameters' device:
    ``alpha/2 * sum ||w - w^0||^2`` over backbone parameters plus ``beta/2 * sum ||w||^2`` over
    head parameters (read from ``model.head`` at every call, so ``reset_classifier`` is fine).
    Differences and squares are taken after upcasting to float32, and no matmul-type op is used,
    so the value is float32 and exact enough with bf16/fp16 weights or inside ``autocast``.
    Gradients reach only the parameters: ``d/dw = alpha * (w - w^0)`` on the backbone and
    ``beta * w`` on the head.

    Parameters with ``requires_grad=False`` are skipped at call time (not at snapshot time). This
    saves a pass over the whole backbone under linear probing and changes no gradient. The value
    changes only if a parameter was moved and then frozen again, and hftransfer's strategies never
    do that: a frozen parameter is still at ``w^0``, where its term is 0.

    Build it from the unwrapped model with its *starting* weights: after ``accelerator.prepare``
    (DDP's constructor broadcasts rank 0's parameters, so each rank builds its own L2SP from
    identical weights and ``w^0`` is the same everywhere, even for ``weights="random"``), and before
    ``accelerator.load_state`` (so that a resumed run is pulled toward the pretrained weights, not
    toward the checkpoint). The trainer passes ``accelerator.unwrap_model(model)`` to ``forward``.
    The penalty then touches the same ``Parameter`` objects DDP hooks into, and its gradient is the
    same on every rank, so DDP's all-reduce averages it back to itself.

    Under FSDP2 the parameters are ``DTensor`` shards and the snapshot is sharded the same way (no
    process holds a whole ``w^0``). Call it then while the parameters are sharded, i.e. before the
    forward (the trainer does, for every engine): each process takes the penalty of its own shards.
    """

    def __init__(self, model: nn.Module, alpha: float, beta: float):
        super().__init__()
        if not (alpha >= 0 and beta >= 0):
            raise HFTransferError(f"L2-SP strengths must be >= 0 (got alpha={alpha}, beta={beta}): "
                                  "try alpha=0.1, beta=0.01")
        self.alpha, self.beta = float(alpha), float(beta)
        self.names: dict[str, str] = {}
        for name, param in model.backbone.named_parameters():
            full = f"backbone.{name}"
            buffer_name = full.replace(".", "__")
            if buffer_name in self.names.values():
                raise HFTransferError(f"parameter names '{full}' collide after mangling: rename the module")
            self.names[full] = buffer_name
            self.register_buffer(buffer_name, param.detach().clone(), persistent=False)

    def reference(self, name: str) -> torch.Tensor:
        """``w^0`` of the backbone parameter ``name`` (as in ``model.named_parameters()``)."""
        return getattr(self, self.names[name])

    def forward(self, model: nn.Module) -> torch.Tensor:
        total, sharded = None, False
        if self.alpha:
            drift = None
            for name, param in model.backbone.named_parameters():
                if not param.requires_grad:
                    continue
                full = f"backbone.{name}"
                if full not in self.names:
                    raise HFTransferError(f"L2SP has no reference weight for '{full}': build L2SP from this model")
                param, sharded = _local(param), sharded or param is not _local(param)
                diff = param.float() - _local(self.reference(full)).float()
                term = diff.square().sum()
                drift = term if drift is None else drift + term
            if drift is not None:
                total = self.alpha / 2 * drift
        if self.beta:
            norm = None
            for param in model.head.parameters():
                if param.requires_grad:
                    param, sharded = _local(param), sharded or param is not _local(param)
                    term = param.float().square().sum()
                    norm = term if norm is None else norm + term
            if norm is not None:
                total = self.beta / 2 * norm if total is None else total + self.beta / 2 * norm
        if total is None:
            device = _local(next(model.parameters())).device
            return torch.zeros((), dtype=torch.float32, device=device)
        return _whole(total) if sharded else total

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, references={len(self.names)}"


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of an FSDP2 parameter (a ``DTensor``; its reference copy is sharded the same way),
    or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _whole(partial: torch.Tensor) -> torch.Tensor:
    """The penalty over every process's shards as the value, with this shard's own gradient: each shard's
    gradient is ``alpha * (w - w^0)`` of its own elements, and FSDP adds it to the reduced task gradient."""
    total = partial.detach().clone()
    torch.distributed.all_reduce(total)
    return partial + (total - partial.detach())


def decoupled_weight_decay_groups(param_groups: list[dict], l2sp_active: bool) -> list[dict]:
    """With L2-SP on, set ``weight_decay=0`` in every optimizer group (in place) and return them.

    AdamW's decoupled decay shrinks each weight toward 0 by ``lr * wd * w`` per step. On the
    backbone that fights L2-SP's pull toward ``w^0`` (the two together settle on a point between 0
    and ``w^0`` instead of near ``w^0``), and on the head ``beta`` already is the L2 penalty, so
    keeping decay would regularize it twice. Only ``weight_decay`` changes; ``lr``, ``is_head`` and
    the other keys are kept. With L2-SP off the groups are returned unchanged. Works on the list
    from ``strategies.param_groups`` before building the optimizer, or on a live
    ``optimizer.param_groups``.
    """
    if l2sp_active:
        for group in param_groups:
            group["weight_decay"] = 0.0
    return param_groups


__all__ = ["L2SP", "decoupled_weight_decay_groups"]


class ProximalTerm(nn.Module):
    """FedProx's proximal term (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020):
    ``mu / 2 * sum ||w - w_global||^2`` over the parameters a federated round trains, pulling a client's local
    steps toward the global model it received, so clients with skewed data drift less.

    ``__init__`` snapshots ``w_global`` (detached copies of the trainable parameters of ``model`` at the start of
    the round); call it as ``proximal(model)`` and add it to the loss, as ``training.loop.train_step`` does with
    L2-SP. Squares are taken in float32 (bf16 weights stay exact enough); the gradient is ``mu * (w - w_global)``.
    """

    def __init__(self, model: nn.Module, mu: float):
        super().__init__()
        if not mu >= 0:
            raise HFTransferError(f"--proximal_mu must be >= 0 (got {mu}): FedProx's paper uses 0.001 to 1")
        self.mu = float(mu)
        self.anchors = {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}

    def forward(self, model: nn.Module) -> torch.Tensor:
        params = [(name, p) for name, p in model.named_parameters() if name in self.anchors]
        device = params[0][1].device if params else torch.device("cpu")
        total = torch.zeros((), dtype=torch.float32, device=device)
        for name, param in params:
            total = total + (param.float() - self.anchors[name].float()).pow(2).sum()
        return 0.5 * self.mu * total
