"""The practitioner's tools of a run (issue 21): class weights and a balanced sampler, step evaluation, --max_steps,
--warmup_steps, early stopping, timm's augmentations with mixup / cutmix, and weight EMA — alone, together, across
a SIGKILL and resume (bit-identical weights and history), and in a two-process run."""
from __future__ import annotations

import shutil

import pytest
import torch
from builders import IMAGE_TINY_MODEL, image_args, image_data_args, launch_two_processes, read_results, run_recipe
from safetensors.torch import load_file

from hftransfer.config import TrainConfig
from hftransfer.training.setup import epochs_and_steps
from hftransfer.tuning.strategies import Strategy, TransferScheduler

# the image recipe's kitchen sink: everything issue 21 adds that an image run can use at once
IMAGE_PRACTICE = ["--class_weights", "balanced", "--sampler", "balanced", "--model_ema", "--model_ema_decay", "0.9",
                  "--auto_augment", "rand-m9-mstd0.5", "--mixup", "0.8", "--cutmix", "1.0", "--reprob", "0.25",
                  "--eval_strategy", "steps", "--eval_steps", "2", "--early_stopping_patience", "2",
                  # no later evaluation counts as an improvement: the run stops at its third evaluation, step 6
                  "--early_stopping_threshold", "100", "--metric_for_best_model", "loss"]
RUN = ["--num_train_epochs", "3", "--learning_rate", "0.01", "--checkpointing_steps", "2", "--save_total_limit", "0"]


# ---------------------------------------------------------------------------------------------- unit
def scheduler(steps_per_epoch=10, epochs=3, **kw) -> TransferScheduler:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": model.parameters(), "lr": 1.0, "base_lr": 1.0}], lr=1.0)
    return TransferScheduler(opt, Strategy("full", 2), steps_per_epoch, epochs, 1.0, **kw)


def test_max_steps_ends_the_schedule_and_warmup_steps_replace_the_ratio():
    sched = scheduler(total_steps=12, warmup_steps=3, schedule="linear")
    assert [round(sched.factor(t), 4) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]  # 3 warmup steps, then the peak
    assert sched.factor(11) == pytest.approx(1 / 9)  # linear decay over the 9 steps left of 12, not of 30
    plain = scheduler(schedule="linear")  # warmup_ratio 0.1 of 30 steps
    assert plain.factor(3) == 1.0 and plain.factor(29) == pytest.approx(1 / 27)


def test_max_steps_decides_the_epochs():
    cfg = TrainConfig(model_name_or_path="x", num_train_epochs=3)
    assert epochs_and_steps(cfg, 10) == (3, 30)
    cfg.max_steps = 25
    assert epochs_and_steps(cfg, 10) == (3, 25)
    cfg.max_steps = 5
    assert epochs_and_steps(cfg, 10) == (1, 5)
    cfg.max_steps = 40  # more than --num_train_epochs: max_steps wins, as in transformers
    assert epochs_and_steps(cfg, 10) == (4, 40)


