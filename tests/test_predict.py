"""``hftransfer predict`` and ``TransferModel.predict``: inputs, outputs, the skip policy, and parity with a run.

Tiny random-init models saved with ``save_pretrained``, and two tiny training runs in this process whose
validation splits must come out exactly as their ``eval_predictions.jsonl``. One test runs the
command in a fresh interpreter (integration).
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import datasets
import pytest
import torch
from builders import (
    LABELS,
    ROOT,
    TEXTS,
    image_args,
    image_model,
    make_image_folder,
    noise_image,
    randomize_head,
    run_python,
    text_model,
)

from hftransfer import HFTransferError, TransferModel, cli, create_transfer_model
from hftransfer.cli.predict import run
from hftransfer.config import TrainConfig
from hftransfer.files import read_yaml
from hftransfer.models.inference import InferenceSettings
from hftransfer.models.predictions import to_predictions
from hftransfer.training.inputs import load_data

MULTI_LABELS = {0: "action", 1: "comedy", 2: "drama"}


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    return image_model().save_pretrained(tmp_path_factory.mktemp("image_model"))  # 3 labels: ants, bees, wasps


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two class folders of PNGs, a nested folder, a hidden file that folders leave out, and a README."""
    root = make_image_folder(tmp_path_factory.mktemp("photos"), per_class=3, size=40)
    (root / "cats" / "more").mkdir()
    noise_image(7, size=50).save(root / "cats" / "more" / "deep.jpg")
    noise_image(8).save(root / "cats" / ".hidden.png")
    (root / "README.txt").write_text("not an image, and without an image suffix: folders leave it out")
    return root


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory, tiny_bert) -> Path:
    return text_model(tiny_bert).save_pretrained(tmp_path_factory.mktemp("text_model"))


@pytest.fixture(scope="module")
def multi_label_dir(tmp_path_factory, tiny_bert) -> Path:
    torch.manual_seed(0)
    model = create_transfer_model("text", str(tiny_bert), MULTI_LABELS, multi_label=True, pooling="pooler")
    return randomize_head(model, seed=3).save_pretrained(tmp_path_factory.mktemp("multi_label_model"))


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, image_data) -> Path:
    out = tmp_path_factory.mktemp("image_run") / "run"
    argv = image_args(image_data, out, "--num_train_epochs", "1", "--checkpointing_steps", "no")
    cli.run_recipe("image", ROOT / "recipes" / "configs" / "image_cls.yaml", list(map(str, argv)))
    return out


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, text_data, tiny_bert) -> Path:
    """A tiny text run with --max_seq_length 6: most sentences are truncated, so predict must use the run's length."""
    out = tmp_path_factory.mktemp("text_run") / "run"
    argv = ["--model_name_or_path", tiny_bert, "--train_file", text_data["train"], "--validation_file", text_data["val"],
            "--output_dir", out, "--num_train_epochs", "1", "--per_device_train_batch_size", "4",
            "--max_seq_length", "6", "--checkpointing_steps", "no", "--learning_rate", "1e-3"]
    cli.run_recipe("text", ROOT / "recipes" / "configs" / "text_cls.yaml", list(map(str, argv)))
    return out


