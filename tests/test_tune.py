"""``--tune``: the search space around the user's recipe, the Optuna study (budget, resume, trials a crash cut
short), what it writes (tune_results.json, best_recipe.yaml, the card's section), and whole tuned runs.

The unit tests replace the trials' ``fit`` with a stand-in whose validation score is a known function of the
recipe, so a study of several trials takes a second; the integration tests train tiny random-init models.
"""
from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from builders import IMAGE_TINY, image_data_args, image_model, make_run_dir, read_results, run_recipe

from hftransfer.config import TrainConfig, load_config
from hftransfer.errors import HFTransferError
from hftransfer.files import (
    BEST_RECIPE_NAME,
    TUNE_DIR,
    TUNE_IMPORTANCE_PNG,
    TUNE_RESULTS_NAME,
    TUNE_STUDY_NAME,
    read_json,
    read_yaml,
)
from hftransfer.hub.card import write_model_card
from hftransfer.runs import tune as tune_module
from hftransfer.runs.tune import publish_study, tune_recipe
from hftransfer.runs.tune_space import baseline_params, probe_params, recipe_config, suggest
from hftransfer.training.runtime import RunInterrupted, StopSignals


# ---- helpers ----------------------------------------------------------------------------------------------------
def tune_config(image_data, out, **overrides) -> TrainConfig:
    values = dict(model_name_or_path="test_efficientnet", weights="random", train_dir=str(image_data["train"]),
                  validation_dir=str(image_data["val"]), output_dir=str(out), strategy="lp_ft", lp_epochs=1,
                  num_train_epochs=2, learning_rate=1e-4, head_learning_rate=1e-2, per_device_train_batch_size=4,
                  tune=True, tune_trials=3)
    return TrainConfig(**{**values, **overrides}).validate("image")


def quality(cfg: TrainConfig) -> float:
    """The stand-in's validation accuracy: best at head LR 1e-3, a little better for linear probes."""
    return 0.9 / (1 + abs(math.log10(cfg.effective_head_lr) + 3)) + (0.05 if cfg.strategy == "linear_probe" else 0)


class FakeFit:
    """``training.loop.fit`` for the study's trials: one evaluation per epoch, scored by ``quality``."""

    def __init__(self, interrupt_at: int | None = None):
        self.configs, self.interrupt_at = [], interrupt_at

    def __call__(self, cfg, modality, accelerator, output_dir, threads, stop=None, on_evaluate=None, **kwargs):
        self.configs.append(cfg)
        if self.interrupt_at is not None and len(self.configs) == self.interrupt_at:
            raise RunInterrupted(15, 0, 1, output_dir / "checkpoints" / "step_1")
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "model.safetensors").write_bytes(b"\0")  # removed once the trial is scored
        best = 0.0
        for evaluation in range(1, cfg.num_train_epochs + 1):
            value = quality(cfg) * (0.5 + 0.5 * evaluation / cfg.num_train_epochs)
            best = max(best, value)
            metrics = {"accuracy": value, "f1": value, "loss": 1 - value, "epoch": evaluation, "step": evaluation}
            if on_evaluate(evaluation, metrics):
                break
        return SimpleNamespace(metrics={"eval_accuracy": best, "eval_f1": best, "eval_loss": 1 - best})


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def run_study(cfg, accelerator, monkeypatch, fake=None, choice=None):
    fake = fake or FakeFit()
    monkeypatch.setattr(tune_module, "fit", fake)
    final, choice = tune_recipe(cfg, "image", accelerator, Path(cfg.output_dir), 1, StopSignals(),
                                backbone_choice=choice)
    return final, choice, fake


def study_trials(out) -> list:
    return optuna.load_study(study_name="hftransfer", storage=f"sqlite:///{out / TUNE_DIR / TUNE_STUDY_NAME}").trials


# ---- the space --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["lp_ft", "full", "partial", "linear_probe", "lora", "gradual"])
def test_the_users_recipe_is_a_point_of_the_space(image_data, tmp_path, strategy):
    cfg = tune_config(image_data, tmp_path, strategy=strategy, lp_epochs=2, num_train_epochs=3, layer_decay=0.8,
                      label_smoothing=0.1, auto_augment="rand-m9-mstd0.5-inc1")
    params = baseline_params(cfg, "image", [])
    assert suggest(optuna.trial.FixedTrial(params), cfg, "image", []) == params  # every value inside its range
    assert recipe_config(cfg, params) == cfg  # head_learning_rate was explicit: the same recipe, nothing else


