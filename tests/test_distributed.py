"""Two gloo processes on CPU through ``accelerate launch``: every eval sample counted exactly once,
gradual unfreezing (the trainable set changes mid-run) keeps the ranks in sync, and a launch that accelerate
silently turned into independent single-process runs is refused."""
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


# ---------------------------------------------------------------------------------------------- refused launches
@pytest.mark.parametrize("env, processes, distributed, message", [
    ({"WORLD_SIZE": "2"}, 1, "NO", "launched as 2 processes but accelerate set up 1 (NO): each process would train"),
    ({"WORLD_SIZE": "4"}, 2, "MULTI_CPU", "launched as 4 processes but accelerate set up 2"),
    ({"ACCELERATE_USE_FSDP": "true"}, 1, "NO", "launched with FSDP but accelerate set up NO"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "2"}, 2, "MULTI_CPU",
     "launched with DeepSpeed but accelerate set up MULTI_CPU: the CPU flag turns DeepSpeed off; drop ACCELERATE_USE_CPU"),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, 1, "NO", "launched with DeepSpeed but accelerate set up NO"),
])
def test_a_launch_that_accelerate_did_not_set_up_is_refused(monkeypatch, env, processes, distributed, message):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from hftransfer.errors import HFTransferError
    from hftransfer.training.runtime import check_launch

    for name in ("WORLD_SIZE", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    accelerator = SimpleNamespace(num_processes=processes, distributed_type=DistributedType[distributed])
    with pytest.raises(HFTransferError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_launch(accelerator)


def test_launches_accelerate_set_up_pass(monkeypatch):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from hftransfer.training.runtime import check_launch

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    check_launch(SimpleNamespace(num_processes=1, distributed_type=DistributedType.NO))
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_launch(SimpleNamespace(num_processes=2, distributed_type=DistributedType.MULTI_CPU))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    check_launch(SimpleNamespace(num_processes=2, distributed_type=DistributedType.FSDP))
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    check_launch(SimpleNamespace(num_processes=2, distributed_type=DistributedType.DEEPSPEED))


@pytest.mark.integration
def test_a_multi_gpu_launch_without_gpus_stops_before_training(tmp_path, image_data):
    """``accelerate launch --multi_gpu --num_processes 2`` without ACCELERATE_USE_CPU on a machine without GPUs
    starts two single-process runs; each now stops with one error line before touching output_dir."""
    import os

    from builders import ROOT, run_python

    if torch.cuda.is_available():
        pytest.skip("with GPUs this launch is a real 2-process run")
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    proc = run_python("-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                      "--main_process_port", "0", "--num_machines", "1", "--mixed_precision", "no",
                      "--dynamo_backend", "no", ROOT / "recipes" / "image_cls.py", *IMAGE_TINY_MODEL,
                      *image_data_args(image_data, out), env={**env, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all(line.startswith("error: launched as 2 processes but accelerate set up 1 (NO)")
                          for line in errors), proc.stderr[-2000:]
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2" in errors[0]
    assert not out.exists()
