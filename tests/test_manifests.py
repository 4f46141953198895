"""Images from manifests (CSV / JSONL / Parquet: paths or bytes, single or multi-label) and save_to_disk folders."""
from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from builders import IMAGE_TINY, ROOT, image_inputs, make_text_file, read_results
from PIL import Image

from hftransfer import HFTransferError, TransferModel, cli
from hftransfer.config import TrainConfig
from hftransfer.data import DataSource, load_raw_splits, prepare_splits
from hftransfer.data.preprocessing import collate_images, decode_images

# row i: image i (brightness by the first label), its labels; "dog" co-occurs with both
ROWS = [["cat"], ["cat", "dog"], ["bird"], ["bird", "dog"], ["cat"], ["bird", "dog"], ["cat", "dog"], ["bird"]]


def make_images(folder, n: int = len(ROWS), size: int = 24) -> list:
    """``n`` small PNGs ``folder/i.png``, brighter for rows whose first label is "bird"."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        base = 200 if ROWS[i % len(ROWS)][0] == "bird" else 50
        pixels = np.clip(rng.normal(base, 20, (size, size, 3)), 0, 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return paths


def write_csv(path, rows: list[tuple[str, str]], header="image,label"):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header] + [f"{image},{label}" for image, label in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def multi_label_csv(tmp_path):
    """train.csv next to imgs/ (relative paths, cat|dog cells), val/val.csv one folder down (../imgs paths)."""
    make_images(tmp_path / "imgs")
    train = write_csv(tmp_path / "train.csv", [(f"imgs/{i}.png", "|".join(labels)) for i, labels in enumerate(ROWS)])
    # plain single labels and a JSON list (quoted: it holds commas): read as lists, as training is
    val = write_csv(tmp_path / "val" / "val.csv", [("../imgs/0.png", "cat"), ("../imgs/2.png", "bird"),
                                                   ("../imgs/3.png", '"[""bird"", ""dog""]"')])
    return train, val


def image_bundle(train, val=None, test=None, **kw):
    source = DataSource(train_file=str(train), validation_file=str(val) if val else None,
                        test_file=str(test) if test else None)
    raw = load_raw_splits("image", source, image_column=kw.pop("image_column", "image"),
                          label_column=kw.pop("label_column", "label"))
    return prepare_splits(raw, "image", "label", **kw)


def test_csv_manifest_with_label_lists_is_multi_label_with_paths_from_its_folder(tmp_path):
    train, val = multi_label_csv(tmp_path)
    bundle = image_bundle(train, val)
    assert bundle.multi_label
    assert bundle.id2label == {0: "bird", 1: "cat", 2: "dog"}
    assert bundle.train["labels"][:2] == [[0.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
    assert bundle.eval["labels"] == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 1.0]]
    paths = bundle.eval.cast_column("image", datasets.Image(decode=False))["image"]
    assert [p["path"] for p in paths] == [str((tmp_path / "imgs" / f"{i}.png").resolve()) for i in (0, 2, 3)]
    assert decode_images(bundle.eval, "image")[0]["image"].size == (24, 24)


def test_csv_manifest_with_plain_labels_is_single_label_and_takes_absolute_paths(tmp_path):
    images = make_images(tmp_path / "elsewhere")
    train = write_csv(tmp_path / "data" / "train.csv", [(str(p), ROWS[i][0]) for i, p in enumerate(images)])
    bundle = image_bundle(train, validation_fraction=0.25)
    assert not bundle.multi_label
    assert bundle.id2label == {0: "bird", 1: "cat"}
    assert len(bundle.train) + len(bundle.eval) == len(ROWS)
    assert set(bundle.train["labels"]) == {0, 1}


def test_jsonl_manifest_lists_keep_an_empty_list_and_skip_an_empty_image(tmp_path, caplog):
    images = make_images(tmp_path / "imgs")
    rows = [{"image": f"imgs/{i}.png", "label": labels} for i, labels in enumerate(ROWS)]
    rows += [{"image": str(images[0]), "label": []},
             {"image": None, "label": ["cat"]}, {"image": " ", "label": ["cat"]}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    val_rows = [{"image": f"imgs/{i}.png", "label": ROWS[i]} for i in (1, 2)]
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(r) for r in val_rows) + "\n")
    with caplog.at_level("WARNING", logger="hftransfer"):
        bundle = image_bundle(tmp_path / "train.jsonl", tmp_path / "val.jsonl")
    assert bundle.multi_label
    assert len(bundle.train) == len(ROWS) + 1  # the empty list stays ("none of the labels"), the empty images go
    assert [0.0, 0.0, 0.0] in bundle.train["labels"]
    assert "skipped 2 of 11 train rows" in caplog.text


def test_parquet_manifest_with_bytes_and_with_datasets_image_records(tmp_path):
    import pandas as pd

    images = make_images(tmp_path / "imgs")
    pd.DataFrame({"picture": [p.read_bytes() for p in images], "tags": ROWS}).to_parquet(tmp_path / "train.parquet")
    # {"bytes", "path"} records, the shape of a datasets Image column: one path-only (relative), one with bytes
    records = [{"bytes": None, "path": "imgs/1.png"}, {"bytes": images[2].read_bytes(), "path": "gone.png"}]
    pd.DataFrame({"picture": records, "tags": [ROWS[1], ROWS[2]]}).to_parquet(tmp_path / "val.parquet")
    # and a datasets-written Parquet file: an Image feature, the bytes embedded by to_parquet
    test = datasets.Dataset.from_dict({"picture": [str(images[3])], "tags": [ROWS[3]]},
                                      features=datasets.Features({"picture": datasets.Image(),
                                                                  "tags": datasets.List(datasets.Value("string"))}))
    test.to_parquet(tmp_path / "test.parquet")
    source = DataSource(train_file=str(tmp_path / "train.parquet"), validation_file=str(tmp_path / "val.parquet"),
                        test_file=str(tmp_path / "test.parquet"))
    raw = load_raw_splits("image", source, image_column="picture", label_column="tags")
    bundle = prepare_splits(raw, "picture", "tags")
    assert bundle.multi_label and bundle.id2label == {0: "bird", 1: "cat", 2: "dog"}
    assert isinstance(bundle.train.features["picture"], datasets.Image)
    decoded = decode_images(bundle.eval, "picture")  # the path-only record resolved, the bytes ignore their path
    assert [im.size for im in decoded["picture"]] == [(24, 24), (24, 24)]
    assert bundle.eval["labels"] == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    assert bundle.test["labels"] == [[1.0, 0.0, 1.0]]
    assert decode_images(bundle.test, "picture")[0]["picture"].size == (24, 24)


def test_a_missing_image_is_named_with_manifest_and_row(tmp_path):
    images = make_images(tmp_path / "imgs", n=3)
    good = write_csv(tmp_path / "good.csv", [(f"imgs/{i}.png", "cat" if i else "dog") for i in range(3)])
    assert len(image_bundle(good, validation_fraction=0.4).train) == 2
    images[2].unlink()  # checked on every load, also when datasets has the manifest cached
    with pytest.raises(HFTransferError, match=r"good.csv: row 3: image 'imgs/2.png' not found"):
        image_bundle(good, validation_fraction=0.4)
    train = write_csv(tmp_path / "train.csv", [("imgs/0.png", "cat"), ("imgs/nope.png", "dog"),
                                               ("imgs/1.png", "dog"), ("/abs/gone.png", "cat")])
    with pytest.raises(HFTransferError, match=r"train.csv: row 2: image 'imgs/nope.png' not found \(.*imgs/nope.png\) "
                                              r"\(and 1 more row\(s\)\): fix the path"):
        image_bundle(train)


def test_a_broken_json_label_cell_and_a_wrong_image_column_are_one_line(tmp_path):
    make_images(tmp_path / "imgs", n=2)
    broken = write_csv(tmp_path / "broken.csv", [("imgs/0.png", "cat"), ("imgs/1.png", "\"['cat', 'dog']\"")])
    with pytest.raises(HFTransferError, match=r"broken.csv: row 2: label cell .* is not a JSON list"):
        image_bundle(broken)
    good = write_csv(tmp_path / "good.csv", [("imgs/0.png", "cat"), ("imgs/1.png", "dog")], header="path,label")
    with pytest.raises(HFTransferError, match=r"no image column 'image' \(columns: path, label\): pass --image_col"):
        image_bundle(good)
    numbers = write_csv(tmp_path / "numbers.csv", [("1", "cat"), ("2", "dog")])
    with pytest.raises(HFTransferError, match=r"column 'image' holds .*int64.*, not image paths or bytes"):
        image_bundle(numbers)


def test_manifests_of_different_formats_are_refused(tmp_path):
    train, _ = multi_label_csv(tmp_path)
    (tmp_path / "val.jsonl").write_text(json.dumps({"image": "imgs/0.png", "label": ["cat"]}) + "\n")
    with pytest.raises(HFTransferError, match=r"different formats \(.csv, .jsonl\)"):
        image_bundle(train, tmp_path / "val.jsonl")


def test_a_manifest_and_an_image_folder_in_one_run_are_refused(tmp_path):
    train, _ = multi_label_csv(tmp_path)
    (tmp_path / "val_dir" / "cat").mkdir(parents=True)
    message = r"--train_file \(manifest\) and --validation_dir \(image folder\) mix two kinds of input"
    with pytest.raises(HFTransferError, match=message):
        load_raw_splits("image", DataSource(train_file=str(train), validation_dir=str(tmp_path / "val_dir")))
    with pytest.raises(HFTransferError, match=message):
        TrainConfig(model_name_or_path="test_efficientnet", train_file=str(train),
                    validation_dir=str(tmp_path / "val_dir")).validate()


def test_multi_hot_labels_collate_to_a_float_matrix():
    examples = [{"pixel_values": torch.zeros(3, 4, 4, dtype=torch.uint8), "labels": [1.0, 0.0, 1.0]},
                {"pixel_values": torch.zeros(3, 4, 4, dtype=torch.uint8), "labels": [0.0, 0.0, 0.0]}]
    batch = collate_images(examples)
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].shape == (2, 3)


def test_save_to_disk_folders_load_as_dataset_name_with_their_label_names(tmp_path):
    images = make_images(tmp_path / "imgs")
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["bird", "cat", "zebra"])})

    def split(idx):
        return datasets.Dataset.from_dict({"image": [str(images[i]) for i in idx],
                                           "label": [0 if ROWS[i][0] == "bird" else 1 for i in idx]}, features=features)

    datasets.DatasetDict({"train": split(range(6)), "validation": split([6, 7])}).save_to_disk(tmp_path / "saved_dict")
    for i in range(len(images)):
        images[i].unlink()  # save_to_disk embedded the bytes: the folder stands alone
    raw = load_raw_splits("image", DataSource(dataset_name=str(tmp_path / "saved_dict")))
    bundle = prepare_splits(raw, "image", "label")
    assert bundle.id2label == {0: "bird", 1: "cat"}  # ClassLabel names kept, the one training never shows dropped
    assert len(bundle.train) == 6 and len(bundle.eval) == 2
    assert decode_images(bundle.eval, "image")[0]["image"].size == (24, 24)

    text = datasets.load_dataset("csv", data_files=str(make_text_file(tmp_path / "t.csv")))["train"]
    text.save_to_disk(tmp_path / "saved_text")  # a single Dataset: the train split
    bundle = prepare_splits(load_raw_splits("text", DataSource(dataset_name=str(tmp_path / "saved_text"))), "text", "label",
                            validation_fraction=0.25)
    assert bundle.id2label == {0: "neg", 1: "pos"}
    assert len(bundle.train) == 18 and len(bundle.eval) == 6
    with pytest.raises(HFTransferError, match="--dataset_config_name 'plain' does not apply to .*save_to_disk"):
        load_raw_splits("text", DataSource(dataset_name=str(tmp_path / "saved_text"), dataset_config_name="plain"))


def test_a_multi_label_image_run_from_a_csv_manifest_trains_and_exports(tmp_path):
    train, val = multi_label_csv(tmp_path)
    out = tmp_path / "run"
    argv = [*IMAGE_TINY, "--train_file", train, "--validation_file", val, "--test_file", val, "--output_dir", out,
            "--num_train_epochs", "2", "--strategy", "lp_ft", "--lp_epochs", "1", "--decode_size", "0"]
    cli.run_recipe("image", ROOT / "recipes" / "configs" / "image_cls.yaml", list(map(str, argv)))
    results = read_results(out)
    assert results["train_samples"] == len(ROWS) and results["eval_samples"] == 3
    assert set(results["eval_per_class"]) == {"bird", "cat", "dog"}
    assert results["test_samples"] == 3
    assert all((out / name).is_file() for name in ("model.safetensors", "confusion_matrix.png", "README.md"))
    predictions = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert all(len(p["label"]) == 3 and len(p["prediction"]) == 3 for p in predictions)
    model = TransferModel.from_pretrained(out)
    assert model.multi_label and model.id2label == {0: "bird", 1: "cat", 2: "dog"}
    assert model.eval()(pixel_values=image_inputs(model)).logits.shape == (2, 3)


def test_a_missing_manifest_image_stops_the_recipe_with_one_line(tmp_path, capsys):
    make_images(tmp_path / "imgs", n=2)
    train = write_csv(tmp_path / "train.csv", [("imgs/0.png", "cat"), ("imgs/1.png", "dog"), ("imgs/9.png", "dog")])
    argv = [*IMAGE_TINY, "--train_file", train, "--output_dir", tmp_path / "run"]
    with pytest.raises(SystemExit) as exit_info:
        cli.run_recipe("image", ROOT / "recipes" / "configs" / "image_cls.yaml", list(map(str, argv)))
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train.csv: row 3: image 'imgs/9.png' not found" in errors[0]
    assert not (tmp_path / "run" / "model.safetensors").exists()

