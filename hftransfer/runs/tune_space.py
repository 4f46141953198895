"""The search space of ``--tune``, centred on the user's recipe, and the config each point of it trains.

``suggest`` asks an Optuna trial for one recipe (define-by-run: a parameter is asked only where the
strategy reads it, e.g. no backbone learning rate for a linear probe); ``recipe_config`` turns the
answers back into a ``TrainConfig``. ``baseline_params`` is the user's own recipe in the same names
(enqueued first, so the search never ends below the defaults on validation) and ``probe_params`` a
linear probe (the cheapest fidelity: it trains on cached frozen features in seconds). Every range
holds the user's value, so the enqueued points are inside the space.

Parameters: ``backbone`` (``--model_name_or_path auto``: the ranked candidates, best first),
``strategy``, ``learning_rate`` (log-uniform, 1/10x to 10x the recipe's), ``head_learning_rate``,
``layer_decay``, ``unfreeze_top_k`` (partial), epochs (``probe_epochs`` for a linear probe,
``lp_epochs`` + ``ft_epochs`` for LP-FT, ``epochs`` otherwise), ``label_smoothing``,
``class_weights``, image ``auto_augment`` (RandAugment magnitude), text ``max_seq_length``.
"""
from __future__ import annotations

import dataclasses

from ..config import TrainConfig
from ..tuning.strategies import LORA_STRATEGIES
from .rank import parse_candidate

LP_STRATEGIES = ("lp_ft", "lp_lora")  # a probe phase, then fine-tuning: lp_epochs + ft_epochs
LAYER_DECAY_STRATEGIES = ("full", "partial", "gradual", "lp_ft")  # the backbone trains in layer groups at full rank
RAND_AUGMENT = tuple(f"rand-m{m}-mstd0.5-inc1" for m in (5, 9, 15))  # timm's RandAugment, mild to strong
NO_AUGMENT = "none"
MAX_LABEL_SMOOTHING = 0.2


def strategy_choices(cfg: TrainConfig) -> list[str]:
    """``--tune_strategies`` and the recipe's own strategy (so the user's recipe is a point of the space)."""
    return list(dict.fromkeys([*cfg.tune_strategies, cfg.strategy]))


def log_range(centre: float) -> tuple[float, float]:
    return centre / 10, centre * 10


