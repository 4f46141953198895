"""ONNX and int8 exports: ``hftransfer export``, ``--export_onnx``, ``hftransfer.export_onnx``, the onnxruntime backend.

Tiny random models only. Each export of a tiny model takes seconds, so the exported folders are
module-scoped and shared: a tiny image recipe run with ``--export_onnx --quantize int8`` (static int8),
and a tiny text model exported by the ``hftransfer export`` command (dynamic int8). Usage errors are
checked before anything loads, so they cost nothing.
"""
from __future__ import annotations

import io
import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from builders import (
    IMAGE_TINY,
    ROOT,
    TEXTS,
    cli_in_process,
    image_args,
    image_model,
    noise_image,
    read_results,
    recipe_in_process,
    text_model,
)

import hftransfer
from hftransfer import HFTransferError, TransferModel, cli
from hftransfer.files import EXPORT_RESULTS_NAME, ONNX_INT8_NAME, ONNX_MODEL_NAME
from hftransfer.models.inference import InferenceSettings, predict
from hftransfer.records import Int8Check, OnnxExport, RunResults

TEXT_LABELS = {0: "neg", 1: "pos"}  # the labels of the text_data fixture's files
EXTRA = "pip install 'hftransfer[onnx]'"


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def image_run(tmp_path_factory, image_data) -> tuple[Path, dict]:
    """A tiny image recipe run that exports itself (fp32 + static int8, any accuracy drop accepted), and its result."""
    out = tmp_path_factory.mktemp("onnx_image_run") / "run"
    argv = image_args(image_data, out, "--num_train_epochs", "1", "--checkpointing_steps", "no", "--export_onnx",
                      "--quantize", "int8", "--max_int8_accuracy_drop", "100")
    results = cli.run_recipe("image", ROOT / "recipes" / "configs" / "image_cls.yaml", list(map(str, argv)))
    return out, results


@pytest.fixture(scope="module")
def text_export(tmp_path_factory, tiny_bert, text_data) -> tuple[Path, str]:
    """A tiny text model (no run config) exported by ``hftransfer export --quantize int8``; the command's stdout."""
    from hftransfer.cli.export import run

    folder = text_model(tiny_bert, labels=TEXT_LABELS).save_pretrained(tmp_path_factory.mktemp("onnx_text") / "model")
    stdout = io.StringIO()
    run([str(folder), "--quantize", "int8", "--max_accuracy_drop", "100", "--train_file", str(text_data["train"]),
         "--validation_file", str(text_data["val"])], stdout=stdout)
    return folder, stdout.getvalue()


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    path.write_text("\n".join([*TEXTS, "good", "the film was very very dull and the plot was awful"]) + "\n")
    return path


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def one_error_line(proc) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------- the exports
def test_a_recipe_run_with_export_onnx_writes_checked_fp32_and_int8_graphs(image_run):
    out, returned = image_run
    assert {p.name for p in (out / "onnx").iterdir()} >= {ONNX_MODEL_NAME, ONNX_INT8_NAME, "config.json",
                                                          "preprocessing.json", EXPORT_RESULTS_NAME}
    record = RunResults.read(out).onnx
    assert record.to_dict() == {**OnnxExport.read(out / "onnx").to_dict(), "folder": "onnx"}  # relative in the run
    assert record.input_names == ["pixel_values"]
    assert record.checked_examples == 10 and record.max_abs_logit_diff <= 1e-4 == record.tolerance
    check = record.int8
    assert check.method == "static" and check.file == ONNX_INT8_NAME and check.refused is None
    assert check.eval_samples == 10 and 0 <= check.int8_accuracy <= 1 and 0 <= check.fp32_accuracy <= 1
    assert check.accuracy_drop_points == pytest.approx((check.fp32_accuracy - check.int8_accuracy) * 100, abs=0.01)
    assert check.settings["calibration_examples"] == 12  # the whole tiny training split
    assert returned["onnx"]["int8"]["int8_accuracy"] == check.int8_accuracy  # train() returns it too
    assert read_results(out)["onnx"]["int8"]["max_accuracy_drop_points"] == 100