def test_text_searches_max_seq_length_and_auto_the_backbone_best_ranked_first(image_data, tmp_path):
    cfg = tune_config(image_data, tmp_path, strategy="full", max_seq_length=64, head_learning_rate=None)
    params = baseline_params(cfg, "text", ["b", "a"])
    assert params["backbone"] == "b" and params["max_seq_length"] == 64 and "auto_augment" not in params
    assert params["head_learning_rate"] == pytest.approx(1e-3)  # 10x learning_rate, now explicit
    probe = probe_params(cfg, "text", ["b", "a"])
    assert probe["strategy"] == "linear_probe" and probe["backbone"] == "b" and "learning_rate" not in probe
    assert probe_params(tune_config(image_data, tmp_path, strategy="linear_probe"), "image", []) is None


def test_every_sampled_recipe_is_valid(image_data, tmp_path):
    cfg = tune_config(image_data, tmp_path, lora_target_modules=["conv_pw"], strategy="lora")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    strategies = set()
    for _ in range(40):
        trial = study.ask()
        recipe = recipe_config(cfg, suggest(trial, cfg, "image", []))
        recipe.validate("image")  # e.g. --lora_target_modules dropped where the strategy is not LoRA
        strategies.add(recipe.strategy)
        assert 1e-5 <= recipe.learning_rate <= 1e-3 and 1e-3 <= recipe.head_learning_rate <= 1e-1
        if recipe.strategy == "lp_ft":
            assert recipe.num_train_epochs > recipe.lp_epochs
        study.tell(trial, 0.0)
    assert strategies == {"linear_probe", "lp_ft", "full", "partial", "lora"}


# ---- the study -------------------------------------------------------------------------------------------------
def test_a_study_runs_the_recipe_first_then_a_probe_and_writes_what_it_found(image_data, tmp_path, accelerator,
                                                                              monkeypatch):
    out = tmp_path / "run"
    cfg = tune_config(image_data, out, do_predict=True, push_to_hub=False)
    final, _, fake = run_study(cfg, accelerator, monkeypatch)
    first, second = fake.configs[:2]
    assert (first.strategy, first.num_train_epochs, first.head_learning_rate) == ("lp_ft", 2, 1e-2)
    assert second.strategy == "linear_probe"
    assert len(fake.configs) == 3
    assert all(c.do_predict is False and c.tune is False and c.output_dir.startswith(str(out / TUNE_DIR))
               for c in fake.configs)  # trials select on validation only
    assert len({c.feature_cache_dir for c in fake.configs}) == 1  # one shared cache
    assert not (out / TUNE_DIR / "trials" / "0" / "model.safetensors").exists()  # trials keep only their results

    record = read_json(out / TUNE_DIR / TUNE_RESULTS_NAME)
    assert [t["number"] for t in record["trials"]] == [0, 1, 2]
    assert [t["origin"] for t in record["trials"][:2]] == ["recipe as given", "linear probe"]
    assert record["counts"]["complete"] + record["counts"]["pruned"] == 3 and record["metric"] == "accuracy"
    best = max((t for t in record["trials"] if t["state"] == "complete"), key=lambda t: t["value"])
    assert record["best"]["number"] == best["number"]
    assert set(record["importances"]) >= {"strategy", "head_learning_rate"}
    assert (out / TUNE_DIR / TUNE_IMPORTANCE_PNG).is_file()

    # the final run trains the best trial's recipe, search off, test split on again
    assert final.tune is False and final.tune_trials is None and final.do_predict is True
    assert final.strategy == best["params"]["strategy"]
    assert final.head_learning_rate == pytest.approx(best["params"]["head_learning_rate"])
    assert record["settings"]["head_learning_rate"] == pytest.approx(final.head_learning_rate)

    # best_recipe.yaml repeats the recipe without search, from anywhere
    recipe_file = out / TUNE_DIR / BEST_RECIPE_NAME
    assert "output_dir" not in read_yaml(recipe_file)
    again = load_config(["--config", str(recipe_file), "--output_dir", str(tmp_path / "again")], modality="image")
    assert again.tune is False
    assert (again.strategy, again.head_learning_rate, again.num_train_epochs) == (
        final.strategy, pytest.approx(final.head_learning_rate), final.num_train_epochs)


