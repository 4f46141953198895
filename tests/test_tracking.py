"""Experiment tracking (``--report_to``): real tiny runs in-process, their TensorBoard event files read back
with TensorBoard's own ``EventAccumulator`` (and W&B's offline run file, when wandb is installed).

12 training images at batch 4: 3 optimizer steps per epoch, so epoch ends are steps 3, 6, 9.
"""
from __future__ import annotations

import json
import signal
import struct

import pytest
import torch
import yaml
from builders import IMAGE_TINY_MODEL, ROOT, image_args, image_data_args, launch_two_processes, read_results

from hftransfer import HFTransferError, cli
from hftransfer.config import load_config
from hftransfer.config.options import TRACKERS, tracker_installed
from hftransfer.training.runtime import create_accelerator
from hftransfer.training.tracking import LossWindow, RunLog, flatten, learning_rates, log_with, phase_index
from hftransfer.tuning.strategies import Strategy

IMAGE_JOB = ROOT / "recipes" / "configs" / "image_cls.yaml"
TEXT_JOB = ROOT / "recipes" / "configs" / "text_cls.yaml"
LP_FT = ["--num_train_epochs", "3", "--strategy", "lp_ft", "--lp_epochs", "1", "--learning_rate", "0.001"]
GRADUAL = ["--num_train_epochs", "3", "--strategy", "gradual", "--learning_rate", "0.01", "--metric_for_best_model", "loss"]


def argv(image_data, out, *extra) -> list[str]:
    return list(map(str, image_args(image_data, out, *extra)))


def image_run(image_data, out, *extra) -> dict:
    return cli.run_recipe("image", IMAGE_JOB, argv(image_data, out, *extra))


def scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in ``logdir``'s event files as (step, value) pairs, read as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def steps(series) -> list[int]:
    return [step for step, _ in series]


def values(series) -> list[float]:
    return [value for _, value in series]


# ---- real runs, TensorBoard ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lp_ft_run(tmp_path_factory, image_data):
    """An LP-FT run logged to TensorBoard every 2 optimizer steps, with a test split."""
    pytest.importorskip("tensorboard")
    out = tmp_path_factory.mktemp("tracked") / "lp_ft"
    image_run(image_data, out, *LP_FT, "--report_to", "tensorboard", "--logging_steps", "2",
              "--test_dir", image_data["val"])
    return out, scalars(out / "runs" / "lp_ft"), read_results(out)


def test_train_loss_learning_rates_and_epoch_every_logging_steps(lp_ft_run):
    _, logged, _ = lp_ft_run
    assert steps(logged["train/loss"]) == [2, 4, 6, 8]  # 9 optimizer steps; the last window (step 9) is not due
    assert all(0 < loss < 5 for loss in values(logged["train/loss"]))
    assert values(logged["train/epoch"]) == pytest.approx([2 / 3, 4 / 3, 2, 8 / 3])
    rates = {tag.removeprefix("train/learning_rate/") for tag in logged if tag.startswith("train/learning_rate/")}
    assert "head" in rates and len(rates) == 7  # the head and test_efficientnet's 6 backbone groups, no .no_decay twins
    head = values(logged["train/learning_rate/head"])
    top = values(logged["train/learning_rate/backbone.model.blocks.4+conv_head+bn2"])
    assert head[0] > 5 * top[0]  # probing: the head at its own (higher) learning rate
    assert head[1:] == pytest.approx(top[1:])  # LP-FT's fine-tuning: the head at the backbone's learning rate


def test_the_lp_ft_phase_change_is_logged_at_its_first_step(lp_ft_run):
    _, logged, _ = lp_ft_run
    assert logged["train/phase"] == [(1, 0.0), (4, 1.0)]  # probe from step 1, fine-tune from step 4 (epoch 2)
    assert logged["train/trainable_groups"] == [(1, 0.0), (4, 6.0)]
    probe, full = values(logged["train/trainable_params"])
    assert 0 < probe < full


