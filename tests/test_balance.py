"""Class imbalance: --class_weights (loss weights, pos_weight), --sampler balanced, and their wiring."""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from unittest import mock

import datasets
import pytest
import torch
from builders import tiny_image_transfer_model
from torch.nn import functional as F

from hftransfer.data.balance import BalancedSampler, class_weights, group_by_length
from hftransfer.errors import HFTransferError
from hftransfer.models.heads import classification_loss

NINE_TO_ONE = [0] * 90 + [1] * 10


# ---------------------------------------------------------------------------------------------- weights
def test_balanced_weights_follow_scikit_learns_rule():
    labels = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2]
    w = class_weights(labels, 3, multi_label=False, mode="balanced")
    assert w.dtype == torch.float32
    assert torch.allclose(w, torch.tensor([12 / (3 * 4), 12 / (3 * 2), 12 / (3 * 6)]))


def test_a_class_without_examples_gets_weight_zero_and_the_others_are_unchanged():
    w = class_weights(torch.tensor([0, 0, 0, 2]), 3, multi_label=False, mode="balanced")
    assert torch.allclose(w, torch.tensor([4 / (2 * 3), 0.0, 4 / (2 * 1)]))


def test_multi_label_balanced_is_pos_weight_negatives_over_positives():
    hot = [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]
    w = class_weights(hot, 2, multi_label=True, mode="balanced")
    assert torch.allclose(w, torch.tensor([1 / 3, 3 / 1]))


@pytest.mark.parametrize("column, word", [(0.0, "never"), (1.0, "always")])
def test_multi_label_label_never_or_always_positive_is_refused(column, word):
    hot = [[1.0, column], [0.0, column]]
    with pytest.raises(HFTransferError, match=f"label 'b' is {word} positive"):
        class_weights(hot, 2, multi_label=True, mode="balanced", label_names=["a", "b"])


def test_given_weights_and_none():
    assert class_weights([0, 1], 2, multi_label=False, mode="none") is None
    w = class_weights([0, 1], 2, multi_label=False, mode="given", values=[1, 2.5])
    assert w.dtype == torch.float32 and w.tolist() == [1.0, 2.5]


def test_given_weights_of_the_wrong_length_name_the_labels():
    with pytest.raises(HFTransferError, match=r"3 values but the data has 2 labels \(cats, dogs\)"):
        class_weights([0, 1], 2, multi_label=False, mode="given", values=[1, 2, 3], label_names=["cats", "dogs"])


# ---------------------------------------------------------------------------------------------- sampler
def test_sampler_is_a_pure_function_of_seed_and_epoch():
    a, b = BalancedSampler(NINE_TO_ONE, seed=3), BalancedSampler(NINE_TO_ONE, seed=3)
    list(b)  # iterating (or a different history) must not change what an epoch draws
    b.set_epoch(1)
    list(b)
    b.set_epoch(0)
    assert list(a) == list(b) and len(list(a)) == len(a) == 100
    a.set_epoch(1)
    assert list(a) != list(b)
    assert list(BalancedSampler(NINE_TO_ONE, seed=4)) != list(b)


def test_sampler_draws_each_class_about_equally_often():
    labels = NINE_TO_ONE * 50  # 4500 : 500
    drawn = Counter(labels[i] for i in BalancedSampler(labels, seed=0))
    assert sum(drawn.values()) == len(labels)
    assert abs(drawn[1] / len(labels) - 0.5) < 0.03
    minority = {i for i in BalancedSampler(labels, seed=0) if labels[i] == 1}
    assert len(minority) > 400  # with replacement, yet spread over (nearly) every minority example


def test_length_grouping_keeps_the_drawn_multiset():
    lengths = [(7 * i) % 13 + 1 for i in range(len(NINE_TO_ONE))]
    plain = BalancedSampler(NINE_TO_ONE, seed=2)
    grouped = BalancedSampler(NINE_TO_ONE, seed=2, lengths=lengths, batch_size=4, mega_batches=5)
    assert sorted(plain) == sorted(grouped)
    order = list(grouped)
    assert order == group_by_length(list(plain), lengths, 20)
    for start in range(0, len(order), 20):
        chunk = [lengths[i] for i in order[start:start + 20]]
        assert chunk == sorted(chunk, reverse=True)


def test_sampler_refuses_multi_label_data():
    with pytest.raises(HFTransferError, match="use --class_weights balanced for multi-label"):
        BalancedSampler([[1.0, 0.0], [0.0, 1.0]], seed=0)


# ---------------------------------------------------------------------------------------------- loss
def test_weighted_cross_entropy_equals_a_hand_computation():
    logits, labels, w = torch.randn(5, 3), torch.tensor([0, 2, 1, 2, 2]), torch.tensor([1.0, 2.0, 0.5])
    nll = -F.log_softmax(logits, -1)[torch.arange(5), labels]
    expected = (w[labels] * nll).sum() / w[labels].sum()
    assert torch.allclose(classification_loss(logits, labels, False, class_weights=w), expected)


def test_weighted_bce_uses_pos_weight():
    logits, pw = torch.randn(4, 2), torch.tensor([3.0, 0.5])
    hot = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    p = torch.sigmoid(logits)
    expected = -(pw * hot * torch.log(p) + (1 - hot) * torch.log(1 - p)).mean()
    assert torch.allclose(classification_loss(logits, hot, True, class_weights=pw), expected, atol=1e-6)


