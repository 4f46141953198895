"""Data loading: splits, labels and every user-fixable problem as a one-line error."""
import json

import pytest
from builders import make_image_folder, make_text_file

from hftransfer import HFTransferError
from hftransfer.data import INDEX_COLUMN, DataSource, load_raw_splits, prepare_splits
from hftransfer.data.preprocessing import decode_images


def text_bundle(train, val=None, **kw):
    raw = load_raw_splits("text", DataSource(train_file=str(train), validation_file=str(val) if val else None))
    return prepare_splits(raw, kw.pop("input_column", "text"), kw.pop("label_column", "label"), **kw)


def test_image_folder_labels_from_subfolders(image_data):
    raw = load_raw_splits("image", DataSource(train_dir=str(image_data["train"]), validation_dir=str(image_data["val"])))
    bundle = prepare_splits(raw, "image", "label")
    assert bundle.id2label == {0: "cats", 1: "dogs"}
    assert not bundle.multi_label
    assert len(bundle.train) == 12
    assert len(bundle.eval) == 10
    assert sorted(bundle.eval[INDEX_COLUMN]) == list(range(10))
    assert set(bundle.train.column_names) == {"image", "labels", INDEX_COLUMN}


def test_string_labels_and_held_out_validation(text_data):
    bundle = text_bundle(text_data["train"], validation_fraction=0.25, seed=3)
    assert bundle.id2label == {0: "neg", 1: "pos"}
    assert len(bundle.train) == 18
    assert len(bundle.eval) == 6
    again = text_bundle(text_data["train"], validation_fraction=0.25, seed=3)
    assert again.eval["text"] == bundle.eval["text"]  # the held-out split is reproducible


def test_label_names_override_and_max_samples(text_data):
    bundle = text_bundle(text_data["train"], text_data["val"], label_names=["negative", "positive"],
                         max_train_samples=5, max_eval_samples=4)
    assert bundle.id2label == {0: "negative", 1: "positive"}
    assert len(bundle.train) == 5
    assert len(bundle.eval) == 4


def test_multi_label_rows_become_multi_hot(tmp_path):
    rows = [{"text": "a b", "label": ["x", "y"]}, {"text": "c", "label": ["y"]}, {"text": "d", "label": []}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows * 3))
    bundle = text_bundle(tmp_path / "t.jsonl", validation_fraction=0.34)
    assert bundle.multi_label
    assert bundle.id2label == {0: "x", 1: "y"}
    assert all(len(v) == 2 and set(v) <= {0.0, 1.0} for v in bundle.train["labels"])


def test_missing_column_names_the_columns(text_data):
    with pytest.raises(HFTransferError, match=r"column 'sentence' not found.*columns: text, label.*--image_column_name/--text_column_name"):
        text_bundle(text_data["train"], input_column="sentence")


def test_empty_dataset(tmp_path):
    (tmp_path / "e.csv").write_text("text,label\n")
    with pytest.raises(HFTransferError, match="empty"):
        text_bundle(tmp_path / "e.csv")


def test_validation_label_unseen_in_training(tmp_path, text_data):
    make_text_file(tmp_path / "v.csv", n=6, labels=("neg", "pos", "meh"))
    with pytest.raises(HFTransferError, match="validation label.*meh.*never occur in the training data"):
        text_bundle(text_data["train"], tmp_path / "v.csv")


def test_validation_class_folder_unseen_in_training(tmp_path):
    make_image_folder(tmp_path / "train", classes=("a", "b"), per_class=2)
    make_image_folder(tmp_path / "val", classes=("a", "b", "c"), per_class=2)
    raw = load_raw_splits("image", DataSource(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val")))
    with pytest.raises(HFTransferError, match="validation label.*c never occur"):
        prepare_splits(raw, "image", "label")


@pytest.mark.parametrize("content", [b"this is not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_corrupt_or_non_image_file_is_named(tmp_path, content):
    make_image_folder(tmp_path / "train", per_class=2)
    (tmp_path / "train" / "cats" / "broken.png").write_bytes(content)
    raw = load_raw_splits("image", DataSource(train_dir=str(tmp_path / "train")))
    bundle = prepare_splits(raw, "image", "label", validation_fraction=0.2)
    with pytest.raises(HFTransferError, match=r"cannot read image '.*broken.png'.*remove or replace"):
        decode_images(bundle.train, "image")
        decode_images(bundle.eval, "image")


@pytest.mark.parametrize("kwargs,match", [
    ({"train_dir": "/nonexistent"}, "is not a directory"),
    ({}, "no training data"),
])
def test_bad_image_paths(kwargs, match):
    with pytest.raises(HFTransferError, match=match):
        load_raw_splits("image", DataSource(**kwargs))


def test_unsupported_text_file(tmp_path):
    (tmp_path / "t.parquetx").write_text("x")
    with pytest.raises(HFTransferError, match="unsupported text file type"):
        load_raw_splits("text", DataSource(train_file=str(tmp_path / "t.parquetx")))


def test_decode_images_shrinks_once_and_keeps_small_images(tmp_path):
    from PIL import Image

    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (640, 480), (200, 10, 10)).save(tmp_path / "train" / "a" / "big.jpg")
    Image.new("L", (40, 30), 128).save(tmp_path / "train" / "a" / "small.png")
    raw = load_raw_splits("image", DataSource(train_dir=str(tmp_path / "train")))
    decoded = decode_images(raw["train"], "image", shorter_side=256)
    sizes = sorted(im.size for im in decoded["image"])
    assert sizes == [(40, 30), (341, 256)]
    assert all(im.mode == "RGB" for im in decoded["image"])


def test_uint8_pipeline_matches_timm_normalization():
    """uint8 batches normalized on the device give the features of timm's float preprocessing."""
    import numpy as np
    import timm
    import torch
    from PIL import Image

    from hftransfer import create_backbone
    from hftransfer.data.preprocessing import image_transforms

    backbone = create_backbone("image", "test_efficientnet", weights="random").eval()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    cfg = backbone.data_config
    as_uint8 = image_transforms(cfg, False, as_uint8=True)(image)
    as_float = image_transforms(cfg, False)(image)
    reference = timm.data.create_transform(**cfg, is_training=False)(image)
    assert as_uint8.dtype == torch.uint8
    assert torch.allclose(as_float, reference, atol=0.02)
    with torch.no_grad():
        assert torch.allclose(backbone(pixel_values=as_uint8[None]), backbone(pixel_values=as_float[None]), atol=1e-4)


def test_json_lines_may_hold_raw_line_separators_inside_strings(tmp_path):
    """JSON Lines ends records at newlines only; rotten_tomatoes holds a raw U+0085 inside one sentence."""
    rows = [{"text": "an odd\u0085dash", "label": "pos"}, {"text": "a\u2028b", "label": "neg"}] * 4
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    bundle = text_bundle(tmp_path / "t.jsonl", validation_fraction=0.25)
    assert len(bundle.train) + len(bundle.eval) == 8