def test_eval_and_test_metrics_match_all_results(lp_ft_run):
    _, logged, results = lp_ft_run
    history = results["history"]
    for tag, key in (("eval/accuracy", "eval_accuracy"), ("eval/f1", "eval_f1"), ("eval/loss", "eval_loss"),
                     ("train/epoch_loss", "train_loss")):
        assert steps(logged[tag]) == [3, 6, 9], tag
        assert values(logged[tag]) == pytest.approx([h[key] for h in history], rel=1e-6), tag
    for name in ("accuracy", "f1", "loss"):
        assert logged[f"test/{name}"] == [(9, pytest.approx(results[f"test_{name}"], rel=1e-6))]


def test_the_run_config_and_transfer_recipe_are_the_hyperparameters(lp_ft_run):
    out, _, results = lp_ft_run
    (stored,) = (out / "runs" / "lp_ft").glob("*/hparams.yml")  # accelerate's copy of what add_hparams got
    hparams = yaml.safe_load(stored.read_text())
    assert hparams["strategy"] == "lp_ft" and hparams["lp_epochs"] == 1 and hparams["learning_rate"] == 0.001
    assert hparams["run_name"] == "lp_ft" and hparams["logging_dir"] == str(out / "runs" / "lp_ft")
    assert hparams["transfer/strategy_description"] == results["transfer"]["strategy_description"]
    assert hparams["transfer/phases/1/epochs"] == "[1, 2]"
    assert all(isinstance(v, (bool, int, float, str)) for v in hparams.values())  # what trackers accept


def test_a_resumed_run_continues_its_curves_at_the_right_steps(tmp_path, image_data, monkeypatch):
    pytest.importorskip("tensorboard")
    reference = tmp_path / "reference"
    image_run(image_data, reference, *GRADUAL)  # --report_to none, the default
    assert not (reference / "runs").exists()

    out, tracked = tmp_path / "run", ["--report_to", "tensorboard", "--logging_steps", "3", "--run_name", "g"]
    monkeypatch.setenv("HFTRANSFER_TEST_SIGNAL_AT_STEP", "5:TERM")  # mid-epoch 2: checkpoint at step 5, exit 143
    with pytest.raises(SystemExit) as stopped:
        image_run(image_data, out, *GRADUAL, *tracked)
    assert stopped.value.code == 128 + signal.SIGTERM
    monkeypatch.delenv("HFTRANSFER_TEST_SIGNAL_AT_STEP")
    image_run(image_data, out, *GRADUAL, *tracked, "--resume_from_checkpoint", "latest")

    logged, history = scalars(out / "runs" / "g"), read_results(reference)["history"]
    assert steps(logged["train/loss"]) == [3, 6, 9]  # one point per step, whichever process logged it
    assert values(logged["eval/loss"]) == pytest.approx([h["eval_loss"] for h in history], rel=1e-6)
    assert values(logged["train/epoch_loss"]) == pytest.approx([h["train_loss"] for h in history], rel=1e-6)
    # the window of step 9 (steps 7-9) is all epoch 3; step 6's only holds step 6 (resumed after step 5)
    assert logged["train/loss"][-1][1] == pytest.approx(history[-1]["train_loss"], rel=1e-6)
    assert logged["train/trainable_groups"] == [(1, 0.0), (4, 1.0), (7, 2.0)]  # gradual: one more group per epoch


def test_report_to_none_creates_no_tracker(tmp_path, image_data):
    cfg = load_config(argv(image_data, tmp_path / "run"))
    assert cfg.report_to == ["none"] and log_with(cfg) == []
    assert create_accelerator(cfg).log_with == []