# ---------------------------------------------------------------------------------------------- runs
def final_weights(out, step: int) -> dict:
    return load_file(out / "checkpoints" / f"step_{step}" / "model.safetensors")


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.integration
def test_image_kitchen_sink_stops_early_and_resumes_bit_identical(tmp_path, image_data):
    """12 images at batch 4: 3 steps per epoch. Evaluations at steps 2, 4, 6; patience 2 stops at step 6.
    Killed after step 5 (checkpoint step_4), resumed: same weights, same EMA, same history, same stop."""
    ref = run_recipe("image_cls", *image_args(image_data, tmp_path / "ref", *RUN, *IMAGE_PRACTICE))
    assert ref.returncode == 0, ref.stderr[-3000:]
    results = read_results(tmp_path / "ref")
    assert results["stop_reason"] == "early_stopping"
    assert [h["step"] for h in results["history"]] == [2, 4, 6]
    assert all("ema_eval_accuracy" in h for h in results["history"])
    assert results["exported_weights"] in ("raw", "ema") and results["best_step"] in (2, 4, 6)
    transfer = results["transfer"]
    assert transfer["sampler"] == "balanced" and transfer["class_weights"]["mode"] == "balanced"
    assert transfer["augmentation"]["auto_augment"] == "rand-m9-mstd0.5" and transfer["augmentation"]["mixup"] == 0.8
    assert transfer["model_ema"] == {"decay": 0.9, "warmup": True}
    assert "early stopping: 2 evaluation(s) without an improvement" in ref.stdout

    out = tmp_path / "run"
    killed = run_recipe("image_cls", *image_args(image_data, out, *RUN, *IMAGE_PRACTICE),
                        env={"HFTRANSFER_TEST_KILL_AT_STEP": "5"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run_recipe("image_cls", *image_args(image_data, out, *RUN, *IMAGE_PRACTICE,
                                                  "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_4 at epoch 1, step 4" in resumed.stdout
    assert largest_difference(final_weights(out, 6), final_weights(tmp_path / "ref", 6)) == 0
    ema = lambda run: torch.load(run / "checkpoints" / "step_6" / "custom_checkpoint_2.pkl", weights_only=True)  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(ema(out).values(), ema(tmp_path / "ref").values()))
    assert read_results(out)["history"] == results["history"]
    assert read_results(out)["stop_reason"] == "early_stopping"
    assert largest_difference(load_file(out / "model.safetensors"), load_file(tmp_path / "ref" / "model.safetensors")) == 0


@pytest.mark.integration
def test_text_with_class_weights_ema_max_steps_and_early_stopping_resumes_exactly(tmp_path, text_data, tiny_bert):
    """24 sentences at batch 4: 6 steps per epoch; --max_steps 10 ends the run inside epoch 2."""
    flags = ["--model_name_or_path", tiny_bert, "--train_file", text_data["train"], "--validation_file",
             text_data["val"], "--per_device_train_batch_size", "4", "--learning_rate", "0.01",
             "--class_weights", "balanced", "--early_stopping_patience", "2", "--model_ema", "--max_steps", "10",
             "--warmup_steps", "2", "--checkpointing_steps", "4", "--save_total_limit", "0"]
    ref = run_recipe("text_cls", *flags, "--output_dir", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    results = read_results(tmp_path / "ref")
    assert [h["step"] for h in results["history"]] == [6, 10]  # epoch 1's end, then the last step
    assert results["stop_reason"] == "max_steps" and results["transfer"]["max_steps"] == 10
    assert "warmup 2 steps" in results["transfer"]["lr_scheduler"]
    killed = run_recipe("text_cls", *flags, "--output_dir", tmp_path / "run", env={"HFTRANSFER_TEST_KILL_AT_STEP": "9"})
    assert killed.returncode == -9
    resumed = run_recipe("text_cls", *flags, "--output_dir", tmp_path / "run", "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_8 at epoch 1, step 8" in resumed.stdout
    assert largest_difference(final_weights(tmp_path / "run", 10), final_weights(tmp_path / "ref", 10)) == 0
    assert read_results(tmp_path / "run")["history"] == results["history"]


@pytest.mark.integration
def test_class_weights_change_the_loss_on_imbalanced_images(tmp_path, image_data):
    """A 6:2 folder: balanced weights are 8/(2*6) and 8/(2*2), printed and recorded."""
    train = tmp_path / "train"
    shutil.copytree(image_data["train"], train)
    for extra in sorted((train / "dogs").iterdir())[2:]:
        extra.unlink()
    proc = run_recipe("image_cls", *IMAGE_TINY_MODEL, "--train_dir", train, "--validation_dir", image_data["val"],
                      "--output_dir", tmp_path / "out", "--num_train_epochs", "1", "--class_weights", "balanced")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "class weights (balanced): cats 0.667, dogs 2" in proc.stdout
    weights = read_results(tmp_path / "out")["transfer"]["class_weights"]["weights"]
    assert weights == pytest.approx({"cats": 8 / 12, "dogs": 2.0})


@pytest.mark.integration
def test_two_processes_stop_early_together(tmp_path, image_data):
    proc = launch_two_processes("image_cls", *IMAGE_TINY_MODEL, *image_data_args(image_data, tmp_path / "out"),
                                "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4",
                                "--ddp_timeout", "120", *RUN, *IMAGE_PRACTICE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(tmp_path / "out")
    assert results["world_size"] == 2, "accelerate started a single process"
    assert results["stop_reason"] == "early_stopping"
    assert [h["step"] for h in results["history"]] == [2, 4, 6]