def test_the_export_command_exports_a_text_model_with_dynamic_int8(text_export):
    folder, stdout = text_export
    record = OnnxExport.read(folder / "onnx")
    assert record.input_names[:2] == ["input_ids", "attention_mask"] and record.max_abs_logit_diff <= 1e-4
    assert record.int8.method == "dynamic" and record.int8.eval_samples == 13 and record.int8.file == ONNX_INT8_NAME
    assert "calibration_examples" not in record.int8.settings
    assert (folder / "onnx" / "tokenizer.json").is_file() or (folder / "onnx" / "vocab.txt").is_file()
    assert f"exported to {folder / 'onnx'}: config.json, export_results.json" in stdout
    assert f"exporter: {record.exporter}, opset 18" in stdout
    assert "fp32 check: onnxruntime logits within" in stdout
    assert f"int8 (dynamic): validation accuracy {record.int8.int8_accuracy:.4f} vs fp32" in stdout
    assert not (folder / "all_results.json").exists()  # not a run folder: nothing else is written


def test_graphs_take_any_batch_and_sequence_length_and_match_torch(image_run, text_export, texts_file):
    out, _ = image_run
    cases = [(TransferModel.from_pretrained(out), _val_images(out)),
             (TransferModel.from_pretrained(text_export[0]), texts_file.read_text().splitlines())]
    for model, inputs in cases:  # texts of different lengths: the sequence axis is free too
        for n in (1, 3):
            batch = inputs[:n]
            expected = predict(model, batch, device="cpu", mixed_precision="no", batch_size=n).logits
            got = predict(model, batch, backend="onnxruntime", onnx_file=model.source_dir, batch_size=n)
            assert got.device.startswith("cpu (onnxruntime, model.onnx)")
            assert (got.logits - expected).abs().max() <= 1e-4, (model.modality, n)
            int8 = predict(model, batch, backend="onnxruntime", onnx_file=model.source_dir, quantized=True)
            assert int8.logits.shape == expected.shape and "model_int8.onnx" in int8.device


def _val_images(run: Path) -> list[str]:
    from hftransfer.files import read_yaml

    return sorted(str(p) for p in Path(read_yaml(run / "config.yaml")["validation_dir"]).rglob("*.png"))


def test_an_int8_graph_that_loses_too_much_accuracy_is_deleted_and_the_refusal_recorded(text_export, text_data,
                                                                                         tmp_path):
    from hftransfer.runs.export import check_int8, run_config
    from hftransfer.training.inputs import load_data

    folder = shutil.copytree(text_export[0] / "onnx", tmp_path / "onnx")
    (folder / ONNX_INT8_NAME).unlink()
    model = TransferModel.from_pretrained(text_export[0])
    data = load_data(run_config(None, {"train_file": str(text_data["train"]),
                                       "validation_file": str(text_data["val"])}), "text")
    # a limit below zero: even an int8 graph as accurate as fp32 loses "too much"
    check = check_int8(model, folder, settings=InferenceSettings(), data=data, max_accuracy_drop=-1.0,
                       calibration_samples=8, seed=0)
    assert isinstance(check, Int8Check) and check.file is None and not (folder / ONNX_INT8_NAME).exists()
    assert check.refused.startswith(f"int8 accuracy {check.int8_accuracy:.4f} is {check.accuracy_drop_points:.2f} "
                                    f"points below fp32's {check.fp32_accuracy:.4f} on 13 validation examples")
    assert (folder / ONNX_MODEL_NAME).is_file()  # the fp32 graph stays


