"""Sharded training through accelerate: two gloo processes on CPU hold half the training state each (FSDP2, and
DeepSpeed ZeRO-2/3 through its CPU accelerator), train ``gradual`` / ``partial`` (with L2-SP, layer decay and
clipping) and ``lora`` to what DDP trains, resume exactly after a kill, and export the same native model; what an
engine cannot train is refused in one line."""
import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from builders import ROOT, image_args, image_model, launch_two_processes, make_encoder_folder, text_model
from safetensors.torch import load_file

from hftransfer.errors import HFTransferError
from hftransfer.training.sharding import check_engine_support, engine_name, no_split_modules

FSDP_CONFIG = ["--config_file", str(ROOT / "recipes" / "accelerate_configs" / "fsdp2.yaml")]


def test_blocks_sharded_one_unit_each_come_from_the_layer_groups(tmp_path):
    bert = text_model(make_encoder_folder(tmp_path / "bert"))
    assert no_split_modules(bert) == ["BertLayer"]
    assert no_split_modules(image_model("test_vit")) == ["Block"]
    assert no_split_modules(image_model("test_resnet")) == ["BasicBlock"]


def deepspeed(stage: int):
    plugin = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": stage}})
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, state=SimpleNamespace(deepspeed_plugin=plugin))


@pytest.mark.parametrize("accelerator, asked, message", [
    (deepspeed(3), {"trainable_set_changes": True}, "DeepSpeed ZeRO-3 fixes the trainable parameters"),
    (deepspeed(2), {"trainable_set_changes": True}, "use FSDP (recipes/accelerate_configs/fsdp2.yaml)"),
    (deepspeed(3), {"l2sp": True}, "ZeRO-3 partitions away"),
    (SimpleNamespace(distributed_type=DistributedType.FSDP), {"ema": True}, "--model_ema keeps a whole copy"),
])
def test_what_an_engine_cannot_train_is_refused(accelerator, asked, message):
    flags = {"trainable_set_changes": False, "l2sp": False, "ema": False, **asked}
    with pytest.raises(HFTransferError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_engine_support(accelerator, **flags)


def test_what_an_engine_can_train_passes():
    check_engine_support(deepspeed(2), trainable_set_changes=False, l2sp=True, ema=False)
    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP)
    check_engine_support(fsdp, trainable_set_changes=True, l2sp=True, ema=False)
    assert engine_name(fsdp) == "FSDP" and engine_name(deepspeed(3)) == "DeepSpeed ZeRO-3"
    assert engine_name(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU)) is None


def text_args(bert, text_data, out, *extra) -> list:
    return ["--model_name_or_path", bert, "--weights", "random", "--train_file", text_data["train"],
            "--validation_file", text_data["val"], "--output_dir", out, "--per_device_train_batch_size", "4",
            "--learning_rate", "0.01", "--head_learning_rate", "0.01", "--save_total_limit", "0",
            "--ddp_timeout", "120", *extra]


def history(out) -> list[dict]:
    return json.loads((out / "all_results.json").read_text())["history"]


def assert_same_training(sharded, ddp, rel=1e-5):
    """Losses and exported weights of the FSDP run equal the DDP run's (up to the order of float sums)."""
    for a, b in zip(history(sharded), history(ddp), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=rel)
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=rel)
    mine, theirs = load_file(sharded / "model.safetensors"), load_file(ddp / "model.safetensors")
    assert mine.keys() == theirs.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-4, atol=1e-6)


def resume_and_compare_with_ddp(bert, text_data, sharded, ddp, recipe: list, launcher: list) -> dict:
    """Resume the killed sharded run from its latest (step-3) checkpoint, run the same recipe under DDP, and check
    that the two trained alike; the sharded run's ``all_results.json``."""
    resumed = launch_two_processes("text_cls", *text_args(bert, text_data, sharded, *recipe, "--resume_from_checkpoint",
                                                          "latest"), launcher=launcher)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step_3" in resumed.stdout
    plain = launch_two_processes("text_cls", *text_args(bert, text_data, ddp, *recipe))
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert_same_training(sharded, ddp)
    return json.loads((sharded / "all_results.json").read_text())


@pytest.mark.integration
def test_fsdp_gradual_with_l2sp_matches_ddp_and_resumes_exactly_after_a_kill(tmp_path, text_data):
    bert = make_encoder_folder(tmp_path / "bert")
    recipe = ["--strategy", "gradual", "--num_train_epochs", "3", "--l2sp_alpha", "0.5", "--l2sp_beta", "0.1",
              "--layer_decay", "0.8", "--max_grad_norm", "1.0"]
    sharded, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    killed = launch_two_processes("text_cls", *text_args(bert, text_data, sharded, *recipe), launcher=FSDP_CONFIG,
                                  env={"HFTRANSFER_TEST_KILL_AT_STEP": "5"})  # mid-epoch 2, after a group unfroze
    assert killed.returncode != 0 and "blocks sharded one unit each: BertLayer" in killed.stdout
    step_3 = sharded / "checkpoints" / "step_3"
    assert {p.name for p in (step_3 / "pytorch_model_fsdp_0").glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}
    results = resume_and_compare_with_ddp(bert, text_data, sharded, ddp, recipe, FSDP_CONFIG)
    assert results["sharding"] == "FSDP" and results["world_size"] == 2
    assert [len(p["trainable_backbone_groups"]) for p in results["transfer"]["phases"]] == [0, 1, 2]


