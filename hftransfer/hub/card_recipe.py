"""The card's "Transfer recipe" section: strategy, learning rates, phases, regularization, optimization, LoRA,
and the practitioner's settings (class weights, sampler, image augmentations, weight EMA, evaluation schedule).

Formatted from the run's ``RunDescription`` (``None`` for a model saved outside a run, whose card
has no recipe). Each optional setting gets its line only when the run used it, so a run without them
renders as before; what came of them (which weights were exported, why training stopped) is the
results' part (``card_results.outcome_context``).
"""
from __future__ import annotations

from ..records import RunDescription
from .card_format import format_learning_rate, group_display_name, group_span_display, markdown_escape

NO_RECIPE = {"strategy": None, "strategy_description": None, "learning_rates": None, "schedule": None,
             "regularization": None, "optimization": None, "parameters": "n/a", "phases": None,
             "phase_notes": None, "layer_lrs": None, "layer_decay": None, "lora": None, "contrastive": None,
             "episodic": None,
             "class_weights": None, "sampler": None, "augmentation": None, "model_ema": None,
             "evaluation_schedule": None}
NOT_WORTH_MENTIONING = (None, 0, 0.0, "no")  # optional settings left off (e.g. mixed precision "no")
MAX_WEIGHTS_SHOWN = 20  # class weights named on the card; all of them are in all_results.json
SAMPLERS = {"balanced": "class-balanced (training examples drawn with replacement, each class equally often on "
                        "average)"}


def recipe_context(recipe: RunDescription | None) -> dict:
    """The recipe's template variables; all empty (parameters ``n/a``) without a recipe."""
    if recipe is None:
        return dict(NO_RECIPE)
    phases, phase_notes = phase_rows(recipe)
    return {
        "strategy": recipe.strategy, "strategy_description": recipe.strategy_description or "custom strategy",
        "learning_rates": learning_rates_line(recipe), "schedule": recipe.lr_scheduler,
        "regularization": regularization_line(recipe), "optimization": optimization_line(recipe),
        "parameters": f"{recipe.parameters:,} in total" if isinstance(recipe.parameters, int) else "n/a",
        "phases": phases, "phase_notes": " ".join(phase_notes) or None,
        "layer_lrs": layer_learning_rates(recipe), "layer_decay": recipe.layer_decay,
        "lora": lora_line(recipe.lora),
        "contrastive": contrastive_line(recipe.contrastive),
        "episodic": episodic_line(recipe.episodic),
        "class_weights": class_weights_line(recipe.class_weights),
        "sampler": SAMPLERS.get(recipe.sampler, recipe.sampler) if recipe.sampler not in (None, "random") else None,
        "augmentation": augmentation_line(recipe.augmentation),
        "model_ema": ema_line(recipe.model_ema),
        "evaluation_schedule": evaluation_line(recipe),
    }


def learning_rates_line(recipe: RunDescription) -> str:
    line = (f"backbone {format_learning_rate(recipe.learning_rate)} (peak), "
            f"head {format_learning_rate(recipe.head_learning_rate)}")
    if recipe.layer_decay != 1.0:
        line += f", layer-wise decay {recipe.layer_decay} per group from the top"
    return line


def phase_rows(recipe: RunDescription) -> tuple[list[dict], list[str]]:
    """One table row per phase (epochs 1-based), and the notes of the phases that have one."""
    rows, notes = [], []
    for index, phase in enumerate(recipe.phases, 1):
        first, last = (epoch + 1 for epoch in phase.epochs)
        rows.append({"index": index, "epochs": str(first) if first == last else f"{first}-{last}",
                     "trainable": group_span_display(phase.trainable_backbone_groups),
                     "frozen": group_span_display(phase.frozen_backbone_groups),
                     "fraction": f"{phase.trainable_fraction:.1%}",
                     "head_lr": format_learning_rate(phase.head_learning_rate)})
        if phase.note:
            notes.append(f"Phase {index}: {phase.note}.")
    return rows, notes