def test_quantizing_leaves_the_root_logger_unconfigured(text_export, tmp_path, monkeypatch):
    """onnxruntime's quantizer calls logging.info, which would give the root logger a handler that repeats every
    hftransfer message."""
    from hftransfer.models.quantize import quantize_int8

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a plain process (pytest's capture handlers set aside)
    quantize_int8(text_export[0] / "onnx" / ONNX_MODEL_NAME, tmp_path / ONNX_INT8_NAME, method="dynamic")
    assert root.handlers == [] and (tmp_path / ONNX_INT8_NAME).is_file()


def test_the_python_api_predicts_through_onnxruntime(image_run):
    out, _ = image_run
    images = _val_images(out)
    torch_labels = [p["label"] for p in hftransfer.predict(out, images)]
    assert [p["label"] for p in hftransfer.predict(out, images, backend="onnxruntime")] == torch_labels
    assert [p["label"] for p in hftransfer.predict(out, images, backend="onnxruntime",
                                                   onnx_file=out / "onnx" / ONNX_MODEL_NAME)] == torch_labels
    finished = hftransfer.FinetuneResult.load(out)
    assert [p["label"] for p in finished.predict(images, backend="onnxruntime")] == torch_labels
    assert len(hftransfer.predict(finished, images[:2], backend="onnxruntime", quantized=True)) == 2
    with pytest.raises(HFTransferError, match="onnx_file / quantized apply to backend='onnxruntime'"):
        hftransfer.predict(out, images, quantized=True)


def test_the_python_api_export_takes_the_commands_options(image_run, tmp_path, monkeypatch):
    from hftransfer.runs import export

    out, _ = image_run
    calls = []
    monkeypatch.setattr(export, "export_run", lambda model_dir, **kwargs: calls.append((model_dir, kwargs)) or "record")
    assert hftransfer.export_onnx(hftransfer.FinetuneResult.load(out), output=tmp_path / "o", quantize="int8",
                                  validation_dir=tmp_path, max_eval_samples=5) == "record"
    assert calls == [(out, {"output": str(tmp_path / "o"), "quantize": "int8", "opset": 18, "max_accuracy_drop": 1.0,
                            "calibration_samples": 128, "revision": None,
                            "data_options": {"validation_dir": str(tmp_path), "max_eval_samples": 5}})]
    with pytest.raises(HFTransferError, match="unknown option.*validation_folder"):
        hftransfer.export_onnx(out, validation_folder="x")
    with pytest.raises(HFTransferError, match="opset 9 is out of range"):
        hftransfer.export_onnx(out, opset=9)
    with pytest.raises(HFTransferError, match="quantize 'int4' is not one of none, int8"):
        hftransfer.export_onnx(out, quantize="int4")
    assert len(calls) == 1


def test_a_model_without_an_export_is_exported_to_a_temporary_folder_for_onnxruntime():
    model = image_model()
    images = [noise_image(s) for s in range(3)]
    expected = model.predict(images, device="cpu")
    got = model.predict(images, backend="onnxruntime")
    assert [p["label"] for p in got] == [p["label"] for p in expected]
    assert [p["score"] for p in got] == pytest.approx([p["score"] for p in expected], abs=1e-4)
    assert Path(model._onnx_tmp.name, ONNX_MODEL_NAME).is_file()
    with pytest.raises(HFTransferError, match="quantized=True needs an int8 export"):
        model.predict(images, backend="onnxruntime", quantized=True)


# ---------------------------------------------------------------------------------------------- hftransfer predict
def test_predict_with_onnxruntime_gives_the_torch_labels_for_images_and_texts(image_run, text_export, texts_file,
                                                                                capsys):
    out, _ = image_run
    folder = Path(_val_images(out)[0]).parents[1]
    for model, inputs in ((out, folder), (text_export[0], texts_file)):
        torch_run = cli_in_process(capsys, "predict", model, inputs, "--top_k", "1")
        onnx_run = cli_in_process(capsys, "predict", model, inputs, "--top_k", "1", "--backend", "onnxruntime")
        assert torch_run.returncode == onnx_run.returncode == 0, onnx_run.stderr
        assert [p["label"] for p in jsonl(onnx_run.stdout)] == [p["label"] for p in jsonl(torch_run.stdout)]
        assert [p["score"] for p in jsonl(onnx_run.stdout)] == pytest.approx(
            [p["score"] for p in jsonl(torch_run.stdout)], abs=1e-4)
        assert "on cpu (onnxruntime, model.onnx)" in onnx_run.stderr.strip().splitlines()[-1]
    quantized = cli_in_process(capsys, "predict", text_export[0], texts_file, "--backend", "onnxruntime", "--quantized")
    assert quantized.returncode == 0 and len(jsonl(quantized.stdout)) == 5
    record = OnnxExport.read(text_export[0] / "onnx").int8
    assert f"validation accuracy {record.int8_accuracy:.4f} vs fp32 {record.fp32_accuracy:.4f}" in quantized.stderr
    assert "(onnxruntime, model_int8.onnx)" in quantized.stderr


def test_a_hub_repo_id_downloads_its_onnx_export_for_onnxruntime(hub, text_export, texts_file, capsys):
    from hftransfer.hub.push import push_folder

    folder, _ = text_export
    push_folder(folder, "me/tiny-onnx", private=False, revision=None, create_pr=False)
    local = cli_in_process(capsys, "predict", folder, texts_file, "--backend", "onnxruntime", "--quantized")
    remote = cli_in_process(capsys, "predict", "me/tiny-onnx", texts_file, "--backend", "onnxruntime", "--quantized")
    assert remote.returncode == 0, remote.stderr
    assert jsonl(remote.stdout) == jsonl(local.stdout)
    assert "vs fp32" in remote.stderr  # the export's record came down with the model files
    texts = texts_file.read_text().splitlines()
    labels = [p["label"] for p in hftransfer.predict(folder, texts)]
    assert [p["label"] for p in hftransfer.predict("me/tiny-onnx", texts, backend="onnxruntime")] == labels
    (folder / "onnx" / ONNX_MODEL_NAME).rename(folder / "onnx" / "moved.onnx")
    try:  # a repo without the graph: one line that says what to push
        push_folder(folder, "me/no-onnx", private=False, revision=None, create_pr=False)
    finally:
        (folder / "onnx" / "moved.onnx").rename(folder / "onnx" / ONNX_MODEL_NAME)
    proc = cli_in_process(capsys, "predict", "me/no-onnx", texts_file, "--backend", "onnxruntime")
    line = proc.stderr.strip().splitlines()[-1]  # after the download's progress
    assert proc.returncode == 2 and line.startswith("error: ") and "Traceback" not in proc.stderr
    assert "the Hub repo me/no-onnx has no onnx/model.onnx: push a run folder that holds an export" in line


def test_predict_backend_options_are_checked_before_the_model_loads(image_run, texts_file, tmp_path, capsys):
    out, _ = image_run
    image = _val_images(out)[0]
    line = one_error_line(cli_in_process(capsys, "predict", out, image, "--quantized"))
    assert "--quantized applies to --backend onnxruntime" in line
    line = one_error_line(cli_in_process(capsys, "predict", out, image, "--onnx_file", out / "onnx"))
    assert "--onnx_file applies to --backend onnxruntime" in line
    bare = image_model().save_pretrained(tmp_path / "bare")
    line = one_error_line(cli_in_process(capsys, "predict", bare, image, "--backend", "onnxruntime"))
    assert f"'{bare}' has no" in line and f"export (onnx/model.onnx): run hftransfer export {bare}" in line
    line = one_error_line(cli_in_process(capsys, "predict", out, image, "--backend", "onnxruntime",
                                         "--onnx_file", tmp_path / "nope.onnx"))
    assert "does not exist" in line
    line = one_error_line(cli_in_process(capsys, "predict", out, image, "--backend", "tensorrt"))
    assert "invalid choice: 'tensorrt'" in line


# ---------------------------------------------------------------------------------------------- hftransfer export
@pytest.mark.parametrize("extra, match", [
    (["--quantize", "int4"], "argument --quantize: invalid choice: 'int4'"),
    (["--format", "tflite"], "argument --format: invalid choice: 'tflite'"),
    (["--opset", "30"], "opset 30 is out of range: use an ONNX opset from 14 to 21"),
    (["--max_accuracy_drop", "-1"], "max_accuracy_drop -1.0 is out of range"),
    (["--calibration_samples", "0"], "calibration_samples 0 is out of range"),
    (["--num_threads", "0"], "--num_threads 0 is out of range"),
    (["--quant", "int8"], "unrecognized arguments: --quant"),  # no abbreviations
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_export_usage_errors_are_one_line(extra, match, tmp_path, capsys):
    line = one_error_line(cli_in_process(capsys, "export", tmp_path, *extra))
    assert match in line, line
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_export_refuses_missing_models_and_int8_without_data_before_loading(text_export, tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    assert f"model folder '{missing}' does not exist" in one_error_line(cli_in_process(capsys, "export", missing))
    assert "has no hftransfer_config.json" in one_error_line(cli_in_process(capsys, "export", tmp_path))
    line = one_error_line(cli_in_process(capsys, "export", text_export[0], "--quantize", "int8", "--output",
                                         tmp_path / "o"))
    assert "--quantize int8 checks the int8 model's accuracy on the validation split, and no data is named" in line
    line = one_error_line(cli_in_process(capsys, "export", text_export[0], "--quantize", "int8", "--train_file",
                                         tmp_path / "gone.csv", "--output", tmp_path / "o"))
    assert f"--train_file '{tmp_path / 'gone.csv'}' does not exist" in line
    (tmp_path / "file").write_text("")
    assert "is a file" in one_error_line(cli_in_process(capsys, "export", text_export[0], "--output",
                                                        tmp_path / "file"))
    assert not (tmp_path / "o").exists()


def test_an_int8_graph_refused_for_its_accuracy_ends_the_command_with_exit_2(text_export, tmp_path, capsys,
                                                                              monkeypatch):
    from hftransfer.runs import export

    def refused_export(model_dir, *, output, **kwargs):
        (Path(output)).mkdir(parents=True)
        (Path(output) / ONNX_MODEL_NAME).write_bytes(b"\0" * 1024)
        return OnnxExport(folder=str(output), exporter="torch.onnx (dynamo)", input_names=["input_ids"],
                          checked_examples=13, max_abs_logit_diff=3e-7,
                          int8=Int8Check(eval_samples=13, fp32_accuracy=0.9, int8_accuracy=0.8,
                                         accuracy_drop_points=10.0, refused="int8 accuracy 0.8000 is 10.00 points "
                                         "below fp32's 0.9000 on 13 validation examples (limit 1)"))

    monkeypatch.setattr(export, "export_run", refused_export)
    proc = cli_in_process(capsys, "export", text_export[0], "--output", tmp_path / "o", "--quantize", "int8",
                          "--train_file", ROOT / "pyproject.toml")
    line = one_error_line(proc)
    assert "the int8 graph was not kept: int8 accuracy 0.8000 is 10.00 points below fp32's 0.9000" in line
    assert f"the fp32 graph is in {tmp_path / 'o'}" in line and "--max_accuracy_drop" in line
    assert "fp32 check: onnxruntime logits within 3.0e-07 of torch's on 13 examples" in proc.stdout
    assert ("int8 (dynamic): validation accuracy 0.8000 vs fp32 0.9000 on 13 examples (a drop of 10.00 points, "
            "limit 1): refused, deleted") in proc.stdout


# ---------------------------------------------------------------------------------------------- missing extra
def test_a_missing_onnxruntime_is_one_line_naming_the_extra(image_run, image_data, tmp_path, capsys, monkeypatch):
    out, _ = image_run
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    for argv in (["predict", out, _val_images(out)[0], "--backend", "onnxruntime"], ["export", out]):
        line = one_error_line(cli_in_process(capsys, *argv))
        assert "need onnxruntime, which is not installed" in line and EXTRA in line
    proc = recipe_in_process(capsys, "image_cls", *image_args(image_data, tmp_path / "run", "--export_onnx"))
    assert EXTRA in one_error_line(proc) and not (tmp_path / "run").exists()
    with pytest.raises(HFTransferError, match="onnxruntime, which is not installed"):
        hftransfer.export_onnx(out, output=tmp_path / "x")


# ---------------------------------------------------------------------------------------------- recipe options
@pytest.mark.parametrize("extra, match", [
    (["--quantize", "int8"], "--quantize int8 applies to the ONNX export: pass --export_onnx too"),
    (["--onnx_opset", "17"], "--onnx_opset 17 applies to the ONNX export: pass --export_onnx too"),
    (["--export_onnx", "--onnx_opset", "40"], "--onnx_opset 40 is out of range"),
    (["--export_onnx", "--max_int8_accuracy_drop", "-2"], "--max_int8_accuracy_drop -2.0 is out of range"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_export_options_are_checked_before_the_run(extra, match, image_data, tmp_path, capsys):
    proc = recipe_in_process(capsys, "image_cls", *image_args(image_data, tmp_path / "run", *extra))
    assert match in one_error_line(proc)
    assert not (tmp_path / "run").exists()


def test_recipe_help_and_hftransfer_help_list_the_export(capsys):
    for modality in ("image", "text"):
        with pytest.raises(SystemExit):
            cli.run_recipe(modality, ROOT / "recipes" / "configs" / f"{modality}_cls.yaml", ["--help"])
        text = capsys.readouterr().out
        assert "export:" in text
        for flag in ("export_onnx", "quantize", "onnx_opset", "max_int8_accuracy_drop"):
            assert f"  --{flag}" in text, flag
        assert "default: 18, the exporter's own" in " ".join(text.split())
    proc = cli_in_process(capsys, "--help")
    assert "  export " in proc.stdout
    with pytest.raises(SystemExit):
        cli.commands.main(["export", "--help"])
    assert "--quantize {none,int8}" in capsys.readouterr().out


def test_a_failed_export_after_training_is_the_runs_error_and_skips_the_push(image_run, tmp_path, monkeypatch):
    from hftransfer.config import TrainConfig
    from hftransfer.runs import train

    run = shutil.copytree(image_run[0], tmp_path / "run")
    (run / "README.md").unlink()

    def failing_export(*args, **kwargs):
        raise HFTransferError("the ONNX graph's logits differ from torch's")

    pushed = []
    monkeypatch.setattr(train, "export_run", failing_export)
    monkeypatch.setattr(train, "push_output_dir", lambda *args: pushed.append(args))
    cfg = TrainConfig(model_name_or_path="test_efficientnet", output_dir=str(run), export_onnx=True, push_to_hub=True)
    failure = train.finish_on_main(cfg, run, "me/run", False, None)
    assert str(failure) == "the run finished, but its ONNX export failed: the ONNX graph's logits differ from torch's"
    assert (run / "README.md").is_file() and pushed == []  # the card is written, nothing half-done is published


def test_tune_trials_never_export():
    from hftransfer.config import TrainConfig
    from hftransfer.runs.tune import trial_config
    from hftransfer.runs.tune_study import RUN_ONLY_KEYS

    cfg = TrainConfig(model_name_or_path=IMAGE_TINY[1], export_onnx=True, quantize="int8", onnx_opset=17)
    trial = trial_config(cfg, Path("trial"), "cache")
    assert (trial.export_onnx, trial.quantize, trial.onnx_opset) == (False, "none", None)
    assert {"export_onnx", "quantize", "onnx_opset", "max_int8_accuracy_drop"} <= set(RUN_ONLY_KEYS)


def _lora_merged(model):
    """A model whose LoRA adapters trained (randomized here), saved and reloaded as the merged model an export is."""
    from hftransfer.models.lora import add_lora, is_lora_parameter

    add_lora(model, r=4, alpha=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_lora_parameter(name):
                p.normal_(0, 0.2)
    return model


VARIANTS = {
    "timm, mlp head": lambda bert: image_model(head="mlp"),
    "timm, multi-label": lambda bert: image_model(multi_label=True),
    "timm, LoRA merged": lambda bert: _lora_merged(image_model()),
    "text, mean pooling (custom code)": lambda bert: text_model(bert, pooling="mean"),
    "text, cls pooling, mlp head": lambda bert: text_model(bert, pooling="cls", head="mlp"),
    "text, pooler (native layout)": lambda bert: text_model(bert, pooling="pooler"),
    "text, LoRA merged": lambda bert: _lora_merged(text_model(bert, pooling="mean")),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_kind_of_model_exports_to_a_graph_equal_to_torch(variant, tiny_bert, tmp_path):
    """Native timm / transformers layouts, custom-code poolings, MLP heads, multi-label and LoRA-merged models all
    export, saved and reloaded as a user has them, with onnxruntime's logits within the tolerance of torch's."""
    from hftransfer.runs.export import TOLERANCE, export_model

    VARIANTS[variant](tiny_bert).save_pretrained(tmp_path / "model")
    model = TransferModel.from_pretrained(tmp_path / "model")
    record = export_model(model, tmp_path / "onnx")
    assert record.max_abs_logit_diff <= TOLERANCE
    inputs = [noise_image(s) for s in range(3)] if model.modality == "image" else TEXTS
    torch_logits = predict(model, inputs, device="cpu").logits
    onnx_logits = predict(model, inputs, backend="onnxruntime", onnx_file=tmp_path / "onnx").logits
    assert (onnx_logits - torch_logits).abs().max() <= TOLERANCE
    labels = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert labels["id2label"] == {str(i): n for i, n in model.id2label.items()}
    assert labels["problem_type"] == ("multi_label_classification" if model.multi_label
                                      else "single_label_classification")
