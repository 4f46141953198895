"""The audio recipe's options and the modality plumbing around it: its parser takes the audio options and refuses
the other recipes', ``hftransfer predict`` sorts audio inputs from other modalities' files, and the Python API and
``hftransfer rank`` recognise audio data."""
from __future__ import annotations

import re

import pytest
from audio_builders import make_audio_folder
from test_help import entry, recipe_help, recipe_yaml

from hftransfer import HFTransferError
from hftransfer.cli.inputs import OtherModality, expand_inputs, nothing_to_predict
from hftransfer.config import TrainConfig, load_config, read_config_file
from hftransfer.runs.modality import expand_folders, infer_modality
from hftransfer.runs.rank import Candidate, check_modalities


def parse(argv: list[str], modality: str = "audio"):
    return load_config(argv, read_config_file(str(recipe_yaml(modality))), modality=modality, validate=False)


def test_the_audio_recipe_takes_its_options_and_refuses_the_other_recipes():
    cfg = parse(["--max_duration", "2.5", "--n_mels", "64", "--sampling_rate", "8000", "--time_masks", "0"])
    assert (cfg.max_duration, cfg.n_mels, cfg.sampling_rate, cfg.time_masks) == (2.5, 64, 8000, 0)
    assert cfg.train_dir.endswith("data/fsdd/train") and cfg.model_name_or_path == "tf_efficientnet_lite0"
    with pytest.raises(HFTransferError, match=re.escape("--crop_scale is an option of the image recipe "
                                                        "(recipes/image_cls.py): drop it from this audio run")):
        parse(["--crop_scale", "0.5", "1"])
    with pytest.raises(HFTransferError, match=re.escape("--max_seq_length is an option of the text recipe")):
        parse(["--max_seq_length", "64"])
    with pytest.raises(HFTransferError, match=re.escape("--n_mels is an option of the audio recipe "
                                                        "(recipes/audio_cls.py): drop it from this text run")):
        parse(["--n_mels", "64"], modality="text")
    # options of two recipes are refused by the third only, naming both
    with pytest.raises(HFTransferError, match=re.escape("--train_dir is an option of the image recipe "
                                                        "(recipes/image_cls.py) and the audio recipe")):
        parse(["--train_dir", "x"], modality="text")
    assert parse(["--pooling", "cls"]).pooling == "cls"  # transformers audio encoders pool their frames


def test_audio_help_shows_its_options_with_the_recipe_defaults(capsys):
    text = recipe_help("audio", capsys)
    assert "default: 1.0, from configs/audio_cls.yaml" in entry(text, "max_duration")
    assert "default: 64, from configs/audio_cls.yaml" in entry(text, "n_mels")
    assert "default job: 8000" in entry(text, "sampling_rate")
    assert "default job: " in entry(text, "train_dir") and "audio files" in entry(text, "train_dir")
    assert entry(text, "crop_scale") is None and entry(text, "max_seq_length") is None
    assert "Options of the image recipe" in text and "Options of the text recipe" in text
    assert entry(recipe_help("image", capsys), "n_mels") is None


