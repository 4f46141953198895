"""``--strategy contrastive``: SetFit's label pairs (setfit's sampler) and pair loss (sentence-transformers) tune the
backbone in a phase before the run, then the head trains on the frozen, tuned backbone. Tiny random models."""
from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import torch
from builders import make_text_file, make_tiny_bert_with_vocab, read_results, text_inputs
from safetensors.torch import load_file

from hftransfer import TransferModel
from hftransfer.errors import HFTransferError
from hftransfer.tuning.contrastive import contrastive_finetune, label_pairs


def test_label_pairs_are_setfits_positive_and_negative_pairs_of_indices():
    labels = [0, 0, 1, 1, 1, 2]
    pairs = label_pairs(labels, iterations=3)
    assert len(pairs) == 2 * 3 * len(labels)  # SetFit: num_iterations positive + as many negative per example
    scores = Counter(score for _, _, score in pairs)
    assert scores == {1.0: 18, 0.0: 18}
    assert all((labels[i] == labels[j]) == (score == 1.0) for i, j, score in pairs)
    assert pairs == label_pairs(labels, iterations=3)  # deterministic
    with pytest.raises(HFTransferError, match="at least two classes"):
        label_pairs([1, 1, 1], iterations=2)


def embedding_separation(backbone, batch, labels) -> float:
    """Mean cosine similarity of same-label pairs minus that of different-label pairs."""
    with torch.no_grad():
        emb = torch.nn.functional.normalize(backbone(**batch), dim=-1)
    sims, same = emb @ emb.T, labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool)
    return (sims[same & off_diagonal].mean() - sims[~same].mean()).item()


def test_contrastive_finetune_pulls_classes_apart(tmp_path):
    from accelerate import Accelerator

    from hftransfer.models.factory import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("text", str(make_tiny_bert_with_vocab(tmp_path / "bert")), weights="pretrained")
    texts = ["good great movie", "great film good", "a good plot", "bad awful movie", "awful dull film", "bad plot"]
    labels = [1, 1, 1, 0, 0, 0]
    encoded = backbone.tokenizer(texts)
    examples = [{k: encoded[k][i] for k in encoded} for i in range(len(texts))]
    batch = {k: v for k, v in backbone.tokenizer(texts, padding=True, return_tensors="pt").items()
             if k in backbone.input_names}
    before = embedding_separation(backbone.eval(), batch, torch.tensor(labels))
    result = contrastive_finetune(backbone, examples, backbone.data_pipeline().collate, labels,
                                  accelerator=Accelerator(cpu=True), iterations=4, epochs=3, learning_rate=1e-3,
                                  batch_size=8, seed=0)
    assert result["pairs"] == 48 and result["steps"] == 3 * 6 and result["stopped"] == 0
    assert result["loss_end"] < result["loss_start"]
    assert embedding_separation(backbone.eval(), batch, torch.tensor(labels)) > before + 0.05


def run_contrastive(tmp_path, modality: str, **kwargs) -> dict:
    from hftransfer.config import TrainConfig
    from hftransfer.runs.train import train

    base = dict(per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=0.01,
                head_learning_rate=0.01, num_train_epochs=2, save_total_limit=0, seed=0, strategy="contrastive",
                contrastive_iterations=2, contrastive_learning_rate=1e-3)
    values = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in {**base, **kwargs}.items()}
    return train(TrainConfig(**values), modality)


