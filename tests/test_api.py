"""The Python API: ``hftransfer.finetune`` / ``rank_backbones`` / ``predict``, exported lazily by ``hftransfer``.

Tiny random-init models on tiny generated data, trained in this process; the README's example is run
with the training itself stubbed out, so its option names, paths and inferred modality stay right.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from builders import ROOT, make_image_folder, save_tiny_timm_weights

import hftransfer
from hftransfer import FinetuneResult, HFTransferError, RunResults, TransferModel
from hftransfer.config import TrainConfig
from hftransfer.runs.api import finetune_config, infer_modality

TINY = {"weights": "random", "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, "num_train_epochs": 1}


# ---------------------------------------------------------------------------------------------- the package
def test_import_hftransfer_loads_no_torch_and_every_export_resolves():
    code = ("import sys, hftransfer; from hftransfer import HFTransferError, __version__; "
            "print(sorted(m for m in ('torch', 'transformers', 'timm', 'datasets', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    from hftransfer import cli  # a subpackage, not an export

    assert cli.main
    for name in hftransfer.__all__:
        assert getattr(hftransfer, name) is not None, name
    assert set(hftransfer.__all__) == {"HFTransferError", "__version__", *hftransfer._EXPORTS}
    assert set(hftransfer.__all__) <= set(dir(hftransfer))
    assert {"Backbone", "LayerGroup", "TextBackbone", "TimmBackbone", "create_backbone", "HFTransferError", "LinearHead",
            "MLPHead", "create_head", "TransferModel", "TransferOutput", "create_transfer_model", "finetune",
            "rank_backbones", "predict", "FinetuneResult"} <= set(hftransfer.__all__)
    assert hftransfer.__version__
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        hftransfer.nonsense  # noqa: B018


# ---------------------------------------------------------------------------------------------- finetune
def test_finetune_returns_the_results_and_a_model_that_predicts(tmp_path, image_data):
    out = tmp_path / "run"
    result = hftransfer.finetune("test_efficientnet", train_dir=image_data["train"], validation_dir=image_data["val"],
                                 output_dir=out, strategy="linear_probe", head_learning_rate=0.01, image_size=32, **TINY)
    assert isinstance(result, FinetuneResult) and result.output_dir == out
    assert isinstance(result.results, RunResults)
    assert result.results.to_dict() == json.loads((out / "all_results.json").read_text())
    assert result.results.transfer.modality == "image" and result.results.transfer.strategy == "linear_probe"
    assert set(result.metrics) >= {"eval_accuracy", "eval_f1", "eval_loss"}
    assert isinstance(result.model, TransferModel) and set(result.model.id2label.values()) == {"cats", "dogs"}
    assert "eval_accuracy" in repr(result) and "test_efficientnet" in repr(result)

    # a folder of images stands for its files; the run's settings come along with the result or the folder
    preds = result.predict(image_data["val"])
    assert len(preds) == 10 and all(p["label"] in ("cats", "dogs") for p in preds)
    by_folder = hftransfer.predict(out, [p["input"] for p in preds[:3]], top_k=1)
    assert [p["label"] for p in by_folder] == [p["label"] for p in preds[:3]]
    assert all(len(p["top_k"]) == 1 for p in by_folder)
    # the run's eval_predictions.jsonl is the validation split in the same model: same predicted labels
    evaluated = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(evaluated) == len(preds)

    again = FinetuneResult.load(out)
    assert again.metrics == result.metrics


def test_finetune_text_infers_the_modality_from_the_file(tmp_path, text_data, tiny_bert):
    result = hftransfer.finetune(tiny_bert, train_file=text_data["train"], validation_file=text_data["val"],
                                 output_dir=tmp_path / "run", max_seq_length=16, per_device_train_batch_size=8,
                                 num_train_epochs=1)
    assert result.model.modality == "text" and result.results.transfer.modality == "text"
    preds = hftransfer.predict(result, ["good great movie", "awful dull plot"])
    assert [p["input"] for p in preds] == ["good great movie", "awful dull plot"]
    assert all(p["label"] in ("neg", "pos") for p in preds)


def test_unknown_options_are_one_line_with_close_matches(tmp_path, image_data):
    with pytest.raises(HFTransferError) as e:
        hftransfer.finetune("test_efficientnet", train_dir=image_data["train"], learning_rat=0.1, num_epochs=2)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("unknown options 'learning_rat' (did you mean learning_rate, head_learning_rate")
    assert "'num_epochs' (did you mean num_train_epochs" in message
    with pytest.raises(HFTransferError, match="'train_dri' .*did you mean train_dir.*hftransfer.rank_backbones"):
        hftransfer.rank_backbones(["test_efficientnet"], train_dri=image_data["train"])
    with pytest.raises(HFTransferError, match="option 'num_train_epochs' got 'many'"):
        finetune_config("test_efficientnet", train_dir=image_data["train"], num_train_epochs="many")
    with pytest.raises(HFTransferError, match="unknown strategy 'fast'"):  # the options' own checks run first
        finetune_config("test_efficientnet", train_dir=image_data["train"], strategy="fast")
    assert not (tmp_path / "outputs").exists()


def test_options_are_converted_and_read_over_a_yaml_config(tmp_path, image_data):
    (tmp_path / "cfg").mkdir()
    config = tmp_path / "cfg" / "run.yaml"
    make_image_folder(tmp_path / "cfg" / "train", per_class=2)
    config.write_text(yaml.safe_dump({"model_name_or_path": "test_vit", "train_dir": "train", "num_train_epochs": 4,
                                      "strategy": "gradual"}))
    cfg, modality = finetune_config(config=config, num_train_epochs=2, crop_scale=(0.5, 1), validation_dir=None,
                                    output_dir=tmp_path / "out")
    assert modality == "image"
    assert cfg.model_name_or_path == "test_vit" and cfg.strategy == "gradual" and cfg.num_train_epochs == 2
    assert cfg.train_dir == str(tmp_path / "cfg" / "train")  # relative to the YAML file, as with --config
    assert cfg.crop_scale == [0.5, 1.0] and cfg.validation_dir is None and cfg.output_dir == str(tmp_path / "out")
    assert cfg.config == str(config)


# ---------------------------------------------------------------------------------------------- modality
def test_modality_explicit_then_data_then_model(tmp_path):
    texts = tmp_path / "texts.csv"
    texts.write_text("text,label\na good film,pos\n")
    manifest = tmp_path / "images.jsonl"
    manifest.write_text('\n{"image": "a.png", "label": "cat"}\n')
    reviews = tmp_path / "reviews.json"
    reviews.write_text(json.dumps([{"review": "fine", "label": "pos"}]))
    odd = (tmp_path / "odd.tsv")
    odd.write_text("id\tlabel\n1\tpos\n")

    def modality(model="", explicit=None, **data):
        return infer_modality(TrainConfig(model_name_or_path=model, **data), explicit)

    assert modality("bert-base-uncased", "image", train_file=str(texts)) == "image"  # explicit wins
    assert modality("auto", train_dir=str(tmp_path)) == "image"
    assert modality("auto", train_file=str(manifest)) == "image"
    assert modality("auto", train_file=str(tmp_path / "images.parquet")) == "image"
    assert modality("auto", train_file=str(texts)) == "text"
    assert modality("auto", train_file=str(reviews), text_column_name="review") == "text"
    assert modality("resnet18", dataset_name="beans") == "image"
    assert modality("timm/vit_tiny_patch16_224.augreg_in21k", dataset_name="beans") == "image"
    assert modality("hf-hub:user/model", dataset_name="beans") == "image"
    assert modality("bert-base-uncased", dataset_name="imdb") == "text"
    assert modality("test_efficientnet", train_file=str(odd)) == "image"  # the columns do not say: the model does
    with pytest.raises(HFTransferError, match="cannot tell whether 'auto' on imdb is an image, text or audio run: "
                                              "pass modality='image', 'text' or 'audio'"):
        modality("auto", dataset_name="imdb")
    with pytest.raises(HFTransferError, match=r"the data is text \(train_file\) but 'resnet18' is an image backbone"):
        modality("resnet18", train_file=str(texts))
    with pytest.raises(HFTransferError, match="modality 'images': use 'image', 'text', 'audio'"):
        modality("resnet18", "images")


def test_modality_of_local_model_folders(tmp_path, tiny_bert):
    timm_folder = tmp_path / "timm"
    timm_folder.mkdir()
    (timm_folder / "config.json").write_text(json.dumps({"architecture": "resnet18"}))
    assert infer_modality(TrainConfig(model_name_or_path=str(tiny_bert), dataset_name="x")) == "text"
    assert infer_modality(TrainConfig(model_name_or_path=str(timm_folder), dataset_name="x")) == "image"
    with pytest.raises(HFTransferError, match="cannot tell"):
        infer_modality(TrainConfig(model_name_or_path=str(tmp_path), dataset_name="x"))


# ---------------------------------------------------------------------------------------------- rank, predict
def test_rank_backbones_returns_the_rows_of_rank_json(tmp_path, image_data):
    weights = tmp_path / "effnet.safetensors"
    save_tiny_timm_weights(weights)
    out = tmp_path / "rank"
    rows = hftransfer.rank_backbones([f"test_efficientnet={weights}", "random:test_efficientnet"],
                                     train_dir=image_data["train"], output_dir=out, per_device_eval_batch_size=4)
    assert rows == json.loads((out / "rank.json").read_text())["ranking"]
    assert [r["rank"] for r in rows] == [1, 2]
    assert {r["candidate"] for r in rows} == {f"test_efficientnet={weights}", "random:test_efficientnet"}
    with pytest.raises(HFTransferError, match="no candidates"):
        hftransfer.rank_backbones([], train_dir=image_data["train"], output_dir=out)


def test_predict_takes_a_model_or_a_folder_and_refuses_what_is_neither(tmp_path, image_data):
    from builders import image_model

    model = image_model()
    folder = model.save_pretrained(tmp_path / "model")
    files = sorted(str(p) for p in (image_data["val"] / "cats").glob("*.png"))[:2]
    from_model = hftransfer.predict(model, files, device="cpu")
    from_folder = hftransfer.predict(folder, files[0], device="cpu")
    assert from_folder == from_model[:1]
    assert [p["input"] for p in from_model] == files
    with pytest.raises(HFTransferError, match="model folder './missing' does not exist"):
        hftransfer.predict("./missing", files)
    with pytest.raises(HFTransferError, match="model is a int: pass a TransferModel"):
        hftransfer.predict(3, files)


# ---------------------------------------------------------------------------------------------- README
def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_example_names_real_options_paths_and_modality(monkeypatch):
    import hftransfer.runs.train as train_module

    calls = []

    class Stop(Exception):
        pass

    def fake_train(cfg, modality):
        calls.append((cfg, modality))
        raise Stop

    code = readme_example()
    assert len(code.strip().splitlines()) <= 12
    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.chdir(ROOT)
    with pytest.raises(Stop):
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    cfg, modality = calls[0]
    assert modality == "image" and cfg.model_name_or_path == "tf_efficientnet_lite0"
    assert cfg.train_dir == "data/hymenoptera_160/train" and cfg.validation_dir == "data/hymenoptera_160/val"