def predict_cli(*argv, stdin: str = "") -> list[dict]:
    """``hftransfer predict`` in this process; the JSON Lines it prints on stdout."""
    out = io.StringIO()
    run(list(map(str, argv)), stdin=io.StringIO(stdin), stdout=out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- parity with a run
def test_image_predictions_for_the_validation_split_equal_eval_predictions(image_run, image_data, tmp_path):
    out = tmp_path / "preds.jsonl"
    predict_cli(image_run, image_data["val"], "--output", out, "--batch_size", "3")  # batches differ from eval's 4
    preds = {str(Path(p["input"]).resolve()): p for p in read_jsonl(out)}
    bundle = load_data(TrainConfig(**read_yaml(image_run / "config.yaml")), "image")
    paths = [str(Path(x["path"]).resolve()) for x in bundle.eval.cast_column("image", datasets.Image(decode=False))["image"]]
    label2id = {v: k for k, v in bundle.id2label.items()}
    evaluated = read_jsonl(image_run / "eval_predictions.jsonl")
    assert len(preds) == len(paths) == len(evaluated) == 10
    assert [label2id[preds[p]["label"]] for p in paths] == [e["prediction"] for e in evaluated]


def test_text_predictions_equal_eval_predictions_with_the_runs_max_seq_length(text_run, text_data, tmp_path):
    assert InferenceSettings.from_run(text_run).max_seq_length == 6
    assert InferenceSettings.from_run(text_run / "best_model").max_seq_length == 6  # best_model/ reads its run's config
    preds = predict_cli(text_run, text_data["val"], "--batch_size", "5")
    evaluated = read_jsonl(text_run / "eval_predictions.jsonl")
    label2id = TransferModel.from_pretrained(text_run).label2id
    assert len(preds) == len(evaluated) == 13
    assert [label2id[p["label"]] for p in preds] == [e["prediction"] for e in evaluated]
    with open(text_data["val"], newline="") as f:
        assert [p["input"] for p in preds] == [row["text"] for row in csv.DictReader(f)]
    # the labels of 2 classes rarely flip, the scores show which length was used: the run's 6, not the default 128
    model = TransferModel.from_pretrained(text_run)
    with torch.no_grad():
        for length, same in ((6, True), (128, False)):
            encoded = model.backbone.tokenizer([p["input"] for p in preds], truncation=True, max_length=length,
                                               padding=True, return_tensors="pt")
            scores = torch.softmax(model(**encoded).logits, -1).max(-1).values.tolist()
            assert (pytest.approx(scores, abs=1e-5) == [p["score"] for p in preds]) is same, length


def test_a_hub_repo_id_fetches_the_runs_config_yaml(hub, text_run, text_data):
    from hftransfer.hub.push import push_output_dir

    push_output_dir(text_run, "me/tiny-text", private=False, revision=None, create_pr=False)
    assert predict_cli("me/tiny-text", text_data["val"]) == predict_cli(text_run, text_data["val"])


# ---------------------------------------------------------------------------------------------- inputs
def test_image_folders_globs_and_files(image_dir, photos):
    from_folder = predict_cli(image_dir, photos, "--top_k", "2")
    names = sorted(str(p.relative_to(photos)) for p in photos.rglob("*.*") if p.suffix in (".png", ".jpg")
                   and not p.name.startswith("."))
    assert sorted(str(Path(p["input"]).relative_to(photos)) for p in from_folder) == names  # 7: nested in, hidden out
    for p in from_folder:
        assert p["label"] in LABELS.values() and p["label"] == p["top_k"][0]["label"]
        assert p["score"] == p["top_k"][0]["score"] and len(p["top_k"]) == 2
        assert p["top_k"][0]["score"] >= p["top_k"][1]["score"]
    by_input = {p["input"]: p for p in from_folder}
    globbed = predict_cli(image_dir, f"{photos}/dogs/*.png", photos / "cats" / "0.png", "--top_k", "2")
    assert [Path(p["input"]).name for p in globbed] == ["0.png", "1.png", "2.png", "0.png"]
    for p in globbed:  # the same image gives the same prediction whatever else is in its batch
        assert p["label"] == by_input[p["input"]]["label"]
        assert p["score"] == pytest.approx(by_input[p["input"]]["score"], abs=1e-5)
    recursive = predict_cli(image_dir, f"{photos}/**/*.jpg")
    assert [Path(p["input"]).name for p in recursive] == ["deep.jpg"]
    listed = predict_cli(image_dir, "-", stdin=f"{photos / 'cats' / '1.png'}\n\n{photos / 'dogs' / '2.png'}\n")
    assert [Path(p["input"]).name for p in listed] == ["1.png", "2.png"]


def test_texts_from_csv_tsv_jsonl_json_txt_and_stdin_keep_their_order(text_dir, tmp_path):
    (tmp_path / "a.csv").write_text('sentence,id\n"the movie, was good",1\na bad plot,2\n')
    (tmp_path / "b.tsv").write_text("sentence\tid\nnot very great actor\t3\n")
    (tmp_path / "c.jsonl").write_text('{"sentence": "good"}\n\n{"sentence": "the plot is dull"}\n')
    (tmp_path / "d.json").write_text('[{"sentence": "awful film"}, "a very good film"]')
    (tmp_path / "e.txt").write_text("superb\n\nthe actor was fine\n")
    preds = predict_cli(text_dir, *(tmp_path / n for n in ("a.csv", "b.tsv", "c.jsonl", "d.json", "e.txt")), "-",
                        "--text_column_name", "sentence", "--batch_size", "2", stdin="from stdin\n\nagain\n")
    texts = ["the movie, was good", "a bad plot", "not very great actor", "good", "the plot is dull", "awful film",
             "a very good film", "superb", "the actor was fine", "from stdin", "again"]
    assert [p["input"] for p in preds] == texts
    # batched longest first, returned in input order: each equals the text predicted on its own (no padding)
    model = TransferModel.from_pretrained(text_dir)
    for p in preds:
        with torch.no_grad():
            probs = torch.softmax(model(**model.backbone.tokenizer(p["input"], return_tensors="pt")).logits[0], -1)
        assert p["label"] == model.id2label[int(probs.argmax())]
        assert p["score"] == pytest.approx(float(probs.max()), abs=1e-5)
    folder = predict_cli(text_dir, tmp_path, "--text_column_name", "sentence")  # a folder: its text files, sorted
    assert [p["input"] for p in folder] == texts[:9]


def test_csv_output_and_top_k_capped_at_the_labels(image_dir, photos, tmp_path):
    out = tmp_path / "preds.csv"
    predict_cli(image_dir, photos / "dogs", "--output", out, "--top_k", "10")
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["input", "label", "score", "top_k"] and len(rows) == 3
    for row in rows:
        top = json.loads(row["top_k"])
        assert top[0]["label"] == row["label"] and float(row["score"]) == top[0]["score"]
        assert sorted(t["label"] for t in top) == sorted(LABELS.values())  # 10 asked, 3 labels
        assert sum(t["score"] for t in top) == pytest.approx(1.0, abs=1e-5)  # softmax over every label


def test_multi_label_threshold(multi_label_dir):
    model = TransferModel.from_pretrained(multi_label_dir)
    with torch.no_grad():
        probs = torch.sigmoid(model(**model.backbone.tokenizer(TEXTS, return_tensors="pt", padding=True)).logits)
    for threshold in (0.0, 0.3, 0.5, 0.7, 1.0):
        preds = model.predict(TEXTS, threshold=threshold, top_k=2, device="cpu")
        for p, row in zip(preds, probs):
            expected = sorted((i for i in range(3) if row[i] > threshold), key=lambda i: -row[i])
            assert p["label"] == [MULTI_LABELS[i] for i in expected]
            assert p["score"] == pytest.approx([float(row[i]) for i in expected], abs=1e-5)
            assert len(p["top_k"]) == 2
    assert all(len(p["label"]) == 3 for p in model.predict(TEXTS, threshold=0.0))  # every label
    assert all(p["label"] == [] for p in model.predict(TEXTS, threshold=1.0))


def test_the_threshold_decides_on_logits_like_evaluation():
    # sigmoid(1e-9) rounds to exactly 0.5 in float32, yet evaluation's rule (logit > 0) calls it positive
    preds = to_predictions(torch.tensor([[1e-9, -1e-9]]), {0: "a", 1: "b"}, multi_label=True, threshold=0.5)
    assert preds[0]["label"] == ["a"]


def test_python_api_takes_pil_images_and_single_inputs(image_dir, photos):
    model = TransferModel.from_pretrained(image_dir)
    from PIL import Image

    path = photos / "cats" / "0.png"
    from_path = model.predict(str(path), device="cpu")
    from_pil = model.predict([Image.open(path), noise_image(3)], device="cpu")
    assert len(from_path) == 1 and from_path[0]["input"] == str(path)
    assert from_pil[0]["input"] == str(path) and from_pil[1]["input"] == "image 1"
    assert from_pil[0]["label"] == from_path[0]["label"]
    assert from_pil[0]["score"] == pytest.approx(from_path[0]["score"], abs=1e-5)
    assert model.training is False


# ---------------------------------------------------------------------------------------------- the skip policy
def test_unreadable_inputs_are_skipped_counted_and_listed(image_dir, photos, tmp_path, capsys):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "ok.png").write_bytes((photos / "cats" / "0.png").read_bytes())
    preds = predict_cli(image_dir, tmp_path, "-", stdin=f"{tmp_path / 'missing.png'}\n")
    assert [Path(p["input"]).name for p in preds] == ["ok.png"]
    err = capsys.readouterr().err
    assert "skipped 2 of 3 input(s) that could not be read" in err
    assert f"{tmp_path / 'broken.jpg'}: UnidentifiedImageError" in err
    assert f"{tmp_path / 'missing.png'}: FileNotFoundError" in err


