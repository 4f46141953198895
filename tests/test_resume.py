"""No lost runs: recipe processes killed (SIGKILL) or preempted (SIGTERM) at several moments, then resumed,
end with weights bit-identical to an uninterrupted run and the same per-epoch history.

The test hooks ``HFTRANSFER_TEST_KILL_AT_STEP`` / ``HFTRANSFER_TEST_KILL_IN_SAVE`` / ``HFTRANSFER_TEST_SIGNAL_AT_STEP``
place the kill or the signal at an exact optimizer step (or inside a checkpoint write), so nothing
depends on timing. 12 training images at batch 4: 3 optimizer steps per epoch, 3 epochs.
"""
from __future__ import annotations

import pytest
from builders import (
    IMAGE_TINY_MODEL,
    image_args,
    image_data_args,
    launch_two_processes,
    make_image_folder,
    read_results,
    run_recipe,
)
from safetensors.torch import load_file

pytestmark = pytest.mark.integration  # every test runs recipes in fresh interpreters

BASE = ["--num_train_epochs", "3", "--learning_rate", "0.01", "--metric_for_best_model", "loss"]
COMMON = [*BASE, "--checkpointing_steps", "2", "--save_total_limit", "0"]
GRADUAL = [*COMMON, "--strategy", "gradual"]
LP_FT = [*COMMON, "--strategy", "lp_ft", "--lp_epochs", "1"]


