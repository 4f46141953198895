"""Audio data: ``read_audio`` (files, bytes, records, arrays; errors), ``AudioPipeline`` (decode once, crop / pad,
seeded augmentation and SpecAugment masks, collate, feature extractors, prediction batches), audio sources
(class folders, manifests, save_to_disk ``Audio`` columns, the target domain) and the bundled FSDD subset."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from audio_builders import BUNDLED_AUDIO, make_audio_folder, tone, write_audio, write_bad_audio

from hftransfer import HFTransferError
from hftransfer.data import (
    AUDIO_SUFFIXES,
    INDEX_COLUMN,
    AudioAugmentation,
    AudioPipeline,
    AudioReadError,
    DataSource,
    load_raw_splits,
    load_target_data,
    prepare_splits,
    read_audio,
)
from hftransfer.data.audio import fit_length

SR = 8000


@pytest.fixture(scope="module", autouse=True)
def decoded_audio_cache(tmp_path_factory):
    """The decodes of in-memory splits (audio folders) go to a temporary cache, not the user's datasets cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("datasets_cache")))
        yield


@pytest.fixture(scope="module")
def audio_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    make_audio_folder(root / "train")
    make_audio_folder(root / "val", per_class=3, seed=1)
    return root


@pytest.fixture(scope="module")
def prepared(audio_root):
    """The train split of ``audio_root`` labelled and decoded at 8 kHz (clips 0.4-0.6 s)."""
    raw = load_raw_splits("audio", DataSource(train_dir=str(audio_root / "train"),
                                              validation_dir=str(audio_root / "val")))
    bundle = prepare_splits(raw, "audio", "label")
    return AudioPipeline(sampling_rate=SR, max_duration=0.5).prepare(bundle.train, "audio", "train")


def peak_frequency(wave: np.ndarray, sampling_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / sampling_rate)[spectrum.argmax()])


