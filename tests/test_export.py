"""save_pretrained / from_pretrained round trips, and the native timm / transformers layouts.

Every model hftransfer trains (any head, pooling) must reload strictly with equal logits; models
with a native equivalent must also load in plain timm, transformers (TimmWrapper /
AutoModelForSequenceClassification) and ``pipeline`` with the same logits and label names. All
models are tiny and randomly initialised; nothing is downloaded. The model builders come from
builders.py; ``tiny_bert`` comes from conftest.py.
"""
from __future__ import annotations

import json

import pytest
import torch
from builders import (
    LABELS,
    TEXT_LABELS,
    TEXTS,
    ScaledHead,
    image_inputs,
    image_model,
    logits_of,
    make_encoder_folder,
    noise_image,
    text_inputs,
    text_model,
)

from hftransfer import HFTransferError, TransferModel


# ---------------------------------------------------------------------------------------------- timm
@pytest.mark.parametrize("arch, classifier", [("test_efficientnet", "classifier"), ("test_vit", "head")])
def test_timm_linear_head_saves_timm_layout_that_timm_transformers_and_pipeline_load(tmp_path, arch, classifier):
    import timm
    from safetensors import safe_open
    from transformers import AutoModelForImageClassification, pipeline

    model = image_model(arch)
    pixels = image_inputs(model)
    expected = logits_of(model, pixels)
    out = model.save_pretrained(tmp_path / "m")

    assert sorted(p.name for p in out.iterdir()) == ["config.json", "hftransfer_config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == arch
    assert config["num_classes"] == 3
    assert config["label_names"] == list(LABELS.values())
    assert config["num_features"] == model.backbone.feature_dim
    assert "pretrained_cfg" in config
    assert "num_classes" not in config.get("model_args", {})  # TimmWrapper passes num_classes itself
    record = json.loads((out / "hftransfer_config.json").read_text())
    assert record["weights_format"] == "timm"
    assert record["native"]["library"] == "timm"
    with safe_open(str(out / "model.safetensors"), "pt") as f:  # one copy, timm's own key names
        keys = set(f.keys())
    assert f"{classifier}.weight" in keys
    assert not any(k.startswith(("backbone.", "head.fc")) for k in keys)

    reloaded = TransferModel.from_pretrained(out)
    assert torch.equal(logits_of(reloaded, pixels), expected)
    assert reloaded.id2label == LABELS
    assert reloaded.config()["head"] == model.config()["head"]

    native = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.allclose(native(pixels), expected, atol=1e-5)
    assert native.pretrained_cfg["label_names"] == list(LABELS.values())

    wrapper = AutoModelForImageClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        assert torch.allclose(wrapper(pixel_values=pixels).logits, expected, atol=1e-5)
    assert wrapper.config.id2label == LABELS

    classifier_pipe = pipeline("image-classification", model=str(out))
    scores = {r["label"]: r["score"] for r in classifier_pipe(noise_image(0), top_k=None)}
    probs = expected[0].softmax(-1)
    assert set(scores) == set(LABELS.values())
    for i, label in LABELS.items():
        assert scores[label] == pytest.approx(probs[i].item(), abs=1e-4)


def test_timm_config_with_num_classes_in_model_args_breaks_timm_wrapper(tmp_path):
    """The known pitfall the exporter avoids: timm's own save_for_hf records model_args.num_classes."""
    from transformers import AutoModelForImageClassification

    out = image_model().save_pretrained(tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    config.setdefault("model_args", {})["num_classes"] = 3
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(TypeError, match="multiple values for keyword argument 'num_classes'"):
        AutoModelForImageClassification.from_pretrained(str(out))


def test_multi_label_image_export_makes_pipeline_use_sigmoid(tmp_path):
    from transformers import pipeline

    model = image_model()
    model.multi_label = True
    out = model.save_pretrained(tmp_path / "m")
    assert json.loads((out / "config.json").read_text())["problem_type"] == "multi_label_classification"
    expected = logits_of(model, image_inputs(model, seeds=(0,)))[0].sigmoid()
    scores = {r["label"]: r["score"] for r in pipeline("image-classification", model=str(out))(noise_image(0), top_k=None)}
    for i, label in LABELS.items():
        assert scores[label] == pytest.approx(expected[i].item(), abs=1e-4)
    assert TransferModel.from_pretrained(out).multi_label


# ---------------------------------------------------------------------------------------------- transformers
def test_bert_pooler_linear_saves_transformers_layout_that_auto_model_and_pipeline_load(tmp_path, tiny_bert):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model = text_model(tiny_bert, head_dropout=0.1)
    inputs = text_inputs(model)
    expected = logits_of(model, inputs)
    out = model.save_pretrained(tmp_path / "m")

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert config["problem_type"] == "single_label_classification"
    assert config["classifier_dropout"] == 0.1
    assert json.loads((out / "hftransfer_config.json").read_text())["weights_format"] == "transformers"
    assert len(list(out.glob("*.safetensors"))) == 1
    assert (out / "tokenizer_config.json").is_file()

    reloaded = TransferModel.from_pretrained(out)
    assert torch.equal(logits_of(reloaded, inputs), expected)

    native = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    with torch.no_grad():
        assert torch.allclose(native(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits, expected, atol=1e-5)
    assert native.config.id2label == TEXT_LABELS

    results = pipeline("text-classification", model=str(out))(TEXTS, top_k=None)
    for row, probs in zip(results, expected.softmax(-1)):
        scores = {r["label"]: r["score"] for r in row}
        for i, label in TEXT_LABELS.items():
            assert scores[label] == pytest.approx(probs[i].item(), abs=1e-4)


@pytest.mark.parametrize("model_type, extra", [
    ("roberta", {}),  # classifier.dense/out_proj = the pooler's dense + tanh, then the linear head
    ("xlm-roberta", {}),
    ("camembert", {}),
    ("mpnet", {}),
    ("ernie", {}),
    ("albert", {"embedding_size": 16}),
])
def test_other_encoders_with_an_exact_sequence_classifier_export_natively(tmp_path, model_type, extra):
    from transformers import AutoModelForSequenceClassification

    folder = make_encoder_folder(tmp_path / model_type, model_type, **extra)
    model = text_model(folder)
    inputs = text_inputs(model)
    expected = logits_of(model, inputs)
    out = model.save_pretrained(tmp_path / "m")
    assert json.loads((out / "hftransfer_config.json").read_text())["weights_format"] == "transformers"
    native = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        native_logits = native(**{k: v for k, v in inputs.items() if k in model.backbone.input_names}).logits
    assert torch.allclose(native_logits, expected, atol=1e-5)
    assert torch.equal(logits_of(TransferModel.from_pretrained(out), inputs), expected)


# ---------------------------------------------------------------------------------------------- hftransfer layout
@pytest.mark.parametrize("case, reason", [
    ("image-mlp", "mlp head has no equivalent in timm"),
    ("image-custom", "custom head has no equivalent"),
    ("text-mean", "mean pooling has no transformers equivalent"),
    ("text-cls-mlp", "mlp head has no equivalent in transformers"),
    ("distilbert-cls", "cls pooling has no transformers equivalent"),
])
def test_models_without_native_equivalent_keep_hftransfer_layout_and_round_trip(tmp_path, tiny_bert, case, reason):
    model = _non_native_model(case, tmp_path, tiny_bert)
    inputs = image_inputs(model) if model.modality == "image" else text_inputs(model)
    expected = logits_of(model, inputs)
    out = model.save_pretrained(tmp_path / "m")

    record = json.loads((out / "hftransfer_config.json").read_text())
    assert record["weights_format"] == "hftransfer"
    assert reason in record["native_unavailable"]
    assert len(list(out.glob("*.safetensors"))) == 1
    reloaded = TransferModel.from_pretrained(out)
    assert torch.equal(logits_of(reloaded, inputs), expected)
    assert type(reloaded.head) is type(model.head)


def _non_native_model(case: str, tmp_path, tiny_bert) -> TransferModel:
    if case == "image-mlp":
        return image_model(head="mlp", head_hidden_sizes=(16,))
    if case == "image-mlp-multi":
        return image_model(head="mlp", head_hidden_sizes=(16,), multi_label=True)
    if case == "image-custom":
        return image_model(head=ScaledHead(256, 3))
    if case == "text-mean":
        return text_model(tiny_bert, pooling="mean")
    if case == "text-mean-multi":
        return text_model(tiny_bert, pooling="mean", multi_label=True)
    if case == "text-cls-mlp":
        return text_model(tiny_bert, pooling="cls", head="mlp", head_hidden_sizes=(8,), head_dropout=0.1)
    if case == "distilbert-cls":
        folder = make_encoder_folder(tmp_path / "db", "distilbert", dim=32, n_layers=2, n_heads=2, hidden_dim=37)
        return text_model(folder, pooling="cls")
    if case == "distilbert-mean-mlp":
        folder = make_encoder_folder(tmp_path / "db", "distilbert", dim=32, n_layers=2, n_heads=2, hidden_dim=37)
        return text_model(folder, pooling="mean", head="mlp", head_hidden_sizes=(8,))
    raise ValueError(case)


# ---------------------------------------------------------------------------------------------- custom code
@pytest.mark.parametrize("case", ["image-mlp", "image-mlp-multi", "text-mean", "text-mean-multi", "text-cls-mlp",
                                  "distilbert-cls", "distilbert-mean-mlp"])
def test_models_without_native_layout_load_in_transformers_through_the_shipped_modeling_code(tmp_path, tiny_bert, case):
    from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSequenceClassification, pipeline

    model = _non_native_model(case, tmp_path, tiny_bert)
    inputs = image_inputs(model) if model.modality == "image" else text_inputs(model)
    expected = logits_of(model, inputs)
    out = model.save_pretrained(tmp_path / case)

    files = {p.name for p in out.iterdir()}
    assert {"config.json", "modeling_hftransfer.py", "model.safetensors"} <= files
    assert ("preprocessor_config.json" in files) == (model.modality == "image")
    assert _imported_modules(out / "modeling_hftransfer.py") <= {"__future__", "collections", "inspect", "torch",
                                                                 "transformers", "timm"}
    config = json.loads((out / "config.json").read_text())
    auto_class = "AutoModelForImageClassification" if model.modality == "image" else "AutoModelForSequenceClassification"
    assert config["model_type"] == "hftransfer"
    assert set(config["auto_map"]) == {"AutoConfig", auto_class}
    assert config["id2label"] == {str(k): v for k, v in model.id2label.items()}
    assert config["label2id"] == model.label2id
    assert config["problem_type"] == ("multi_label_classification" if model.multi_label else "single_label_classification")
    record = json.loads((out / "hftransfer_config.json").read_text())
    assert record["remote_code"]["auto_class"] == auto_class

    with pytest.raises(ValueError, match="trust_remote_code"):  # custom code never runs unasked
        AutoConfig.from_pretrained(str(out), trust_remote_code=False)
    loader = AutoModelForImageClassification if model.modality == "image" else AutoModelForSequenceClassification
    plain = loader.from_pretrained(str(out), trust_remote_code=True).eval()
    with torch.no_grad():
        got = plain(pixel_values=inputs).logits if model.modality == "image" else plain(**inputs).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert plain.config.id2label == model.id2label

    task = f"{model.modality}-classification"
    classify = pipeline(task, model=str(out), trust_remote_code=True)
    rows = classify([noise_image(0), noise_image(1)] if model.modality == "image" else TEXTS, top_k=None)
    first = expected[0].sigmoid() if model.multi_label else expected[0].softmax(-1)
    if model.modality == "text":  # the pipeline tokenizes each text alone: same logits as the padded batch
        assert {r["label"]: pytest.approx(r["score"], abs=1e-4) for r in rows[0]} == \
            {label: first[i].item() for i, label in model.id2label.items()}
    assert {r["label"] for r in rows[0]} == set(model.id2label.values())


def _imported_modules(path) -> set[str]:
    """Top-level packages a file imports (relative imports show as ""): the shipped code must stand alone."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("" if node.level else node.module.split(".")[0])
    return names


def test_user_defined_heads_stay_hftransfer_only_and_say_why(tmp_path):
    out = image_model(head=ScaledHead(256, 3)).save_pretrained(tmp_path / "m")
    record = json.loads((out / "hftransfer_config.json").read_text())
    assert "is not part of the shipped modeling code" in record["remote_code_unavailable"]
    assert not (out / "config.json").exists()
    assert not (out / "modeling_hftransfer.py").exists()


def test_saving_another_layout_into_the_same_folder_removes_the_stale_loader_files(tmp_path):
    from hftransfer.files import stale_native_files

    out = image_model().save_pretrained(tmp_path / "m")
    assert json.loads((out / "config.json").read_text())["architecture"] == "test_efficientnet"
    image_model(head="mlp", head_hidden_sizes=(8,)).save_pretrained(out)  # timm layout -> custom code
    assert json.loads((out / "config.json").read_text())["model_type"] == "hftransfer"
    assert (out / "preprocessor_config.json").is_file()
    assert type(TransferModel.from_pretrained(out).head).__name__ == "MLPHead"
    image_model().save_pretrained(out)  # custom code -> timm layout
    assert not (out / "modeling_hftransfer.py").exists()
    assert not (out / "preprocessor_config.json").exists()
    image_model(head=ScaledHead(256, 3)).save_pretrained(out)  # timm layout -> hftransfer only
    assert not (out / "config.json").exists()
    (out / "config.json").write_text("{}")  # a rerun into the same output_dir may leave one behind
    assert stale_native_files(out) == ["config.json"]
    assert type(TransferModel.from_pretrained(out).head).__name__ == "ScaledHead"


def test_mismatched_weights_fail_with_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    out = image_model().save_pretrained(tmp_path / "m")
    state = load_file(out / "model.safetensors")
    state.pop("classifier.bias")
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HFTransferError, match="do not match") as err:
        TransferModel.from_pretrained(out)
    assert "\n" not in str(err.value)
    assert "head.fc.bias" in str(err.value)
    with pytest.raises(HFTransferError, match="no hftransfer_config.json"):
        TransferModel.from_pretrained(tmp_path)
