"""``--tune``: the recipe searches its own hyper-parameters with Optuna, then the run trains the best one.

``tune_recipe`` runs before the run's ``fit`` (after ``--model_name_or_path auto`` has ranked the
backbones) and returns the best trial's config; ``train`` then fits it into ``output_dir`` as a normal
run: card, ``all_results.json``, the test split scored once, push. The study:

- **Sampler and pruner**: a seeded TPE sampler and Hyperband pruning over evaluations (each trial
  reports its best validation score so far after every evaluation; a pruned trial stops there).
- **Storage**: SQLite at ``output_dir/tune/study.db``. ``--resume_from_checkpoint latest`` continues
  the study: finished trials are kept, a trial a crash or SIGKILL left running is marked failed and
  its parameters are run again, and the seconds already spent count against ``--tune_timeout``.
  ``--overwrite_output_dir`` without resume starts a new study.
- **Trials** train into ``output_dir/tune/trials/<number>`` with ``do_predict`` off (they select on
  the validation split only: the test split is scored once, by the final run) and share the run's
  feature cache, so linear-probe trials load the frozen features instead of computing them again.
  The user's recipe is the first trial and a linear probe (seconds, on cached features) the second.
- **Processes**: the main process alone talks to Optuna; ``broadcast_object_list`` gives every rank
  the same trial settings and the same prune decision.

What the study found goes to ``tune/tune_results.json``, ``tune/tune_importance.png`` and
``tune/best_recipe.yaml`` (``tune_report``); ``publish_study`` copies the first two next to the model
once the final run has written it, and adds the study to ``all_results.json``.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from ..config import TrainConfig
from ..errors import HFTransferError
from ..files import FEATURE_CACHE_DIR, RESULTS_NAME, RUN_CONFIG_NAME, TUNE_DIR, TUNE_TRIALS_DIR
from ..records import BackboneChoice
from ..training.checkpoint import find_latest_checkpoint
from ..training.loop import fit
from ..training.runtime import RunInterrupted, any_process, from_main_process
from .rank import parse_candidate
from .tune_report import publish_study, write_best_recipe, write_study_record
from .tune_space import baseline_params, describe_params, probe_params, recipe_config, suggest
from .tune_study import (
    N_STARTUP_TRIALS,
    PRUNER,
    best_trial,
    counted_trials,
    fingerprint,
    open_study,
    requeue,
    trial_state,
)

__all__ = ["tune_recipe", "publish_study"]


def tune_recipe(cfg: TrainConfig, modality: str, accelerator, output_dir: Path, threads: int, stop,
                backbone_choice: BackboneChoice | None = None) -> tuple[TrainConfig, BackboneChoice | None]:
    """Search, then the config the run trains (the best trial's recipe, ``--tune`` off) and the backbone choice
    (under auto: the backbone the search picked, which may not be the best-ranked one)."""
    output_dir = Path(output_dir)
    search = Search(cfg, modality, accelerator, output_dir, threads, stop, ranked_backbones(backbone_choice))
    on_main(accelerator, search.open)
    search.run()
    params, resume_final = on_main(accelerator, search.finish)
    recipe = recipe_config(cfg, params) if params else cfg
    final = dataclasses.replace(recipe, tune=False, tune_trials=None, tune_timeout=None,
                                feature_cache_dir=search.cache_dir)
    if cfg.resume_from_checkpoint == "latest" and not resume_final:  # the final fit had not started on this recipe
        final = dataclasses.replace(final, resume_from_checkpoint=None, overwrite_output_dir=True)
    final.validate(modality)
    if params and "backbone" in params and backbone_choice is not None:
        backbone_choice = tuned_choice(backbone_choice, params["backbone"])
    return final, backbone_choice


def on_main(accelerator, function):
    """``function()`` on the main process, its (picklable) value on every rank; its ``HFTransferError`` raised on
    every rank, so none is left waiting for the others."""
    value, failure = None, None
    if accelerator.is_main_process:
        try:
            value = function()
        except HFTransferError as e:
            failure = e
    if any_process(accelerator, failure is not None):
        raise failure or HFTransferError("the --tune study failed on the main process: see its error")
    return from_main_process(accelerator, value)


def ranked_backbones(choice: BackboneChoice | None) -> list[str]:
    """Under auto: the choosable candidates, best-ranked first (the search starts from the ranking's pick)."""
    if choice is None:
        return []
    ranked = [row["candidate"] for row in choice.ranking if not row["candidate"].startswith("random:")]
    return [choice.chosen, *(spec for spec in ranked if spec != choice.chosen)]


def tuned_choice(choice: BackboneChoice, spec: str) -> BackboneChoice:
    """The backbone choice once the search has picked ``spec`` on the validation split."""
    if spec == choice.chosen:
        return choice
    candidate = parse_candidate(spec)
    return dataclasses.replace(choice, chosen=spec, name=candidate.name, weights=candidate.weights,
                               reason=f"{choice.reason}; --tune then chose {spec} on the validation split")


def trial_config(recipe: TrainConfig, trial_dir: Path, cache_dir: str) -> TrainConfig:
    """A trial's run of ``recipe``: into its own folder, validation only, nothing published, tracked or exported."""
    return dataclasses.replace(
        recipe, output_dir=str(trial_dir), overwrite_output_dir=True, resume_from_checkpoint=None,
        checkpointing_steps="no", do_predict=False, compare_scratch=False, push_to_hub=False, report_to=["none"],
        logging_dir=None, feature_cache_dir=cache_dir, tune=False, tune_trials=None, tune_timeout=None,
        export_onnx=False, quantize="none", onnx_opset=None)


class Search:
    """One ``--tune`` study in this process: the Optuna side on the main process, the trials on every rank."""

    def __init__(self, cfg: TrainConfig, modality: str, accelerator, output_dir: Path, threads: int, stop,
                 backbones: list[str]):
        self.cfg, self.modality, self.accelerator, self.threads, self.stop = cfg, modality, accelerator, threads, stop
        self.output_dir, self.tune_dir, self.backbones = output_dir, output_dir / TUNE_DIR, backbones
        self.cache_dir = cfg.feature_cache_dir or str(output_dir / FEATURE_CACHE_DIR)
        self.metric, self.higher = cfg.best_metric
        self.study, self.trial = None, None  # main process only
        self.started, self.elapsed_before = time.time(), 0.0
        self.best_so_far, self.stopped, self.evaluations, self.last_evaluation = None, None, 0, None

    # ---- the study (main process) ---------------------------------------------------------------------------
    def open(self) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the run prints its own line per trial
        self.study = open_study(self.cfg, self.tune_dir, fingerprint(self.cfg, self.backbones))
        if "recipe" not in self.study.user_attrs:  # a new study: the user's recipe first, then a linear probe
            self.study.set_user_attr("recipe", fingerprint(self.cfg, self.backbones))
            self.study.enqueue_trial(baseline_params(self.cfg, self.modality, self.backbones),
                                     user_attrs={"origin": "recipe as given"})
            probe = probe_params(self.cfg, self.modality, self.backbones)
            if probe is not None:
                self.study.enqueue_trial(probe, user_attrs={"origin": "linear probe"})
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self.accelerator.print(f"tune: trial {trial.number} was cut short by a crash: it runs again")
            requeue(self.study, trial.number)
        self.elapsed_before = float(self.study.user_attrs.get("elapsed_s", 0.0))
        done = counted_trials(self.study)
        if done:
            self.accelerator.print(f"tune: continuing the study in {self.tune_dir} after {done} trial(s) and "
                                   f"{self.elapsed_before:.0f} s")

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.started

    def save_elapsed(self) -> None:
        self.study.set_user_attr("elapsed_s", round(self.elapsed(), 1))

    def budget_spent(self) -> str | None:
        """Why no further trial starts (None: one may)."""
        used, budget, timeout = counted_trials(self.study), self.cfg.trial_budget, self.cfg.tune_timeout
        if budget is not None and used >= budget:
            return f"{used} of {budget} trials run"
        if timeout and self.elapsed() >= timeout:
            return f"{self.elapsed():.0f} of {timeout} s spent"
        return None

    def ask(self) -> tuple[int, dict, str] | None:
        """The next trial's number, parameters and origin, or None when the budget is spent."""
        spent = self.budget_spent()
        if spent:
            self.accelerator.print(f"tune: search done ({spent})")
            return None
        self.trial = self.study.ask()
        params = suggest(self.trial, self.cfg, self.modality, self.backbones)
        return self.trial.number, params, self.trial.user_attrs.get("origin", "search")

    # ---- the trials (every process) -------------------------------------------------------------------------
    def run(self) -> None:
        while (asked := on_main(self.accelerator, self.ask)) is not None:
            self.run_trial(*asked)
            signum = self.stop.requested(self.accelerator)  # a signal between two trials' training loops
            if signum:
                raise RunInterrupted(signum)

    def run_trial(self, number: int, params: dict, origin: str) -> None:
        trial_dir = self.tune_dir / TUNE_TRIALS_DIR / str(number)
        self.accelerator.print(f"tune: trial {number} ({origin}): {describe_params(params)}")
        try:
            trial_cfg = trial_config(recipe_config(self.cfg, params), trial_dir, self.cache_dir).validate(self.modality)
        except HFTransferError as e:  # a point of the space that this data or model refuses: the search goes on
            self.accelerator.print(f"tune: trial {number} failed: {e}")
            if self.accelerator.is_main_process:
                self.fail(e)
            return
        self.best_so_far, self.stopped, self.evaluations, start = None, None, 0, time.time()
        # the budget does not stop a trial at its last evaluation (known for epoch evaluations without --max_steps)
        self.last_evaluation = (trial_cfg.num_train_epochs if trial_cfg.eval_strategy == "epoch"
                                and trial_cfg.max_steps <= 0 else None)
        try:
            results = fit(trial_cfg, self.modality, self.accelerator, trial_dir, self.threads, stop=self.stop,
                          on_evaluate=self.on_evaluate)
        except RunInterrupted:
            if self.accelerator.is_main_process:
                self.save_elapsed()
                requeue(self.study, number)
            raise
        except Exception as e:
            if self.accelerator.is_main_process:
                self.fail(e)
            raise
        if self.accelerator.is_main_process:
            self.tell(results, time.time() - start)
            clean_trial_dir(trial_dir)

    def fail(self, error: Exception) -> None:
        self.trial.set_user_attr("error", f"{type(error).__name__}: {str(error)[:200]}")
        self.study.tell(self.trial, state=trial_state("FAIL"))
        self.save_elapsed()

    def on_evaluate(self, evaluation: int, metrics: dict) -> bool:
        """After each evaluation of a trial: report the best score so far; stop when pruned or out of time."""
        stop = False
        if self.accelerator.is_main_process:
            value = metrics[self.metric]
            if self.best_so_far is None or (value > self.best_so_far if self.higher else value < self.best_so_far):
                self.best_so_far = value
            self.evaluations = evaluation
            self.trial.report(self.best_so_far, evaluation)
            self.save_elapsed()
            if evaluation != self.last_evaluation and self.trial.should_prune():  # no use stopping at the end
                self.stopped = f"pruned after evaluation {evaluation}"
            elif (self.cfg.tune_timeout and self.elapsed() >= self.cfg.tune_timeout
                  and evaluation != self.last_evaluation):
                self.stopped = f"stopped by --tune_timeout after evaluation {evaluation}"
            stop = self.stopped is not None
        return from_main_process(self.accelerator, stop)

    def tell(self, results, seconds: float) -> None:
        trial = self.trial
        trial.set_user_attr("seconds", round(seconds, 1))
        trial.set_user_attr("evaluations", self.evaluations)
        if self.stopped:
            trial.set_user_attr("stopped", self.stopped)
            frozen = self.study.tell(trial, state=trial_state("PRUNED"))
        else:
            frozen = self.study.tell(trial, results.metrics[f"eval_{self.metric}"])
        self.save_elapsed()
        value = "n/a" if frozen.value is None else f"{frozen.value:.4f}"
        self.accelerator.print(f"tune: trial {trial.number} {self.stopped or 'complete'}: validation {self.metric} "
                               f"{value} ({seconds:.0f} s)")

    def finish(self) -> tuple[dict | None, bool]:
        """Write what the study found; the best parameters (None: no trial completed, the user's recipe stays) and
        whether the final fit continues from output_dir's checkpoints (an earlier process began it on this recipe)."""
        self.save_elapsed()
        best = best_trial(self.study)
        if best is None:
            self.accelerator.print("tune: no trial completed within the budget: training the recipe as given")
        params = dict(best.params) if best is not None else None
        recipe = recipe_config(self.cfg, params) if params else self.cfg
        write_best_recipe(recipe, self.tune_dir)
        number = best.number if best is not None else -1
        write_study_record(self.study, self.tune_dir, recipe, number, self.cfg, self.sampler_name(), PRUNER)
        resume_final = (self.study.user_attrs.get("final_trial") == number
                        and find_latest_checkpoint(self.output_dir)[0] is not None)
        self.study.set_user_attr("final_trial", number)
        if best is not None:
            self.accelerator.print(f"tune: best trial {best.number}, validation {self.metric} {best.value:.4f}: "
                                   f"{describe_params(params)}")
        return params, resume_final

    def sampler_name(self) -> str:
        return f"TPE (seed {self.cfg.seed}, {N_STARTUP_TRIALS} random start-up trials)"


def clean_trial_dir(trial_dir: Path) -> None:
    """Keep a finished trial's results and config; its model and checkpoints are not needed (the best recipe is
    trained again by the run)."""
    for item in trial_dir.iterdir() if trial_dir.is_dir() else []:
        if item.name not in (RESULTS_NAME, RUN_CONFIG_NAME):
            shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