# ---------------------------------------------------------------------------------------------- read_audio
def test_suffixes_are_what_soundfile_reads():
    assert {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au"} <= AUDIO_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in AUDIO_SUFFIXES)
    assert ".txt" not in AUDIO_SUFFIXES and ".raw" not in AUDIO_SUFFIXES


@pytest.mark.parametrize("name,subtype,tolerance", [("a.wav", "PCM_16", 1e-4), ("b.wav", "FLOAT", 1e-7),
                                                    ("c.flac", "PCM_16", 1e-4)])
def test_reads_wav_and_flac_as_float32_mono(tmp_path, name, subtype, tolerance):
    wave = tone(440, SR, 0.25)
    out = read_audio(write_audio(tmp_path / name, wave, SR, subtype), SR)
    assert out.dtype == np.float32 and out.shape == wave.shape
    np.testing.assert_allclose(out, wave, atol=tolerance)


def test_integer_pcm_arrays_are_scaled_to_unit_range():
    np.testing.assert_allclose(read_audio(np.array([16384, -32768, 0], dtype=np.int16), SR), [0.5, -1.0, 0.0])
    np.testing.assert_allclose(read_audio(np.array([128, 0, 255], dtype=np.uint8), SR), [0.0, -1.0, 127 / 128])


def test_stereo_is_mixed_down_to_the_mean(tmp_path):
    left, right = tone(440, SR, 0.2), tone(1000, SR, 0.2, amplitude=0.2)
    frames = np.stack([left, right], axis=1)  # (n, channels), as files are
    mean = (left + right) / 2
    np.testing.assert_allclose(read_audio(write_audio(tmp_path / "s.wav", frames, SR, "FLOAT"), SR), mean, atol=1e-6)
    np.testing.assert_allclose(read_audio(frames, SR), mean, atol=1e-6)
    np.testing.assert_allclose(read_audio(frames.T, SR), mean, atol=1e-6)  # (channels, n): the smaller axis


def test_resampling_keeps_the_tone(tmp_path):
    path = write_audio(tmp_path / "t.wav", tone(440, SR, 0.5), SR, "FLOAT")
    up = read_audio(path, 16000)
    assert up.dtype == np.float32 and len(up) == 2 * round(0.5 * SR)
    assert abs(peak_frequency(up, 16000) - 440) <= 2
    down = read_audio((tone(1000, 22050, 0.5), 22050), SR)  # 22050 -> 8000: the exact ratio 160 / 441
    assert len(down) == round(0.5 * SR) and abs(peak_frequency(down, SR) - 1000) <= 2


def test_every_input_kind_reads_the_same(tmp_path):
    wave = tone(440, SR, 0.2)
    path = write_audio(tmp_path / "x.wav", wave, SR, "FLOAT")
    raw = path.read_bytes()
    expected = read_audio(path, SR)
    with open(path, "rb") as f:
        from_file = read_audio(f, SR)
    sources = [str(path), raw, io.BytesIO(raw), {"bytes": raw, "path": "elsewhere.wav"},
               {"bytes": None, "path": str(path)}, {"array": wave, "sampling_rate": SR}, (wave, SR), wave,
               wave.tolist(), torch.from_numpy(wave)]
    for out in [from_file] + [read_audio(source, SR) for source in sources]:
        np.testing.assert_allclose(out, expected, atol=1e-6)
    assert len(read_audio({"array": tone(440, 16000, 0.2), "sampling_rate": 16000}, SR)) == len(wave)


def test_unreadable_inputs_raise_a_short_reason(tmp_path):
    bad = write_bad_audio(tmp_path)
    with pytest.raises(AudioReadError, match=r"^not an audio file \(LibsndfileError"):
        read_audio(bad["corrupt"], SR)
    with pytest.raises(AudioReadError, match=r"^empty audio \(0 samples\)$"):
        read_audio(bad["empty"], SR)
    with pytest.raises(AudioReadError, match=r"^not an audio file \(LibsndfileError: Format not recognised"):
        read_audio(bad["text"], SR)
    with pytest.raises(AudioReadError, match="non-finite"):
        read_audio(np.array([0.1, np.nan, 0.2], dtype=np.float32), SR)
    with pytest.raises(AudioReadError, match="file not found"):
        read_audio(tmp_path / "missing.wav", SR)
    with pytest.raises(AudioReadError, match="empty audio"):
        read_audio(np.zeros(0), SR)
    with pytest.raises(AudioReadError, match="sampling_rate"):
        read_audio({"array": [0.1, 0.2]}, SR)


# ---------------------------------------------------------------------------------------------- AudioPipeline
def test_crop_and_pad_rule():
    wave = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(wave, 4), [3, 4, 5, 6])  # centre: offset (10 - 4) // 2
    np.testing.assert_array_equal(fit_length(wave, 5), [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(fit_length(wave, 4, offset=6), [6, 7, 8, 9])
    np.testing.assert_array_equal(fit_length(wave[:3], 5), [0, 1, 2, 0, 0])  # zeros at the end
    assert fit_length(wave, 10).dtype == np.float32


def test_prepare_decodes_once_and_keeps_the_other_columns(prepared):
    assert prepared.features["audio"] == datasets.List(datasets.Value("float32"))
    assert set(prepared.column_names) == {"audio", "labels", INDEX_COLUMN}
    assert len(prepared) == 12 and prepared[INDEX_COLUMN] == list(range(12))
    lengths = [len(w) for w in prepared["audio"]]
    assert min(lengths) >= 0.8 * 0.5 * SR - 1 and max(lengths) <= 1.2 * 0.5 * SR + 1


def test_prepare_drops_unreadable_files_with_one_warning(tmp_path, caplog):
    make_audio_folder(tmp_path / "train", per_class=3)
    for name, path in write_bad_audio(tmp_path / "bad").items():
        shutil.copy(path, tmp_path / "train" / "up" / f"bad_{name}.wav")
    raw = load_raw_splits("audio", DataSource(train_dir=str(tmp_path / "train")))["train"]
    with caplog.at_level("WARNING", logger="hftransfer"):
        out = AudioPipeline(sampling_rate=SR, max_duration=0.5).prepare(raw, "audio", "train")
    assert len(out) == 6 and out.features["label"].names == ["down", "up"]
    warning = caplog.text
    assert "skipped 3 of 9 train audio files that could not be read" in warning
    assert "bad_corrupt.wav (not an audio file" in warning and "bad_empty.wav (empty audio" in warning


def test_prepare_of_an_all_unreadable_split_is_an_error(tmp_path):
    bad = write_bad_audio(tmp_path / "train" / "up")
    (tmp_path / "train" / "down").mkdir()
    shutil.copy(bad["text"], tmp_path / "train" / "down" / "x.wav")
    raw = load_raw_splits("audio", DataSource(train_dir=str(tmp_path / "train")))["train"]
    with pytest.raises(HFTransferError, match=r"none of the 4 validation audio files could be read .*: pass files"):
        AudioPipeline(sampling_rate=SR, max_duration=0.5).prepare(raw, "audio", "validation")


def test_eval_view_centre_crops_and_pads(prepared):
    pipe = AudioPipeline(sampling_rate=SR, max_duration=0.45)
    view = pipe.eval_view(prepared, "audio")
    for i in range(len(prepared)):
        wave = np.asarray(prepared[i]["audio"], dtype=np.float32)
        clip = view[i]["input_values"]
        assert clip.shape == (pipe.num_samples,) and "spec_masks" not in view[i]
        np.testing.assert_array_equal(clip, fit_length(wave, pipe.num_samples))


def train_pipeline(seed=0, **kw) -> AudioPipeline:
    return AudioPipeline(sampling_rate=SR, max_duration=0.4, augmentation=AudioAugmentation(seed=seed, **kw))


def test_train_view_is_seeded_per_example_and_epoch(prepared):
    first, again = train_pipeline(), train_pipeline()
    a, b = first.train_view(prepared, "audio"), again.train_view(prepared, "audio")
    pairs = [(a[i], b[i]) for i in (0, 5)]
    for x, y in pairs:
        np.testing.assert_array_equal(x["input_values"], y["input_values"])
        np.testing.assert_array_equal(x["spec_masks"], y["spec_masks"])
    # an example draws the same alone as in a batch: nothing depends on what ran before
    np.testing.assert_array_equal(a[[3, 5]]["input_values"][1], pairs[1][0]["input_values"])
    first.set_epoch(1)
    assert not np.array_equal(a[0]["input_values"], pairs[0][0]["input_values"])
    assert not np.array_equal(a[0]["spec_masks"], pairs[0][0]["spec_masks"])
    other = train_pipeline(seed=1).train_view(prepared, "audio")[0]
    assert not np.array_equal(other["spec_masks"], pairs[0][0]["spec_masks"])


def test_train_view_is_a_gained_shifted_crop(prepared):
    pipe = train_pipeline(gain_db=0.0, shift=0.0, time_masks=0, freq_masks=0)
    longest = int(np.argmax([len(w) for w in prepared["audio"]]))
    wave = np.asarray(prepared[longest]["audio"], dtype=np.float32)
    assert len(wave) > pipe.num_samples + 100
    clips = []
    for epoch in range(4):
        pipe.set_epoch(epoch)
        clip = pipe.train_view(prepared, "audio")[longest]["input_values"]
        offsets = [o for o in range(len(wave) - pipe.num_samples + 1)
                   if np.array_equal(wave[o:o + pipe.num_samples], clip)]
        assert offsets, "the training clip is a piece of the waveform"
        clips.append(offsets[0])
    assert len(set(clips)) > 1  # the offset is random
    pipe.set_epoch(0)
    plain = pipe.train_view(prepared, "audio")[longest]["input_values"]
    # the same seed draws the same crop: only the gain differs, one factor in [-6, 6] dB for the whole clip
    loud = train_pipeline(gain_db=6.0, shift=0.0).train_view(prepared, "audio")[longest]["input_values"]
    ratio = loud[plain != 0] / plain[plain != 0]
    assert np.allclose(ratio, ratio[0], rtol=1e-5) and 10 ** (-6 / 20) <= ratio[0] <= 10 ** (6 / 20)
    shifted = train_pipeline(gain_db=0.0, shift=0.5).train_view(prepared, "audio")[longest]["input_values"]
    assert not np.array_equal(shifted, plain)
    half = pipe.num_samples // 2
    assert any(np.array_equal(np.roll(plain, k), shifted) for k in range(-half, half + 1))


def test_spec_masks_shape_and_range(prepared):
    aug = dict(time_masks=3, time_mask_width=0.2, freq_masks=1, freq_mask_width=0.3)
    view = train_pipeline(**aug).train_view(prepared, "audio")
    masks = np.stack([view[i]["spec_masks"] for i in range(len(prepared))])
    assert masks.shape == (len(prepared), 4, 3) and masks.dtype == np.float32
    assert (masks[:, :3, 0] == 0).all() and (masks[:, 3:, 0] == 1).all()  # time rows, then frequency rows
    start, width = masks[..., 1], masks[..., 2]
    assert (start >= 0).all() and (width >= 0).all() and (start + width <= 1 + 1e-6).all()
    assert (width[:, :3] <= 0.2).all() and (width[:, 3] <= 0.3).all() and width.std() > 0


def test_no_augmentation_trains_on_the_eval_view(prepared):
    pipe = AudioPipeline(sampling_rate=SR, max_duration=0.4)
    train, evaluation = pipe.train_view(prepared, "audio")[2], pipe.eval_view(prepared, "audio")[2]
    np.testing.assert_array_equal(train["input_values"], evaluation["input_values"])
    assert "spec_masks" not in train


def test_collate_shapes(prepared):
    pipe = train_pipeline()
    batch = pipe.collate([pipe.train_view(prepared, "audio")[i] for i in range(3)])
    assert batch["input_values"].shape == (3, pipe.num_samples) and batch["input_values"].dtype == torch.float32
    assert batch["spec_masks"].shape == (3, 4, 3) and batch["spec_masks"].dtype == torch.float32
    assert batch["labels"].tolist() == prepared["labels"][:3] and batch[INDEX_COLUMN].tolist() == [0, 1, 2]
    evaluation = pipe.collate([pipe.eval_view(prepared, "audio")[i] for i in range(3)])
    assert set(evaluation) == {"input_values", "labels", INDEX_COLUMN}
    multi_hot = [{"input_values": np.zeros(pipe.num_samples, np.float32), "labels": [1.0, 0.0, 1.0]}] * 2
    labels = pipe.collate(multi_hot)["labels"]
    assert labels.shape == (2, 3) and labels.dtype == torch.float32


def test_feature_extractor_collate(prepared):
    from transformers import ASTFeatureExtractor, Wav2Vec2FeatureExtractor

    waves = prepared.map(lambda b: {"audio": [np.repeat(w, 2) for w in b["audio"]]}, batched=True)  # "16 kHz"
    for extractor, shape in ((Wav2Vec2FeatureExtractor(), (3, 8000)), (ASTFeatureExtractor(), (3, 1024, 128))):
        pipe = AudioPipeline(sampling_rate=16000, max_duration=0.5, feature_extractor=extractor,
                             augmentation=AudioAugmentation())
        for view in (pipe.train_view(waves, "audio"), pipe.eval_view(waves, "audio")):
            examples = [view[i] for i in range(3)]
            assert "spec_masks" not in examples[0]  # the extractor computes the features: no masks drawn
            batch = pipe.collate(examples)
            assert batch["input_values"].shape == shape and batch["input_values"].dtype == torch.float32
            assert batch["labels"].shape == (3,) and "spec_masks" not in batch
    with pytest.raises(HFTransferError, match="expects 16000 Hz audio"):
        AudioPipeline(sampling_rate=SR, max_duration=1.0, feature_extractor=Wav2Vec2FeatureExtractor())


def test_key_follows_what_changes_frozen_features():
    from transformers import Wav2Vec2FeatureExtractor

    base = AudioPipeline(sampling_rate=SR, max_duration=1.0)
    assert base.key == AudioPipeline(sampling_rate=SR, max_duration=1.0, augmentation=AudioAugmentation()).key
    assert base.num_samples == SR
    others = [AudioPipeline(sampling_rate=16000, max_duration=1.0), AudioPipeline(sampling_rate=SR, max_duration=2.0),
              AudioPipeline(sampling_rate=16000, max_duration=1.0, feature_extractor=Wav2Vec2FeatureExtractor()),
              AudioPipeline(sampling_rate=16000, max_duration=1.0,
                            feature_extractor=Wav2Vec2FeatureExtractor(do_normalize=False))]
    assert len({base.key, *(p.key for p in others)}) == 5


@pytest.mark.parametrize("workers", [0, 2])
def test_inference_batches_report_failures_in_order(tmp_path, workers):
    bad = write_bad_audio(tmp_path)
    good = write_audio(tmp_path / "good.wav", tone(440, SR, 0.3), SR)
    inputs = [good, bad["corrupt"], tone(440, SR, 0.6), bad["empty"], str(good), np.array([np.inf])]
    pipe = AudioPipeline(sampling_rate=SR, max_duration=0.5)
    batches = list(pipe.inference_batches(inputs, batch_size=2, workers=workers))
    assert [b.rows for b in batches] == [[0], [2], [4]]
    assert [i for b in batches for i, _ in b.failed] == [1, 3, 5]
    reasons = dict(f for b in batches for f in b.failed)
    assert reasons[1].startswith("not an audio file") and reasons[3] == "empty audio (0 samples)"
    assert all(b.inputs["input_values"].shape == (1, pipe.num_samples) for b in batches)
    np.testing.assert_array_equal(batches[1].inputs["input_values"][0].numpy(), fit_length(inputs[2], 4000))


# ---------------------------------------------------------------------------------------------- sources
def test_class_folders_with_one_label_set(tmp_path):
    make_audio_folder(tmp_path / "train", per_class=2)
    make_audio_folder(tmp_path / "val", classes=("down", "up", "left"), per_class=1)
    (tmp_path / "train" / "down" / "notes.txt").write_text("not audio")
    write_audio(tmp_path / "train" / "up" / "speaker2" / "deep.flac", tone(1200, SR, 0.3), SR)
    raw = load_raw_splits("audio", DataSource(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val")),
                          audio_column="clip")
    train = raw["train"]
    assert train.features["clip"] == datasets.Audio(decode=False)
    assert train.features["label"].names == ["down", "left", "up"] == raw["validation"].features["label"].names
    files = [Path(r["path"]).name for r in train["clip"]]
    assert len(train) == 5 and "deep.flac" in files and "notes.txt" not in files
    assert train["label"].count(2) == 3 and all(Path(r["path"]).is_absolute() for r in train["clip"])


def test_folder_errors_name_the_fix(tmp_path):
    (tmp_path / "flat").mkdir()
    write_audio(tmp_path / "flat" / "a.wav", tone(440, SR, 0.1), SR)
    with pytest.raises(HFTransferError, match=r"--train_dir '.*flat' has no class subfolders: put audio files in"):
        load_raw_splits("audio", DataSource(train_dir=str(tmp_path / "flat")))
    (tmp_path / "texts" / "a").mkdir(parents=True)
    (tmp_path / "texts" / "a" / "x.txt").write_text("x")
    with pytest.raises(HFTransferError, match="no audio files under the class folders of --train_dir"):
        load_raw_splits("audio", DataSource(train_dir=str(tmp_path / "texts")))
    with pytest.raises(HFTransferError, match="is not a directory"):
        load_raw_splits("audio", DataSource(train_dir=str(tmp_path / "missing")))
    with pytest.raises(HFTransferError, match=r"\(manifest\) and --validation_dir \(audio folder\) mix two kinds"):
        load_raw_splits("audio", DataSource(train_file=str(tmp_path / "m.csv"), validation_dir=str(tmp_path)))


def test_csv_manifest_with_relative_paths(audio_root, tmp_path):
    clips = tmp_path / "clips"
    shutil.copytree(audio_root / "train", clips)
    rows = ["file,label"] + [f"clips/{c}/{i}.wav,{c}" for c in ("down", "up") for i in range(4)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "val.csv").write_text("file,label\n../clips/up/5.wav,up\n../clips/down/5.wav,down\n")
    source = DataSource(train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "val" / "val.csv"))
    raw = load_raw_splits("audio", source, audio_column="file")
    assert raw["train"].features["file"] == datasets.Audio(decode=False)
    assert raw["validation"][0]["file"]["path"] == str(clips / "up" / "5.wav")
    bundle = prepare_splits(raw, "file", "label")
    decoded = AudioPipeline(sampling_rate=SR, max_duration=0.5).prepare(bundle.eval, "file", "validation")
    np.testing.assert_allclose(decoded[0]["file"], read_audio(clips / "up" / "5.wav", SR), atol=1e-7)
    (tmp_path / "bad.csv").write_text("file,label\nclips/up/nope.wav,up\n")
    with pytest.raises(HFTransferError, match=r"row 1: audio file 'clips/up/nope.wav' not found"):
        load_raw_splits("audio", DataSource(train_file=str(tmp_path / "bad.csv")), audio_column="file")
    with pytest.raises(HFTransferError, match=r"no audio column 'audio' .*--audio_column_name"):
        load_raw_splits("audio", DataSource(train_file=str(tmp_path / "train.csv")))


def test_saved_dataset_with_an_audio_feature(audio_root, tmp_path):
    paths = sorted(str(p) for p in (audio_root / "train").rglob("*.wav"))
    labels = [Path(p).parent.name for p in paths]
    # datasets encodes Audio values through torchcodec; casting path strings is Arrow only
    ds = datasets.Dataset.from_dict({"speech": paths, "label": labels}).cast_column("speech", datasets.Audio())
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))
    raw = load_raw_splits("audio", DataSource(dataset_name=str(tmp_path / "saved")))
    assert raw["train"].features["speech"] == datasets.Audio()  # decode=True: datasets alone would need torchcodec
    bundle = prepare_splits(raw, "speech", "label", seed=0)
    pipe = AudioPipeline(sampling_rate=16000, max_duration=0.5)
    decoded = pipe.prepare(bundle.train, "speech", "train")
    assert len(decoded) == len(bundle.train) and len(decoded[0]["speech"]) > 0.8 * 0.5 * 16000
    assert pipe.collate([pipe.eval_view(decoded, "speech")[0]])["input_values"].shape == (1, 8000)