def test_text_contrastive_run_tunes_the_backbone_first_then_trains_only_the_head(tmp_path, tiny_bert, capsys):
    out = tmp_path / "run"
    data = dict(model_name_or_path=str(tiny_bert), train_file=make_text_file(tmp_path / "train.csv", n=12),
                validation_file=make_text_file(tmp_path / "val.csv", n=8, seed=1), output_dir=str(out))
    results = run_contrastive(tmp_path, "text", **data)
    transfer = results["transfer"]
    assert transfer["strategy"] == "contrastive" and "label pairs" in transfer["strategy_description"]
    phase = transfer["contrastive"]
    assert phase["pairs"] == 2 * 2 * 12 and phase["examples"] == 12 and phase["steps"] == 12
    assert [p["trainable_backbone_groups"] for p in transfer["phases"]] == [[]]  # then a linear probe
    tuned = load_file(out / "contrastive" / "backbone.safetensors")
    model = TransferModel.from_pretrained(out)
    exported = model.backbone.state_dict()
    assert tuned.keys() == exported.keys() and all(torch.equal(tuned[k], exported[k]) for k in tuned)
    pretrained = TransferModel.from_pretrained(out).backbone  # differs from the starting encoder: it was tuned
    start = load_file(tiny_bert / "model.safetensors")
    assert any(not torch.equal(start[k], pretrained.state_dict()[f"encoder.{k}"]) for k in start
               if f"encoder.{k}" in pretrained.state_dict())
    assert "contrastive phase: 48 label pairs of 12 training examples" in capsys.readouterr().out
    assert read_results(out)["transfer"]["contrastive"]["loss"].startswith("CosineSimilarityLoss")
    card = (out / "README.md").read_text()
    assert "label pairs" in card

    run_contrastive(tmp_path, "text", **{**data, "overwrite_output_dir": True})  # same settings: the phase is reused
    assert "contrastive phase: reusing the finished phase" in capsys.readouterr().out
    assert read_results(out)["transfer"]["contrastive"]["reused"] is True
    assert (out / "contrastive" / "backbone.safetensors").is_file()  # kept when the fine-tune replaces the run
    logits = TransferModel.from_pretrained(out)(**text_inputs(model)).logits
    assert logits.shape == (3, 2)


def test_image_contrastive_few_shot_draws_each_tune_their_own_backbone(tmp_path, image_data):
    out = tmp_path / "run"
    results = run_contrastive(tmp_path, "image", model_name_or_path="test_efficientnet", weights="random",
                              train_dir=image_data["train"], validation_dir=image_data["val"], output_dir=str(out),
                              num_train_epochs=1, shots=3, shot_draws=2, head_init="prototypes")
    assert results["transfer"]["contrastive"]["pairs"] == 2 * 2 * 6  # 3 shots x 2 classes
    assert results["few_shot"]["draws"] == 2 and results["few_shot"]["head"] == "cosine"
    draw_1 = out / "draws" / "draw_1"
    for folder in (out, draw_1):
        phase = json.loads((folder / "contrastive" / "contrastive.json").read_text())
        assert phase["phase"]["steps"] == 6 and phase["settings"]["examples"] == 6
    assert phase["settings"]["seed"] == 1  # draw 1: seed + 1, its own shots and pairs
    assert read_results(draw_1)["transfer"]["contrastive"]["pairs"] == 24
    tuned = [load_file(folder / "contrastive" / "backbone.safetensors") for folder in (out, draw_1)]
    assert any(not torch.equal(tuned[0][k], tuned[1][k]) for k in tuned[0])


def test_contrastive_refuses_multi_label_data(tmp_path, tiny_bert):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"the movie {i}", "label": ["a", "b"][: 1 + i % 2]}) + "\n"
                             for i in range(8)))
    with pytest.raises(HFTransferError, match="multi-label"):
        run_contrastive(tmp_path, "text", model_name_or_path=str(tiny_bert), train_file=str(train),
                        validation_file=str(train), output_dir=str(tmp_path / "run"))


@pytest.mark.integration
def test_two_process_contrastive_run_keeps_the_tuned_backbones_equal(tmp_path, image_data):
    from builders import launch_two_processes

    out = tmp_path / "run"
    proc = launch_two_processes(
        "image_cls", "--model_name_or_path", "test_efficientnet", "--weights", "random", "--train_dir",
        image_data["train"], "--validation_dir", image_data["val"], "--output_dir", out, "--num_train_epochs", "1",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--strategy", "contrastive",
        "--contrastive_iterations", "2", "--contrastive_learning_rate", "1e-3", "--ddp_timeout", "120",
        "--save_total_limit", "0")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = read_results(out)
    assert results["world_size"] == 2
    phase = results["transfer"]["contrastive"]
    assert phase["pairs"] == 48 and phase["steps"] == 6  # 48 pairs over 2 processes x batch 4