def test_predict_inputs_sort_audio_from_other_modalities(tmp_path):
    clips = make_audio_folder(tmp_path / "clips", classes=("a",), per_class=3)
    (clips / "a" / "README.txt").write_text("notes")
    inputs, names, skipped = expand_inputs([str(clips)], "audio")
    assert len(inputs) == 3 and all(i.endswith(".wav") for i in inputs) and not skipped
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    wav = sorted((clips / "a").glob("*.wav"))[0]
    inputs, _, skipped = expand_inputs([str(notes), str(wav)], "audio")
    assert inputs == [str(wav)] and isinstance(skipped[0], OtherModality)
    assert skipped[0].what == f"{notes} is a text file, not audio"
    _, _, skipped = expand_inputs([str(wav)], "image")
    assert skipped[0].what == f"{wav} is an audio file, not an image"
    assert "this image model reads image files" in str(nothing_to_predict([str(wav)], "image", skipped))
    _, _, skipped = expand_inputs([str(clips)], "text")
    assert skipped[0].what.startswith(f"{clips} is a folder of 3 audio file(s)")
    with pytest.raises(HFTransferError, match="is a text file, not audio: this audio model reads audio files"):
        expand_inputs([str(notes)], "audio", strict=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no audio files found" in str(nothing_to_predict([str(empty)], "audio", []))


def test_the_api_infers_audio_from_the_data_and_expands_audio_folders(tmp_path):
    clips = make_audio_folder(tmp_path / "clips", classes=("down", "up"), per_class=2)
    # a timm name or a transformers id on audio data: either is an audio backbone
    assert infer_modality(TrainConfig(model_name_or_path="tf_efficientnet_lite0", train_dir=str(clips))) == "audio"
    assert infer_modality(TrainConfig(model_name_or_path="facebook/wav2vec2-base", train_dir=str(clips))) == "audio"
    manifest = tmp_path / "clips.csv"
    manifest.write_text("audio,label\nclips/up/a.wav,up\n")
    assert infer_modality(TrainConfig(model_name_or_path="auto", train_file=str(manifest))) == "audio"
    with pytest.raises(HFTransferError, match="use 'image', 'text', 'audio'"):
        infer_modality(TrainConfig(model_name_or_path="x"), "speech")
    assert len(expand_folders(str(clips), "audio")) == 4
    import numpy as np

    wave = np.zeros(800, dtype=np.float32)
    assert len(expand_folders(wave, "audio")) == 1  # one waveform is one input, not 800


def test_rank_takes_any_backbone_kind_for_audio_data():
    candidates = [Candidate("tf_efficientnet_lite0", "tf_efficientnet_lite0", "pretrained", "image"),
                  Candidate("w2v", "some/wav2vec2", "pretrained", "text")]
    assert check_modalities(candidates, "audio") == "audio"
    assert {c.modality for c in candidates} == {"audio"}


@pytest.mark.integration
def test_audio_recipe_end_to_end_predict_and_two_processes(tmp_path):
    """The recipe trains a tiny timm model on generated clips (one unreadable file skipped), writes a model that
    ``hftransfer predict`` runs on a folder of WAV files; the same run launched as 2 processes trains too."""
    import json

    from builders import launch_two_processes, read_results, run_python, run_recipe

    data = make_audio_folder(tmp_path / "clips", classes=("down", "up"), per_class=8, seconds=0.4)
    (data / "up" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    common = ["--model_name_or_path", "test_efficientnet", "--weights", "random", "--train_dir", data,
              "--validation_fraction", "0.25", "--num_train_epochs", "2", "--max_duration", "0.5",
              "--n_mels", "32", "--per_device_train_batch_size", "4", "--checkpointing_steps", "no",
              "--time_masks", "1", "--freq_masks", "1"]
    out = tmp_path / "out"
    proc = run_recipe("audio_cls", *common, "--output_dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "audio files that could not be read: broken.wav (not an audio file" in proc.stdout + proc.stderr
    results = read_results(out)
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForAudioClassification"].endswith("HFTransferForAudioClassification")
    assert json.loads((out / "preprocessor_config.json").read_text())["sampling_rate"] == 16000
    preds = tmp_path / "preds.jsonl"
    proc = run_python("-m", "hftransfer", "predict", out, data / "down", "--output", preds)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 8 and all(r["label"] in ("down", "up") for r in rows)
    two = tmp_path / "two"
    proc = launch_two_processes("audio_cls", *common, "--output_dir", two, "--num_threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(two)["eval_accuracy"] is not None


@pytest.mark.integration
def test_audio_lora_compare_scratch_card_and_rank_with_the_bundled_weights(tmp_path):
    import json

    from builders import read_results, run_python, run_recipe

    data = make_audio_folder(tmp_path / "clips", classes=("down", "up"), per_class=6, seconds=0.4)
    common = ["--train_dir", data, "--validation_fraction", "0.25", "--num_train_epochs", "1", "--max_duration", "0.5",
              "--n_mels", "32", "--checkpointing_steps", "no", "--num_threads", "1"]
    lora = tmp_path / "lora"
    proc = run_recipe("audio_cls", *common, "--strategy", "lora", "--compare_scratch", "true", "--output_dir", lora)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(lora)
    assert results["transfer"]["strategy"] == "lora" and results["transfer_gain"]["scratch_seeds"] == 1
    card = (lora / "README.md").read_text()
    assert 'pipeline("audio-classification"' in card and "pipeline_tag: audio-classification" in card
    out = tmp_path / "rank"
    proc = run_python("-m", "hftransfer", "rank", "--candidates", "tf_efficientnet_lite0", "random:tf_efficientnet_lite0",
                      "--train_dir", data, "--max_duration", "0.5", "--n_mels", "32", "--output_dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranked = json.loads((out / "rank.json").read_text())
    assert ranked["modality"] == "audio" and len(ranked["ranking"]) == 2
