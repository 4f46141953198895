"""Did adapting help? The same run without adaptation, selected by the same target-only rule, and the choice.

``compare_with_source_only`` trains the source-only twin of a finished domain-adaptation run (same
data, budget, seed and label-free epoch selection; ``--domain_adaptation none``), keeps one that a
resumed run already finished, then **exports whichever of the two the label-free selection criterion
prefers** (``choose``): when it is the source-only model, the adapted model's files move to
``output_dir/adapted`` and the twin's take their place, so everything that reads ``output_dir``
afterwards (the card, ``--export_onnx``, ``--push_to_hub``, ``hftransfer predict``) gets the chosen model.
The choice, the reason and the negative-transfer verdict go into ``all_results.json``. With labelled
target validation data the verdict compares the oracle accuracies of the two selected epochs (the
labels still choose nothing); without labels it can only compare the label-free scores, and says so.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from ..adaptation.criteria import SELECTION_RULES
from ..files import (
    ADAPTED_DIR,
    BEST_DIR,
    RESULTS_NAME,
    RUN_CONFIG_NAME,
    SOURCE_ONLY_DIR,
    TEST_PREDICTIONS_NAME,
    copy_file,
    read_yaml,
)
from ..records import DomainAdaptation, RunResults, SourceOnlyRun
from ..training.loop import fit

# a difference of accuracies smaller than this is within noise and called a tie
TIE = 0.005


def source_only_config(cfg, output_dir: Path):
    """The twin of ``cfg`` without adaptation: same data (target included), model, strategy, budget and seed."""
    return dataclasses.replace(
        cfg, domain_adaptation="none", compare_source_only=None, domain_gap_samples=0,
        output_dir=str(output_dir / SOURCE_ONLY_DIR), overwrite_output_dir=True, resume_from_checkpoint=None,
        checkpointing_steps="no", push_to_hub=False, report_to=["none"])


def source_only_done(twin_cfg) -> bool:
    out = Path(twin_cfg.output_dir)
    return (out / RESULTS_NAME).is_file() and read_yaml(out / RUN_CONFIG_NAME) == twin_cfg.to_dict()


def verdict(adapted: DomainAdaptation, source_only: SourceOnlyRun) -> tuple[bool | None, str, str | None]:
    """(negative transfer?, one-line verdict, warning or None) of an adaptation against its source-only twin."""
    method = adapted.method.upper()
    if adapted.target_oracle_accuracy is not None and source_only.target_oracle_accuracy is not None:
        gain = adapted.target_oracle_accuracy - source_only.target_oracle_accuracy
        text = (f"{method} {adapted.target_oracle_accuracy:.4f} vs source-only {source_only.target_oracle_accuracy:.4f} "
                f"target validation accuracy (oracle labels, not used to select): {gain:+.4f}")
        if gain < -TIE:
            return True, f"negative transfer: {text}", f"{method} made the target accuracy worse than source-only training"
        return False, ("adaptation helped: " if gain > TIE else "a tie: ") + text, None
    gain = (adapted.selection_score or 0.0) - (source_only.selection_score or 0.0)
    text = (f"{method} selection score {adapted.selection_score:.4f} vs source-only {source_only.selection_score:.4f} "
            f"({gain:+.4f}); no target labels, so this is the label-free criterion, not accuracy")
    if gain < -TIE:
        return None, text, (f"possible negative transfer: {method}'s label-free selection score is below source-only "
                            "training's; check on a few labelled target examples (--target_validation_file)")
    return None, text, None


def choose(adapted: DomainAdaptation, source_only: SourceOnlyRun, criterion: str) -> tuple[str, str]:
    """("adapted" or "source_only", why): the model with the higher label-free selection score; a tie keeps
    source-only training, the model that assumed less about the target."""
    a, s = adapted.selection_score, source_only.selection_score
    method = adapted.method.upper()
    if a is None or s is None:
        return "adapted", f"no label-free score to compare; exported the {method} model"
    rule = SELECTION_RULES.get(criterion, criterion)
    if a > s:
        return "adapted", (f"{method} scores higher on the label-free criterion ({criterion}, {rule}): {a:.4f} "
                           f"against source-only training's {s:.4f}")
    return "source_only", (f"source-only training scores {'as high as' if a == s else 'higher than'} {method} on the "
                           f"label-free criterion ({criterion}, {rule}): {s:.4f} against {a:.4f}; the {method} "
                           f"model is in {ADAPTED_DIR}/")


def export_source_only(output_dir: Path, twin_dir: Path) -> None:
    """Put the source-only twin's exported model in ``output_dir``; the adapted model's files move to ``adapted/``.

    The model's files are the ones the run's ``best_model/`` holds (weights, config, preprocessing, tokenizer,
    eval results and predictions), the same names in both runs; with the test split's predictions beside them."""
    adapted = output_dir / ADAPTED_DIR
    shutil.rmtree(adapted, ignore_errors=True)
    adapted.mkdir()
    names = [p.name for p in (output_dir / BEST_DIR).iterdir()] + [TEST_PREDICTIONS_NAME]
    for name in dict.fromkeys(names):
        if (output_dir / name).exists():
            shutil.move(str(output_dir / name), adapted / name)
        source = twin_dir / name
        if source.is_dir():
            shutil.copytree(source, output_dir / name)
        elif source.is_file():
            copy_file(source, output_dir / name)


def compare_with_source_only(cfg, modality: str, accelerator, output_dir: Path, threads: int,
                             results: RunResults | None, stop=None) -> None:
    """Train (or reuse) the source-only twin, then record the comparison in ``results`` and on disk."""
    twin = source_only_config(cfg, output_dir)
    if source_only_done(twin):
        accelerator.print(f"source-only run already done: {twin.output_dir}")
    else:
        accelerator.print(f"source-only run (no adaptation, same budget and selection) -> {twin.output_dir}")
        fit(twin, modality, accelerator, Path(twin.output_dir), threads, stop=stop)
        if accelerator.is_main_process:
            shutil.rmtree(Path(twin.output_dir) / BEST_DIR, ignore_errors=True)  # its exported copy is enough
    if not accelerator.is_main_process:
        return
    other = RunResults.read(twin.output_dir)
    da = other.domain_adaptation
    results.domain_adaptation.source_only = SourceOnlyRun(
        best_epoch=other.best_epoch, source_accuracy=other.metrics.get("eval_accuracy"),
        selection_score=da.selection_score, target_im=da.target_im, target_oracle_accuracy=da.target_oracle_accuracy,
        target_test_accuracy=da.target_test_accuracy, train_runtime=other.train_runtime,
        selection_scores=da.selection_scores)
    record = results.domain_adaptation
    record.negative_transfer, record.verdict, record.warning = verdict(record, record.source_only)
    record.exported, record.exported_reason = choose(record, record.source_only, cfg.selection_criterion)
    if record.exported == "source_only":
        export_source_only(output_dir, Path(twin.output_dir))
    results.write(output_dir)
    accelerator.print(record.verdict)
    if record.warning:
        accelerator.print(f"warning: {record.warning}")
    accelerator.print(f"exported the {'adapted' if record.exported == 'adapted' else 'source-only'} model: "
                      f"{record.exported_reason}")
