"""``--strategy episodic``: prototypical episodes tune the backbone in a phase before the run (Prototypical Networks
with cosine prototypes), then the head trains on the frozen, tuned backbone. Tiny random models."""
from __future__ import annotations

import json
import os

import pytest
import torch
from builders import make_tiny_bert_with_vocab, read_results
from safetensors.torch import load_file

from hftransfer import TransferModel
from hftransfer.errors import HFTransferError
from hftransfer.tuning.episodic import EpisodeDataset, episode_shape, episodic_finetune, prototypical_loss


def test_episode_shape_defaults_and_refusals():
    labels = [0] * 8 + [1] * 8 + [2] * 30
    assert episode_shape(labels) == (3, 4, 4)  # half of the smallest class as support, the rest as queries
    assert episode_shape([0] * 40 + [1] * 40) == (2, 5, 10)  # ProtoNet's caps: 5 support, 10 queries
    assert episode_shape(labels, ways=2, support=2, queries=6) == (2, 2, 6)
    with pytest.raises(HFTransferError, match="at least 2 training examples per class"):
        episode_shape([0, 0, 1])
    with pytest.raises(HFTransferError, match="at least two classes"):
        episode_shape([0, 0, 0])
    with pytest.raises(HFTransferError, match="--episode_ways 4: the training data has 3 classes"):
        episode_shape(labels, ways=4)
    with pytest.raises(HFTransferError, match="smallest class has 8"):
        episode_shape(labels, support=5, queries=4)


def test_episodes_are_seeded_draws_of_whole_classes():
    labels = [i % 4 for i in range(40)]
    dataset = EpisodeDataset(list(range(40)), labels, episodes=5, ways=3, support=2, queries=3, seed=7)
    episode = dataset.indices(0)
    assert len(dataset) == 5 and len(episode) == 3 * 5 and len(set(episode)) == 15
    classes = [labels[i] for i in episode]
    assert all(len(set(classes[c * 5:(c + 1) * 5])) == 1 for c in range(3))  # class by class
    assert len(set(classes)) == 3
    assert dataset.indices(0) == EpisodeDataset(list(range(40)), labels, episodes=5, ways=3, support=2, queries=3,
                                                seed=7).indices(0)  # a function of (seed, episode)
    assert dataset.indices(1) != episode
    assert dataset[0] == episode  # the examples themselves: here their indices


def test_prototypical_loss_rewards_queries_near_their_class_mean():
    centers = torch.eye(3, 8) * 5
    separated = torch.cat([centers[c].expand(4, 8) + 0.01 * torch.randn(4, 8) for c in range(3)])
    swapped = separated.view(3, 4, 8).clone()
    swapped[:, 2:] = swapped[[1, 2, 0], 2:]  # every query sits on another class's prototype
    good = prototypical_loss(separated, ways=3, support=2, queries=2)
    bad = prototypical_loss(swapped.view(12, 8), ways=3, support=2, queries=2)
    assert good < 0.01 and bad > 5
    features = separated.clone().requires_grad_(True)
    prototypical_loss(features, ways=3, support=2, queries=2).backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


def test_episodic_finetune_lowers_the_query_loss(tmp_path):
    from accelerate import Accelerator

    from hftransfer.models.factory import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("text", str(make_tiny_bert_with_vocab(tmp_path / "bert")), weights="pretrained")
    texts = ["good great movie", "great film good", "a good plot", "good actor", "bad awful movie",
             "awful dull film", "bad plot", "a dull actor"]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    encoded = backbone.tokenizer(texts)
    examples = [{k: encoded[k][i] for k in encoded} for i in range(len(texts))]
    result = episodic_finetune(backbone, examples, backbone.data_pipeline().collate, labels,
                               accelerator=Accelerator(cpu=True), episodes=20, ways=2, support=2, queries=2,
                               learning_rate=1e-3, seed=0)
    assert result["steps"] == 20 and result["episodes"] == 20 and result["stopped"] == 0
    assert result["loss_end"] < result["loss_start"]


def run_episodic(**kwargs) -> dict:
    from hftransfer.config import TrainConfig
    from hftransfer.runs.train import train

    base = dict(model_name_or_path="test_efficientnet", weights="random", per_device_train_batch_size=4,
                per_device_eval_batch_size=4, learning_rate=0.01, head_learning_rate=0.01, num_train_epochs=1,
                save_total_limit=0, seed=0, strategy="episodic", episodes=4, episodic_learning_rate=1e-3)
    values = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in {**base, **kwargs}.items()}
    return train(TrainConfig(**values), "image")


def test_image_episodic_run_tunes_the_backbone_then_fits_a_prototype_head(tmp_path, image_data, capsys):
    out = tmp_path / "run"
    data = dict(train_dir=image_data["train"], validation_dir=image_data["val"], output_dir=str(out), shots=4,
                head_init="prototypes")
    results = run_episodic(**data)
    transfer = results["transfer"]
    assert transfer["strategy"] == "episodic" and "prototypical episodes" in transfer["strategy_description"]
    phase = transfer["episodic"]
    assert (phase["episodes"], phase["ways"], phase["support"], phase["queries"]) == (4, 2, 2, 2)
    assert phase["steps"] == 4 and phase["examples"] == 8
    assert [p["trainable_backbone_groups"] for p in transfer["phases"]] == [[]]  # then the head alone
    tuned = load_file(out / "episodic" / "backbone.safetensors")
    exported = TransferModel.from_pretrained(out).backbone.state_dict()
    assert all(torch.equal(tuned[k], exported[k]) for k in tuned)
    assert "episodic phase: 4 episodes of 8 training examples, each 2 classes x (2 support + 2 queries)" in \
        capsys.readouterr().out
    assert "prototypical episodes" in (out / "README.md").read_text()

    run_episodic(**data, overwrite_output_dir=True)  # same settings: the phase is reused
    assert "episodic phase: reusing the finished phase" in capsys.readouterr().out
    assert read_results(out)["transfer"]["episodic"]["reused"] is True
    saved = json.loads((out / "episodic" / "episodic.json").read_text())
    assert saved["settings"]["episodes"] == 4 and saved["phase"]["steps"] == 4


def test_episodic_refuses_too_few_examples_per_class(tmp_path, image_data):
    with pytest.raises(HFTransferError, match="at least 2 training examples per class"):
        run_episodic(train_dir=image_data["train"], validation_dir=image_data["val"], output_dir=str(tmp_path / "r"),
                     shots=1)
    assert not (tmp_path / "r" / "episodic").exists()  # refused before the phase wrote anything