def layer_learning_rates(recipe: RunDescription) -> list[tuple[str, str]] | None:
    """(group, peak LR) from input to output, then the head; only when layer-wise decay is on."""
    decay = recipe.layer_decay
    # the first phase lists every group: frozen ones (a prefix of the ordered list), then trainable ones
    groups = [*recipe.phases[0].frozen_backbone_groups, *recipe.phases[0].trainable_backbone_groups] \
        if recipe.phases else []
    if decay == 1.0 or not groups or recipe.learning_rate is None:
        return None
    top = len(groups) - 1  # the top group gets the full rate, each one below it one more factor of decay
    rates = [(group_display_name(group), format_learning_rate(recipe.learning_rate * decay ** (top - depth)))
             for depth, group in enumerate(groups)]
    return [*rates, ("head", format_learning_rate(recipe.head_learning_rate))]


def optimization_line(recipe: RunDescription) -> str:
    parts = [f"AdamW, weight decay {recipe.weight_decay} (not on biases and norm weights)"]
    parts += [f"batch size {recipe.batch_size}"] if recipe.batch_size else []
    parts += [f"{recipe.epochs} epoch(s)"] if recipe.epochs else []
    parts += [f"at most {recipe.max_steps} optimizer steps (`--max_steps`)"] if recipe.max_steps else []
    for value, label in ((recipe.max_grad_norm, "gradient clipping"), (recipe.mixed_precision, "mixed precision"),
                         (recipe.seed, "seed")):
        if value not in NOT_WORTH_MENTIONING:
            parts.append(f"{label} {value}")
    if recipe.gradient_checkpointing:
        parts.append("gradient checkpointing (non-reentrant)")
    return ", ".join(parts)


def regularization_line(recipe: RunDescription) -> str:
    """L2-SP and its weights, label smoothing, head dropout, the normalization policy."""
    regularizer = recipe.regularizer
    if regularizer:
        extra = ", ".join(f"{key} {value}" for key, value in regularizer.items() if key not in ("name", "alpha"))
        parts = [f"{regularizer['name']}, weight {regularizer['alpha']}" + (f" ({extra})" if extra else "")]
    else:
        parts = ["no transfer regularizer (e.g. L2-SP)"]
    if recipe.label_smoothing:
        parts.append(f"label smoothing {recipe.label_smoothing}")
    if recipe.head_dropout:
        parts.append(f"head dropout {recipe.head_dropout}")
    if recipe.train_norm:
        parts.append("normalization layers train inside frozen groups")
    if recipe.norm_policy:
        parts.append(recipe.norm_policy)
    return "; ".join(parts)


def lora_line(record: dict | None) -> str | None:
    """The LoRA line: rank, alpha, dropout, targets, what trains, and that the export is merged."""
    if not record:
        return None
    targets = ", ".join(f"`{target}`" for target in record["target_modules"])
    trained = "adapters + head" + (" + norm layers" if record.get("train_norm") else "")
    return (f"rank {record['r']}, alpha {record['alpha']:g}, dropout {record['dropout']:g} on {targets} "
            f"({record['adapted_layers']} layers); {record['trainable_parameters']:,} trainable parameters "
            f"({record['trainable_fraction']:.2%}: {trained}). "
            "The weights here are **merged** (adapters folded into the base weights, loadable as a plain model); "
            "the adapter alone (peft `adapter_config.json` + `adapter_model.safetensors`, with the head as "
            "`head.safetensors`) is in `adapter/`")


def contrastive_line(record: dict | None) -> str | None:
    """``--strategy contrastive``'s phase before the run: pairs, steps, learning rate, the pair loss's change."""
    if not record:
        return None
    return (f"before the head trained, the backbone learned from {record['pairs']:,} label pairs of "
            f"{record['examples']} training examples ({record['iterations']} positive and as many negative pairs per "
            f"example; {record['steps']} steps at learning rate {record['learning_rate']:g}; {record['loss']}): pair "
            f"loss {record['loss_start']:.4f} over the first tenth of the steps, {record['loss_end']:.4f} over the last")


def episodic_line(record: dict | None) -> str | None:
    """``--strategy episodic``'s phase before the run: the episodes, their shape, the query loss's change."""
    if not record:
        return None
    return (f"before the head trained, the backbone learned from {record['steps']} prototypical episodes of "
            f"{record['examples']} training examples ({record['ways']} classes x ({record['support']} support + "
            f"{record['queries']} queries) each, learning rate {record['learning_rate']:g}; {record['loss']}): query "
            f"loss {record['loss_start']:.4f} over the first tenth of the episodes, {record['loss_end']:.4f} over "
            "the last")


