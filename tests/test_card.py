"""Model cards: valid Hub metadata (checked locally with huggingface_hub) and the transfer recipe.

Run folders are assembled the way the trainer leaves them (save_pretrained, ``describe_run``'s recipe
inside all_results.json, ``save_config``'s config.yaml) without training, to stay fast; the recipe
test in test_push.py checks the card of a real run. ``make_run_dir`` comes from builders.py.
"""
from __future__ import annotations

import pytest
from builders import TEXT_LABELS, image_model, make_run_dir, noise_image, text_model
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from hftransfer.hub.card import build_model_card, card_context, write_model_card


def test_card_records_the_transfer_recipe_with_valid_hub_metadata(tmp_path):
    model = image_model()
    out = make_run_dir(tmp_path / "run", model, "image", hub_model_id="user/tiny-img")
    path = write_model_card(out)
    assert path == out / "README.md"
    text = path.read_text()

    meta = metadata_load(path)
    assert meta["library_name"] == "timm"
    assert meta["pipeline_tag"] == "image-classification"
    assert meta["license"] == "other"
    assert "base_model" not in meta  # random init: nothing was transferred
    assert {"hftransfer", "transfer-learning", "image-classification", "timm"} <= set(meta["tags"])
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "tiny-img"
    assert {(r.metric_type, r.metric_value) for r in results} == {("accuracy", 0.7778), ("f1", 0.7)}
    assert {(r.task_type, r.dataset_type, r.dataset_name) for r in results} == {
        ("image-classification", "imagefolder", "data/train")}
    card = ModelCard.load(path)  # parses the metadata strictly, as the Hub client does
    assert card.data.library_name == "timm"
    assert card.data.eval_results[0].metric_type == "accuracy"

    body = card.text
    for needle in [
        "`lp_ft`", "linear probing", "randomly initialized",
        "| 1 | 1 | none | `model.conv_stem+bn1` ... `model.blocks.4+conv_head+bn2` (6 groups) |",  # phase 1: all frozen
        "| 2 | 2-3 | `model.conv_stem+bn1` ... `model.blocks.4+conv_head+bn2` (6 groups) | none | 100.0% | 1.00e-4 |",
        "backbone 1.00e-4 (peak), head 1.00e-3, layer-wise decay 0.8",
        "| model.conv_stem+bn1 | 3.28e-5 |", "| head | 1.00e-3 |",
        "no transfer regularizer", "weight decay 0.01", "cosine, warmup 10% of each phase",
        "BatchNorm layers of frozen groups keep their pretrained running statistics",
        "12 train / 9 eval", "`ants`, `bees`, `wasps`", "| wasps | 0.7000 | 0.7500 | 0.6000 | 3 |",
        "| 3 | 0.3333 | 0.3000 | 0.8000 | 0.7000 |", "| accuracy | 0.7778 |",
        'timm.create_model("hf-hub:user/tiny-img", pretrained=True)',
        'pipeline("image-classification", model="user/tiny-img")',
        'AutoModelForImageClassification.from_pretrained("user/tiny-img")',
        'TransferModel.from_pretrained("user/tiny-img")',
        "| `model.safetensors` | the weights (timm key names) |", "- timm ", "- transformers ", "- torch ",
    ]:
        assert needle in body, needle
    assert "Did transfer help" not in body
    assert f"{model.num_parameters():,} in total" in body
    assert str(tmp_path) not in text  # no local absolute paths in a public card
    assert "checkpoints" not in body
    assert "best_model" not in body

    assert write_model_card(out).read_text() == text  # deterministic: an unchanged run re-pushes as a no-op