def test_an_interrupted_study_continues_with_its_trial_count(image_data, tmp_path, accelerator, monkeypatch):
    out = tmp_path / "run"
    run_study(tune_config(image_data, out, tune_trials=2), accelerator, monkeypatch)
    assert len(study_trials(out)) == 2
    # a plain rerun does not mix studies: resume or start over
    with pytest.raises(HFTransferError, match="holds an interrupted --tune study: pass --resume_from_checkpoint"):
        run_study(tune_config(image_data, out, tune_trials=4), accelerator, monkeypatch)
    elapsed = read_json(out / TUNE_DIR / TUNE_RESULTS_NAME)["elapsed_s"]

    final, _, fake = run_study(tune_config(image_data, out, tune_trials=4, resume_from_checkpoint="latest"),
                               accelerator, monkeypatch)
    assert len(fake.configs) == 2  # two more, not four
    trials = study_trials(out)
    assert [t.number for t in trials] == [0, 1, 2, 3] and all(t.state.name == "COMPLETE" for t in trials)
    assert trials[2].params != trials[0].params  # the resumed sampler does not redraw what it drew before
    record = read_json(out / TUNE_DIR / TUNE_RESULTS_NAME)
    assert record["elapsed_s"] >= elapsed
    assert final.resume_from_checkpoint is None  # no checkpoint of the final run yet: it starts afresh

    # another recipe is refused; --overwrite_output_dir starts a new study
    with pytest.raises(HFTransferError, match=r"searched another recipe \(--learning_rate changed\)"):
        run_study(tune_config(image_data, out, learning_rate=1e-3, resume_from_checkpoint="latest"), accelerator,
                  monkeypatch)
    run_study(tune_config(image_data, out, tune_trials=1, overwrite_output_dir=True), accelerator, monkeypatch)
    assert [t.state.name for t in study_trials(out)] == ["COMPLETE", "WAITING"]  # the probe: not within 1 trial


def test_a_trial_left_running_by_a_killed_process_runs_again(image_data, tmp_path, accelerator, monkeypatch):
    out = tmp_path / "run"
    run_study(tune_config(image_data, out, tune_trials=1), accelerator, monkeypatch)
    # what a SIGKILL mid-trial leaves: a RUNNING trial in the study
    path = out / TUNE_DIR / TUNE_STUDY_NAME
    study = optuna.load_study(study_name="hftransfer", storage=f"sqlite:///{path}")
    killed = study.ask()  # the enqueued linear probe
    killed_params = suggest(killed, tune_config(image_data, out), "image", [])
    assert killed_params["strategy"] == "linear_probe"
    with sqlite3.connect(path) as db:
        assert db.execute("select count(*) from trials where state = 'RUNNING'").fetchone() == (1,)

    final, _, fake = run_study(tune_config(image_data, out, tune_trials=3, resume_from_checkpoint="latest"),
                               accelerator, monkeypatch)
    trials = study_trials(out)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].params == killed_params and trials[2].user_attrs["rerun_of"] == 1
    assert len(fake.configs) == 2  # the killed trial does not count against the budget of 3
    record = read_json(out / TUNE_DIR / TUNE_RESULTS_NAME)
    assert [t["state"] for t in record["trials"]] == ["complete", "interrupted", "complete", "complete"]
    assert record["trials"][2]["note"] == "rerun of trial 1" and record["trials"][2]["origin"] == "linear probe"


def test_sigterm_in_a_trial_requeues_it_and_stops(image_data, tmp_path, accelerator, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted):
        run_study(tune_config(image_data, out), accelerator, monkeypatch, fake=FakeFit(interrupt_at=2))
    assert [t.state.name for t in study_trials(out)] == ["COMPLETE", "FAIL", "WAITING"]
    run_study(tune_config(image_data, out, resume_from_checkpoint="latest"), accelerator, monkeypatch)
    trials = study_trials(out)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]  # 3 counted + the cut one
    assert trials[2].params == trials[1].params