def test_target_domain_audio_folders(audio_root, tmp_path):
    flat = tmp_path / "unlabelled"
    flat.mkdir()
    for i, path in enumerate(sorted((audio_root / "train").rglob("*.wav"))[:5]):
        shutil.copy(path, flat / f"{i}.wav")
    source = DataSource(train_dir=str(flat), validation_dir=str(audio_root / "val"))
    target = load_target_data("audio", source, id2label={0: "down", 1: "up"}, input_column="audio")
    assert len(target.train) == 5 and set(target.train["labels"]) == {-1}
    assert target.train.features["audio"] == datasets.Audio(decode=False)
    assert sorted(target.validation["labels"]) == [0, 0, 0, 1, 1, 1]
    decoded = AudioPipeline(sampling_rate=SR, max_duration=0.5).prepare(target.train, "audio", "target train")
    assert len(decoded) == 5
    labelled = load_target_data("audio", DataSource(train_dir=str(audio_root / "val")), id2label={0: "down", 1: "up"},
                                input_column="audio")  # class folders as target train: labels dropped
    assert len(labelled.train) == 6 and set(labelled.train["labels"]) == {-1}


# ---------------------------------------------------------------------------------------------- bundled FSDD
def test_bundled_fsdd_holds_out_a_speaker():
    if not BUNDLED_AUDIO.is_dir():
        pytest.skip("data/fsdd is not bundled in this checkout")
    splits = {split: sorted((BUNDLED_AUDIO / split).rglob("*.wav")) for split in ("train", "validation")}
    assert len(splits["train"]) == 400 and len(splits["validation"]) == 100
    speakers = {split: {p.name.split("_")[1] for p in files} for split, files in splits.items()}
    assert speakers == {"train": {"george", "jackson", "nicolas", "yweweler"}, "validation": {"theo"}}
    assert all(p.parent.name == p.name[0] for files in splits.values() for p in files)  # class folder = digit
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"
    if shared.is_dir():
        sample = splits["train"][::97] + splits["validation"][::31]
        assert all(p.read_bytes() == (shared / p.name).read_bytes() for p in sample)