@pytest.mark.integration  # accelerate launch: two fresh interpreters
def test_two_processes_log_once_with_the_loss_averaged_over_both(tmp_path, image_data):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    proc = launch_two_processes(
           "image_cls", *IMAGE_TINY_MODEL, *image_data_args(image_data, out), "--num_train_epochs", "2",
           "--per_device_train_batch_size", "3", "--strategy", "full", "--learning_rate", "0.01", "--ddp_timeout", "120",
           "--report_to", "tensorboard", "--logging_steps", "1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert read_results(out)["world_size"] == 2
    assert len(list((out / "runs" / "run").glob("events.out.tfevents.*"))) == 1  # the main process's writer only
    logged = scalars(out / "runs" / "run")
    # 12 images, 2 processes x batch 3: 2 optimizer steps per epoch, one batch per process in each
    assert steps(logged["train/loss"]) == [1, 2, 3, 4]
    per_step = values(logged["train/loss"])
    # each step's loss is the mean over both processes, so each epoch's steps average to the epoch loss
    assert values(logged["train/epoch_loss"]) == pytest.approx([sum(per_step[:2]) / 2, sum(per_step[2:]) / 2], rel=1e-5)


# ---- refused before anything runs ----------------------------------------------------------------------------------
def recipe_error(image_data, out, capsys, *extra) -> str:
    with pytest.raises(SystemExit) as exit_info:
        image_run(image_data, out, *extra)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert not out.exists()  # refused before the run made its folder
    return err


def test_an_unknown_tracker_is_refused_in_one_line(tmp_path, image_data, capsys):
    err = recipe_error(image_data, tmp_path / "run", capsys, "--report_to", "tensorboard", "tensorbord")
    assert "unknown report_to 'tensorbord' (--report_to): use one of none, all, " in err
    assert "tensorboard" in err.split("use one of")[1]


def test_a_tracker_whose_package_is_missing_is_refused_naming_the_package(tmp_path, image_data, capsys):
    missing = next((name for name in TRACKERS if not tracker_installed(name)), None)
    if missing is None:
        pytest.skip("every tracker accelerate supports is installed here")
    package = {"comet_ml": "comet-ml"}.get(missing, missing)
    err = recipe_error(image_data, tmp_path / "run", capsys, "--report_to", missing)
    assert f"--report_to {missing}: the {package} package is not installed" in err
    assert f"pip install {package}" in err


def test_all_with_no_tracker_installed_and_none_with_others_are_refused(tmp_path, image_data, monkeypatch):
    with pytest.raises(HFTransferError, match="'none' cannot be combined"):
        load_config(argv(image_data, tmp_path / "run", "--report_to", "none", "tensorboard"))
    monkeypatch.setattr("hftransfer.config.options.tracker_installed", lambda name: False)
    with pytest.raises(HFTransferError, match="--report_to all: no tracker package is installed: pip install tensorboard"):
        load_config(argv(image_data, tmp_path / "run", "--report_to", "all"))


def test_report_to_takes_several_names_on_the_command_line_and_in_yaml(tmp_path, image_data, monkeypatch):
    monkeypatch.setattr("hftransfer.config.options.tracker_installed", lambda name: True)
    cfg = load_config(argv(image_data, tmp_path / "run", "--report_to", "tensorboard", "mlflow"))
    assert cfg.report_to == ["tensorboard", "mlflow"]
    (tmp_path / "c.yaml").write_text("report_to: tensorboard, wandb\nlogging_steps: 5\nrun_name: mine\n")
    cfg = load_config(["--config", str(tmp_path / "c.yaml"), *argv(image_data, tmp_path / "run")])
    assert (cfg.report_to, cfg.logging_steps, cfg.run_name) == (["tensorboard", "wandb"], 5, "mine")
    with pytest.raises(HFTransferError, match="--logging_steps 0 is out of range"):
        load_config(argv(image_data, tmp_path / "run", "--logging_steps", "0"))


# ---- the pieces ----------------------------------------------------------------------------------------------------
def test_hparams_are_flattened_to_what_trackers_accept():
    flat = flatten({"lr": 0.1, "sizes": [512], "none": None, "ok": True,
                    "phases": [{"epochs": [0, 1], "name": "probe"}], "versions": {"torch": "2"}})
    assert flat == {"lr": 0.1, "sizes": "[512]", "none": "None", "ok": True, "phases/0/epochs": "[0, 1]",
                    "phases/0/name": "probe", "versions/torch": "2"}


def test_learning_rates_are_named_after_layer_groups():
    a, b, c = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))
    optimizer = torch.optim.SGD([{"params": [a], "lr": 0.1, "name": "blocks.0"},
                                 {"params": [b], "lr": 0.1, "name": "blocks.0.no_decay"},
                                 {"params": [c], "lr": 1.0, "name": "head"}], lr=0.1)
    assert learning_rates(optimizer) == {"train/learning_rate/blocks.0": 0.1, "train/learning_rate/head": 1.0}


