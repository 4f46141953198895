"""``hftransfer rank``: candidates, modality checks, outputs, feature-cache reuse, and the real weights."""

import csv
import json

import pytest
from builders import BUNDLED_IMAGES, cli_in_process, image_data_args, recipe_in_process, save_tiny_timm_weights

from hftransfer.config import RankConfig, load_config
from hftransfer.errors import HFTransferError
from hftransfer.runs.rank import check_modalities, parse_candidate, rank_backbones


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Two different tiny timm backbones with fixed weights (stand-ins for pretrained checkpoints)."""
    root = tmp_path_factory.mktemp("weights")
    save_tiny_timm_weights(root / "effnet.safetensors", "test_efficientnet", seed=0)
    save_tiny_timm_weights(root / "vit.safetensors", "test_vit", seed=None)  # the RNG continues from effnet's
    return root


def test_parse_candidate(tmp_path, tiny_bert, tiny_weights):
    c = parse_candidate("tf_efficientnet_lite0")
    assert (c.name, c.weights, c.modality) == ("tf_efficientnet_lite0", "pretrained", "image")
    c = parse_candidate("random:tf_efficientnet_lite0.in1k")
    assert (c.name, c.weights, c.modality) == ("tf_efficientnet_lite0.in1k", "random", "image")
    c = parse_candidate(f"test_vit={tiny_weights / 'vit.safetensors'}")
    assert (c.name, c.weights) == ("test_vit", str(tiny_weights / "vit.safetensors"))
    c = parse_candidate(str(tiny_bert))
    assert (c.name, c.modality) == (str(tiny_bert), "text")
    assert parse_candidate("bert-base-uncased").modality == "text"
    timm_dir = tmp_path / "timm_model"
    timm_dir.mkdir()
    (timm_dir / "config.json").write_text(json.dumps({"architecture": "test_vit", "num_classes": 2}))
    c = parse_candidate(str(timm_dir))
    assert (c.name, c.modality) == (f"local-dir:{timm_dir}", "image")
    with pytest.raises(HFTransferError, match="not pretrained, random or an existing file"):
        parse_candidate("test_vit=missing.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HFTransferError, match="neither a timm model"):
        parse_candidate(str(tmp_path / "empty"))


def test_modalities_must_agree_with_each_other_and_the_data():
    image, text = parse_candidate("test_vit"), parse_candidate("bert-base-uncased")
    with pytest.raises(HFTransferError, match=r"mix modalities \(image: test_vit; text: bert-base-uncased\)"):
        check_modalities([image, text], None)
    with pytest.raises(HFTransferError, match="image backbones but the data is text"):
        check_modalities([image], "text")
    with pytest.raises(HFTransferError, match="no candidates"):
        check_modalities([], "image")
    assert check_modalities([image, parse_candidate("random:test_vit")], "image") == "image"


def test_rank_cli_writes_sorted_table_and_the_recipe_reuses_its_features(tmp_path, image_data, tiny_weights, capsys):
    out, cache = tmp_path / "rank", tmp_path / "cache"
    effnet = f"test_efficientnet={tiny_weights / 'effnet.safetensors'}"
    candidates = [effnet, "random:test_efficientnet", f"test_vit={tiny_weights / 'vit.safetensors'}"]
    data = ["--train_dir", image_data["train"], "--validation_dir", image_data["val"]]  # the recipe's data flags
    proc = cli_in_process(capsys, "rank", "--candidates", *candidates, *data, "--output_dir", out, "--feature_cache_dir",
                          cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranking = json.loads((out / "rank.json").read_text())["ranking"]
    assert sorted(r["candidate"] for r in ranking) == sorted(candidates)
    assert [r["rank"] for r in ranking] == [1, 2, 3]
    assert [r["logme"] for r in ranking] == sorted((r["logme"] for r in ranking), reverse=True)
    assert all(r["samples"] == 12 and r["features"] == "extracted" for r in ranking)
    with open(out / "rank.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["candidate"] for r in rows] == [r["candidate"] for r in ranking]
    assert float(rows[0]["logme"]) == pytest.approx(ranking[0]["logme"])
    assert (out / "rank.png").read_bytes()[:4] == b"\x89PNG"
    assert "LogME" in proc.stdout
    assert all(c in proc.stdout for c in candidates)
    assert len(list(cache.glob("train-*.safetensors"))) == 3

    # a linear probe on the same data with the same backbone loads the ranked features instead of recomputing them
    run = recipe_in_process(capsys, "image_cls", "--model_name_or_path", "test_efficientnet", "--weights",
                            tiny_weights / "effnet.safetensors",
                     *image_data_args(image_data, tmp_path / "probe"),
                     "--strategy", "linear_probe", "--num_train_epochs", "1", "--feature_cache_dir", cache)
    assert run.returncode == 0, run.stderr[-3000:]
    train_line = next(line for line in run.stdout.splitlines() if line.startswith("feature cache: train"))
    assert "loaded" in train_line

    # rank again: every candidate's features now come from the cache, with the same scores
    again = cli_in_process(capsys, "rank", "--candidates", *candidates, *data, "--output_dir", out, "--feature_cache_dir",
                           cache)
    assert again.returncode == 0, again.stderr[-3000:]
    reranked = json.loads((out / "rank.json").read_text())["ranking"]
    assert all(r["features"] == "cache" for r in reranked)
    assert [r["logme"] for r in reranked] == pytest.approx([r["logme"] for r in ranking])


def test_rank_text_encoders_through_the_python_api(tmp_path, text_data, tiny_bert):
    cfg = load_config(["--candidates", str(tiny_bert), f"random:{tiny_bert}", "--train_file", str(text_data["train"]), "--validation_file", str(text_data["val"]),
                       "--output_dir", str(tmp_path / "rank"), "--max_seq_length", "16"], config_cls=RankConfig)
    rows = rank_backbones(cfg)
    assert {r["candidate"] for r in rows} == {str(tiny_bert), f"random:{tiny_bert}"}
    assert all(r["feature_dim"] == 32 and r["samples"] == 24 for r in rows)
    assert all(isinstance(r["logme"], float) and isinstance(r["h_score"], float) for r in rows)
    assert (tmp_path / "rank" / "rank.json").is_file()


def test_rank_cli_errors_are_one_line(tmp_path, image_data, text_data, capsys):
    proc = cli_in_process(capsys, "rank", "--candidates", "test_vit", "--train_file", text_data["train"],
                          "--output_dir", tmp_path / "r")
    assert proc.returncode == 2
    # a --train_file may be an image manifest, so the data is read (progress lines first) before it is refused
    assert proc.stderr.strip().splitlines()[-1] == \
        f"error: {text_data['train']}: no image column 'image' (columns: text, label): pass --image_column_name"
    assert "Traceback" not in proc.stderr
    proc = cli_in_process(capsys, "rank", "--train_dir", image_data["train"], "--output_dir", tmp_path / "r")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: no candidates")
    proc = cli_in_process(capsys, "nonsense")
    assert proc.returncode == 2
    assert "usage: hftransfer <command>" in proc.stderr
    assert cli_in_process(capsys, "--help").returncode == 0


@pytest.mark.integration
def test_rank_puts_real_pretrained_backbone_above_random_init(tmp_path):
    """The bundled ImageNet EfficientNet-Lite0 must beat its own random init on the bundled ants/bees photos."""
    cfg = load_config(["--candidates", "random:tf_efficientnet_lite0", "tf_efficientnet_lite0",
                       "--train_dir", str(BUNDLED_IMAGES / "train"), "--max_train_samples", "96",
                       "--output_dir", str(tmp_path / "rank")], config_cls=RankConfig)
    rows = rank_backbones(cfg)
    assert [r["candidate"] for r in rows] == ["tf_efficientnet_lite0", "random:tf_efficientnet_lite0"]
    by_name = {r["candidate"]: r for r in rows}
    assert by_name["tf_efficientnet_lite0"]["h_score"] > by_name["random:tf_efficientnet_lite0"]["h_score"]
