"""Few-shot transfer: the K-per-class draw (stratified, seeded, disjoint from evaluation), its one-line refusals, the
cosine head and its prototype initialization, and tiny in-process runs over several draws (both modalities) whose
summary, export and custom-code loading are checked.

Models are tiny and random (test_efficientnet, a 2-layer BERT); runs train one epoch on a handful of examples.
"""
from __future__ import annotations

import json
import math
import os

import datasets
import numpy as np
import pytest
import torch
from builders import (
    LOAD_WITHOUT_HFTRANSFER,
    TEXTS,
    launch_two_processes,
    logits_of,
    make_image_folder,
    read_results,
    run_python,
    text_inputs,
)
from safetensors.torch import load_file
from torch.nn import functional as F

from hftransfer import TransferModel
from hftransfer.config import TrainConfig
from hftransfer.data.shots import draw_shots, shot_indices
from hftransfer.errors import HFTransferError
from hftransfer.models.heads import CosineHead, create_head


def one_line_error(call, match: str) -> str:
    with pytest.raises(HFTransferError, match=match) as e:
        call()
    assert "\n" not in str(e.value)
    return str(e.value)


def labelled(counts: dict[int, int]) -> datasets.Dataset:
    """An encoded training split: ``counts[c]`` rows of class c, interleaved, with an example id."""
    labels = [c for i in range(max(counts.values())) for c in sorted(counts) if i < counts[c]]
    return datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(len(labels))], "labels": labels,
                                       "__index__": list(range(len(labels)))})


def unique_text_file(path, n: int = 40):
    """A CSV of ``n`` distinct sentences, two classes alternating: rows are told apart by their text."""
    path.write_text("text,label\n" + "".join(f"sentence number {i} good,{('neg', 'pos')[i % 2]}\n" for i in range(n)))
    return path


def config(**kwargs) -> TrainConfig:
    base = dict(model_name_or_path="test_efficientnet", weights="random", per_device_train_batch_size=4,
                per_device_eval_batch_size=4, seed=0)
    return TrainConfig(**{k: str(v) if isinstance(v, os.PathLike) else v for k, v in {**base, **kwargs}.items()})


def bundle_of(cfg: TrainConfig, modality: str):
    from accelerate import Accelerator

    from hftransfer.training.setup import load_bundle

    return load_bundle(cfg, modality, Accelerator(cpu=True), None)


