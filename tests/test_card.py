"""Model cards: valid Hub metadata (checked locally with huggingface_hub) and the transfer recipe.

Run folders are assembled the way the trainer leaves them (save_pretrained, ``describe_run``'s recipe
inside all_results.json, ``save_config``'s config.yaml) without training, to stay fast; the recipe
test in test_push.py checks the card of a real run. ``make_run_dir`` comes from builders.py.
"""
from __future__ import annotations

import pytest
from builders import TEXT_LABELS, image_model, make_run_dir, noise_image, text_model
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from hftransfer.hub.card import build_model_card, card_context, write_model_card


def test_card_records_the_transfer_recipe_with_valid_hub_metadata(tmp_path):
    model = image_model()
    out = make_run_dir(tmp_path / "run", model, "image", hub_model_id="user/tiny-img")
    path = write_model_card(out)
    assert path == out / "README.md"
    text = path.read_text()

    meta = metadata_load(path)
    assert meta["library_name"] == "timm"
    assert meta["pipeline_tag"] == "image-classification"
    assert meta["license"] == "other"
    assert "base_model" not in meta  # random init: nothing was transferred
    assert {"hftransfer", "transfer-learning", "image-classification", "timm"} <= set(meta["tags"])
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "tiny-img"
    assert {(r.metric_type, r.metric_value) for r in results} == {("accuracy", 0.7778), ("f1", 0.7)}
    assert {(r.task_type, r.dataset_type, r.dataset_name) for r in results} == {("image-classification", "imagefolder", "data/train")}
    card = ModelCard.load(path)  # parses the metadata strictly, as the Hub client does
    assert card.data.library_name == "timm"
    assert card.data.eval_results[0].metric_type == "accuracy"

    body = card.text
    for needle in [
        "`lp_ft`", "linear probing", "randomly initialized",
        "| 1 | 1 | none | `model.conv_stem+bn1` ... `model.blocks.4+conv_head+bn2` (6 groups) |",  # phase 1: all frozen
        "| 2 | 2-3 | `model.conv_stem+bn1` ... `model.blocks.4+conv_head+bn2` (6 groups) | none | 100.0% | 1.00e-4 |",
        "backbone 1.00e-4 (peak), head 1.00e-3, layer-wise decay 0.8",
        "| model.conv_stem+bn1 | 3.28e-5 |", "| head | 1.00e-3 |",
        "no transfer regularizer", "weight decay 0.01", "cosine, warmup 10% of each phase",
        "BatchNorm layers of frozen groups keep their pretrained running statistics",
        "12 train / 9 eval", "`ants`, `bees`, `wasps`", "| wasps | 0.7000 | 0.7500 | 0.6000 | 3 |",
        "| 3 | 0.3333 | 0.3000 | 0.8000 | 0.7000 |", "| accuracy | 0.7778 |",
        'timm.create_model("hf-hub:user/tiny-img", pretrained=True)', 'pipeline("image-classification", model="user/tiny-img")',
        'AutoModelForImageClassification.from_pretrained("user/tiny-img")', 'TransferModel.from_pretrained("user/tiny-img")',
        "| `model.safetensors` | the weights (timm key names) |", "- timm ", "- transformers ", "- torch ",
    ]:
        assert needle in body, needle
    assert "Did transfer help" not in body
    assert f"{model.num_parameters():,} in total" in body
    assert str(tmp_path) not in text  # no local absolute paths in a public card
    assert "checkpoints" not in body
    assert "best_model" not in body

    assert write_model_card(out).read_text() == text  # deterministic: an unchanged run re-pushes as a no-op


def test_text_card_without_native_layout_says_so_and_names_hub_base_model_and_dataset(tmp_path, tiny_bert):
    model = text_model(tiny_bert, pooling="mean")
    out = make_run_dir(tmp_path / "run", model, "text", model_name_or_path="sentence-transformers/all-MiniLM-L6-v2",
                       weights="pretrained", pooling="mean", strategy="gradual", unfreeze_every=2, layer_decay=1.0,
                       dataset_name="rotten_tomatoes", label_smoothing=0.1)
    meta = metadata_load(write_model_card(out, repo_id="org/rt-minilm"))
    assert meta["library_name"] == "transformers"  # through the shipped custom code
    assert meta["pipeline_tag"] == "text-classification"
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["rotten_tomatoes"]
    assert model_index_to_eval_results(meta["model-index"])[1][0].dataset_type == "rotten_tomatoes"
    body = ModelCard.load(out / "README.md").text
    for needle in ["no native transformers equivalent (mean pooling has no transformers equivalent",
                   'AutoModelForSequenceClassification.from_pretrained("org/rt-minilm", trust_remote_code=True)',
                   'pipeline("text-classification", model="org/rt-minilm", trust_remote_code=True)',
                   "| `modeling_hftransfer.py` | transformers custom code",
                   "`gradual`", "every 2 epoch(s)", "label smoothing 0.1", "attention-mask-aware mean",
                   "[rotten_tomatoes](https://huggingface.co/datasets/rotten_tomatoes)", "`negative`, `positive`",
                   'TransferModel.from_pretrained("org/rt-minilm")']:
        assert needle in body, needle
    assert "Per-layer learning rates" not in body


