"""Test splits: scored once with the exported model, reported apart from the validation split that chose it."""
from __future__ import annotations

import json

import pytest
from builders import ROOT, make_text_file, read_results
from huggingface_hub import metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from hftransfer import HFTransferError, cli
from hftransfer.data import DataSource, load_raw_splits, prepare_splits


def text_run(out, tiny_bert, train, val, *extra):
    argv = ["--model_name_or_path", tiny_bert, "--train_file", train, "--validation_file", val,
            "--output_dir", out, "--num_train_epochs", "2", "--per_device_train_batch_size", "4", *extra]
    return cli.run_recipe("text", ROOT / "recipes" / "configs" / "text_cls.yaml", list(map(str, argv)))


def test_the_exported_model_is_scored_on_the_test_split(tmp_path, tiny_bert, text_data):
    out = tmp_path / "run"
    # the validation file as test file: the test predictions must be the exported epoch's eval predictions
    text_run(out, tiny_bert, text_data["train"], text_data["val"], "--test_file", text_data["val"])
    results = read_results(out)
    assert results["test_samples"] == results["eval_samples"]
    assert results["test_accuracy"] == results["eval_accuracy"]
    assert results["test_loss"] == pytest.approx(results["eval_loss"], abs=1e-6)
    assert set(results["test_per_class"]) == {"neg", "pos"}
    test_rows = (out / "test_predictions.jsonl").read_text().splitlines()
    assert test_rows == (out / "eval_predictions.jsonl").read_text().splitlines()
    card = (out / "README.md").read_text()
    assert "### Test split" in card
    assert "the test split chose nothing" in card
    _, eval_results = model_index_to_eval_results(metadata_load(out / "README.md")["model-index"])
    assert sorted({r.dataset_split for r in eval_results}) == ["test", "validation"]


def test_do_predict_false_skips_the_test_split(tmp_path, tiny_bert, text_data):
    out = tmp_path / "run"
    text_run(out, tiny_bert, text_data["train"], text_data["val"], "--test_file", text_data["val"], "--do_predict", "false")
    results = read_results(out)
    assert not any(k.startswith("test_") for k in results)
    assert not (out / "test_predictions.jsonl").exists()
    assert "### Test split" not in (out / "README.md").read_text()


def test_do_predict_without_a_test_split_is_one_line(tmp_path, tiny_bert, text_data, capsys):
    with pytest.raises(SystemExit) as exit_info:
        text_run(tmp_path / "run", tiny_bert, text_data["train"], text_data["val"], "--do_predict")
    assert exit_info.value.code == 2
    assert "--do_predict: the data has no test split" in capsys.readouterr().err


def test_a_test_label_never_seen_in_training_is_refused(tmp_path):
    train = make_text_file(tmp_path / "train.csv")
    (tmp_path / "test.csv").write_text("text,label\ngood movie,pos\nodd film,weird\n")
    raw = load_raw_splits("text", DataSource(train_file=str(train), test_file=str(tmp_path / "test.csv")))
    with pytest.raises(HFTransferError, match="test label.s. weird never occur in the training data"):
        prepare_splits(raw, "text", "label", 0.2)


def test_test_split_rows_are_encoded_like_training(tmp_path):
    train = make_text_file(tmp_path / "train.csv")
    test = make_text_file(tmp_path / "test.csv", n=6, seed=3)
    bundle = prepare_splits(load_raw_splits("text", DataSource(train_file=str(train), test_file=str(test))), "text", "label", 0.2)
    assert len(bundle.test) == 6
    assert bundle.test["labels"] == [0, 1, 0, 1, 0, 1]  # neg, pos alternate; ids as in training
    assert json.dumps(bundle.id2label) == '{"0": "neg", "1": "pos"}'
