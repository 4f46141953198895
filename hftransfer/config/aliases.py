"""transformers' names on a recipe's command line: those that mean an hftransfer option, and those
that mean nothing here.

A command pasted from ``run_classification.py`` / ``run_image_classification.py`` carries
``TrainingArguments`` flags. Where the meaning is exactly one of ours (``--bf16`` is
``--mixed_precision bf16``) or is what every run does anyway (``--do_train``, ``--do_eval``), the
flag is accepted, in ``--help``'s "aliases" group; a value that cannot be honoured (``--do_eval
false``) is one line saying so. The Trainer flags that have no meaning here (``--deepspeed``,
``--optim``, ...) are refused in one line that names what to do instead, never a bare
"unrecognized arguments". Both hold for ``--config`` YAML keys too.
"""
from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass

from ..errors import HFTransferError
from .fields import to_bool

ALIAS_GROUP = "aliases (transformers' names)"


@dataclass(frozen=True)
class Alias:
    """A transformers name: the hftransfer option it sets, or None where it names what every run does anyway."""

    help: str
    target: str | None = None
    values: dict | None = None  # accepted value -> the option's value; None: any value, passed on unchanged
    refusal: str = ""  # why another value cannot be honoured, and the fix
    is_bool: bool = False


_ALWAYS = {True: None}  # a bool that only says what always happens: true is accepted, false refused

ALIASES = {
    "do_train": Alias("accepted: every run trains (false is refused)", values=_ALWAYS, is_bool=True,
                      refusal="every run trains, so drop it (hftransfer predict labels data with a trained model)"),
    "do_eval": Alias("accepted: every epoch is evaluated on the validation split (false is refused)", values=_ALWAYS,
                     is_bool=True, refusal="each epoch's validation score picks the exported model, so drop it"),
    "load_best_model_at_end": Alias("accepted: the exported model is the best epoch by --metric_for_best_model "
                                    "(false is refused)", values=_ALWAYS, is_bool=True,
                                    refusal="the exported model is always the best epoch, so drop it"),
    "evaluation_strategy": Alias("the older name of --eval_strategy (epoch or steps)", target="eval_strategy",
                                 values={"epoch": "epoch", "steps": "steps"},
                                 refusal="the validation score picks the exported model, so pass epoch or steps"),
    "logging_strategy": Alias("accepted with steps: the train loss is logged every --logging_steps",
                              values={"steps": None},
                              refusal="the train loss is logged every --logging_steps optimizer steps, so pass steps "
                                      "or drop it"),
    "save_strategy": Alias("epoch or no: same as --checkpointing_steps epoch / no", target="checkpointing_steps",
                           values={"epoch": "epoch", "no": "no"},
                           refusal="pass --checkpointing_steps N to checkpoint every N optimizer steps"),
    "bf16": Alias("same as --mixed_precision bf16", target="mixed_precision", values={True: "bf16"}, is_bool=True,
                  refusal="pass --mixed_precision no (or fp16) to choose another precision"),
    "fp16": Alias("same as --mixed_precision fp16", target="mixed_precision", values={True: "fp16"}, is_bool=True,
                  refusal="pass --mixed_precision no (or bf16) to choose another precision"),
    "label_smoothing_factor": Alias("same as --label_smoothing", target="label_smoothing"),
    "train_val_split": Alias("same as --validation_fraction", target="validation_fraction"),
    "hub_private_repo": Alias("same as --hub_private", target="hub_private", is_bool=True),
    "shuffle_train_dataset": Alias("accepted: training batches always come in a seeded random order (false is "
                                   "refused)", values=_ALWAYS, is_bool=True,
                                   refusal="training batches always come in a seeded random order, so drop it"),
}