def class_weights_line(record: dict | None) -> str | None:
    """``--class_weights``: the mode and each label's weight, and what they weight."""
    if not record:
        return None
    weights = record.get("weights") or {}
    shown = ", ".join(f"`{markdown_escape(label)}` {weight:.4g}"
                      for label, weight in list(weights.items())[:MAX_WEIGHTS_SHOWN])
    if len(weights) > MAX_WEIGHTS_SHOWN:
        shown += f" ... ({len(weights)} labels, all in `all_results.json`)"
    if record.get("pos_weight"):
        rule = "balanced (negatives / positives per label)" if record.get("mode") == "balanced" else "given per label"
        how = f"{rule}, as the binary cross-entropy's `pos_weight`"
    else:
        rule = ("balanced (n / (classes x count), scikit-learn's rule)" if record.get("mode") == "balanced"
                else "given per label")
        how = f"{rule}, in the cross-entropy"
    return f"{how}: {shown}; the validation loss is weighted the same way"


def augmentation_line(record: dict) -> str | None:
    """The image augmentations, named only when the run used more than the default crop / flip / jitter; the audio
    ones whenever a run used them."""
    if record and record.get("random_crop"):  # audio
        masks = f"SpecAugment ({record['time_masks']} time and {record['freq_masks']} frequency masks)"
        speed = f", speed x{1 - record['speed_perturb']:g}-{1 + record['speed_perturb']:g}" \
            if record.get("speed_perturb") else ""
        return (f"random crop, gain (up to ±{record['gain_db']:g} dB), circular shift (up to "
                f"{record['time_shift']:.0%} of the clip){speed}; {masks}")
    extras = ("auto_augment", "reprob", "mixup", "cutmix")
    if not record or not any(record.get(key) for key in extras):
        return None
    low, high = record.get("crop_scale", [0.08, 1.0])
    parts = [f"random resized crop (scale {low:g}-{high:g}) and horizontal flip"]
    if record.get("auto_augment"):
        parts.append(f"auto-augment policy `{record['auto_augment']}`")
    elif record.get("color_jitter"):
        parts.append(f"color jitter {record['color_jitter']:g}")
    if record.get("reprob"):
        parts.append(f"random erasing with probability {record['reprob']:g} (per-pixel noise)")
    mixers = [f"{name} alpha {record[name]:g}" for name in ("mixup", "cutmix") if record.get(name)]
    if mixers:
        mixing = f"{' and '.join(mixers)} on {record.get('mixup_prob', 1.0):.0%} of the training batches"
        if len(mixers) == 2:
            mixing += f" (cutmix instead of mixup with probability {record.get('mixup_switch_prob', 0.5):g})"
        parts.append(mixing + ", soft targets")
    return "; ".join(parts)


def ema_line(record: dict | None) -> str | None:
    """``--model_ema``: the decay, and that it was evaluated beside the raw weights."""
    if not record:
        return None
    warmup = " (warmed up from 0)" if record.get("warmup") else ""
    return (f"an exponential moving average of the weights, decay {record['decay']:g} per optimizer step{warmup}, "
            "evaluated beside the raw weights at every evaluation; the better of the two is exported")


def evaluation_line(recipe: RunDescription) -> str | None:
    """When the validation split was scored, and the early-stopping rule; only when not the per-epoch default."""
    evaluation = recipe.evaluation or {}
    patience = evaluation.get("early_stopping_patience")
    per_step = evaluation.get("eval_strategy") == "steps"
    if not (per_step or patience or recipe.max_steps):
        return None
    line = (f"on the validation split every {evaluation.get('eval_steps')} optimizer steps and at the end"
            if per_step else "on the validation split at each epoch end")
    if patience:
        threshold = evaluation.get("early_stopping_threshold") or 0
        line += (f"; early stopping after {patience} evaluation(s) in a row without an improvement of "
                 f"{recipe.metric_for_best_model} by more than {threshold:g}")
    return line
