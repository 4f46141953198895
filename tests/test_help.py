"""What the recipes' ``--help`` says is what runs, each recipe takes its own modality's options, and
transformers' names are accepted where they mean the same (refused in one line where they cannot)."""
from __future__ import annotations

import re

import pytest
from builders import ROOT

from hftransfer import HFTransferError, cli
from hftransfer.config import load_config, read_config_file

TEXT_ONLY = ("pooling", "max_seq_length", "text_column_name", "group_by_length")
IMAGE_ONLY = ("augment", "crop_scale", "color_jitter", "image_size", "decode_size", "image_column_name", "train_dir")


def recipe_yaml(modality: str):
    return ROOT / "recipes" / "configs" / f"{modality}_cls.yaml"


def recipe_help(modality: str, capsys) -> str:
    """``recipes/<modality>_cls.py --help``, through the recipe's own entry point."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run_recipe(modality, recipe_yaml(modality), ["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def entry(help_text: str, name: str) -> str | None:
    """The help entry of ``--name`` (its lines, whitespace collapsed), or None when it is not listed."""
    match = re.search(rf"^  --{name}\b.*?(?=^  \S|^\S|\Z)", help_text, re.MULTILINE | re.DOTALL)
    return " ".join(match.group(0).split()) if match else None


def parse(argv: list[str], modality: str | None = "image"):
    return load_config(argv, read_config_file(str(recipe_yaml(modality or "image"))), modality=modality,
                       validate=False)


def test_image_help_lists_no_text_option_and_shows_the_recipe_defaults(capsys):
    text = recipe_help("image", capsys)
    assert [name for name in TEXT_ONLY if entry(text, name) or f"[--{name}" in text] == []
    assert all(entry(text, name) for name in IMAGE_ONLY)
    source = "from configs/image_cls.yaml"
    assert f"default: lp_ft, {source}" in entry(text, "strategy")
    assert f"default: 14; default job: 11; both {source}" in entry(text, "num_train_epochs")
    assert f"default: 0.0001; default job: 3e-05; both {source}" in entry(text, "learning_rate")
    assert f"default: all, {source}" in entry(text, "bn_stats")
    assert f"default: 0.003, {source}" in entry(text, "head_learning_rate")  # not the built-in "10x learning_rate"
    assert "default: frozen" not in entry(text, "bn_stats")
    # the default job's data and output: the default still shown, the job's value beside it
    assert entry(text, "output_dir").endswith(f"(default: outputs/run; default job: outputs/image_cls, {source})")
    assert re.search(rf"default: None; default job: \S*hymenoptera_160/train, {source}", entry(text, "train_dir"))
    assert entry(text, "weights").endswith("(default: pretrained)")  # not in the YAML: the built-in default
    assert "session:" in text and "optimization:" in text  # the groups keep their titles


def test_text_help_shows_what_the_text_recipe_runs_and_no_image_option(capsys):
    text = recipe_help("text", capsys)
    assert [name for name in IMAGE_ONLY if entry(text, name) or f"[--{name}" in text] == []
    assert all(entry(text, name) for name in TEXT_ONLY)
    # the recipe's default for the user's data, and the bundled job's shorter budget beside it
    assert "default: 3; default job: 1; both from configs/text_cls.yaml" in entry(text, "num_train_epochs")
    assert "default: 256; default job: 64; both from configs/text_cls.yaml" in entry(text, "max_seq_length")
    assert "default: None; default job: 3000, from configs/text_cls.yaml" in entry(text, "max_train_samples")


def test_help_lists_each_alias_once_and_names_the_trainer_flags_with_no_meaning(capsys):
    text = recipe_help("image", capsys)
    aliases = text[text.index("aliases (transformers' names):"):]
    for name in ("do_train", "do_eval", "bf16", "fp16", "label_smoothing_factor"):
        assert len(re.findall(rf"^  --{name}\b", text, re.MULTILINE)) == 1, name
        assert entry(aliases, name), name
    assert "same as --mixed_precision bf16" in entry(text, "bf16")
    assert "no meaning here" in text and "--deepspeed" in text and "--optim" in text
    assert entry(text, "deepspeed") is None  # named in the epilog, never listed as an option


def test_transformers_names_set_the_same_options():
    cfg = parse(["--do_train", "--do_eval", "--bf16", "--label_smoothing_factor", "0.1", "--train_val_split", "0.2",
                 "--eval_strategy", "epoch", "--save_strategy", "no", "--load_best_model_at_end", "true",
                 "--hub_private_repo"])
    assert (cfg.mixed_precision, cfg.label_smoothing, cfg.validation_fraction) == ("bf16", 0.1, 0.2)
    assert (cfg.checkpointing_steps, cfg.hub_private) == ("no", True)
    assert parse(["--fp16"]).mixed_precision == "fp16"
    assert parse(["--fp16", "--mixed_precision", "fp16"]).mixed_precision == "fp16"  # agreeing names are fine
    assert parse(["--bf16"], modality=None).mixed_precision == "bf16"  # load_config without a recipe too


def test_transformers_names_in_a_yaml_config(tmp_path):
    (tmp_path / "c.yaml").write_text("bf16: true\nlabel_smoothing_factor: 0.2\ndo_train: true\n")
    cfg = parse(["--config", str(tmp_path / "c.yaml")])
    assert (cfg.mixed_precision, cfg.label_smoothing) == ("bf16", 0.2)
    assert parse(["--config", str(tmp_path / "c.yaml"), "--mixed_precision", "no"]).mixed_precision == "no"  # flags win
    (tmp_path / "d.yaml").write_text("deepspeed: ds.json\n")
    with pytest.raises(HFTransferError, match="--deepspeed is a transformers option with no meaning here"):
        parse(["--config", str(tmp_path / "d.yaml")])


@pytest.mark.parametrize("argv,match", [
    (["--do_eval", "false"], "--do_eval false cannot be honoured here: each epoch's validation score picks"),
    (["--do_train", "false"], "--do_train false cannot be honoured here: every run trains"),
    (["--bf16", "false"], "--bf16 false cannot be honoured here: pass --mixed_precision no"),
    (["--evaluation_strategy", "no"], "--evaluation_strategy no cannot be honoured here: the validation score picks"),
    (["--save_strategy", "steps"], "pass --checkpointing_steps N"),
    (["--bf16", "--fp16"], "--fp16 means --mixed_precision fp16, but --bf16 says bf16: pass only one of them"),
    (["--bf16", "--mixed_precision", "no"], "but --mixed_precision says no: pass only one of them"),
    (["--deepspeed", "ds.json"], "--deepspeed is a transformers option with no meaning here: set it up with"),
    (["--optim=adamw_torch"], "--optim is a transformers option with no meaning here: the optimizer is always AdamW"),
    (["--max_seq_length", "64"], "--max_seq_length is an option of the text recipe (recipes/text_cls.py): drop it"),
    (["--pooling", "cls"], "--pooling is an option of the text recipe"),
])
def test_flags_that_cannot_be_honoured_are_one_line_errors(argv, match):
    with pytest.raises(HFTransferError, match=re.escape(match)):
        parse(argv)


def test_image_options_are_refused_by_the_text_recipe_and_kept_in_yaml(tmp_path):
    with pytest.raises(HFTransferError, match=re.escape("--crop_scale is an option of the image recipe "
                                                        "(recipes/image_cls.py): drop it from this text run")):
        parse(["--crop_scale", "0.5", "1"], modality="text")
    (tmp_path / "c.yaml").write_text("crop_scale: [0.5, 1.0]\nmax_seq_length: 32\n")  # YAML keys stay accepted
    cfg = parse(["--config", str(tmp_path / "c.yaml")], modality="text")
    assert (cfg.crop_scale, cfg.max_seq_length) == ([0.5, 1.0], 32)


def test_a_recipe_prints_the_refusal_as_one_error_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run_recipe("image", recipe_yaml("image"), ["--do_train", "--max_seq_length", "64"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: --max_seq_length is an option of the text recipe (recipes/text_cls.py): drop it from this image run"]


def test_rank_help_keeps_its_own_options_and_no_aliases(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["rank", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(entry(text, name) for name in ("candidates", "output_dir", "pooling", "train_dir", "max_seq_length"))
    assert "default: outputs/rank" in entry(text, "output_dir")
    assert "aliases" not in text and entry(text, "strategy") is None


@pytest.mark.parametrize("argv,match", [
    (["--eval_strategy", "steps"], "--eval_strategy steps needs --eval_steps N"),
    (["--eval_steps", "5"], "--eval_steps 5 is read only with --eval_strategy steps"),
    (["--max_steps", "0"], "--max_steps 0 trains nothing"),
    (["--class_weights", "balanced", "2"], "pass none, balanced, or one positive number per label, not a mix"),
    (["--class_weights", "1", "-2"], "'-2' is not none, balanced or a positive number"),
    (["--auto_augment", "rand-zz9"], "--auto_augment 'rand-zz9' is not a timm policy"),
    (["--tune_trials", "3"], "--tune_trials / --tune_timeout are read only with --tune"),
])
def test_practice_options_are_checked_before_the_run(argv, match):
    with pytest.raises(HFTransferError, match=re.escape(match)):
        load_config(argv, read_config_file(str(recipe_yaml("image"))), modality="image")


def test_mixup_belongs_to_the_image_recipe():
    with pytest.raises(HFTransferError, match=re.escape("--mixup is an option of the image recipe")):
        parse(["--mixup", "0.8"], modality="text")