_ACCELERATE = "set it up with `accelerate config` and start the recipe with `accelerate launch`"
_TOKEN = "log in with `hf auth login` or set HF_TOKEN instead"
_ADAM = "AdamW keeps torch's betas and epsilon, so drop it"
# transformers flags a pasted command may carry that mean nothing here -> what to do instead
NO_MEANING = {
    "deepspeed": _ACCELERATE,
    "fsdp": _ACCELERATE,
    "fsdp_config": _ACCELERATE,
    "optim": "the optimizer is always AdamW (tuned by --weight_decay and the learning rates), so drop it",
    "adam_beta1": _ADAM,
    "adam_beta2": _ADAM,
    "adam_epsilon": _ADAM,
    "lr_scheduler_kwargs": "choose the schedule with --lr_scheduler_type and --warmup_ratio instead",
    "save_steps": "pass --checkpointing_steps N instead",
    "greater_is_better": "--metric_for_best_model decides it (loss: lower; accuracy, f1: higher), so drop it",
    "hub_token": _TOKEN,
    "push_to_hub_token": _TOKEN,
    "token": _TOKEN,
    "use_auth_token": _TOKEN,
    "hub_strategy": "--push_to_hub pushes the exported model once, at the end, so drop it",
    "push_to_hub_model_id": "pass --hub_model_id instead",
    "use_cpu": "run on CPU with `accelerate launch --cpu` instead",
    "no_cuda": "run on CPU with `accelerate launch --cpu` instead",
    "auto_find_batch_size": "set --per_device_train_batch_size instead",
    "remove_unused_columns": "only the input and label columns are read, so drop it",
    "pad_to_max_length": "batches are padded to their longest text (--max_seq_length truncates), so drop it",
    "overwrite_cache": "pass --feature_cache off to recompute cached backbone features, or drop it",
    "preprocessing_num_workers": "pass --dataloader_num_workers for the loader's worker processes instead",
    "metric_name": "every run reports accuracy and F1, so pass --metric_for_best_model to pick the epoch by one",
    "text_column_names": "pass --text_column_name with the one column that holds the texts",
    "text_column_delimiter": "the texts come from one column (--text_column_name), so drop it",
    "ignore_mismatched_sizes": "the classification head is always new and sized to the labels, so drop it",
    "config_name": "the model's config comes from --model_name_or_path, so drop it",
    "tokenizer_name": "the tokenizer comes from --model_name_or_path, so drop it",
    "model_revision": "download that revision to a folder and pass the folder as --model_name_or_path",
    "cache_dir": "set HF_HOME (or HF_DATASETS_CACHE) to move the caches instead",
}


class _Refuse(argparse.Action):
    """A flag known only to be refused, in one line that says why; hidden from --help's option list."""

    def __init__(self, option_strings, dest, reason: str, **kwargs):
        super().__init__(option_strings, dest, nargs="*", help=argparse.SUPPRESS, **kwargs)
        self.reason = reason

    def __call__(self, parser, namespace, values, option_string=None):
        raise HFTransferError(self.reason)


def add_refusal(parser: argparse.ArgumentParser, name: str, reason: str) -> None:
    parser.add_argument(f"--{name}", action=_Refuse, reason=reason)


def no_meaning(name: str) -> str:
    return f"--{name} is a transformers option with no meaning here: {NO_MEANING[name]}"


def add_transformers_names(parser: argparse.ArgumentParser) -> str:
    """Add the aliases (listed once, in their own group) and the refused Trainer flags; returns the
    epilog paragraph that names the refused ones."""
    group = parser.add_argument_group(ALIAS_GROUP, "for commands pasted from transformers' run_classification.py "
                                                   "and run_image_classification.py")
    for name, alias in ALIASES.items():
        if alias.is_bool:
            group.add_argument(f"--{name}", type=to_bool, nargs="?", const=True, help=alias.help)
        else:
            group.add_argument(f"--{name}", help=alias.help)
    for name in NO_MEANING:
        add_refusal(parser, name, no_meaning(name))
    names = ", ".join(f"--{name}" for name in NO_MEANING)
    return textwrap.fill(f"transformers flags with no meaning here, each refused with what to do instead: {names}.",
                         width=100)


def resolve_aliases(values: dict, coerce) -> dict:
    """``values`` (one source: the flags, or one YAML file) with transformers' names replaced by
    hftransfer's; one line for a value that cannot be honoured, a meaningless name, or a contradiction.
    ``coerce(option, value)`` types a value, so ``--bf16`` and ``--mixed_precision bf16`` agree."""
    meaningless = [name for name in values if name in NO_MEANING]
    if meaningless:
        raise HFTransferError(no_meaning(meaningless[0]))
    out = {name: value for name, value in values.items() if name not in ALIASES}
    set_by = {name: name for name in out}
    for name in [n for n in values if n in ALIASES]:
        target, value = _translate(name, values[name])
        if target is None:
            continue
        if target in out and coerce(target, out[target]) != coerce(target, value):
            raise HFTransferError(f"--{name} means --{target} {value}, but --{set_by[target]} says {out[target]}: "
                                  "pass only one of them")
        out[target], set_by[target] = value, name
    return out


def _translate(name: str, value) -> tuple[str | None, object]:
    """(hftransfer option, its value) of transformers' ``--name value``; (None, None) when it changes nothing."""
    alias = ALIASES[name]
    if alias.is_bool and not isinstance(value, bool):
        try:
            value = to_bool(str(value))
        except argparse.ArgumentTypeError:
            raise HFTransferError(f"--{name} got '{value}': pass true or false") from None
    if alias.values is None:
        return alias.target, value
    key = value if alias.is_bool else str(value).lower()
    if key not in alias.values:
        shown = str(value).lower()
        raise HFTransferError(f"--{name} {shown} cannot be honoured here: {alias.refusal}")
    return alias.target, alias.values[key]