def test_soft_targets_are_not_smoothed_again():
    logits = torch.randn(4, 3)
    soft = torch.softmax(torch.randn(4, 3), -1)
    expected = -(soft * F.log_softmax(logits, -1)).sum(-1).mean()
    assert torch.allclose(classification_loss(logits, soft, False, label_smoothing=0.1), expected)
    w = torch.tensor([1.0, 2.0, 0.5])
    weighted = -(w * soft * F.log_softmax(logits, -1)).sum(-1).mean()
    assert torch.allclose(classification_loss(logits, soft, False, class_weights=w), weighted)


# ---------------------------------------------------------------------------------------------- model
def test_class_weights_stay_out_of_the_state_dict_and_the_saved_files(tmp_path):
    model = tiny_image_transfer_model({0: "a", 1: "b"})
    keys = set(model.state_dict())
    model.save_pretrained(tmp_path / "before")
    model.set_class_weights(torch.tensor([1.0, 9.0]))
    assert set(model.state_dict()) == keys
    assert model.class_weights.tolist() == [1.0, 9.0]
    model.save_pretrained(tmp_path / "after")
    before, after = (sorted(p.name for p in (tmp_path / d).iterdir()) for d in ("before", "after"))
    assert before == after
    for name in before:  # the same files, byte for byte (the config records nothing about the weights)
        assert (tmp_path / "before" / name).read_bytes() == (tmp_path / "after" / name).read_bytes(), name
    logits = torch.randn(3, 2)
    out = model.output(logits, torch.tensor([0, 1, 1]))
    assert torch.allclose(out.loss, F.cross_entropy(logits, torch.tensor([0, 1, 1]), weight=torch.tensor([1.0, 9.0])))
    with pytest.raises(HFTransferError, match="3 class weights for a model of 2 labels"):
        model.set_class_weights(torch.ones(3))
    model.set_class_weights(None)
    assert model.class_weights is None


# ---------------------------------------------------------------------------------------------- loaders
class _Pipeline:
    """A stand-in for a backbone's pipeline: text rows as they are, collated to tensors."""
    key = "stub"

    def prepare(self, ds, column, split):
        return ds

    def lengths(self, ds):
        return [len(t) for t in ds["text"]]

    def train_view(self, ds, column):
        return ds

    eval_view = train_view

    def collate(self, examples):
        return {"labels": torch.tensor([e["labels"] for e in examples])}

    def set_epoch(self, epoch):
        pass


def _loaders(with_cache=True, **overrides):
    from hftransfer.data import DataBundle
    from hftransfer.training.loaders import create_dataloaders

    split = datasets.Dataset.from_dict({"text": ["x" * (i % 7 + 1) for i in range(100)], "labels": NINE_TO_ONE,
                                        "__index__": list(range(100))})
    bundle = DataBundle(split, split, {0: "a", 1: "b"}, overrides.pop("multi_label", False), "text",
                        target=overrides.pop("target", None))
    cfg = SimpleNamespace(**{"dataloader_num_workers": 0, "sampler": "balanced", "group_by_length": True, "seed": 5,
                             "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4,
                             "domain_adaptation": "none", "adaptation_loss": "none", **overrides})
    backbone = SimpleNamespace(modality="image", data_pipeline=lambda **kwargs: _Pipeline())
    with mock.patch("hftransfer.training.loaders.pipeline_kwargs", return_value={}):
        return create_dataloaders(cfg, bundle, backbone, with_cache)


def test_balanced_sampler_feeds_the_training_and_the_cached_feature_loaders():
    loaders = _loaders()
    assert isinstance(loaders.train.sampler, BalancedSampler) and loaders.train.sampler.lengths is not None
    assert isinstance(loaders.cached_train.sampler, BalancedSampler) and loaders.cached_train.sampler.lengths is None
    assert sorted(loaders.train.sampler) == sorted(loaders.cached_train.sampler)  # same draw, the text grouped
    drawn = Counter(NINE_TO_ONE[i] for i in loaders.train.sampler)
    assert drawn[1] > 25  # 10 % of the data, about half of the draws


@pytest.mark.parametrize("overrides, message", [
    ({"multi_label": True}, "supports single-label data"),
    ({"target": SimpleNamespace(), "domain_adaptation": "dann", "adaptation_loss": "dann"},
     "does not combine with --domain_adaptation"),
])
def test_balanced_sampler_refusals(overrides, message):
    with pytest.raises(HFTransferError, match=message):
        _loaders(**overrides)


def test_prepared_loader_sets_the_epoch_and_resumes_mid_epoch_exactly():
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration
    from torch.utils.data import DataLoader

    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    loader = accelerator.prepare(DataLoader(list(range(100)), batch_size=8, sampler=BalancedSampler(NINE_TO_ONE, 7)))
    loader.set_epoch(2)
    epoch = [b.tolist() for b in loader]
    expected = list(BalancedSampler(NINE_TO_ONE, 9))  # seed + epoch
    assert [i for batch in epoch for i in batch] == expected
    loader.set_epoch(2)
    assert [b.tolist() for b in accelerator.skip_first_batches(loader, 3)] == epoch[3:]