@pytest.mark.parametrize("modality", ["image", "text"])
def test_the_cards_custom_code_snippets_run_as_written(tmp_path, tiny_bert, modality, capsys):
    """Every transformers snippet of a custom-code card, run with the repo id pointing at the local folder."""
    import re

    if modality == "image":
        model = image_model(head="mlp", head_hidden_sizes=(8,))
        out = make_run_dir(tmp_path / "run", model, "image")
    else:
        model = text_model(tiny_bert, pooling="mean", head="mlp", head_hidden_sizes=(8,))
        out = make_run_dir(tmp_path / "run", model, "text", model_name_or_path=str(tiny_bert), pooling="mean")
    body = ModelCard.load(write_model_card(out, repo_id="org/snippet")).text
    snippets = [code for code in re.findall(r"```python\n(.*?)```", body, re.S) if "trust_remote_code" in code]
    assert len(snippets) == 1
    noise_image(0).save(tmp_path / "image.jpg")
    code = snippets[0].replace("org/snippet", str(out)).replace('"image.jpg"', repr(str(tmp_path / "image.jpg")))
    exec(compile(code, "card-snippet", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] in model.id2label.values()  # the label the AutoModel snippet prints
    assert "'label':" in printed[1]  # the pipeline's output


def test_pretrained_timm_base_model_and_license_come_from_its_pretrained_cfg(tmp_path):
    out = make_run_dir(tmp_path / "run", image_model(), "image", weights="pretrained")
    data = build_model_card(out).data
    assert data.base_model == "timm/test_efficientnet.r160_in1k"
    assert data.license == "apache-2.0"
    assert card_context(out)["repo_id"] == "<your-username>/run"


def test_transfer_gain_block_renders_only_when_results_have_it(tmp_path):
    gain = {"summary": "Transfer beat training from scratch by 30 points.", "pretrained_accuracy": 0.9,
            "scratch_accuracy": 0.6, "gain": 0.3, "negative_transfer": False, "scratch_seeds": 1,
            "scratch_runs": [{"seed": 42, "accuracy": 0.6, "history": []}], "extra_note": "kept"}
    out = make_run_dir(tmp_path / "run", image_model(), "image", extra_results={"transfer_gain": gain})
    body = ModelCard.load(write_model_card(out)).text
    section = body[body.index("## Did transfer help?"):body.index("## Transfer recipe")]
    assert "Transfer beat training from scratch by 30 points." in section
    for row in ("| accuracy, pretrained init | 0.9000 |", "| accuracy, random init (mean) | 0.6000 |",
                "| transfer gain | 0.3000 |", "| negative transfer | false |", "| from-scratch seeds | 1 |",
                "| extra note | kept |"):
        assert row in section, row
    assert "scratch_runs" not in section
    assert "scratch runs" not in section  # per-run lists stay in all_results.json


def test_card_of_a_bare_saved_model_has_metadata_but_no_results(tmp_path, tiny_bert):
    model = text_model(tiny_bert, pooling="pooler")
    out = model.save_pretrained(tmp_path / "m")
    card = ModelCard.load(write_model_card(out, repo_id="user/bert-clf"))
    assert card.data.library_name == "transformers"
    assert card.data.eval_results is None
    assert "model-index" not in card.data.to_dict()
    assert "## Results" not in card.text
    assert "BertForSequenceClassification" in card.text
    assert 'pipeline("text-classification", model="user/bert-clf")' in card.text
    assert list(TEXT_LABELS.values()) == ["negative", "positive"]
    assert "`negative`, `positive`" in card.text


def test_card_needs_a_saved_model(tmp_path):
    from hftransfer import HFTransferError

    with pytest.raises(HFTransferError, match="no hftransfer_config.json"):
        write_model_card(tmp_path)
