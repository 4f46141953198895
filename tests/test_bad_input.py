"""The bad-input matrix: every mistake a user can make ends as exit 2 with exactly one ``error:`` line,
no traceback, and an earlier run in the same output_dir untouched (even with --overwrite_output_dir).

The recipes, ``hftransfer rank`` and ``hftransfer predict`` run in this process (``cli.run_recipe`` /
``cli.main``, what the scripts call), so the matrix stays fast; test_recipes.py checks the same path in
fresh interpreters. ``--push_to_hub`` targets that cannot work (no token, a wrong one, an unreachable
Hub) are refused before the first training step, against the loopback Hub of hub_fixtures.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import IMAGE_TINY, ROOT, image_model, make_image_folder, make_text_file, noise_image, text_model

from hftransfer import cli
from hftransfer.training.checkpoint import RunLock

EARLIER = {"all_results.json": '{"eval_accuracy": 0.99}\n', "model.safetensors": "weights of the earlier run",
           "config.yaml": "seed: 1\n"}


@pytest.fixture
def earlier_run(tmp_path) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    for name, content in EARLIER.items():
        (out / name).write_text(content)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Tiny good and bad inputs, made once."""
    root = tmp_path_factory.mktemp("inputs")
    make_image_folder(root / "img" / "train")
    make_image_folder(root / "img" / "val", per_class=3, seed=1)
    make_image_folder(root / "one_class", classes=("cats",))
    (root / "flat").mkdir()
    (root / "flat" / "x.png").write_bytes((root / "img" / "train" / "cats" / "0.png").read_bytes())
    make_image_folder(root / "corrupt", per_class=2)  # another depth than img/val: labels must still load
    (root / "corrupt" / "cats" / "x.jpg").write_bytes(b"not an image")
    make_text_file(root / "train.csv")
    make_text_file(root / "val.csv", n=8, seed=1)
    (root / "fields.csv").write_text("text,label\ngood,pos\nbad movie, really,neg\nfine,pos\n")
    (root / "broken.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"\n')
    (root / "latin.csv").write_bytes("text,label\ncaf\xe9 good,pos\nawful,neg\n".encode("latin-1"))
    (root / "one_class.csv").write_text("text,label\ngood,pos\nfine,pos\ngreat,pos\n")
    (root / "unseen_val.csv").write_text("text,label\ngood,pos\nbad,meh\n")
    (root / "train.parquetx").write_text("x")
    (root / "val.jsonl").write_text('{"text": "good", "label": "pos"}\n')
    (root / "a_file").write_text("not a folder")
    (root / "unknown_key.yaml").write_text("learning_rat: 0.1\n")
    return {k: str(v) for k, v in {
        "train": root / "img" / "train", "val": root / "img" / "val", "one_class": root / "one_class",
        "flat": root / "flat", "corrupt": root / "corrupt", "train_csv": root / "train.csv", "val_csv": root / "val.csv",
        "fields": root / "fields.csv", "broken": root / "broken.jsonl", "latin": root / "latin.csv",
        "one_class_csv": root / "one_class.csv", "unseen_val": root / "unseen_val.csv",
        "parquetx": root / "train.parquetx", "val_jsonl": root / "val.jsonl", "a_file": root / "a_file",
        "unknown_key": root / "unknown_key.yaml"}.items()}


IMAGE_CASES = [  # (extra flags, words the error line must contain); {name} = a path from ``files``
    (["--learning_rate", "-1"], "--learning_rate -1.0 is out of range"),
    (["--learning_rate", "0"], "--learning_rate 0.0 is out of range: use a number > 0"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0 is out of range"),
    (["--per_device_eval_batch_size", "-3"], "--per_device_eval_batch_size -3 is out of range"),
    (["--num_train_epochs", "0"], "--num_train_epochs 0 is out of range: use a number >= 1"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps 0 is out of range"),
    (["--warmup_ratio", "1.5"], "--warmup_ratio 1.5 is out of range"),
    (["--validation_fraction", "1"], "--validation_fraction 1.0 is out of range"),
    (["--layer_decay", "1.5"], "--layer_decay 1.5 is out of range: use a number > 0 and <= 1"),
    (["--head_dropout", "1.0"], "--head_dropout 1.0 is out of range"),
    (["--label_smoothing", "-0.1"], "--label_smoothing -0.1 is out of range"),
    (["--weight_decay", "-1"], "--weight_decay -1.0 is out of range"),
    (["--max_grad_norm", "-1"], "--max_grad_norm -1.0 is out of range"),
    (["--unfreeze_every", "0"], "--unfreeze_every 0 is out of range"),
    (["--scratch_seeds", "0"], "--scratch_seeds 0 is out of range"),
    (["--head_hidden_sizes", "64", "0", "--head", "mlp"], "--head_hidden_sizes 0 is out of range"),
    (["--metric_for_best_model", "auc"], "unknown metric_for_best_model 'auc'"),
    (["--checkpointing_steps", "epoch5"], "--checkpointing_steps 'epoch5' is not valid"),
    (["--checkpointing_steps", "0"], "--checkpointing_steps '0' is not valid"),
    (["--strategy", "best"], "unknown strategy 'best'"),
    (["--bn_stats", "sometimes"], "unknown bn_stats 'sometimes'"),
    (["--feature_cache", "maybe"], "unknown feature_cache 'maybe'"),
    (["--lr_scheduler_type", "step"], "unknown lr_scheduler_type 'step'"),
    (["--mixed_precision", "fp8"], "unknown mixed_precision 'fp8'"),
    (["--head", "conv"], "unknown head 'conv'"),
    (["--learning_rat", "0.1"], "unrecognized arguments: --learning_rat"),
    (["--num_train_epochs", "many"], "invalid int value: 'many'"),
    (["--train_norm", "perhaps"], "expected true or false"),
    (["--crop_scale", "0.9", "0.2"], "--crop_scale 0.9 0.2"),
    (["--output_dir", "{a_file}"], "is a file"),
    (["--train_dir", "/nonexistent/train"], "--train_dir '/nonexistent/train' does not exist"),
    (["--train_dir", "{a_file}"], "is a file"),
    (["--train_file", "{train_csv}"], "--train_dir and --train_file both name training data"),
    (["--weights", "/nonexistent.safetensors"], "--weights '/nonexistent.safetensors' is not pretrained, random"),
    (["--resume_from_checkpoint", "/nonexistent/step_3"], "--resume_from_checkpoint '/nonexistent/step_3' is not a folder"),
    (["--resume_from_checkpoint", "latest"], "no checkpoint to resume from"),
    (["--config", "/nonexistent.yaml"], "config file '/nonexistent.yaml' not found"),
    (["--config", "{unknown_key}"], "unknown option(s) learning_rat"),
    (["--compare_scratch"], "--compare_scratch compares pretrained weights with random init"),
    (["--model_name_or_path", "resnet5O"], "unknown timm model 'resnet5O'"),
    (["--train_dir", "{one_class}", "--validation_dir", "{one_class}"], "only one class ('cats')"),
    (["--train_dir", "{flat}", "--validation_dir", "{val}"], "has no class subfolders"),
    (["--label_column_name", "category"], "column 'category' not found"),
    (["--train_dir", "{corrupt}", "--validation_dir", "{val}"], "cannot read image"),
]

TEXT_CASES = [
    (["--train_file", "{fields}", "--validation_file", "{val_csv}"], "fields.csv:3: 3 field(s), but the header has 2"),
    (["--train_file", "{broken}", "--validation_file", "{val_jsonl}"], "broken.jsonl:2: not valid JSON"),
    (["--train_file", "{latin}", "--text_encoding", "utf-8", "--validation_file", "{val_csv}"],
     "byte 0xe9 at offset 14 is not utf-8"),
    (["--train_file", "{one_class_csv}", "--validation_file", "{one_class_csv}"], "only one class ('pos')"),
    (["--train_file", "{train_csv}", "--validation_file", "{unseen_val}"], "validation label(s) meh never occur"),
    (["--train_file", "{parquetx}"], "unsupported text file type '.parquetx'"),
    (["--train_file", "{train_csv}", "--validation_file", "{val_jsonl}"], "have different formats"),
    (["--train_file", "{train_csv}", "--text_encoding", "klingon"], "--text_encoding 'klingon' is not a known codec"),
    (["--train_file", "{train_csv}", "--max_seq_length", "1"], "--max_seq_length 1 is out of range"),
    (["--train_file", "{train_csv}", "--pooling", "max"], "unknown pooling 'max'"),
    (["--train_file", "{train_csv}", "--model_name_or_path", "/nonexistent/encoder"], "could not load text encoder"),
    (["--train_file", "{train_csv}", "--label_names", "a", "b", "c"], "--label_names has 3 names but the data has 2"),
]

RANK_CASES = [
    ([], "no candidates"),
    (["--candidates", "test_efficientnet", "--learning_rate", "0.1"], "unrecognized arguments: --learning_rate"),
    (["--candidate", "test_efficientnet"], "unrecognized arguments: --candidate"),
    (["--candidates", "test_efficientnet", "{tiny_bert}"], "candidates mix modalities"),
    (["--candidates", "test_efficientnet", "--output_dir", "{a_file}"], "is a file"),
    (["--candidates", "test_efficientnet", "--per_device_eval_batch_size", "0"], "is out of range"),
]


def _fill(args: list, paths: dict) -> list:
    return [a.format(**paths) if isinstance(a, str) else a for a in args]


def assert_one_error_line(capsys, exit_info, match: str) -> str:
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-2000:]
    assert match in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def assert_untouched(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(EARLIER)
    for name, content in EARLIER.items():
        assert (out / name).read_text() == content, name


def fails_with_one_line(command, argv: list, capsys, match: str) -> str:
    """Run an entry point in this process; it must exit 2 with one ``error:`` line containing ``match``."""
    with pytest.raises(SystemExit) as exit_info:
        command(list(map(str, argv)))
    return assert_one_error_line(capsys, exit_info, match)


def recipe(modality: str):
    return lambda argv: cli.run_recipe(modality, ROOT / "recipes" / "configs" / f"{modality}_cls.yaml", argv)


@pytest.mark.parametrize("extra,match", IMAGE_CASES, ids=[c[1][:40] for c in IMAGE_CASES])
def test_image_recipe_bad_input(extra, match, files, earlier_run, capsys):
    argv = [*IMAGE_TINY, "--train_dir", files["train"], "--validation_dir", files["val"], "--output_dir", earlier_run,
            "--overwrite_output_dir", *_fill(extra, files)]
    fails_with_one_line(recipe("image"), argv, capsys, match)
    assert_untouched(earlier_run)


@pytest.mark.parametrize("extra,match", TEXT_CASES, ids=[c[1][:40] for c in TEXT_CASES])
def test_text_recipe_bad_input(extra, match, files, tiny_bert, earlier_run, capsys):
    model = [] if "--model_name_or_path" in extra else ["--model_name_or_path", tiny_bert]
    argv = [*model, "--per_device_train_batch_size", "4", "--output_dir", earlier_run, "--overwrite_output_dir",
            *_fill(extra, files)]
    fails_with_one_line(recipe("text"), argv, capsys, match)
    assert_untouched(earlier_run)


@pytest.mark.parametrize("extra,match", RANK_CASES, ids=[c[1][:40] for c in RANK_CASES])
def test_rank_bad_input(extra, match, files, tiny_bert, earlier_run, capsys):
    argv = ["rank", "--train_dir", files["train"], "--validation_dir", files["val"], "--output_dir", earlier_run,
            *_fill(extra, {**files, "tiny_bert": tiny_bert})]
    fails_with_one_line(cli.main, argv, capsys, match)
    assert_untouched(earlier_run)


def test_a_live_run_in_the_same_output_dir_is_named(files, earlier_run, capsys):
    held = RunLock(earlier_run).acquire()  # another open file description: flock conflicts like another process
    try:
        argv = [*IMAGE_TINY, "--train_dir", files["train"], "--validation_dir", files["val"], "--output_dir",
                earlier_run, "--overwrite_output_dir"]
        line = fails_with_one_line(recipe("image"), argv, capsys, "is in use by a live run")
        assert "pid " in line
    finally:
        held.release()
    assert sorted(p.name for p in earlier_run.iterdir()) == sorted(EARLIER)


def test_the_matrix_has_at_least_forty_cases():
    assert len(IMAGE_CASES) + len(TEXT_CASES) + len(RANK_CASES) >= 40


def test_overwrite_replaces_the_earlier_run_once_data_and_model_loaded(files, earlier_run):
    argv = [*IMAGE_TINY, "--train_dir", files["train"], "--validation_dir", files["val"], "--output_dir", earlier_run,
            "--overwrite_output_dir", "--num_train_epochs", "1", "--strategy", "linear_probe"]
    results = recipe("image")(list(map(str, argv)))
    assert results["epochs"] == 1
    assert json.loads((earlier_run / "all_results.json").read_text())["epochs"] == 1
    assert (earlier_run / "model.safetensors").read_bytes() != EARLIER["model.safetensors"].encode()
    assert not (earlier_run / "hftransfer.lock").exists()


# ---------------------------------------------------------------------------------------------- hftransfer predict
@pytest.fixture(scope="module")
def predict_files(tmp_path_factory, tiny_bert) -> dict:
    """Tiny saved models of each modality, and inputs each of them cannot read."""
    root = tmp_path_factory.mktemp("predict")
    image_model().save_pretrained(root / "image_model")
    text_model(tiny_bert).save_pretrained(root / "text_model")
    photos = make_image_folder(root / "photos", per_class=2)  # 4 PNGs ...
    (photos / "notes.txt").write_text("a stray note that is not a text to label\n")  # ... and one stray text file
    (root / "texts").mkdir()
    (root / "texts" / "a.txt").write_text("good\nbad\n")
    (root / "texts" / "b.csv").write_text("text\nfine\n")
    (root / "t.txt").write_text("the movie was good\n")
    (root / "t.csv").write_text("text,label\nawful,neg\n")
    (root / "t.jsonl").write_text('{"text": "superb"}\n')
    (root / "sentence.csv").write_text("sentence,label\ngood,pos\nbad,neg\n")
    (root / "empty.csv").write_text("text,label\n,pos\n  ,neg\n")
    (root / "broken.jpg").write_bytes(b"not an image")
    noise_image(1).save(root / "ok.png")
    names = ("image_model", "text_model", "photos", "texts", "t.txt", "t.csv", "t.jsonl", "sentence.csv", "empty.csv",
             "broken.jpg", "ok.png")
    return {name.replace(".", "_"): str(root / name) for name in names}  # {t_txt}: format() reads a dot as .attr


PREDICT_CASES = [  # (model, INPUTs and flags, words the error line must contain)
    ("image_model", ["{t_txt}"], "t.txt is a text file, not an image: this image model reads image files, folders"),
    ("image_model", ["{t_csv}", "{t_jsonl}"], "t.csv is a text file, not an image (1 other input(s) skipped too)"),
    ("image_model", ["{texts}"], "texts is a folder of 2 text file(s), not images: this image model reads image"),
    ("image_model", ["{t_txt}", "{broken_jpg}"], "t.txt is a text file, not an image (1 other input(s) skipped too)"),
    ("image_model", ["{ok_png}", "{t_txt}", "--strict"], "t.txt is a text file, not an image"),
    ("image_model", ["{broken_jpg}"], "broken.jpg could not be read (UnidentifiedImageError"),
    ("text_model", ["{photos}"], ("photos is a folder of 4 image file(s) and 1 text file(s), not texts: this text "
                                  "model reads CSV/TSV/JSONL/JSON/TXT files or - (stdin)")),
    ("text_model", ["{ok_png}"], "ok.png is an image file, not text: this text model reads CSV/TSV/JSONL/JSON/TXT"),
    ("text_model", ["{sentence_csv}"], "sentence.csv has no column 'text' (columns: sentence, label): pass --text_col"),
    ("text_model", ["{sentence_csv}", "{sentence_csv}"], "none of the 2 inputs could be read, e.g. "),
    ("text_model", ["{empty_csv}"], "none of the 2 inputs could be read, e.g. "),
    ("text_model", ["{empty_csv}", "{ok_png}"], "ok.png is an image file, not text (2 other input(s) skipped too)"),
]


@pytest.mark.parametrize("model,argv,match", PREDICT_CASES, ids=[" ".join(c[1]) + " " + c[0] for c in PREDICT_CASES])
def test_predict_refuses_what_the_model_cannot_read(model, argv, match, predict_files, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    fails_with_one_line(cli.main, ["predict", predict_files[model], *_fill(argv, predict_files), "--output", out],
                        capsys, match)
    assert not out.exists()  # nothing written, and never "predicted 0 ..." with exit 0


def test_predict_keeps_mixed_inputs_and_lists_the_other_modality(predict_files, capsys):
    cli.main(["predict", predict_files["image_model"], predict_files["ok_png"], predict_files["t_txt"]])
    out, err = capsys.readouterr()
    assert [json.loads(line)["input"] for line in out.splitlines()] == [predict_files["ok_png"]]
    assert "skipped 1 of 2 input(s)" in err and f"  {predict_files['t_txt']} is a text file, not an image" in err
    assert "predicted 1 image input(s)" in err and "error:" not in err
    cli.main(["predict", predict_files["text_model"], predict_files["t_csv"], predict_files["photos"]])
    out, err = capsys.readouterr()
    assert [json.loads(line)["input"] for line in out.splitlines()] == ["awful"]
    assert f"  {predict_files['photos']} is a folder of 4 image file(s)" in err and "predicted 1 text" in err


# ---------------------------------------------------------------------------------------------- --push_to_hub
PUSH_CASES = [  # (what breaks the Hub, extra flags, words the error line must contain)
    ("no token", ["--hub_model_id", "user/x"], "no Hugging Face token: set HF_TOKEN"),
    ("wrong token", ["--hub_model_id", "user/x"], "rejected the token (401 Unauthorized) while trying to create"),
    ("wrong token", [], "rejected the token (401 Unauthorized) while trying to look up your user name"),
    ("down", ["--hub_model_id", "user/x"], "cannot reach the Hub at"),
    ("up", ["--hub_model_id", "not a repo id"], "'not a repo id' is not a valid Hub repo id"),
    ("up", ["--hub_model_id", "user/x", "--hub_revision", "dev", "--hub_create_pr"], "pull request against main"),
]


@pytest.mark.parametrize("hub_state,extra,match", PUSH_CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in PUSH_CASES])
def test_push_to_hub_fails_before_training(hub_state, extra, match, hub, files, earlier_run, monkeypatch, capsys):
    if hub_state == "no token":
        monkeypatch.delenv("HF_TOKEN")
    elif hub_state == "wrong token":
        hub.server.require_token = "hf_a_token_this_user_does_not_have"
    elif hub_state == "down":
        hub.server.stop()
    argv = [*IMAGE_TINY, "--train_dir", files["train"], "--validation_dir", files["val"], "--output_dir", earlier_run,
            "--overwrite_output_dir", "--push_to_hub", *extra]
    line = fails_with_one_line(recipe("image"), argv, capsys, match)
    assert "push it again" not in line  # nothing was trained: there is nothing to push again
    assert_untouched(earlier_run)  # no epoch, no checkpoint, no best_model/: the earlier run is as it was
    assert ("model", "user/x") not in hub.server.repos


# ---------------------------------------------------------------------------------------------- audio
@pytest.fixture(scope="module")
def audio_files(tmp_path_factory) -> dict:
    """An audio folder whose every file is bad (corrupt WAV, zero-length WAV, a text file named .wav), one with a
    single class, and one of images."""
    from audio_builders import make_audio_folder, write_bad_audio

    root = tmp_path_factory.mktemp("audio")
    for label in ("down", "up"):
        write_bad_audio(root / "all_bad" / label)
    make_audio_folder(root / "one_class", classes=("down",), per_class=3)
    make_audio_folder(root / "good", per_class=3)
    return {"all_bad": root / "all_bad", "one_class": root / "one_class", "good": root / "good",
            "images": files_root(tmp_path_factory)}


def files_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audio_images")
    make_image_folder(root / "train")
    return root / "train"


AUDIO_CASES = [
    (["--train_dir", "all_bad"], "train audio files could be read (corrupt.wav (not an audio file"),
    (["--train_dir", "one_class"], "only one class"),
    (["--train_dir", "images"], "no audio files"),
    (["--train_dir", "good", "--crop_scale", "0.5", "1"], "--crop_scale is an option of the image recipe"),
    (["--train_dir", "good", "--export_onnx"], "--export_onnx is an option of the image recipe"),
    (["--train_dir", "good", "--domain_adaptation", "dapt", "--target_train_dir", "good"],
     "dapt is masked-language-model pretraining of a text encoder; for audio use mcc"),
    (["--train_dir", "good", "--sampling_rate", "100"], "--sampling_rate 100 is out of range: use a number >= 1000"),
]


@pytest.mark.parametrize("extra,match", AUDIO_CASES, ids=[c[1][:40] for c in AUDIO_CASES])
def test_audio_recipe_bad_input(extra, match, audio_files, earlier_run, capsys):
    argv = ["--model_name_or_path", "test_efficientnet", "--weights", "random", "--max_duration", "0.5",
            "--n_mels", "32", "--output_dir", earlier_run, "--overwrite_output_dir",
            *[str(audio_files.get(a, a)) for a in extra]]
    fails_with_one_line(recipe("audio"), argv, capsys, match)
    assert_untouched(earlier_run)
