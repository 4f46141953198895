"""Defaults < embedded default job < YAML --config < command-line flags."""
import pytest

from hftransfer import HFTransferError
from hftransfer.config import load_config

DEFAULT_JOB = {"model_name_or_path": "tf_efficientnet_lite0", "train_dir": "/data/train", "validation_dir": "/data/val",
               "max_train_samples": 100, "learning_rate": 1e-4, "num_train_epochs": 3, "overwrite_output_dir": True}


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text("learning_rate: 3.0e-4\nnum_train_epochs: 7\nstrategy: lp_ft\nhead_hidden_sizes: [64, 32]\n")
    cfg = load_config(["--config", str(tmp_path / "c.yaml"), "--num_train_epochs", "2", "--train_norm"], DEFAULT_JOB,
                      validate=False)
    assert cfg.learning_rate == 3e-4
    assert cfg.num_train_epochs == 2
    assert cfg.strategy == "lp_ft"
    assert cfg.head_hidden_sizes == [64, 32]
    assert cfg.train_norm is True
    assert cfg.model_name_or_path == "tf_efficientnet_lite0"  # untouched defaults survive
    assert cfg.train_dir == "/data/train"


def test_own_data_drops_every_data_setting_of_the_default_job():
    cfg = load_config(["--train_dir", "mine"], DEFAULT_JOB, validate=False)
    assert cfg.train_dir == "mine"
    assert cfg.validation_dir is None
    assert cfg.max_train_samples is None
    assert cfg.overwrite_output_dir is False  # never silently replace a user's earlier run
    assert cfg.learning_rate == 1e-4  # hyper-parameters still default
    quick = load_config(["--max_train_samples", "8"], DEFAULT_JOB, validate=False)  # tweaking the default job keeps its data
    assert quick.train_dir == "/data/train"
    assert quick.max_train_samples == 8


def test_yaml_data_paths_are_relative_to_the_yaml_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("train_dir: ../imgs/train\noutput_dir: out\n")
    cfg = load_config(["--config", str(tmp_path / "sub" / "c.yaml")], validate=False)
    assert cfg.train_dir == str((tmp_path / "imgs" / "train").resolve())
    assert cfg.output_dir == "out"


def test_bool_and_list_flags():
    cfg = load_config(["--train_norm", "false", "--label_names", "neg", "pos", "--crop_scale", "0.5", "1"], validate=False)
    assert cfg.train_norm is False
    assert cfg.label_names == ["neg", "pos"]
    assert cfg.crop_scale == [0.5, 1.0]


@pytest.mark.parametrize("yaml_text,match", [
    ("learning_rat: 1\n", "unknown option.*learning_rat"),
    ("num_train_epochs: many\n", "num_train_epochs.*not a valid int"),
    ("- a\n- b\n", "must hold a mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_yaml_is_a_one_line_error(tmp_path, yaml_text, match):
    (tmp_path / "c.yaml").write_text(yaml_text)
    with pytest.raises(HFTransferError, match=match):
        load_config(["--config", str(tmp_path / "c.yaml")])


def test_missing_config_file():
    with pytest.raises(HFTransferError, match="config file 'nope.yaml' not found"):
        load_config(["--config", "nope.yaml"])


def test_a_default_job_section_applies_only_to_the_default_job():
    recipe = {**DEFAULT_JOB, "num_train_epochs": 14,
              "default_job": {"train_dir": "/data/train", "num_train_epochs": 11, "learning_rate": 3e-5}}
    job = load_config([], recipe, validate=False)
    assert (job.num_train_epochs, job.learning_rate, job.train_dir) == (11, 3e-5, "/data/train")
    tweaked = load_config(["--num_train_epochs", "2"], recipe, validate=False)  # flags still win over the job
    assert (tweaked.num_train_epochs, tweaked.learning_rate) == (2, 3e-5)
    mine = load_config(["--train_dir", "mine"], recipe, validate=False)  # the user's data: the recipe's defaults
    assert (mine.num_train_epochs, mine.learning_rate, mine.train_dir) == (14, 1e-4, "mine")