def test_the_time_budget_stops_a_trial_and_counts_across_restarts(image_data, tmp_path, accelerator, monkeypatch):
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(tune_module, "time", SimpleNamespace(time=lambda: clock.now))

    class SlowFit(FakeFit):
        def __call__(self, cfg, *args, on_evaluate=None, **kwargs):
            def tick(evaluation, metrics):
                clock.now += 30
                return on_evaluate(evaluation, metrics)
            return super().__call__(cfg, *args, on_evaluate=tick, **kwargs)

    out = tmp_path / "run"
    budget = dict(lp_epochs=2, num_train_epochs=3, tune_trials=None, tune_timeout=100)
    final, _, fake = run_study(tune_config(image_data, out, **budget), accelerator, monkeypatch, fake=SlowFit())
    trials = study_trials(out)
    # trial 0: 3 evaluations (90 s), complete; the probe (2 epochs) is stopped by the budget after its first one
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]
    assert trials[1].user_attrs["stopped"] == "stopped by --tune_timeout after evaluation 1"
    assert final.strategy == "lp_ft"  # the only complete trial: the recipe as given
    _, _, again = run_study(tune_config(image_data, out, **budget, resume_from_checkpoint="latest"), accelerator,
                            monkeypatch, fake=SlowFit())
    assert again.configs == []  # the 120 s spent before the restart count


def test_auto_searches_the_ranked_backbones_and_records_the_pick(image_data, tmp_path, accelerator, monkeypatch):
    from builders import save_tiny_timm_weights

    from hftransfer.records import BackboneChoice

    specs = []
    for seed in (0, 1):
        save_tiny_timm_weights(tmp_path / f"w{seed}.safetensors", seed=seed)
        specs.append(f"test_efficientnet={tmp_path / f'w{seed}.safetensors'}")
    ranking = [{"candidate": specs[0], "rank": 1}, {"candidate": "random:test_efficientnet", "rank": 2},
               {"candidate": specs[1], "rank": 3}]
    choice = BackboneChoice(candidates=[*specs, "random:test_efficientnet"], ranking=ranking, chosen=specs[0],
                            name="test_efficientnet", weights=specs[0].split("=")[1], reason="ranked first")

    class PreferSecond(FakeFit):
        def __call__(self, cfg, *args, **kwargs):
            result = super().__call__(cfg, *args, **kwargs)
            bonus = 0.5 if cfg.weights.endswith("w1.safetensors") else 0.0
            return SimpleNamespace(metrics={k: v + bonus for k, v in result.metrics.items()})

    cfg = tune_config(image_data, tmp_path / "run", weights=choice.weights)
    final, tuned, fake = run_study(cfg, accelerator, monkeypatch, fake=PreferSecond(), choice=choice)
    assert [c.weights.split("/")[-1] for c in fake.configs] == ["w0.safetensors", "w0.safetensors", "w1.safetensors"]
    assert {c.model_name_or_path for c in fake.configs} == {"test_efficientnet"}  # never the random floor
    assert final.weights == str(tmp_path / "w1.safetensors") and final.candidates == []
    assert (tuned.chosen, tuned.weights) == (specs[1], final.weights)
    assert tuned.reason == "ranked first; --tune then chose " + specs[1] + " on the validation split"


# ---- the card and all_results.json ----------------------------------------------------------------------------
def test_the_card_shows_the_study(image_data, tmp_path, accelerator, monkeypatch):
    out = tmp_path / "run"
    run_study(tune_config(image_data, out, tune_trials=4), accelerator, monkeypatch)
    make_run_dir(out, image_model(), "image", hub_model_id="user/tuned")
    record = publish_study(out)
    assert read_results(out)["tune"] == record == read_json(out / TUNE_RESULTS_NAME)
    assert (out / TUNE_IMPORTANCE_PNG).is_file()
    card = write_model_card(out).read_text()
    assert card.index("## Hyper-parameter search") < card.index("## Transfer recipe")
    best = record["best"]["number"]
    assert f"Trial {best} (" in card and "the test split played no part in the search." in card
    assert "| trial | strategy | validation accuracy | state | evaluations | seconds | settings |" in card
    assert f"| **{best}** |" in card and "(recipe as given)" in card and "(linear probe)" in card
    assert "| `head_learning_rate` |" in card and "best_recipe.yaml" in card
    assert f"]({TUNE_IMPORTANCE_PNG})" in card
    assert str(tmp_path) not in card
    assert json.loads((out / "all_results.json").read_text())["eval_accuracy"]  # the run's own results intact


def test_a_card_without_a_study_has_no_search_section(tmp_path):
    out = make_run_dir(tmp_path / "run", image_model(), "image")
    assert publish_study(out) is None
    assert "Hyper-parameter search" not in write_model_card(out).read_text()


