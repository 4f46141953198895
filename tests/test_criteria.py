"""Label-free selection criteria (hftransfer/adaptation/criteria.py) and the adapted-vs-source-only choice."""
import math

import pytest
import torch

from hftransfer.adaptation.criteria import (
    SELECTION_CRITERIA,
    deep_embedded_validation,
    density_ratios,
    selection_score,
    selection_scores,
    soft_neighborhood_density,
    target_scores,
)
from hftransfer.records import DomainAdaptation, SourceOnlyRun
from hftransfer.runs.source_only import choose, export_source_only


def test_snd_matches_a_hand_computation():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7]])
    p = probs / probs.norm(dim=1, keepdim=True)
    sim = (p @ p.t()) / 0.05
    expected = 0.0
    for i in range(4):
        row = torch.tensor([sim[i, j] for j in range(4) if j != i])
        q = torch.softmax(row, 0)
        expected += -(q * q.log()).sum().item() / 4
    assert soft_neighborhood_density(probs) == pytest.approx(expected / math.log(3), rel=1e-6)


def test_snd_is_higher_for_dense_clusters_than_for_scattered_predictions():
    g = torch.Generator().manual_seed(0)
    clustered = torch.softmax(torch.cat([torch.tensor([[6.0, 0, 0]]).repeat(20, 1),
                                         torch.tensor([[0, 6.0, 0]]).repeat(20, 1)]) + 0.1 * torch.randn(40, 3, generator=g), 1)
    scattered = torch.softmax(2 * torch.randn(40, 3, generator=g), 1)
    assert soft_neighborhood_density(clustered) > soft_neighborhood_density(scattered)


def test_density_ratios_are_high_where_the_target_is_dense():
    g = torch.Generator().manual_seed(0)
    source = torch.randn(400, 2, generator=g)
    target = torch.randn(400, 2, generator=g) + torch.tensor([1.5, 0.0])
    ratios = density_ratios(source, target, seed=0)
    assert ratios.shape == (400,) and (ratios > 0).all()
    # source points on the target's side of the first axis count more
    right, left = ratios[source[:, 0] > 1], ratios[source[:, 0] < -1]
    assert right.mean() > 3 * left.mean()


def test_dev_weights_the_losses_of_target_like_source_examples():
    g = torch.Generator().manual_seed(0)
    source = torch.randn(300, 2, generator=g)
    target = torch.randn(300, 2, generator=g) + torch.tensor([2.0, 0.0])
    # the model is wrong (loss 2) exactly where the target lives, right (loss 0.1) elsewhere
    losses = torch.where(source[:, 0] > 0.5, torch.tensor(2.0), torch.tensor(0.1))
    dev = deep_embedded_validation(source, losses, target, seed=0)
    assert dev > losses.mean().item() + 0.3  # plain source validation would call this model good
    # a model wrong away from the target scores better under DEV
    flipped = torch.where(source[:, 0] > 0.5, torch.tensor(0.1), torch.tensor(2.0))
    assert deep_embedded_validation(source, flipped, target, seed=0) < dev


def test_dev_without_a_shift_is_about_the_plain_mean_loss():
    g = torch.Generator().manual_seed(1)
    source, target = torch.randn(500, 3, generator=g), torch.randn(500, 3, generator=g)
    losses = torch.rand(500, generator=g)
    assert deep_embedded_validation(source, losses, target) == pytest.approx(losses.mean().item(), abs=0.05)


def test_every_criterion_is_scored_and_the_configured_one_selects():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(50, 3, generator=g), 1)
    scores = selection_scores(source_accuracy=0.8, target_probs=probs, source_features=torch.randn(40, 4, generator=g),
                              source_losses=torch.rand(40, generator=g), target_features=torch.randn(50, 4, generator=g),
                              source_errors=(torch.rand(40, generator=g) > 0.8).double())
    assert set(scores) == set(SELECTION_CRITERIA)
    im = target_scores(probs)["target_im"]
    assert scores["source_im"] == pytest.approx(0.8 + im) and scores["im"] == pytest.approx(im)
    assert scores["dev"] <= 0 and scores["dev_loss"] < 0  # negated risks: higher is better
    for c in SELECTION_CRITERIA:
        assert selection_score(c, scores) == scores[c]


def test_confident_wrong_predictions_fool_im_but_not_dev():
    """The issue's failure: an entropy-minimizing method is confident on the target whatever its accuracy."""
    g = torch.Generator().manual_seed(0)
    source = torch.randn(200, 2, generator=g)
    target = torch.randn(200, 2, generator=g) + torch.tensor([2.0, 0.0])
    confident = torch.softmax(torch.randn(200, 2, generator=g) * 8, 1)  # sharp, both classes used
    hesitant = torch.softmax(torch.randn(200, 2, generator=g) * 0.5, 1)
    near_target = source[:, 0] > 0.5
    # both models make 1 error in 5 on the source; the adapted one makes them where the target lives
    wrong_near_target = (near_target & (torch.rand(200, generator=g) < 0.6)).double()
    right_near_target = (~near_target & (torch.rand(200, generator=g) < 0.3)).double()
    adapted = selection_scores(source_accuracy=0.8, target_probs=confident, source_features=source,
                               source_errors=wrong_near_target, source_losses=2 * wrong_near_target,
                               target_features=target)
    plain = selection_scores(source_accuracy=0.8, target_probs=hesitant, source_features=source,
                             source_errors=right_near_target, source_losses=2 * right_near_target,
                             target_features=target)
    assert adapted["source_im"] > plain["source_im"]
    assert adapted["dev"] < plain["dev"] and adapted["dev_loss"] < plain["dev_loss"]


def test_choose_exports_the_higher_label_free_score_and_ties_go_to_source_only():
    adapted = DomainAdaptation(method="mcc", selection_score=-0.40)
    assert choose(adapted, SourceOnlyRun(selection_score=-0.50), "dev")[0] == "adapted"
    which, why = choose(adapted, SourceOnlyRun(selection_score=-0.30), "dev")
    assert which == "source_only" and "adapted/" in why and "-0.3000" in why
    assert choose(adapted, SourceOnlyRun(selection_score=-0.40), "dev")[0] == "source_only"


def test_export_source_only_swaps_the_model_files(tmp_path):
    out, twin = tmp_path / "run", tmp_path / "run" / "source_only"
    (out / "best_model").mkdir(parents=True)
    twin.mkdir()
    for name in ("model.safetensors", "config.json", "eval_results.json"):
        (out / "best_model" / name).write_text("adapted")
        (out / name).write_text("adapted")
        (twin / name).write_text("twin")
    (out / "test_predictions.jsonl").write_text("adapted")
    (out / "all_results.json").write_text("run")
    export_source_only(out, twin)
    for name in ("model.safetensors", "config.json", "eval_results.json"):
        assert (out / name).read_text() == "twin" and (out / "adapted" / name).read_text() == "adapted"
    assert (out / "adapted" / "test_predictions.jsonl").read_text() == "adapted"
    assert not (out / "test_predictions.jsonl").exists()  # the twin had none: nothing stale is left
    assert (out / "all_results.json").read_text() == "run"