def test_text_card_without_native_layout_says_so_and_names_hub_base_model_and_dataset(tmp_path, tiny_bert):
    model = text_model(tiny_bert, pooling="mean")
    out = make_run_dir(tmp_path / "run", model, "text", model_name_or_path="sentence-transformers/all-MiniLM-L6-v2",
                       weights="pretrained", pooling="mean", strategy="gradual", unfreeze_every=2, layer_decay=1.0,
                       dataset_name="rotten_tomatoes", label_smoothing=0.1)
    meta = metadata_load(write_model_card(out, repo_id="org/rt-minilm"))
    assert meta["library_name"] == "transformers"  # through the shipped custom code
    assert meta["pipeline_tag"] == "text-classification"
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["rotten_tomatoes"]
    assert model_index_to_eval_results(meta["model-index"])[1][0].dataset_type == "rotten_tomatoes"
    body = ModelCard.load(out / "README.md").text
    for needle in ["no native transformers equivalent (mean pooling has no transformers equivalent",
                   'AutoModelForSequenceClassification.from_pretrained("org/rt-minilm", trust_remote_code=True)',
                   'pipeline("text-classification", model="org/rt-minilm", trust_remote_code=True)',
                   "| `modeling_hftransfer.py` | transformers custom code",
                   "`gradual`", "every 2 epoch(s)", "label smoothing 0.1", "attention-mask-aware mean",
                   "[rotten_tomatoes](https://huggingface.co/datasets/rotten_tomatoes)", "`negative`, `positive`",
                   'TransferModel.from_pretrained("org/rt-minilm")']:
        assert needle in body, needle
    assert "Per-layer learning rates" not in body