def test_phases_change_where_the_frozen_set_or_the_schedule_changes():
    lp_ft = Strategy("lp_ft", num_groups=4, lp_epochs=2)
    assert [phase_index(lp_ft, e) for e in range(4)] == [0, 0, 1, 1]
    assert [RunLog.phase_changes(lp_ft, e) for e in range(4)] == [True, False, True, False]
    gradual = Strategy("gradual", num_groups=2, unfreeze_every=2)
    assert [phase_index(gradual, e) for e in range(7)] == [0, 0, 1, 1, 2, 2, 2]  # all groups train from epoch 4
    assert [RunLog.phase_changes(Strategy("full", 3), e) for e in range(3)] == [True, False, False]


def test_the_loss_window_starts_afresh_after_each_log():
    window = LossWindow()
    for loss in (1.0, 2.0, 3.0):
        window.add(loss)
    assert window.take() == (6.0, 3)
    assert window.take() == (0.0, 0)


# ---- W&B, offline --------------------------------------------------------------------------------------------------
def wandb_records(run_file) -> list:
    """The records of a W&B offline run file (``.wandb``): a 7-byte header, then LevelDB-log framing
    (32 KiB blocks of records with a 7-byte crc/length/type header, type 1 = whole, 2/3/4 = first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending, records = run_file.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def items(record_items) -> dict:
    """A W&B record's key/value items (keys with '/' arrive as nested keys)."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record_items}


def test_wandb_offline_gets_steps_epochs_config_and_the_run_name(tmp_path, text_data, tiny_bert, monkeypatch):
    pytest.importorskip("wandb")
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(tmp_path)), ("WANDB_SILENT", "true")):
        monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    argv = ["--model_name_or_path", tiny_bert, "--train_file", text_data["train"], "--validation_file", text_data["val"],
            "--output_dir", out, "--num_train_epochs", "2", "--per_device_train_batch_size", "4", "--strategy", "lp_ft",
            "--report_to", "wandb", "--run_name", "text-lp-ft", "--project", "tests", "--logging_steps", "4"]
    cli.run_recipe("text", TEXT_JOB, list(map(str, argv)))
    assert not (out / "runs").exists()  # W&B keeps its files under WANDB_DIR, TensorBoard was not asked for

    (run_file,) = tmp_path.glob("wandb/offline-run-*/*.wandb")
    records = wandb_records(run_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name) == ("tests", "text-lp-ft")
    config = {key: value for r in records if r.WhichOneof("record_type") == "config"
              for key, value in items(r.config.update).items()}
    assert config["strategy"] == "lp_ft" and config["logging_steps"] == 4
    assert config["transfer/strategy_description"].startswith("1 epoch(s) of linear probing")
    history = [items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    # 24 sentences at batch 4: 6 optimizer steps per epoch, 12 in all
    assert [h["_step"] for h in history if "train/loss" in h] == [4, 8, 12]
    assert [h["_step"] for h in history if "eval/accuracy" in h] == [6, 12]
    assert [h["_step"] for h in history if "train/phase" in h] == [1, 7]
    assert [h["eval/accuracy"] for h in history if "eval/accuracy" in h] == pytest.approx(
        [epoch["eval_accuracy"] for epoch in read_results(out)["history"]])