# ---- whole runs ---------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_tuned_image_run_trains_exports_and_cards_the_best_recipe(tmp_path, image_data):
    from hftransfer.runs.train import train

    out = tmp_path / "tuned"
    args = [*IMAGE_TINY, *map(str, image_data_args(image_data, out)), "--strategy", "lp_ft", "--num_train_epochs",
            "2", "--metric_for_best_model", "loss", "--tune", "--tune_trials", "3"]
    train(load_config(args, modality="image"), "image")
    study = read_results(out)["tune"]  # all_results.json holds the study as data
    assert study == read_json(out / TUNE_RESULTS_NAME)
    assert study["counts"]["complete"] + study["counts"]["pruned"] == 3 and study["direction"] == "minimize"
    assert (out / TUNE_DIR / TUNE_STUDY_NAME).is_file()  # the study outlives the final run's overwrite
    assert (out / TUNE_DIR / BEST_RECIPE_NAME).is_file() and (out / TUNE_RESULTS_NAME).is_file()
    saved = read_yaml(out / "config.yaml")
    assert saved["tune"] is False and saved["strategy"] == study["settings"]["strategy"]
    assert "## Hyper-parameter search" in (out / "README.md").read_text()


@pytest.mark.integration
def test_a_study_survives_sigkill_mid_study_and_continues(tmp_path, image_data):
    out = tmp_path / "killed"
    base = [*IMAGE_TINY, *map(str, image_data_args(image_data, out)), "--strategy", "lp_ft", "--num_train_epochs", "2",
            "--metric_for_best_model", "loss", "--tune"]
    first = run_recipe("image_cls", *base, "--tune_trials", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    killed = run_recipe("image_cls", *base, "--tune_trials", "3", "--resume_from_checkpoint", "latest",
                        env={"HFTRANSFER_TEST_KILL_AT_STEP": "1"})  # trial 2's first step
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run_recipe("image_cls", *base, "--tune_trials", "3", "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "tune: trial 2 was cut short by a crash: it runs again" in resumed.stdout
    record = read_json(out / TUNE_RESULTS_NAME)
    assert [t["state"] for t in record["trials"]] == ["complete", "complete", "interrupted", "complete"]
    assert record["trials"][3]["params"] == record["trials"][2]["params"]
    assert "## Hyper-parameter search" in (out / "README.md").read_text()


@pytest.mark.integration
def test_tuned_text_run_searches_sequence_length_and_scores_the_test_split_once(tmp_path, tiny_bert, text_data):
    from hftransfer.runs.train import train

    out = tmp_path / "text"
    cfg = TrainConfig(model_name_or_path=str(tiny_bert), train_file=str(text_data["train"]),
                      validation_file=str(text_data["val"]), test_file=str(text_data["val"]), output_dir=str(out),
                      strategy="full", num_train_epochs=1, max_seq_length=16, per_device_train_batch_size=8,
                      metric_for_best_model="loss", tune=True, tune_trials=3)
    train(cfg.validate("text"), "text")
    study = read_results(out)["tune"]
    assert {t["params"]["max_seq_length"] for t in study["trials"]} <= {8, 16}
    trial_configs = [read_yaml(p) for p in sorted((out / TUNE_DIR / "trials").glob("*/config.yaml"))]
    assert len(trial_configs) == 3 and all(c["do_predict"] is False for c in trial_configs)  # validation only
    assert "test_accuracy" in read_results(out)  # the final run scored the test split
    assert "## Hyper-parameter search" in (out / "README.md").read_text()


@pytest.mark.integration
def test_two_processes_share_each_trials_settings_and_prune_decisions(tmp_path, image_data):
    from builders import IMAGE_TINY_MODEL, launch_two_processes

    out = tmp_path / "ddp"
    proc = launch_two_processes("image_cls", *IMAGE_TINY_MODEL, *image_data_args(image_data, out),
                                "--num_train_epochs", "2", "--lp_epochs", "1", "--per_device_train_batch_size", "3",
                                "--strategy", "lp_ft", "--metric_for_best_model", "loss", "--ddp_timeout", "120",
                                "--tune", "--tune_trials", "3")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = read_results(out)
    assert results["world_size"] == 2
    assert len(results["tune"]["trials"]) == 3
    assert proc.stdout.count("tune: trial 2 (search)") == 1  # printed once: the main process asked Optuna
    assert "## Hyper-parameter search" in (out / "README.md").read_text()