@pytest.mark.parametrize("modality", ["image", "text"])
def test_the_cards_custom_code_snippets_run_as_written(tmp_path, tiny_bert, modality, capsys):
    """Every transformers snippet of a custom-code card, run with the repo id pointing at the local folder."""
    import re

    if modality == "image":
        model = image_model(head="mlp", head_hidden_sizes=(8,))
        out = make_run_dir(tmp_path / "run", model, "image")
    else:
        model = text_model(tiny_bert, pooling="mean", head="mlp", head_hidden_sizes=(8,))
        out = make_run_dir(tmp_path / "run", model, "text", model_name_or_path=str(tiny_bert), pooling="mean")
    body = ModelCard.load(write_model_card(out, repo_id="org/snippet")).text
    snippets = [code for code in re.findall(r"```python\n(.*?)```", body, re.S) if "trust_remote_code" in code]
    assert len(snippets) == 1
    noise_image(0).save(tmp_path / "image.jpg")
    code = snippets[0].replace("org/snippet", str(out)).replace('"image.jpg"', repr(str(tmp_path / "image.jpg")))
    exec(compile(code, "card-snippet", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] in model.id2label.values()  # the label the AutoModel snippet prints
    assert "'label':" in printed[1]  # the pipeline's output


def test_pretrained_timm_base_model_and_license_come_from_its_pretrained_cfg(tmp_path):
    out = make_run_dir(tmp_path / "run", image_model(), "image", weights="pretrained")
    data = build_model_card(out).data
    assert data.base_model == "timm/test_efficientnet.r160_in1k"
    assert data.license == "apache-2.0"
    assert card_context(out)["repo_id"] == "<your-username>/run"


def test_transfer_gain_block_renders_only_when_results_have_it(tmp_path):
    gain = {"summary": "Transfer beat training from scratch by 30 points.", "pretrained_accuracy": 0.9,
            "scratch_accuracy": 0.6, "gain": 0.3, "negative_transfer": False, "scratch_seeds": 1,
            "scratch_runs": [{"seed": 42, "accuracy": 0.6, "history": []}], "extra_note": "kept"}
    out = make_run_dir(tmp_path / "run", image_model(), "image", extra_results={"transfer_gain": gain})
    body = ModelCard.load(write_model_card(out)).text
    section = body[body.index("## Did transfer help?"):body.index("## Transfer recipe")]
    assert "Transfer beat training from scratch by 30 points." in section
    for row in ("| accuracy, pretrained init | 0.9000 |", "| accuracy, random init (mean) | 0.6000 |",
                "| transfer gain | 0.3000 |", "| negative transfer | false |", "| from-scratch seeds | 1 |",
                "| extra note | kept |"):
        assert row in section, row
    assert "scratch_runs" not in section
    assert "scratch runs" not in section  # per-run lists stay in all_results.json


def test_card_of_a_bare_saved_model_has_metadata_but_no_results(tmp_path, tiny_bert):
    model = text_model(tiny_bert, pooling="pooler")
    out = model.save_pretrained(tmp_path / "m")
    card = ModelCard.load(write_model_card(out, repo_id="user/bert-clf"))
    assert card.data.library_name == "transformers"
    assert card.data.eval_results is None
    assert "model-index" not in card.data.to_dict()
    assert "## Results" not in card.text
    assert "BertForSequenceClassification" in card.text
    assert 'pipeline("text-classification", model="user/bert-clf")' in card.text
    assert list(TEXT_LABELS.values()) == ["negative", "positive"]
    assert "`negative`, `positive`" in card.text


def test_card_needs_a_saved_model(tmp_path):
    from hftransfer import HFTransferError

    with pytest.raises(HFTransferError, match="no hftransfer_config.json"):
        write_model_card(tmp_path)


# --------------------------------------------------------------------------------------------- the practitioner's tools
def practice_run_dir(tmp_path, model=None, results_changes: dict | None = None, **cfg_kwargs):
    """A run folder whose recipe records the practitioner's settings (``cfg_kwargs``) and whose results are
    then rewritten with ``results_changes`` (history, best_step, exported_weights, stop_reason, ...)."""
    from hftransfer.records import RunResults

    out = make_run_dir(tmp_path / "run", model or image_model(), "image", hub_model_id="user/practice", **cfg_kwargs)
    results = RunResults.read(out)
    for key, value in (results_changes or {}).items():
        setattr(results, key, value)
    results.write(out)
    return out


def history(rows, ema: bool = True):
    """EpochRecords from (epoch, step, eval accuracy), with EMA scores 0.05 above the raw ones."""
    from hftransfer.records import EpochRecord

    return [EpochRecord(epoch=epoch, step=step, train_loss=1.0 / step, eval_loss=0.5, eval_accuracy=accuracy,
                        eval_f1=accuracy - 0.1, **({"ema_eval_loss": 0.4, "ema_eval_accuracy": accuracy + 0.05,
                                                    "ema_eval_f1": accuracy - 0.05} if ema else {}))
            for epoch, step, accuracy in rows]


def recipe_section(body: str) -> str:
    return body[body.index("## Transfer recipe"):body.index("## Data")]


def test_card_records_class_weights_sampler_augmentations_ema_and_early_stopping(tmp_path):
    import torch

    model = image_model()
    model.set_class_weights(torch.tensor([0.75, 1.5, 1.0]))  # what --class_weights balanced leaves on the model
    changes = {"history": history([(1, 3, 0.5), (1, 6, 0.7), (2, 9, 0.6), (2, 12, 0.65)]), "best_step": 6,
               "best_epoch": 1, "epochs": 2, "exported_weights": "ema", "stop_reason": "early_stopping",
               "test_metrics": {"test_accuracy": 0.7, "test_f1": 0.6, "test_loss": 0.5, "test_samples": 9}}
    out = practice_run_dir(tmp_path, model, changes, class_weights=["balanced"], sampler="balanced",
                           auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0, model_ema=True,
                           model_ema_decay=0.998, eval_strategy="steps", eval_steps=3, early_stopping_patience=2,
                           early_stopping_threshold=0.01, num_train_epochs=10)
    body = ModelCard.load(write_model_card(out)).text
    recipe = recipe_section(body)
    for needle in [
        "- **Class weights**: balanced (n / (classes x count), scikit-learn's rule), in the cross-entropy: "
        "`ants` 0.75, `bees` 1.5, `wasps` 1; the validation loss is weighted the same way",
        "- **Sampler**: class-balanced (training examples drawn with replacement",
        "random resized crop (scale 0.08-1) and horizontal flip; auto-augment policy `rand-m9-mstd0.5-inc1`; "
        "random erasing with probability 0.25",
        "mixup alpha 0.8 and cutmix alpha 1 on 100% of the training batches (cutmix instead of mixup with "
        "probability 0.5)",
        "- **Weight EMA**: an exponential moving average of the weights, decay 0.998 per optimizer step",
        "the better of the two is exported",
        "- **Evaluation**: on the validation split every 3 optimizer steps and at the end; early stopping after 2 "
        "evaluation(s) in a row without an improvement of accuracy by more than 0.01; the run stopped early at "
        "step 12 (epoch 2 of 10 planned)",
    ]:
        assert needle in recipe, needle
    assert "color jitter" not in recipe  # auto-augment replaces it
    results = body[body.index("## Results"):body.index("## Transfer recipe")]
    for needle in [
        "Best evaluation at step 6 (epoch 1 of 2; 4 evaluations in all), with the EMA weights (selected by accuracy",
        "Training stopped early (early stopping) at step 12 (epoch 2 of 10 planned).",
        "| exported weights | EMA weights (exponential moving average) |",
        "with the exported model (step 6, epoch 1, EMA weights) on 9 test examples",
        "| epoch | step | train loss | eval loss | eval accuracy | eval F1 | EMA eval loss | EMA eval accuracy "
        "| EMA eval F1 |  |",
        "|---|---|---|---|---|---|---|---|---|---|",
        "| 1 | 6 | 0.1667 | 0.5000 | 0.7000 | 0.6000 | 0.4000 | 0.7500 | 0.6500 | **exported** (EMA weights) |",
        "| 2 | 12 | 0.0833 | 0.5000 | 0.6500 | 0.5500 | 0.4000 | 0.7000 | 0.6000 |  |",
    ]:
        assert needle in results, needle
    assert results.count("**exported**") == 1


def test_card_of_a_max_steps_run_with_raw_weights_exported(tmp_path):
    from hftransfer.records import RunResults

    changes = {"history": history([(1, 3, 0.6), (2, 5, 0.5)]), "best_step": 3, "best_epoch": 1, "epochs": 2,
               "exported_weights": "raw", "stop_reason": "max_steps"}
    out = practice_run_dir(tmp_path, results_changes=changes, model_ema=True, mixup=0.2, num_train_epochs=2)
    results = RunResults.read(out)
    results.transfer.max_steps = 5  # describe_run records it from the run's step count
    results.write(out)
    body = ModelCard.load(write_model_card(out)).text
    recipe = recipe_section(body)
    for needle in ["at most 5 optimizer steps (`--max_steps`)",
                   "- **Evaluation**: on the validation split at each epoch end; the run ended at `--max_steps` "
                   "(5 optimizer steps), part way through epoch 2",
                   "color jitter 0.4; mixup alpha 0.2 on 100% of the training batches, soft targets"]:
        assert needle in recipe, needle
    assert "early stopping" not in recipe
    for needle in ["Best epoch 1 of 2 (selected by accuracy", "Training ended at `--max_steps` (5 optimizer steps).",
                   "| exported weights | raw weights (their EMA scored no better) |",
                   "| epoch | train loss | eval loss | eval accuracy | eval F1 | EMA eval loss |",  # no step column
                   "| 1 | 0.3333 | 0.5000 | 0.6000 | 0.5000 | 0.4000 | 0.6500 | 0.5500 | **exported** (raw weights) |"]:
        assert needle in body, needle


def test_card_of_a_run_without_the_practitioners_tools_names_none_of_them(tmp_path, tiny_bert):
    image = ModelCard.load(write_model_card(make_run_dir(tmp_path / "img", image_model(), "image"))).text
    text_out = make_run_dir(tmp_path / "txt", text_model(tiny_bert, pooling="mean"), "text",
                            model_name_or_path=str(tiny_bert), pooling="mean")
    text = ModelCard.load(write_model_card(text_out)).text
    for body in (image, text):
        for absent in ("Class weights", "Sampler", "Augmentation", "Weight EMA", "**Evaluation**", "**Stopping**",
                       "exported weights", "**exported**", "| step |", "EMA", "stopped", "--max_steps"):
            assert absent not in body, absent
        assert "| epoch | train loss | eval loss | eval accuracy | eval F1 |\n|---|---|---|---|---|\n| 1 |" in body
        assert "Best epoch 3 of 3 (selected by accuracy on the validation split), evaluated on 9 held-out examples.\n" \
            in body


@pytest.mark.parametrize("mode, multi_label, expected", [
    ("given", False, "given per label, in the cross-entropy: `negative` 2, `positive` 0.5"),
    ("balanced", True, "balanced (negatives / positives per label), as the binary cross-entropy's `pos_weight`: "
                       "`negative` 2, `positive` 0.5"),
])
def test_class_weights_line_names_the_rule_and_each_labels_weight(mode, multi_label, expected):
    from hftransfer.hub.card_recipe import class_weights_line

    record = {"mode": mode, "pos_weight": multi_label, "weights": {"negative": 2.0, "positive": 0.5}}
    assert class_weights_line(record) == expected + "; the validation loss is weighted the same way"
    many = class_weights_line({"mode": "balanced", "pos_weight": False,
                               "weights": {f"c{i}": 1.0 for i in range(30)}})
    assert "`c19` 1 ... (30 labels, all in `all_results.json`)" in many and "`c20`" not in many


def test_a_run_stopped_by_its_caller_says_so_without_an_evaluation_schedule(tmp_path):
    changes = {"history": history([(1, 3, 0.6)], ema=False), "best_step": 3, "best_epoch": 1, "epochs": 1,
               "stop_reason": "stopped_by_caller"}
    body = ModelCard.load(write_model_card(practice_run_dir(tmp_path, results_changes=changes))).text
    assert "- **Stopping**: the run was stopped by its caller at step 3 (epoch 1 of 3 planned)" in body
    assert "Training was stopped by its caller at step 3 (epoch 1 of 3 planned)." in body
    assert "**Evaluation**" not in body


# --------------------------------------------------------------------------------------------- ONNX export
def onnx_run_dir(tmp_path, int8: dict | None, files=("model.onnx", "preprocessing.json", "config.json",
                                                     "export_results.json")):
    """A run folder with an ``onnx/`` export recorded in ``all_results.json`` (graphs faked: the card reads records)."""
    from hftransfer.records import Int8Check, OnnxExport

    record = OnnxExport(folder="onnx", exporter="torch.onnx (dynamo)", opset=18, input_names=["pixel_values"],
                        checked_examples=64, max_abs_logit_diff=3.1e-6, tolerance=1e-4,
                        int8=Int8Check(**int8) if int8 is not None else None)
    out = make_run_dir(tmp_path / "run", image_model(), "image", hub_model_id="user/onnx-img",
                       extra_results={"onnx": record.to_dict()})
    (out / "onnx").mkdir()
    for name in files:
        (out / "onnx" / name).write_bytes(b"{}")
    return out


def deployment_section(body: str) -> str:
    return body[body.index("## Inference and deployment"):body.index("## Files")]


STATIC_INT8 = dict(method="static", settings={"method": "static", "calibration_examples": 128}, eval_samples=153,
                   fp32_accuracy=0.9216, int8_accuracy=0.915, accuracy_drop_points=0.66, max_accuracy_drop_points=1.0,
                   agreement=0.987, file="model_int8.onnx")


def test_card_describes_the_onnx_export_its_checks_and_the_int8_graph(tmp_path):
    out = onnx_run_dir(tmp_path, STATIC_INT8, files=("model.onnx", "model_int8.onnx", "preprocessing.json",
                                                      "config.json", "export_results.json"))
    body = ModelCard.load(write_model_card(out)).text
    section = deployment_section(body)
    assert body.index("## How to use") < body.index("## Inference and deployment") < body.index("## Files")
    for needle in [
        "`pixel_values` (uint8 RGB pixels, NCHW", "return `logits`",
        "| `onnx/model.onnx` | float32 graph, exported with torch.onnx (dynamo), opset 18 |",
        "| `onnx/model_int8.onnx` | int8 graph: static quantization (int8 weights per channel, activation ranges "
        "calibrated on 128 training examples, QDQ) |",
        "- **float32 check**: onnxruntime's logits are within 3.1e-06 of torch's (largest absolute difference on 64 "
        "examples; an export above 1e-04 is refused)",
        "- **int8**: static quantization, validation accuracy 0.9150 against 0.9216 for the float32 graph on the "
        "same 153 examples (-0.66 points, limit 1 point); same label as float32 on 98.7% of them",
        "hf download user/onnx-img --local-dir onnx-img",
        "hftransfer predict onnx-img image.jpg --backend onnxruntime  # --quantized: the int8 graph",
        'hftransfer\'s README, section "Inference and deployment"',
    ]:
        assert needle in section, needle
    assert "refused" not in section.replace("is refused", "")
    for row in ["| `onnx/model.onnx` | ONNX graph (float32)", "| `onnx/model_int8.onnx` | ONNX graph quantized to int8",
                "| `onnx/preprocessing.json` |", "| `onnx/config.json` | the ONNX graph's labels",
                "| `onnx/export_results.json` | the ONNX export's checks"]:
        assert row in body[body.index("## Files"):], row
    assert str(tmp_path) not in body


def test_card_of_an_fp32_only_export_and_of_a_refused_int8(tmp_path):
    fp32 = deployment_section(ModelCard.load(write_model_card(onnx_run_dir(tmp_path / "a", None))).text)
    assert "| `onnx/model.onnx` |" in fp32 and "the batch size is free" in fp32
    assert "int8 graph" not in fp32 and "**int8**" not in fp32 and "--quantized" not in fp32

    refused = dict(STATIC_INT8, int8_accuracy=0.89, accuracy_drop_points=3.16, file=None,
                   refused="int8 accuracy 0.8900 is 3.16 points below fp32's 0.9216 on 153 validation examples "
                           "(limit 1)")
    body = ModelCard.load(write_model_card(onnx_run_dir(tmp_path / "b", refused))).text
    section = deployment_section(body)
    assert "- **int8**: refused, not published: static quantization (int8 weights per channel, activation ranges " \
           "calibrated on 128 training examples, QDQ) lost 3.16 points of validation accuracy (0.8900 against 0.9216 " \
           "for the float32 graph on the same 153 examples; limit 1 point). Use the float32 graph." in section
    assert "model_int8.onnx" not in body and "--quantized" not in section


def test_card_has_no_deployment_section_without_an_export_or_when_its_graph_is_gone(tmp_path):
    plain = ModelCard.load(write_model_card(make_run_dir(tmp_path / "plain", image_model(), "image"))).text
    assert "Inference and deployment" not in plain and "onnx/" not in plain
    out = onnx_run_dir(tmp_path / "gone", STATIC_INT8)  # model_int8.onnx recorded as kept, but not in the folder
    section = deployment_section(ModelCard.load(write_model_card(out)).text)
    assert "| `onnx/model.onnx` |" in section and "int8 graph" not in section and "**int8**" not in section
    (out / "onnx" / "model.onnx").unlink()  # a record whose graph would not be pushed
    assert "Inference and deployment" not in ModelCard.load(write_model_card(out)).text


def test_card_of_a_text_export_outside_a_run_reads_onnx_export_results(tmp_path, tiny_bert):
    from hftransfer.records import Int8Check, OnnxExport

    out = text_model(tiny_bert, pooling="pooler").save_pretrained(tmp_path / "m")
    check = Int8Check(method="dynamic", eval_samples=40, fp32_accuracy=0.8, int8_accuracy=0.8,
                      accuracy_drop_points=0.0, agreement=1.0, file="model_int8.onnx")
    record = OnnxExport(folder=str(tmp_path / "m" / "onnx"),  # absolute, as export_model writes it there
                        exporter="torch.onnx (dynamo)", input_names=["input_ids", "attention_mask", "token_type_ids"],
                        checked_examples=3, max_abs_logit_diff=2e-6, int8=check)
    (out / "onnx").mkdir()
    for name in ("model.onnx", "model_int8.onnx"):
        (out / "onnx" / name).write_bytes(b"\0")
    record.write(out / "onnx")
    section = deployment_section(ModelCard.load(write_model_card(out, repo_id="user/bert-onnx")).text)
    for needle in ["the tokenizer's `input_ids`, `attention_mask`, `token_type_ids` (int64)",
                   "batch size and sequence length are free",
                   "| int8 graph: dynamic quantization (int8 weights per channel, activations quantized per batch "
                   "at run time) |",
                   "- **int8**: dynamic quantization, validation accuracy 0.8000 against 0.8000 for the float32 graph "
                   "on the same 40 examples (-0.00 points",
                   "hftransfer predict bert-onnx texts.txt --backend onnxruntime"]:
        assert needle in section, needle
    assert str(tmp_path) not in section