# ---------------------------------------------------------------------------------------------- the draw
def test_the_draw_is_stratified_exact_seeded_and_reindexed():
    train = labelled({0: 10, 1: 7, 2: 5})
    id2label = {0: "a", 1: "b", 2: "c"}
    shots = draw_shots(train, 3, seed=0, id2label=id2label, multi_label=False)
    assert sorted(shots["labels"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert shots["__index__"] == list(range(9))
    assert len(set(shots["text"])) == 9 and set(shots["text"]) <= set(train["text"])
    assert draw_shots(train, 3, 0, id2label, False)["text"] == shots["text"]  # the same seed, the same examples
    assert all(draw_shots(train, 3, seed, id2label, False)["text"] != shots["text"] for seed in (1, 2))  # other seeds
    assert shot_indices([0, 1, 0, 1], 2, 0, {0: "a", 1: "b"}) == [0, 1, 2, 3]  # all of them when K is everything


def test_the_draw_comes_after_the_held_out_split_and_never_touches_it(tmp_path):
    data = unique_text_file(tmp_path / "train.csv")
    common = dict(model_name_or_path="x", train_file=data, validation_fraction=0.25, text_column_name="text")
    full = bundle_of(config(**common), "text")
    few = bundle_of(config(**common, shots=4), "text")
    assert few.eval["text"] == full.eval["text"]  # the evaluation split is settled first, as without --shots
    assert len(few.train) == 8 and sorted(few.train["labels"]) == [0] * 4 + [1] * 4
    assert set(few.train["text"]) <= set(full.train["text"])
    assert not set(few.train["text"]) & set(few.eval["text"])
    assert bundle_of(config(**common, shots=4), "text").train["text"] == few.train["text"]
    assert bundle_of(config(**common, shots=4, seed=1), "text").train["text"] != few.train["text"]


def test_too_few_examples_and_multi_label_data_are_refused_in_one_line(image_data):
    message = one_line_error(lambda: bundle_of(config(train_dir=image_data["train"],
                                                      validation_dir=image_data["val"], shots=7), "image"),
                             r"--shots 7: class 'cats' has 6 training example\(s\), fewer than 7")
    assert "--shots 6 or less" in message
    one_line_error(lambda: draw_shots(labelled({0: 3, 1: 3}), 2, 0, {0: "a", 1: "b"}, multi_label=True),
                   "multi-label")


@pytest.mark.parametrize("kwargs, match", [
    (dict(shot_draws=3), r"--shot_draws 3 repeats a few-shot run .*pass --shots K"),
    (dict(shots=0), r"--shots 0 is out of range"),
    (dict(shots=2, shot_draws=0), r"--shot_draws 0 is out of range"),
    (dict(head="mlp", head_init="prototypes"), r"--head_init prototypes sets the class weights of a cosine head"),
    (dict(head_init="means"), r"unknown head_init 'means'"),
    (dict(shots=4, model_name_or_path="auto", candidates=["a", "b"]), r"--shots 4 and --model_name_or_path auto"),
])
def test_option_combinations_that_cannot_work_are_refused_in_one_line(kwargs, match):
    one_line_error(lambda: config(**kwargs).validate("image"), match)


def test_shots_alone_run_five_draws_and_no_shots_one():
    assert config(shots=8).num_draws == 5  # the field reports few-shot results over draws
    assert config(shots=8, shot_draws=2).num_draws == 2
    assert config().num_draws == 1


def test_head_init_prototypes_makes_a_linear_head_cosine():
    assert config(head_init="prototypes").head_type == "cosine"
    assert config(head_init="prototypes", head="cosine").head_type == "cosine"
    assert config().head_type == "linear" and config(head="cosine").head_type == "cosine"


# ---------------------------------------------------------------------------------------------- the cosine head
def test_cosine_head_is_a_scaled_cosine_similarity_with_a_learned_temperature():
    torch.manual_seed(0)
    head = create_head("cosine", 8, 3, dropout=0.0, hidden_sizes=[4])  # hidden sizes belong to the mlp head
    assert isinstance(head, CosineHead) and head.fc.bias is None
    assert math.isclose(head.log_scale.exp().item(), 10.0, rel_tol=1e-6)
    x = torch.randn(5, 8)
    expected = 10.0 * (F.normalize(x, dim=-1) @ F.normalize(head.fc.weight, dim=-1).T)
    torch.testing.assert_close(head(x), expected)
    torch.testing.assert_close(head(3.7 * x), head(x))  # the features' norm does not matter
    head(x).sum().backward()
    assert head.log_scale.grad is not None and head.log_scale.grad.abs() > 0


def frozen_features(run) -> tuple[torch.Tensor, torch.Tensor]:
    """The untrained backbone's features of every training example (eval transform), computed here, in order."""
    from torch.utils.data import DataLoader

    loaders, module = run.loaders, run.module
    view = loaders.pipeline.eval_view(loaders.prepared["train"], run.bundle.input_column)
    module.eval()
    feats, labels = [], []
    with torch.no_grad():
        for batch in DataLoader(view, batch_size=3, collate_fn=loaders.pipeline.collate):
            labels.append(batch.pop("labels"))
            batch.pop("__index__")
            feats.append(module.forward_features(**batch).float())
    return torch.cat(feats), torch.cat(labels)


@pytest.mark.parametrize("modality, strategy", [("image", "linear_probe"), ("image", "full"), ("text", "lora")])
def test_prototype_init_sets_normalized_class_means_and_classifies_by_the_nearest_mean(
        tmp_path, image_data, text_data, tiny_bert, modality, strategy):
    from accelerate import Accelerator

    from hftransfer.training.setup import setup

    if modality == "image":
        data = dict(train_dir=image_data["train"], validation_dir=image_data["val"])
    else:
        data = dict(model_name_or_path=tiny_bert, train_file=text_data["train"], validation_file=text_data["val"],
                    pooling="mean")
    cfg = config(**data, shots=3, head_init="prototypes", strategy=strategy, output_dir=tmp_path / "run")
    run = setup(cfg.validate(modality), modality, Accelerator(cpu=True), tmp_path / "run")
    head = run.module.head
    assert isinstance(head, CosineHead) and run.module.head_config["type"] == "cosine"
    feats, labels = frozen_features(run)
    means = torch.stack([feats[labels == c].mean(0) for c in range(run.module.num_labels)])
    torch.testing.assert_close(head.fc.weight.detach(), F.normalize(means, dim=-1), atol=1e-5, rtol=0)
    with torch.no_grad():
        logits = run.module(features=feats).logits
    nearest = (F.normalize(feats, dim=-1) @ F.normalize(means, dim=-1).T).argmax(-1)
    assert torch.equal(logits.argmax(-1), nearest)
    assert run.with_cache == (strategy == "linear_probe")
    if run.with_cache:  # the first cached epoch reuses the features the prototypes came from
        cached = run.loaders.cached_train.dataset
        assert cached.ready and torch.allclose(cached.features, feats, atol=1e-5)


# ---------------------------------------------------------------------------------------------- runs over draws
def run_in_process(modality: str, **kwargs) -> dict:
    from hftransfer.runs.train import train

    base = dict(per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=0.01,
                head_learning_rate=0.01, num_train_epochs=1, save_total_limit=0, seed=0)
    values = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in {**base, **kwargs}.items()}
    return train(TrainConfig(**values), modality)


def check_draws(out, returned: dict, shots: int, draws: int, classes: int) -> dict:
    """few_shot_results.json: every draw, its seed and examples, and mean / std / t-interval of their scores."""
    from scipy.stats import t

    summary = json.loads((out / "few_shot_results.json").read_text())
    recorded = read_results(out)["few_shot"]
    assert recorded == returned["few_shot"] == {**recorded, **summary}  # the summary, and draw 0's own record
    assert (recorded["draw"], recorded["seed"], recorded["train_samples"]) == (0, 0, shots * classes)
    assert (summary["shots"], summary["draws"], summary["head"], summary["head_init"]) == \
        (shots, draws, "cosine", "prototypes")
    rows = summary["per_draw"]
    assert [(r["draw"], r["seed"], r["train_samples"]) for r in rows] == [(d, d, shots * classes) for d in range(draws)]
    for row in rows[1:]:
        folder = out / row["output_dir"]
        assert folder == out / "draws" / f"draw_{row['draw']}"
        assert read_results(folder)["eval_accuracy"] == row["eval_accuracy"]
        assert read_results(folder)["few_shot"]["seed"] == row["seed"]
    for name, stats in summary["metrics"].items():
        values = np.array([r[name] for r in rows])
        assert stats["mean"] == pytest.approx(values.mean())
        assert stats["std"] == pytest.approx(values.std(ddof=1))
        assert stats["ci95_half_width"] == pytest.approx(t.ppf(0.975, draws - 1) * values.std(ddof=1) / draws ** 0.5)
    assert summary["summary"].startswith(f"{shots}-shot over {draws} draws: eval_accuracy ")
    return summary


def exported_and_trained(out) -> tuple[TransferModel, TransferModel]:
    """The exported model reloaded, and the same architecture with the weights of the run's last (here: only)
    evaluation, from its checkpoint: their logits must be equal."""
    model = TransferModel.from_pretrained(out)
    assert isinstance(model.head, CosineHead)
    checkpoint = max((out / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    trained = TransferModel.from_pretrained(out)
    trained.load_state_dict(load_file(checkpoint / "model.safetensors"))
    return model, trained


def load_without_hftransfer(tmp_path, jobs: list[dict]) -> list[dict]:
    (tmp_path / "jobs.json").write_text(json.dumps({"remote_code": jobs}))
    (tmp_path / "load.py").write_text(LOAD_WITHOUT_HFTRANSFER)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    proc = run_python(tmp_path / "load.py", tmp_path / "jobs.json", cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["remote_code"]


@pytest.mark.integration
def test_image_run_over_three_draws_with_prototypes_exports_a_cosine_head_that_loads_without_hftransfer(
        tmp_path, image_data):
    out = tmp_path / "run"
    returned = run_in_process("image", model_name_or_path="test_efficientnet", weights="random",
                              train_dir=image_data["train"], validation_dir=image_data["val"], output_dir=out,
                              strategy="linear_probe", shots=2, shot_draws=3, head_init="prototypes")
    check_draws(out, returned, shots=2, draws=3, classes=2)
    assert returned["train_samples"] == 4 and returned["eval_samples"] == 10
    model, trained = exported_and_trained(out)
    image = sorted((image_data["val"] / "cats").glob("*.png"))[0]
    row = load_without_hftransfer(tmp_path, [{"modality": "image", "repo": str(out), "image": str(image)}])[0]
    assert row["class"] == "HFTransferForImageClassification"
    pixels = torch.tensor(row["pixels"])
    expected = logits_of(model, pixels)
    torch.testing.assert_close(logits_of(trained, pixels), expected, atol=0, rtol=0)
    torch.testing.assert_close(torch.tensor(row["logits"]), expected, atol=1e-5, rtol=0)


@pytest.mark.integration
def test_text_run_over_three_draws_with_prototypes_exports_a_cosine_head_that_loads_without_hftransfer(
        tmp_path, text_data, tiny_bert, capsys):
    out = tmp_path / "run"
    returned = run_in_process("text", model_name_or_path=tiny_bert, train_file=text_data["train"],
                              validation_file=text_data["val"], output_dir=out, pooling="mean", shots=2,
                              shot_draws=3, head_init="prototypes")
    check_draws(out, returned, shots=2, draws=3, classes=2)
    assert json.loads((out / "hftransfer_config.json").read_text())["head"]["type"] == "cosine"
    model, trained = exported_and_trained(out)
    inputs = text_inputs(model)
    expected = logits_of(model, inputs)
    torch.testing.assert_close(logits_of(trained, inputs), expected, atol=0, rtol=0)
    row = load_without_hftransfer(tmp_path, [{"modality": "text", "repo": str(out), "texts": TEXTS}])[0]
    assert row["class"] == "HFTransferForSequenceClassification"
    torch.testing.assert_close(torch.tensor(row["logits"]), expected, atol=1e-5, rtol=0)
    capsys.readouterr()
    again = run_in_process("text", model_name_or_path=tiny_bert, train_file=text_data["train"],  # finished draws kept
                           validation_file=text_data["val"], output_dir=out, pooling="mean", shots=2, shot_draws=3,
                           head_init="prototypes", resume_from_checkpoint="latest")
    assert capsys.readouterr().out.count("already done") == 2
    assert again["few_shot"]["per_draw"][1:] == returned["few_shot"]["per_draw"][1:]


def test_one_draw_records_the_draw_and_writes_no_summary(tmp_path, text_data, tiny_bert):
    out = tmp_path / "run"
    returned = run_in_process("text", model_name_or_path=tiny_bert, train_file=text_data["train"],
                              validation_file=text_data["val"], output_dir=out, shots=3, head="cosine", shot_draws=1)
    assert read_results(out)["few_shot"] == returned["few_shot"] == {
        "shots": 3, "draw": 0, "seed": 0, "train_samples": 6, "head": "cosine", "head_init": "random"}
    assert not (out / "few_shot_results.json").exists() and not (out / "draws").exists()


@pytest.mark.integration
def test_two_process_run_over_two_draws_with_prototypes_keeps_the_ranks_in_sync(tmp_path):
    """7 examples per class, 3 shots: 6 training examples over two ranks in batches of 2, so the last batch is padded;
    the prototypes see each example once, and every rank starts from the same head (checked after every epoch)."""
    train, val = make_image_folder(tmp_path / "train", per_class=7), make_image_folder(tmp_path / "val", seed=1)
    out = tmp_path / "run"
    proc = launch_two_processes(
        "image_cls", "--model_name_or_path", "test_vit", "--weights", "random", "--train_dir", train,
        "--validation_dir", val, "--output_dir", out, "--num_train_epochs", "2", "--strategy", "lp_ft",
        "--lp_epochs", "1", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2", "--shots", "3",
        "--shot_draws", "2", "--head_init", "prototypes", "--ddp_timeout", "120", "--save_total_limit", "0")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = read_results(out)
    assert results["world_size"] == 2 and results["train_samples"] == 6
    assert [row["train_samples"] for row in results["few_shot"]["per_draw"]] == [6, 6]
    assert proc.stdout.count("mean feature of 6 training examples") == 2


def test_the_card_reports_the_shots_and_the_interval_over_draws():
    from hftransfer.hub.card_results import few_shot_text

    single = {"shots": 8, "draw": 0, "seed": 42, "train_samples": 16, "head": "cosine", "head_init": "prototypes"}
    assert few_shot_text(single) == "8 training examples per class (draw 0, seed 42)"
    metrics = {"eval_accuracy": {"mean": 0.6071, "std": 0.07, "ci95_half_width": 0.0841}}
    line = few_shot_text({**single, "draws": 5, "metrics": metrics})
    assert line == ("8 training examples per class (draw 0, seed 42); over 5 draws: eval_accuracy 0.6071 ± 0.0841 "
                    "(mean ± 95% t-interval; this model is draw 0)")
