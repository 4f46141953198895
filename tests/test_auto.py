"""``--model_name_or_path auto``: the rule, the refusals, and whole runs that rank, choose, record and fine-tune."""
from __future__ import annotations

import json

import pytest
from builders import IMAGE_TINY, ROOT, image_data_args, read_results, run_recipe, save_tiny_timm_weights

from hftransfer.config import RankConfig, TrainConfig, load_config, read_config_file
from hftransfer.errors import HFTransferError, exit_on_user_error
from hftransfer.files import BACKBONE_CHOICE_NAME, FEATURE_CACHE_DIR, read_yaml
from hftransfer.runs.auto_backbone import select
from hftransfer.runs.rank import rank_backbones
from hftransfer.runs.train import train

# the tiny stand-ins: the same architecture, different weights (so different features and scores)
TINY_AUTO = [a for a in IMAGE_TINY if a not in ("--model_name_or_path", "test_efficientnet", "--weights", "random")]


@pytest.fixture(scope="module")
def candidates(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("auto_weights")
    specs = []
    for seed in (0, 1, 2):
        save_tiny_timm_weights(root / f"seed{seed}.safetensors", seed=seed)
        specs.append(f"test_efficientnet={root / f'seed{seed}.safetensors'}")
    return [*specs, "random:test_efficientnet"]


def auto_args(candidates, image_data, out, *extra) -> list[str]:
    return [*TINY_AUTO, *map(str, image_data_args(image_data, out)), "--model_name_or_path", "auto",
            "--bundled_candidates", "false", "--candidates", *candidates, "--strategy", "linear_probe",
            "--num_train_epochs", "2", *map(str, extra)]


def row(name, h, logme):
    return {"candidate": name, "h_score": h, "logme": logme, "feature_dim": 8, "samples": 12}


# ---- the rule ----------------------------------------------------------------------------------------------
def test_rule_picks_the_highest_h_score_and_records_that_logme_disagrees():
    rows = [row("a", 0.95, 0.30), row("b", 0.99, 0.10), row("c", 0.90, 0.20)]
    choice = select(rows, "h_score", ["a", "b", "c"])
    assert choice.chosen == "b"
    assert [r["candidate"] for r in choice.ranking] == ["b", "a", "c"]
    assert [r["rank"] for r in choice.ranking] == [1, 2, 3]
    assert choice.agrees is False
    assert choice.reason == ("b: highest H-score on the training split (0.9900, next a 0.9500); "
                             "LogME prefers a (0.3000 vs 0.1000), H-score decides")
    by_logme = select(rows, "logme", ["a", "b", "c"])
    assert by_logme.chosen == "a" and by_logme.metric == "logme" and by_logme.agrees is False


def test_rule_never_chooses_a_random_floor_but_warns_when_it_scores_as_high():
    rows = [row("random:a", 0.99, 0.9), row("a", 0.95, 0.3), row("b", 0.90, 0.2)]
    choice = select(rows, "h_score", ["a", "b", "random:a"])
    assert choice.chosen == "a"
    assert choice.agrees is True and choice.reason.endswith("LogME agrees")
    assert choice.ranking[0]["candidate"] == "random:a"  # shown where it scored, but skipped by the rule
    assert "random-init floor random:a scores as high as a" in choice.warning
    assert select([row("random:a", 0.5, 0.1), *rows[1:]], "h_score", []).warning is None


def test_rule_breaks_ties_with_the_other_score_and_shows_enough_digits():
    choice = select([row("a", 0.9999971, 0.1), row("b", 0.9999971, 0.2), row("c", 0.9999969, 0.3)], "h_score", [])
    assert choice.chosen == "b"
    assert "next a 0.9999971" in choice.reason


# ---- refusals, before anything runs ------------------------------------------------------------------------
def test_validate_refuses_auto_with_fewer_than_two_candidates(candidates):
    one = TrainConfig(model_name_or_path="auto", bundled_candidates=False, candidates=[candidates[0], candidates[-1]])
    with pytest.raises(HFTransferError, match=r"needs at least two candidates to choose from \(random:NAME floors "
                                              r"do not count\), got 1"):
        one.validate()
    # the text recipe bundles one encoder: auto alone has nothing to choose between
    with pytest.raises(HFTransferError, match=r"got 1 \(all-MiniLM-L6-v2\)"):
        TrainConfig(model_name_or_path="auto").validate("text")
    assert TrainConfig(model_name_or_path="auto").validate("image").auto_candidates("image") == [
        "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
    assert TrainConfig(model_name_or_path="auto", candidates=["test_vit", "tf_efficientnet_lite0"]).auto_candidates(
        "image") == ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2", "test_vit"]
    with pytest.raises(HFTransferError, match="--candidates is only read with --model_name_or_path auto"):
        TrainConfig(model_name_or_path="test_vit", candidates=["a", "b"]).validate()
    with pytest.raises(HFTransferError, match="auto chooses among several: give a candidate its weights as NAME=FILE"):
        TrainConfig(model_name_or_path="auto", weights="random").validate("image")


def test_recipe_refuses_auto_with_one_candidate_in_one_line_and_touches_nothing(tmp_path, image_data, candidates,
                                                                                 capsys):
    out = tmp_path / "never"
    # what cli.run_recipe does, without show_progress_messages: its logging handler would keep capsys's
    # stream after this test closes it
    with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
        train(load_config(auto_args(candidates[:1], image_data, out),
                          read_config_file(str(ROOT / "recipes" / "configs" / "image_cls.yaml"))), "image")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --model_name_or_path auto needs at least two candidates to choose from (random:NAME floors do not "
        f"count), got 1 ({candidates[0]}): add backbones with --candidates NAME [NAME ...], or pass one "
        "--model_name_or_path"]
    assert not out.exists()


# ---- whole runs ----------------------------------------------------------------------------------------------
def test_auto_ranks_on_the_training_split_picks_by_the_rule_and_reuses_the_features(tmp_path, image_data,
                                                                                    candidates, capsys):
    out = tmp_path / "run"
    results = train(load_config(auto_args(candidates, image_data, out)), "image")
    stdout = capsys.readouterr().out
    choice = results["backbone_choice"]

    # the same scores as `hftransfer rank` on the same training data (12 examples; the 10 validation ones unseen)
    ranked = rank_backbones(load_config(["--candidates", *candidates, *map(str, image_data_args(image_data, tmp_path / "rank"))],
                                        config_cls=RankConfig))
    expected = max((r for r in ranked if not r["candidate"].startswith("random:")), key=lambda r: r["h_score"])
    assert choice["chosen"] == expected["candidate"]
    assert {r["candidate"]: r["h_score"] for r in choice["ranking"]} == pytest.approx(
        {r["candidate"]: r["h_score"] for r in ranked})
    assert all(r["samples"] == 12 for r in choice["ranking"])
    assert choice["train_samples"] == results["train_samples"] == 12
    assert choice["candidates"] == candidates and choice["metric"] == "h_score"
    name, weights = expected["candidate"].split("=")
    assert (choice["name"], choice["weights"]) == (name, weights)

    # recorded: all_results.json, backbone_choice.json, and config.yaml reruns the chosen backbone as it is
    assert read_results(out)["backbone_choice"] == choice
    assert json.loads((out / BACKBONE_CHOICE_NAME).read_text()) == choice
    saved = read_yaml(out / "config.yaml")
    assert (saved["model_name_or_path"], saved["weights"], saved["candidates"]) == (name, weights, [])
    assert read_results(out)["transfer"]["base_model"] == name
    assert f"backbone: {expected['candidate']}: highest H-score" in stdout

    # the probe trained on the chosen backbone's features as ranking stored them, not extracted again
    assert saved["feature_cache_dir"] == str(out / FEATURE_CACHE_DIR)
    train_line = next(line for line in stdout.splitlines() if line.startswith("feature cache: train"))
    assert "loaded" in train_line

    card = (out / "README.md").read_text()
    assert "## Backbone choice" in card
    chosen_line = next(line for line in card.splitlines() if "**chosen**" in line)
    assert f"test_efficientnet={weights.split('/')[-1]}" in chosen_line
    assert "random-init floor" in card
    assert str(tmp_path) not in card  # weight files are named, never by their local path


def test_auto_from_yaml(tmp_path, image_data, candidates):
    config = tmp_path / "auto.yaml"
    config.write_text("model_name_or_path: auto\nbundled_candidates: false\nauto_metric: logme\n"
                      "candidates:\n" + "".join(f"  - {c}\n" for c in candidates[:2]) +
                      "strategy: linear_probe\nnum_train_epochs: 1\nper_device_train_batch_size: 4\n")
    out = tmp_path / "yaml_run"
    results = train(load_config(["--config", str(config), *map(str, image_data_args(image_data, out))]), "image")
    choice = results["backbone_choice"]
    assert choice["metric"] == "logme" and choice["candidates"] == candidates[:2]
    assert choice["chosen"] == max(choice["ranking"], key=lambda r: r["logme"])["candidate"]
    assert "by LogME of its frozen features" in (out / "README.md").read_text()


def test_auto_with_compare_scratch_trains_the_chosen_architecture_from_scratch(tmp_path, image_data, candidates):
    out = tmp_path / "scratch_run"
    results = train(load_config(auto_args(candidates[:2], image_data, out, "--num_train_epochs", "1",
                                          "--compare_scratch")), "image")
    assert results["backbone_choice"]["chosen"] in candidates[:2]
    assert "transfer_gain" in results
    scratch = read_yaml(next((out / "scratch").glob("seed_*")) / "config.yaml")
    assert (scratch["model_name_or_path"], scratch["weights"]) == ("test_efficientnet", "random")
    card = (out / "README.md").read_text()
    assert "## Backbone choice" in card and "## Did transfer help?" in card


def test_resume_reuses_the_recorded_choice_instead_of_ranking_again(tmp_path, image_data, candidates, capsys):
    out = tmp_path / "resumed"
    args = auto_args(candidates[:3], image_data, out, "--strategy", "lp_ft", "--lp_epochs", "1",
                     "--save_total_limit", "0")
    first = train(load_config(args), "image")["backbone_choice"]
    capsys.readouterr()
    # the recorded choice is what a resume fine-tunes: pretend the first run had picked another candidate
    other = next(c for c in candidates[:3] if c != first["chosen"])
    weights = other.split("=")[1]
    recorded = json.loads((out / BACKBONE_CHOICE_NAME).read_text())
    (out / BACKBONE_CHOICE_NAME).write_text(json.dumps({**recorded, "chosen": other, "weights": weights}))
    resumed = train(load_config([*args, "--resume_from_checkpoint", str(out / "checkpoints" / "step_3")]), "image")
    stdout = capsys.readouterr().out
    assert f"backbone: {other}, as chosen before the interruption" in stdout
    assert "ranking " not in stdout  # no candidate was embedded again
    assert resumed["backbone_choice"]["chosen"] == other
    assert read_yaml(out / "config.yaml")["weights"] == weights

    # other candidates than the recorded run's could switch backbones mid-run: refused in one line
    with pytest.raises(HFTransferError, match=r"resuming with other candidates or --auto_metric could switch backbones"):
        train(load_config([*auto_args(candidates[:2], image_data, out), "--resume_from_checkpoint", "latest"]), "image")


@pytest.mark.integration
def test_default_image_job_with_auto_picks_a_bundled_backbone_and_the_card_shows_the_ranking(tmp_path):
    """The real bundled job, shortened: ranks lite0/1/2 on ants/bees photos, says why, fine-tunes the pick."""
    out = tmp_path / "auto_default"
    proc = run_recipe("image_cls", "--model_name_or_path", "auto", "--max_train_samples", "64", "--num_train_epochs",
                      "2", "--strategy", "linear_probe", "--output_dir", out, "--checkpointing_steps", "no")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(out)
    choice = results["backbone_choice"]
    assert sorted(r["candidate"] for r in choice["ranking"]) == [
        "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
    assert all(r["samples"] == 64 for r in choice["ranking"])  # the training subset only
    assert results["transfer"]["base_model"] == choice["chosen"] == choice["ranking"][0]["candidate"]
    assert f"backbone: {choice['chosen']}: highest H-score on the training split" in proc.stdout
    assert "loaded" in next(line for line in proc.stdout.splitlines() if line.startswith("feature cache: train"))
    card = (out / "README.md").read_text()
    assert "## Backbone choice" in card
    assert all(f"| {r['rank']} | {r['candidate']} |" in card for r in choice["ranking"])
    assert results["eval_accuracy"] > 0.7
