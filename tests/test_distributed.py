"""Two gloo processes on CPU through ``accelerate launch``: every eval sample counted exactly once,
and gradual unfreezing (the trainable set changes mid-run) keeps the ranks in sync."""
import json

import pytest
import torch
from builders import IMAGE_TINY_MODEL, image_data_args, launch_two_processes, read_results
from safetensors.torch import load_file

from hftransfer import TransferModel

pytestmark = pytest.mark.integration  # accelerate launch: two fresh interpreters


def test_two_process_run_counts_each_eval_sample_once(tmp_path, image_data):
    out = tmp_path / "run"
    # 10 eval samples, 2 processes x batch 4 = 8 per step: the last step is padded and must be de-duplicated
    proc = launch_two_processes(
           "image_cls", *IMAGE_TINY_MODEL, *image_data_args(image_data, out), "--num_train_epochs", "2",
           "--per_device_train_batch_size", "3", "--per_device_eval_batch_size", "4", "--strategy", "gradual",
           "--head_learning_rate", "0.01", "--learning_rate", "0.01", "--ddp_timeout", "120", "--save_total_limit", "0")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = read_results(out)
    assert results["world_size"] == 2, "accelerate started a single process"
    assert "feature cache: train (12, " in proc.stdout  # gradual's head-only first epoch trains on cached features
    assert results["eval_samples"] == 10
    records = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in records) == list(range(10))
    assert sum(results["eval_per_class"][c]["support"] for c in ("cats", "dogs")) == 10

    # gradual: epoch 1 trains the head only, epoch 2 also the top backbone group, on both ranks alike
    ckpts = sorted((out / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    first, second = load_file(ckpts[0] / "model.safetensors"), load_file(ckpts[1] / "model.safetensors")
    groups = TransferModel.from_pretrained(out).layer_groups()
    top, bottom = groups[-2].params, groups[0].params  # [-1] is the head
    assert [len(p["trainable_backbone_groups"]) for p in results["transfer"]["phases"]] == [0, 1]
    assert any(not torch.equal(first[k], second[k]) for k in top), "the unfrozen group never trained"
    assert all(torch.equal(first[k], second[k]) for k in bottom), "a frozen group changed"
