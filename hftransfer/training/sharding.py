"""Sharded engines through accelerate: FSDP2 and DeepSpeed ZeRO, where each process holds a shard of the weights.

accelerate shards the model in ``prepare`` (``accelerate launch --config_file recipes/accelerate_configs/...``);
what hftransfer adds is what its own features need once no process holds the whole model:

* **a CPU route for FSDP2**: accelerate sets up FSDP only on GPUs, and on a machine without them a
  ``--use_fsdp`` launch would come up as plain multi-CPU DDP (``check_launch`` refuses that). torch's
  ``fully_shard`` runs over gloo, so ``ACCELERATE_USE_CPU=1 accelerate launch --use_fsdp --fsdp_version 2
  --num_processes 2`` is completed here into a real FSDP2 run: the tests shard on CPU;
* **a host copy for the export**: the main process keeps a plain CPU copy of the model, built before
  ``prepare``; the best weights are gathered into it (a collective: every process takes part) and it is what
  ``save_pretrained`` writes, so LoRA merging and the native layouts work unchanged, and a sharded run
  exports exactly what a DDP run exports. Reloading the best weights (for the test split) goes the other
  way: the copy's weights are broadcast into the shards;
* **what each engine cannot do**, refused in one line before anything trains.
"""
from __future__ import annotations

import copy
import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from ..errors import HFTransferError

SHARDED_ENGINES = (DistributedType.FSDP, DistributedType.DEEPSPEED)


def engine_name(accelerator: Accelerator) -> str | None:
    """``"FSDP"``, ``"DeepSpeed ZeRO-N"``, or None when every process holds the whole model (single process, DDP)."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return "FSDP"
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return f"DeepSpeed ZeRO-{zero_stage(accelerator)}"
    return None


def zero_stage(accelerator: Accelerator) -> int:
    plugin = accelerator.state.deepspeed_plugin
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0)) if plugin is not None else 0


def params_sharded(accelerator: Accelerator) -> bool:
    """Whether parameters themselves are sharded (FSDP, ZeRO-3), not only gradients and optimizer state."""
    return accelerator.distributed_type == DistributedType.FSDP or (
        accelerator.distributed_type == DistributedType.DEEPSPEED and zero_stage(accelerator) == 3)


def complete_cpu_fsdp(accelerator: Accelerator) -> None:
    """Turn a CPU launch that asked for FSDP (``ACCELERATE_USE_FSDP``) into the FSDP2 run it asked for.

    accelerate's state only switches to FSDP for GPU-type devices; its FSDP2 ``prepare``, ``save_state`` /
    ``load_state`` and ``get_state_dict`` themselves work over gloo on CPU tensors. The plugin is built from
    the launch's ``FSDP_*`` variables, as accelerate would build it on GPUs.
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() not in ("1", "true"):
        return
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    from accelerate.state import PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise HFTransferError("FSDP on CPU processes needs FSDP2: launch with --fsdp_version 2 (or fsdp_version: 2 "
                              "in the accelerate config)")
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # the state accelerate's helpers read


def complete_cpu_deepspeed(accelerator: Accelerator) -> None:
    """Give a DeepSpeed launch on a machine without GPUs the world size its process group already has.

    With no GPU, accelerate's state picks no backend and counts one process, yet it still hands the launch to
    ``deepspeed.comm``, which brings up every process over gloo through DeepSpeed's CPU accelerator. The
    state's process count, ranks and device are filled from that process group, as accelerate fills them on
    GPUs; ZeRO's ``prepare``, ``save_state`` / ``load_state`` and gathers then run on CPU tensors.
    """
    if accelerator.distributed_type != DistributedType.DEEPSPEED or torch.cuda.is_available():
        return
    if not torch.distributed.is_initialized() or accelerator.num_processes == torch.distributed.get_world_size():
        return
    from accelerate.state import AcceleratorState, PartialState

    ranks = {"num_processes": torch.distributed.get_world_size(), "process_index": torch.distributed.get_rank(),
             "local_process_index": int(os.environ.get("LOCAL_RANK", "0")), "backend": "gloo",
             "device": torch.device("cpu")}
    PartialState._shared_state.update(ranks)  # the state accelerate's helpers and samplers read
    AcceleratorState._shared_state.update(ranks)