def test_parquet_manifest_with_bytes_and_label_lists(audio_root, tmp_path):
    import pandas as pd

    paths = sorted((audio_root / "train").rglob("*.wav"))[:4]
    labels = [["down"], ["down", "noisy"], ["up"], []]
    pd.DataFrame({"sound": [p.read_bytes() for p in paths], "tags": labels}).to_parquet(tmp_path / "train.parquet")
    raw = load_raw_splits("audio", DataSource(train_file=str(tmp_path / "train.parquet")), audio_column="sound",
                          label_column="tags")
    assert raw["train"].features["sound"] == datasets.Audio(decode=False)
    decoded = AudioPipeline(sampling_rate=SR, max_duration=0.5).prepare(raw["train"], "sound", "train")
    np.testing.assert_allclose(decoded[1]["sound"], read_audio(paths[1], SR), atol=1e-7)
    assert decoded["tags"] == labels


def test_prepare_is_cached_until_a_file_changes(tmp_path, monkeypatch):
    import hftransfer.data.audio as audio

    make_audio_folder(tmp_path / "train", per_class=2)
    pipe = AudioPipeline(sampling_rate=SR, max_duration=0.5)
    first = pipe.prepare(load_raw_splits("audio", DataSource(train_dir=str(tmp_path / "train")))["train"], "audio",
                         "train")

    def no_decode(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(audio, "read_audio", no_decode)
    raw = load_raw_splits("audio", DataSource(train_dir=str(tmp_path / "train")))["train"]
    np.testing.assert_array_equal(pipe.prepare(raw, "audio", "train")[0]["audio"], first[0]["audio"])
    monkeypatch.undo()
    write_audio(tmp_path / "train" / "down" / "0.wav", tone(440, SR, 0.1), SR)  # the same path, new content
    raw = load_raw_splits("audio", DataSource(train_dir=str(tmp_path / "train")))["train"]
    assert len(pipe.prepare(raw, "audio", "train")[0]["audio"]) == round(0.1 * SR)


def test_speed_perturbation_resamples_tempo_and_pitch_and_is_seeded(prepared):
    from hftransfer.data.audio import change_speed

    wave = tone(440, SR, seconds=0.5)
    fast = change_speed(wave, 1.25)
    assert len(fast) == round(len(wave) / 1.25)
    peak = np.argmax(np.abs(np.fft.rfft(fast))) * SR / len(fast)
    assert abs(peak - 550) < 10  # 440 Hz played 1.25x faster
    plain = train_pipeline(gain_db=0.0, shift=0.0, time_masks=0, freq_masks=0).train_view(prepared, "audio")
    sped, again = (train_pipeline(gain_db=0.0, shift=0.0, time_masks=0, freq_masks=0, speed=0.2)
                   .train_view(prepared, "audio") for _ in range(2))
    assert not np.array_equal(sped[0]["input_values"], plain[0]["input_values"])
    np.testing.assert_array_equal(sped[0]["input_values"], again[0]["input_values"])
    with pytest.raises(HFTransferError, match="speed is 1.5: use a fraction"):
        AudioAugmentation(speed=1.5)


def test_an_empty_split_prepares_to_an_empty_split(audio_root):
    # hftransfer rank extracts the train split only, with an empty eval split beside it
    raw = load_raw_splits("audio", DataSource(train_dir=str(audio_root / "train")))
    bundle = prepare_splits(raw, "audio", "label")
    empty = AudioPipeline(sampling_rate=SR, max_duration=0.5).prepare(bundle.train.select([]), "audio", "eval")
    assert len(empty) == 0