def final_weights(out) -> dict:
    """The model of the last checkpoint (the end of the last epoch): the run's final weights."""
    last = max((out / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    assert last.name == "step_9"
    return load_file(last / "model.safetensors")


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def history(out) -> list:
    return read_results(out)["history"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, image_data) -> dict:
    """Uninterrupted gradual and LP-FT runs."""
    root = tmp_path_factory.mktemp("reference")
    out = {}
    for name, flags in (("gradual", GRADUAL), ("lp_ft", LP_FT)):
        proc = run_recipe("image_cls", *image_args(image_data, root / name, *flags))
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = root / name
    return out


def kill_and_resume(image_data, out, flags, env) -> tuple:
    killed = run_recipe("image_cls", *image_args(image_data, out, *flags), env=env)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL: no handler ran, nothing was flushed
    resumed = run_recipe("image_cls", *image_args(image_data, out, *flags, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return killed, resumed


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, image_data, reference):
    out = tmp_path / "run"
    _, resumed = kill_and_resume(image_data, out, GRADUAL, {"HFTRANSFER_TEST_KILL_AT_STEP": "5"})
    assert "resumed from" in resumed.stdout
    assert "step_4 at epoch 1, step 4" in resumed.stdout  # mid-epoch 2: one batch of it done
    assert largest_difference(final_weights(out), final_weights(reference["gradual"])) == 0
    assert history(out) == history(reference["gradual"])


def test_sigkill_inside_a_checkpoint_write_leaves_nothing_that_looks_complete(tmp_path, image_data, reference):
    out = tmp_path / "run"
    killed = run_recipe("image_cls", *image_args(image_data, out, *GRADUAL), env={"HFTRANSFER_TEST_KILL_IN_SAVE": "6"})
    assert killed.returncode == -9
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2", "step_3", "step_4", "step_6.tmp"]
    (out / "checkpoints" / "step_8").mkdir()  # an empty step folder, as an older version's crash left them
    resumed = run_recipe("image_cls", *image_args(image_data, out, *GRADUAL, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    warnings = [line for line in resumed.stdout.splitlines() if line.startswith("skipped incomplete checkpoint")]
    assert len(warnings) == 1
    assert "step_8 (no manifest and no model/optimizer files" in warnings[0]
    assert "step_4 at epoch 1, step 4" in resumed.stdout
    assert largest_difference(final_weights(out), final_weights(reference["gradual"])) == 0
    assert history(out) == history(reference["gradual"])
    assert not (out / "checkpoints" / "step_6.tmp").exists()  # the interrupted write is cleaned up


def test_lp_ft_resumed_inside_the_probe_phase_crosses_the_phase_change_exactly(tmp_path, image_data, reference):
    out = tmp_path / "run"
    # killed after step 3, before the end of the cached-feature epoch was saved: resumes from step_2
    _, resumed = kill_and_resume(image_data, out, LP_FT, {"HFTRANSFER_TEST_KILL_AT_STEP": "3"})
    assert "step_2 at epoch 0, step 2" in resumed.stdout
    assert "feature cache: train" in resumed.stdout  # the cached probe epoch continues on recomputed features
    assert largest_difference(final_weights(out), final_weights(reference["lp_ft"])) == 0
    assert history(out) == history(reference["lp_ft"])


def test_sigterm_saves_a_checkpoint_and_exits_143_then_continues_exactly(tmp_path, image_data, reference):
    out = tmp_path / "run"
    flags = [*BASE, "--checkpointing_steps", "no", "--strategy", "gradual"]  # no checkpoints of its own
    stopped = run_recipe("image_cls", *image_args(image_data, out, *flags),
                         env={"HFTRANSFER_TEST_SIGNAL_AT_STEP": "4:TERM"})
    assert stopped.returncode == 143
    expected = (f"interrupted by SIGTERM at epoch 2, step 4: checkpoint saved to {out / 'checkpoints' / 'step_4'}; "
                "continue with --resume_from_checkpoint latest")
    assert stopped.stderr.strip().splitlines()[-1] == expected
    assert "Traceback" not in stopped.stderr
    resumed = run_recipe("image_cls", *image_args(image_data, out, *flags, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert history(out) == history(reference["gradual"])
    exported = load_file(out / "model.safetensors")
    expected_model = load_file(reference["gradual"] / "model.safetensors")
    assert largest_difference(exported, expected_model) == 0


def launch_two(out, image_data, *extra, env=None):
    return launch_two_processes("image_cls", *IMAGE_TINY_MODEL, *image_data_args(image_data, out),
                                "--per_device_train_batch_size", "3", "--per_device_eval_batch_size", "4",
                                "--head_learning_rate", "0.01", "--ddp_timeout", "120", *extra, env=env)


def test_sigterm_in_a_two_process_run_stops_every_rank_at_the_same_step(tmp_path, image_data):
    flags = ["--num_train_epochs", "3", "--strategy", "gradual", "--learning_rate", "0.01", "--save_total_limit", "0"]
    ref = launch_two(tmp_path / "ref", image_data, *flags)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert read_results(tmp_path / "ref")["world_size"] == 2, "accelerate started a single process"
    out = tmp_path / "run"
    # the signal reaches rank 0 only; rank 1 must learn of it and stop after the same step, not hang
    stopped = launch_two(out, image_data, *flags, env={"HFTRANSFER_TEST_SIGNAL_AT_STEP": "3:TERM"})
    assert stopped.returncode != 0
    assert stopped.stderr.count("interrupted by SIGTERM at epoch 2, step 3: checkpoint saved to") == 1
    ckpt = out / "checkpoints" / "step_3"
    assert sorted(p.name for p in ckpt.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    resumed = launch_two(out, image_data, *flags, "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert history(out) == history(tmp_path / "ref")
    last = lambda run: load_file(max((run / "checkpoints").glob("step_*"),  # noqa: E731
                                     key=lambda p: int(p.name[5:])) / "model.safetensors")
    assert largest_difference(last(out), last(tmp_path / "ref")) == 0


def test_text_with_l2sp_and_length_grouped_batches_resumes_mid_epoch_exactly(tmp_path, text_data, tiny_bert):
    """24 sentences at batch 4: 6 steps per epoch; killed after step 8 of 18, resumed from step_8's own checkpoint."""
    flags = ["--model_name_or_path", tiny_bert, "--train_file", text_data["train"],
             "--validation_file", text_data["val"], "--per_device_train_batch_size", "4", "--strategy", "gradual",
             "--l2sp_alpha", "0.1", "--l2sp_beta", "0.01",
             "--group_by_length", "true", *BASE, "--checkpointing_steps", "4", "--save_total_limit", "0"]
    ref = run_recipe("text_cls", *flags, "--output_dir", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = run_recipe("text_cls", *flags, "--output_dir", tmp_path / "run",
                        env={"HFTRANSFER_TEST_KILL_AT_STEP": "10"})
    assert killed.returncode == -9
    resumed = run_recipe("text_cls", *flags, "--output_dir", tmp_path / "run", "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_8 at epoch 1, step 8" in resumed.stdout  # two batches into epoch 2
    last = lambda run: load_file(run / "checkpoints" / "step_18" / "model.safetensors")  # noqa: E731
    assert largest_difference(last(tmp_path / "run"), last(tmp_path / "ref")) == 0
    assert history(tmp_path / "run") == history(tmp_path / "ref")


def test_self_training_killed_mid_epoch_resumes_with_that_epochs_pseudo_labels(tmp_path, image_data):
    """The pseudo-labels made as epoch 2 began are in step_4's checkpoint: the resumed run trains on them (not on
    labels from the checkpoint's later weights) and refreshes again only for epoch 3."""
    target = make_image_folder(tmp_path / "target", per_class=6, size=20, seed=2)
    flags = [*GRADUAL, "--target_train_dir", target, "--domain_adaptation", "self_training",
             "--self_training_threshold", "0.5", "--compare_source_only", "false"]
    ref = run_recipe("image_cls", *image_args(image_data, tmp_path / "ref", *flags))
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "self-training, epoch 2: 12 of 12 target examples pseudo-labelled" in ref.stdout
    assert "self-training, epoch 1" not in ref.stdout
    out = tmp_path / "run"
    _, resumed = kill_and_resume(image_data, out, flags, {"HFTRANSFER_TEST_KILL_AT_STEP": "5"})
    assert "step_4 at epoch 1, step 4" in resumed.stdout  # mid-epoch 2
    assert "self-training, epoch 2" not in resumed.stdout and "self-training, epoch 3: " in resumed.stdout
    weights = final_weights(out)
    assert weights["method.pseudo_epoch"].item() == 2
    assert largest_difference(weights, final_weights(tmp_path / "ref")) == 0
    assert history(out) == history(tmp_path / "ref")