def deepspeed_config(stage: int) -> list:
    return ["--config_file", str(ROOT / "recipes" / "accelerate_configs" / f"deepspeed_zero{stage}.yaml")]


needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="DeepSpeed is not installed (pip install -e '.[deepspeed]')")


@pytest.mark.integration
@needs_deepspeed
def test_deepspeed_zero2_with_l2sp_matches_ddp_and_resumes_exactly_after_a_kill(tmp_path, text_data):
    # on a machine without GPUs DeepSpeed runs its processes over gloo through its CPU accelerator
    bert = make_encoder_folder(tmp_path / "bert")
    recipe = ["--strategy", "partial", "--unfreeze_top_k", "1", "--num_train_epochs", "3", "--l2sp_alpha", "0.5",
              "--l2sp_beta", "0.1", "--layer_decay", "0.8", "--max_grad_norm", "1.0"]
    sharded, ddp = tmp_path / "zero2", tmp_path / "ddp"
    killed = launch_two_processes("text_cls", *text_args(bert, text_data, sharded, *recipe),
                                  launcher=deepspeed_config(2), env={"HFTRANSFER_TEST_KILL_AT_STEP": "5"})
    assert killed.returncode != 0 and "DeepSpeed ZeRO-2: training state sharded over 2 processes" in killed.stdout
    step_3 = sharded / "checkpoints" / "step_3"
    assert (step_3 / "latest").is_file() and list((step_3 / "pytorch_model").glob("*optim_states.pt"))  # ZeRO's own
    results = resume_and_compare_with_ddp(bert, text_data, sharded, ddp, recipe, deepspeed_config(2))
    assert results["sharding"] == "DeepSpeed ZeRO-2" and results["world_size"] == 2


@pytest.mark.integration
@needs_deepspeed
def test_deepspeed_zero3_trains_a_cnn_as_ddp_does(tmp_path, image_data):
    # channels_last weights go back to NCHW: DeepSpeed views each weight as one flat contiguous buffer
    recipe = ["--strategy", "partial", "--num_train_epochs", "1", "--learning_rate", "0.001"]
    sharded, ddp = tmp_path / "zero3", tmp_path / "ddp"
    run = launch_two_processes("image_cls", *image_args(image_data, sharded, *recipe), launcher=deepspeed_config(3))
    assert run.returncode == 0, run.stderr[-3000:]
    plain = launch_two_processes("image_cls", *image_args(image_data, ddp, *recipe))
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert_same_training(sharded, ddp)


@pytest.fixture(scope="module")
def lora_under_ddp(tmp_path_factory, text_data):
    """One DDP LoRA run (with a test split) that every sharded engine's LoRA run is compared with."""
    root = tmp_path_factory.mktemp("lora")
    bert = make_encoder_folder(root / "bert")
    # the test split is scored after training with the best weights scattered back into the shards
    recipe = ["--strategy", "lora", "--pooling", "pooler", "--num_train_epochs", "2", "--test_file", text_data["val"]]
    plain = launch_two_processes("text_cls", *text_args(bert, text_data, root / "ddp", *recipe))
    assert plain.returncode == 0, plain.stderr[-3000:]
    return bert, recipe, root / "ddp"


@pytest.mark.integration
@pytest.mark.parametrize("engine", ["FSDP", pytest.param("DeepSpeed ZeRO-3", marks=needs_deepspeed)])
def test_sharded_lora_matches_ddp_and_exports_what_plain_transformers_loads(tmp_path, text_data, lora_under_ddp,
                                                                           engine):
    bert, recipe, ddp = lora_under_ddp
    sharded = tmp_path / "sharded"
    run = launch_two_processes("text_cls", *text_args(bert, text_data, sharded, *recipe),
                               launcher=FSDP_CONFIG if engine == "FSDP" else deepspeed_config(3))
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((sharded / "all_results.json").read_text())["sharding"] == engine
    assert_same_training(sharded, ddp)
    assert (sharded / "adapter" / "adapter_model.safetensors").is_file()
    tested = [json.loads((out / "all_results.json").read_text())["test_loss"] for out in (sharded, ddp)]
    assert tested[0] == pytest.approx(tested[1], rel=1e-5)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hftransfer import TransferModel

    native = AutoModelForSequenceClassification.from_pretrained(sharded).eval()
    batch = AutoTokenizer.from_pretrained(sharded)(["a good movie", "the plot was bad"], return_tensors="pt",
                                                   padding=True)
    with torch.no_grad():
        ours = TransferModel.from_pretrained(sharded).eval()(**batch).logits
        torch.testing.assert_close(native(**batch).logits, ours)