def build_models_whole(accelerator: Accelerator) -> None:
    """Let transformers build models whole for the rest of the run, also under DeepSpeed ZeRO-3.

    accelerate registers its ZeRO-3 config with transformers, which then builds every ``from_pretrained`` /
    ``from_config`` model already partitioned (``deepspeed.zero.Init``, a collective): the main process would
    have no whole weights to keep for the export, and building the export's layout on the main process alone
    would wait forever for the others. Built whole, the model is partitioned by ``prepare`` instead, so the
    devices still hold one shard each; the cost is one whole copy per process in host memory while it starts.
    """
    if accelerator.distributed_type == DistributedType.DEEPSPEED and zero_stage(accelerator) == 3:
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def check_engine_support(accelerator: Accelerator, *, trainable_set_changes: bool, l2sp: bool, ema: bool) -> None:
    """Refuse what the sharded engine in use cannot train correctly, naming the way out."""
    engine = engine_name(accelerator)
    if engine is None:
        return
    if ema:
        raise HFTransferError(f"--model_ema keeps a whole copy of the model on every process, which {engine} exists "
                              "to avoid: drop --model_ema, or train with DDP")
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    if trainable_set_changes:
        raise HFTransferError(f"{engine} fixes the trainable parameters when it starts, so a strategy that unfreezes "
                              "groups mid-run (gradual, lp_ft, lp_lora, discriminative with --unfreeze_every) would "
                              "never train them: use FSDP (recipes/accelerate_configs/fsdp2.yaml) for it")
    if l2sp and zero_stage(accelerator) == 3:
        raise HFTransferError("L2-SP's pretrained reference needs the parameters' values on every process, which "
                              "ZeRO-3 partitions away: use FSDP (its reference is sharded like the parameters) "
                              "or ZeRO-2")


def no_split_modules(module: torch.nn.Module) -> list[str]:
    """The block classes FSDP's transformer-based wrap shards one unit each: the backbone's layer-group modules
    that repeat (a ViT's ``Block``, BERT's ``BertLayer``, Llama's ``LlamaDecoderLayer``, a ResNet's ``BasicBlock``);
    torch containers (``Sequential``, ``ModuleList``) are not blocks."""
    backbone, places = module.backbone, {}
    for group in backbone.layer_groups():
        parts = [p.rsplit(".", 1)[0].split(".") for p in group.params]
        prefix = ".".join(os.path.commonprefix(parts))
        if not prefix:
            continue
        cls = type(backbone.get_submodule(prefix))
        if not cls.__module__.startswith("torch.nn"):
            places.setdefault(cls.__name__, set()).add(prefix)
    # a block repeats at several places; the stem and final-norm groups share the whole model's prefix
    return [name for name, prefixes in places.items() if len(prefixes) > 1]


class HostCopy:
    """The main process's plain copy of the model: what a sharded run's best weights are gathered into and
    exported from. Other processes hold None; ``gather`` and ``scatter`` are collectives all of them call."""

    def __init__(self, accelerator: Accelerator, module: torch.nn.Module):
        self.module = copy.deepcopy(module).cpu() if accelerator.is_main_process else None

    def gather(self, accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module | None:
        """The prepared model's full weights, loaded into the copy (main process; None elsewhere)."""
        state = accelerator.get_state_dict(model)  # gathered on the main process, on CPU
        if self.module is not None:
            missing, unexpected = self.module.load_state_dict(state, strict=False)
            persistent = self.module.state_dict().keys()  # once: missing non-persistent buffers are expected
            if unexpected or [k for k in missing if k in persistent]:
                raise RuntimeError(f"gathered weights do not fit the model: missing {missing[:3]}, unexpected "
                                   f"{unexpected[:3]}")
        return self.module

    def scatter(self, accelerator: Accelerator, model: torch.nn.Module) -> None:
        """The copy's weights (main process) into every process's shards of the prepared model."""
        if accelerator.distributed_type == DistributedType.FSDP:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            state = self.module.state_dict() if self.module is not None else {}
            set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True,
                                                                        broadcast_from_rank0=True))
            return
        import deepspeed

        unwrapped = accelerator.unwrap_model(model)
        source = dict(self.module.named_parameters()) if self.module is not None else {}
        params = dict(unwrapped.named_parameters())
        # ZeRO-3 gathers each parameter whole, lets the main process write it, and re-partitions it on exit
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=0):
            if accelerator.is_main_process:
                with torch.no_grad():
                    for name, param in params.items():
                        param.copy_(source[name].to(param.dtype))
        if zero_stage(accelerator) < 3:  # whole parameters on every process: the main process's values everywhere
            for param in params.values():
                torch.distributed.broadcast(param.data, src=0)