def int_range(centre: int, floor: int = 1) -> tuple[int, int]:
    """From half to twice ``centre`` (never below ``floor``), ``centre`` always inside."""
    low = min(centre, max(floor, centre // 2))
    return low, max(2 * centre, low + 1)


def epoch_centres(cfg: TrainConfig) -> dict[str, int]:
    """The recipe's epochs as each strategy counts them: a probe's, LP-FT's two phases, fine-tuning's."""
    lp_user = cfg.strategy in LP_STRATEGIES
    ft = max(cfg.num_train_epochs - cfg.lp_epochs, 0) if lp_user else cfg.num_train_epochs
    return {"probe_epochs": cfg.lp_epochs if lp_user and cfg.lp_epochs > 0 else cfg.num_train_epochs,
            "lp_epochs": cfg.lp_epochs, "ft_epochs": ft, "epochs": max(1, ft)}


def epoch_params(strategy: str) -> tuple[str, ...]:
    """The parameters that set a strategy's length."""
    if strategy == "linear_probe":
        return ("probe_epochs",)
    return ("lp_epochs", "ft_epochs") if strategy in LP_STRATEGIES else ("epochs",)


def augment_choices(cfg: TrainConfig) -> list[str]:
    return list(dict.fromkeys([NO_AUGMENT, *RAND_AUGMENT, *([cfg.auto_augment] if cfg.auto_augment else [])]))


def seq_length_choices(cfg: TrainConfig) -> list[int]:
    """Half the recipe's ``max_seq_length`` and the recipe's own (longer may exceed the encoder's positions)."""
    return sorted({max(8, cfg.max_seq_length // 2), cfg.max_seq_length})


def suggest(trial, cfg: TrainConfig, modality: str, backbones: list[str]) -> dict:
    """Ask ``trial`` (an ``optuna.Trial``) for one recipe; returns its parameters."""
    if backbones:
        trial.suggest_categorical("backbone", backbones)
    strategy = trial.suggest_categorical("strategy", strategy_choices(cfg))
    trial.suggest_float("head_learning_rate", *log_range(cfg.effective_head_lr), log=True)
    if strategy != "linear_probe":
        trial.suggest_float("learning_rate", *log_range(cfg.learning_rate), log=True)
    if strategy in LAYER_DECAY_STRATEGIES:
        trial.suggest_float("layer_decay", min(0.5, cfg.layer_decay), 1.0)
    if strategy == "partial":
        trial.suggest_int("unfreeze_top_k", *int_range(max(1, cfg.unfreeze_top_k)))
    if cfg.max_steps <= 0:  # else --max_steps sets the length, whatever the epochs
        centres = epoch_centres(cfg)
        for name in epoch_params(strategy):
            trial.suggest_int(name, *int_range(centres[name], floor=min(1, centres[name])))
    trial.suggest_float("label_smoothing", 0.0, max(MAX_LABEL_SMOOTHING, cfg.label_smoothing))
    if cfg.class_weight_mode != "given":
        trial.suggest_categorical("class_weights", ["none", "balanced"])
    if modality == "image" and cfg.augment and (strategy != "linear_probe" or cfg.feature_cache == "off"):
        trial.suggest_categorical("auto_augment", augment_choices(cfg))
    if modality == "text":
        trial.suggest_categorical("max_seq_length", seq_length_choices(cfg))
    return dict(trial.params)


def common_params(cfg: TrainConfig, modality: str, backbones: list[str]) -> dict:
    """The recipe's values of the parameters every strategy reads."""
    params = {"backbone": backbones[0]} if backbones else {}
    params.update(head_learning_rate=cfg.effective_head_lr, label_smoothing=cfg.label_smoothing)
    if cfg.class_weight_mode != "given":
        params["class_weights"] = cfg.class_weight_mode
    if modality == "text":
        params["max_seq_length"] = cfg.max_seq_length
    return params


def baseline_params(cfg: TrainConfig, modality: str, backbones: list[str]) -> dict:
    """The user's recipe (on the best-ranked backbone under auto) as parameters of the space."""
    params = {**common_params(cfg, modality, backbones), "strategy": cfg.strategy}
    if cfg.strategy != "linear_probe":
        params["learning_rate"] = cfg.learning_rate
    if cfg.strategy in LAYER_DECAY_STRATEGIES:
        params["layer_decay"] = cfg.layer_decay
    if cfg.strategy == "partial":
        params["unfreeze_top_k"] = max(1, cfg.unfreeze_top_k)
    if cfg.max_steps <= 0:
        own = {"probe_epochs": cfg.num_train_epochs, "epochs": cfg.num_train_epochs,
               "lp_epochs": min(cfg.lp_epochs, cfg.num_train_epochs),
               "ft_epochs": epoch_centres(cfg)["ft_epochs"]}
        params.update({name: own[name] for name in epoch_params(cfg.strategy)})
    if modality == "image" and cfg.augment and (cfg.strategy != "linear_probe" or cfg.feature_cache == "off"):
        params["auto_augment"] = cfg.auto_augment or NO_AUGMENT
    return params


def probe_params(cfg: TrainConfig, modality: str, backbones: list[str]) -> dict | None:
    """A linear probe with the recipe's head settings, or None when the search has none or the recipe is one."""
    if "linear_probe" not in strategy_choices(cfg) or cfg.strategy == "linear_probe":
        return None
    params = {**common_params(cfg, modality, backbones), "strategy": "linear_probe"}
    if cfg.max_steps <= 0:
        params["probe_epochs"] = epoch_centres(cfg)["probe_epochs"]
    if modality == "image" and cfg.augment and cfg.feature_cache == "off":
        params["auto_augment"] = cfg.auto_augment or NO_AUGMENT
    return params


def recipe_config(cfg: TrainConfig, params: dict) -> TrainConfig:
    """``cfg`` with a trial's parameters applied: the recipe that trial trains (where to, is the caller's)."""
    values = {"strategy": params["strategy"], "head_learning_rate": params["head_learning_rate"]}
    if "backbone" in params:
        candidate = parse_candidate(params["backbone"])
        values.update(model_name_or_path=candidate.name, weights=candidate.weights, candidates=[])
    for name in ("learning_rate", "layer_decay", "unfreeze_top_k", "label_smoothing", "max_seq_length"):
        if name in params:
            values[name] = params[name]
    if "lp_epochs" in params:
        values.update(lp_epochs=params["lp_epochs"], num_train_epochs=params["lp_epochs"] + params["ft_epochs"])
    for name in ("probe_epochs", "epochs"):
        if name in params:
            values["num_train_epochs"] = params[name]
    if "class_weights" in params:
        values["class_weights"] = [params["class_weights"]]
    if "auto_augment" in params:
        values["auto_augment"] = None if params["auto_augment"] == NO_AUGMENT else params["auto_augment"]
    if values["strategy"] not in LORA_STRATEGIES:  # read only by LoRA strategies, refused by the others
        values["lora_target_modules"] = []
    return dataclasses.replace(cfg, **values)


# the options each parameter sets
SETTINGS_OF = {"backbone": ("model_name_or_path", "weights"), "strategy": ("strategy",),
               "learning_rate": ("learning_rate",), "head_learning_rate": ("head_learning_rate",),
               "layer_decay": ("layer_decay",), "unfreeze_top_k": ("unfreeze_top_k",),
               "probe_epochs": ("num_train_epochs",), "epochs": ("num_train_epochs",),
               "lp_epochs": ("lp_epochs", "num_train_epochs"), "ft_epochs": ("num_train_epochs",),
               "label_smoothing": ("label_smoothing",), "class_weights": ("class_weights",),
               "auto_augment": ("auto_augment",), "max_seq_length": ("max_seq_length",)}


def chosen_settings(recipe: TrainConfig, params: dict) -> dict:
    """The options a trial's parameters set, with their values in ``recipe`` (e.g. ``num_train_epochs`` for LP-FT's
    two phases)."""
    names = dict.fromkeys(key for name in params for key in SETTINGS_OF.get(name, ()))
    return {key: getattr(recipe, key) for key in names}


def describe_params(params: dict) -> str:
    """One line: ``strategy lp_ft, head_learning_rate 3.0e-03, ...``."""
    return ", ".join(f"{name} {format_param(value)}" for name, value in params.items())


def format_param(value) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if value and (abs(value) < 1e-2 or abs(value) >= 1e3) else f"{value:.3g}"
    return str(value)