def test_empty_and_broken_text_rows_are_skipped_with_file_and_line(text_dir, tmp_path, capsys):
    (tmp_path / "t.csv").write_text("text,label\ngood,1\n,0\nbad,0\n")
    (tmp_path / "t.jsonl").write_text('{"text": "fine"}\n{"text": "broken"\n{"other": "x"}\n')
    preds = predict_cli(text_dir, tmp_path / "t.csv", tmp_path / "t.jsonl")
    assert [p["input"] for p in preds] == ["good", "bad", "fine"]
    err = capsys.readouterr().err
    assert "skipped 3 of 6 input(s)" in err
    assert f"{tmp_path / 't.csv'}:3: empty 'text'" in err
    assert f"{tmp_path / 't.jsonl'}:2: not valid JSON" in err and f"{tmp_path / 't.jsonl'}:3: no 'text' key" in err


def test_python_api_raises_on_an_unreadable_image_unless_asked_to_skip(image_dir, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    model = TransferModel.from_pretrained(image_dir)
    with pytest.raises(HFTransferError, match="cannot read image .*broken.jpg.*skip_unreadable=True"):
        model.predict([noise_image(0), str(tmp_path / "broken.jpg")], device="cpu")
    preds = model.predict([noise_image(0), str(tmp_path / "broken.jpg")], device="cpu", skip_unreadable=True)
    assert [p["input"] for p in preds] == ["image 0"]


# ---------------------------------------------------------------------------------------------- one-line errors
def _one_error_line(argv, capsys, stdin: str = "") -> str:
    with pytest.raises(SystemExit) as exit_info:
        old, sys.stdin = sys.stdin, io.StringIO(stdin)
        try:
            cli.main(["predict", *map(str, argv)])
        finally:
            sys.stdin = old
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


@pytest.mark.parametrize("extra,match", [
    (["--output", "preds.txt"], "must end in .jsonl or .csv"),
    (["--top_k", "0"], "--top_k 0 is out of range"),
    (["--batch_size", "0"], "--batch_size 0 is out of range"),
    (["--threshold", "1.5"], "--threshold 1.5 is out of range"),
    (["--top", "1"], "unrecognized arguments: --top"),  # no abbreviations
    (["--device", "tpu9"], "unknown device 'tpu9'"),
    (["{photos}/*.gif"], "matches no file or folder"),
    (["--strict"], "cannot read image"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_arguments_give_one_line_and_exit_2(extra, match, image_dir, photos, tmp_path, capsys):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    line = _one_error_line([image_dir, tmp_path, *(e.format(photos=photos) for e in extra)], capsys)
    assert match in line, line


def test_bad_models_and_text_inputs_give_one_line(text_dir, tmp_path, capsys):
    (tmp_path / "t.csv").write_text("sentence,label\ngood,1\n")
    assert "has no column 'text'" in _one_error_line([text_dir, tmp_path / "t.csv", "--strict"], capsys)
    missing = tmp_path / "no_such_run"  # a path, never mistaken for a Hub repo id
    assert f"model folder '{missing}' does not exist" in _one_error_line([str(missing), tmp_path / "t.csv"], capsys)
    assert "has no hftransfer_config.json" in _one_error_line([tmp_path, tmp_path / "t.csv"], capsys)
    assert "no texts found" in _one_error_line([text_dir, "-"], capsys, stdin="\n\n")


# ---------------------------------------------------------------------------------------------- a fresh interpreter
@pytest.mark.integration
def test_the_hftransfer_predict_command_in_a_fresh_interpreter(image_dir, photos, tmp_path):
    out = tmp_path / "preds.jsonl"
    proc = run_python("-m", "hftransfer", "predict", image_dir, photos / "cats", "--output", out, "--top_k", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == ""  # predictions went to the file, messages to stderr
    assert "predicted 4 image input(s)" in proc.stderr
    assert len(read_jsonl(out)) == 4
    proc = run_python("-m", "hftransfer", "predict", image_dir, photos / "nope")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
