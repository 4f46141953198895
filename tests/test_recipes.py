"""Both recipes end to end in fresh interpreters: outputs, resume, and one-line errors."""

import json
import os

import pytest
import torch
from builders import (
    IMAGE_TINY,
    LOAD_WITHOUT_HFTRANSFER,
    ROOT,
    image_args,
    logits_of,
    read_results,
    recipe_in_process,
    run_python,
    run_recipe,
    save_tiny_timm_weights,
)
from PIL import Image
from safetensors.torch import load_file

from hftransfer import TransferModel
from hftransfer.data.preprocessing import image_transforms

pytestmark = pytest.mark.integration  # every test runs a recipe in a fresh interpreter


def test_image_recipe_end_to_end(tmp_path, image_data):
    out = tmp_path / "run"
    proc = run_recipe("image_cls", *image_args(image_data, out, "--num_train_epochs", "2", "--strategy", "partial"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(out)
    assert results["eval_samples"] == 10
    assert 0 <= results["eval_accuracy"] <= 1
    assert "eval_f1" in results
    assert results["epochs"] == 2
    assert len(results["history"]) == 2
    assert results["transfer"]["phases"][0]["frozen_backbone_groups"]  # partial: the bottom stays frozen
    assert (out / "config.yaml").is_file()
    assert (out / "hftransfer_config.json").is_file()
    model = TransferModel.from_pretrained(out)
    assert model.id2label == {0: "cats", 1: "dogs"}
    assert "eval_accuracy" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_text_recipe_end_to_end(tmp_path, text_data, tiny_bert):
    out = tmp_path / "run"
    proc = run_recipe("text_cls", "--model_name_or_path", tiny_bert, "--train_file", text_data["train"],
                      "--validation_file", text_data["val"], "--output_dir", out, "--num_train_epochs", "2",
                      "--per_device_train_batch_size", "4", "--strategy", "gradual", "--learning_rate", "1e-3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(out)
    assert results["eval_samples"] == 13
    phases = results["transfer"]["phases"]
    assert [len(p["trainable_backbone_groups"]) for p in phases] == [0, 1]  # gradual: one more group in epoch 2
    model = TransferModel.from_pretrained(out)
    assert set(model.id2label.values()) == {"neg", "pos"}
    # the report of every run: confusion matrix, training curves, per-class table (also in the card)
    for name in ("confusion_matrix.png", "training_curves.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert [line.split(",")[0] for line in (out / "per_class_metrics.csv").read_text().splitlines()] == ["label", "neg", "pos"]
    card = (out / "README.md").read_text()
    assert "![confusion matrix" in card
    assert "### Per class" in card
    assert "Did transfer help" not in card


def test_lp_ft_hand_off_and_exact_resume(tmp_path, image_data):
    """Probe epoch leaves the backbone (weights and BN statistics) untouched; fine-tuning then moves it;
    resuming from the probe checkpoint reproduces the uninterrupted run."""
    init = save_tiny_timm_weights(tmp_path / "init.safetensors")
    common = ["--strategy", "lp_ft", "--lp_epochs", "1", "--save_total_limit", "0", "--num_train_epochs", "2",
              "--weights", tmp_path / "init.safetensors"]
    full = tmp_path / "full"
    proc = run_recipe("image_cls", *image_args(image_data, full, *common))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpts = sorted((full / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    assert len(ckpts) == 2
    after_probe, final = load_file(ckpts[0] / "model.safetensors"), load_file(ckpts[1] / "model.safetensors")
    for k, v in init.items():
        assert torch.equal(after_probe[f"backbone.model.{k}"], v), f"{k} changed during the probe phase"
    assert any(not torch.equal(final[f"backbone.model.{k}"], v) for k, v in init.items())
    assert not torch.equal(after_probe["head.fc.weight"], final["head.fc.weight"])

    resumed = tmp_path / "resumed"
    proc = run_recipe("image_cls", *image_args(image_data, resumed, *common, "--resume_from_checkpoint", ckpts[0]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    final_resumed = load_file(resumed / "checkpoints" / ckpts[1].name / "model.safetensors")
    for k, v in final.items():
        assert torch.allclose(v.float(), final_resumed[k].float(), atol=1e-6), k


def test_gradual_resume_restores_frozen_set_and_learning_rates(tmp_path, image_data):
    """Gradual unfreezing is a function of the epoch: resuming mid-run ends with the same weights."""
    common = ["--strategy", "gradual", "--num_train_epochs", "3", "--save_total_limit", "0", "--layer_decay", "0.7"]
    full = tmp_path / "full"
    assert run_recipe("image_cls", *image_args(image_data, full, *common)).returncode == 0
    ckpts = sorted((full / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    resumed = tmp_path / "resumed"
    proc = run_recipe("image_cls", *image_args(image_data, resumed, *common, "--resume_from_checkpoint", ckpts[0]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1/6 backbone groups trainable" in proc.stdout
    assert "2/6 backbone groups trainable" in proc.stdout
    a = load_file(ckpts[-1] / "model.safetensors")
    b = load_file(resumed / "checkpoints" / ckpts[-1].name / "model.safetensors")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert read_results(full)["history"][-1] == read_results(resumed)["history"][-1]


def test_l2sp_keeps_the_backbone_near_its_start(tmp_path, image_data):
    init = save_tiny_timm_weights(tmp_path / "init.safetensors")
    common = ["--strategy", "full", "--num_train_epochs", "2", "--learning_rate", "0.01",
              "--weights", tmp_path / "init.safetensors"]
    distance = {}
    for name, extra in (("plain", []), ("l2sp", ["--l2sp_alpha", "50", "--l2sp_beta", "0.01"])):
        out = tmp_path / name
        proc = run_recipe("image_cls", *image_args(image_data, out, *common, *extra))
        assert proc.returncode == 0, proc.stderr[-3000:]
        model = TransferModel.from_pretrained(out)
        state = model.backbone.model.state_dict()
        distance[name] = sum(((state[k].float() - v.float()) ** 2).sum().item() for k, v in init.items()
                             if v.is_floating_point() and "running" not in k)
    assert distance["l2sp"] < 0.5 * distance["plain"]
    assert read_results(tmp_path / "l2sp")["transfer"]["regularizer"]["alpha"] == 50
    assert "L2-SP" in (tmp_path / "l2sp" / "README.md").read_text()


@pytest.mark.parametrize("args,match", [
    (["--model_name_or_path", "resnet5O"], "unknown timm model 'resnet5O'"),
    (["--strategy", "best"], "unknown strategy 'best'"),
    (["--label_column_name", "category"], "column 'category' not found"),
])
def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, image_data, args, match, capsys):
    out = tmp_path / "run"
    proc = recipe_in_process(capsys, "image_cls", *image_args(image_data, out), *args)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert match in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (out / "all_results.json").exists()


def test_corrupt_image_in_the_data(tmp_path, image_data, capsys):
    import shutil

    shutil.copytree(image_data["train"], tmp_path / "train")
    (tmp_path / "train" / "dogs" / "x.jpg").write_text("not really a jpeg")
    proc = recipe_in_process(capsys, "image_cls", *IMAGE_TINY, "--train_dir", tmp_path / "train", "--output_dir",
                             tmp_path / "run")
    assert proc.returncode == 2
    assert "cannot read image" in proc.stderr
    assert "x.jpg" in proc.stderr
    assert not (tmp_path / "run" / "all_results.json").exists()


def test_existing_output_dir_needs_resume_or_overwrite(tmp_path, image_data, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    proc = recipe_in_process(capsys, "image_cls", *image_args(image_data, out))
    assert proc.returncode == 2
    assert "--resume_from_checkpoint latest" in proc.stderr


def test_default_image_job_runs_on_bundled_data_with_real_weights_and_its_push_loads_without_hftransfer(tmp_path, hub):
    """The embedded default (real pretrained weights, bundled photos), shortened: a linear probe on 64 images,
    pushed to the loopback Hub and loaded there by timm, TimmWrapper and pipeline with equal logits."""
    out = tmp_path / "run"
    proc = run_recipe("image_cls", "--max_train_samples", "64", "--max_eval_samples", "48", "--num_train_epochs", "2",
                      "--strategy", "linear_probe", "--per_device_train_batch_size", "16", "--output_dir", out,
                      "--push_to_hub", "--hub_model_id", "user/default-image", env=hub.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(out)
    assert results["transfer"]["base_model"] == "tf_efficientnet_lite0"
    assert results["eval_samples"] == 48
    assert results["eval_accuracy"] >= 0.8  # pretrained features separate ants from bees after a few steps

    image = sorted((ROOT / "data" / "hymenoptera_160" / "val" / "bees").iterdir())[0]
    loaded = _load_without_hftransfer(hub, tmp_path, {"image": {"repo": "user/default-image", "image": str(image)}})
    model = TransferModel.from_pretrained(out)
    pixels = image_transforms(model.backbone.data_config, False)(Image.open(image).convert("RGB"))[None]
    expected = logits_of(model, pixels)
    for loader in ("timm", "transformers"):
        assert torch.allclose(torch.tensor(loaded["image"][loader]), expected, atol=1e-4), loader
    assert loaded["image"]["timm_labels"] == ["ants", "bees"]
    assert max(loaded["image"]["pipeline"], key=lambda r: r["score"])["label"] == model.id2label[expected.argmax().item()]


def test_default_text_job_runs_on_bundled_data_with_real_weights_and_its_push_loads_without_hftransfer(tmp_path, hub):
    """Mean pooling has no transformers class: the push carries modeling_hftransfer.py, which AutoModel... and
    pipeline run with trust_remote_code=True in a process where hftransfer cannot be imported."""
    out = tmp_path / "run"
    proc = run_recipe("text_cls", "--max_train_samples", "256", "--max_eval_samples", "200", "--max_predict_samples",
                      "300", "--output_dir", out,
                      "--strategy", "linear_probe", "--head_learning_rate", "0.01", "--num_train_epochs", "2",
                      "--push_to_hub", "--hub_model_id", "user/default-text", env=hub.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(out)
    assert results["transfer"]["label_names"] == ["negative", "positive"]
    assert results["eval_accuracy"] >= 0.6
    assert results["test_samples"] == 300  # a subset of the bundled rotten_tomatoes test split, scored once
    assert results["test_accuracy"] >= 0.6

    texts = ["a gripping, beautifully acted film", "dull, lifeless and far too long"]
    loaded = _load_without_hftransfer(hub, tmp_path, {"remote_code": [{"modality": "text", "repo": "user/default-text",
                                                                       "texts": texts}]})
    row = loaded["remote_code"][0]
    model = TransferModel.from_pretrained(out)
    expected = logits_of(model, dict(model.backbone.tokenizer(texts, return_tensors="pt", padding=True)))
    assert torch.allclose(torch.tensor(row["logits"]), expected, atol=1e-5)
    assert row["labels"] == {"0": "negative", "1": "positive"}
    assert [max(r, key=lambda x: x["score"])["label"] for r in row["pipeline"]] == \
        [model.id2label[i] for i in expected.argmax(-1).tolist()]


def _load_without_hftransfer(hub, tmp_path, jobs: dict) -> dict:
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "load.py").write_text(LOAD_WITHOUT_HFTRANSFER)
    env = {**os.environ, **hub.env, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    proc = run_python(tmp_path / "load.py", tmp_path / "jobs.json", cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
