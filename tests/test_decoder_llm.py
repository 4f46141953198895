"""Decoder LLMs (Llama, Qwen2, Mistral, Gemma) as text backbones: last-token pooling with right padding, a pad token
where the tokenizer has none, bias-free linear head, layer groups, LoRA targets, and exports that transformers loads
without hftransfer (``<Family>ForSequenceClassification`` for last-token pooling, the shipped modeling code else).
Tiny random configs of each family, built here: nothing is downloaded."""
from __future__ import annotations

import json

import pytest
import torch
from builders import (
    LOAD_WITHOUT_HFTRANSFER,
    TEXTS,
    logits_of,
    make_encoder_folder,
    make_text_file,
    run_python,
    text_inputs,
    text_model,
)

from hftransfer import TransferModel
from hftransfer.errors import HFTransferError

# per family, what a tiny config needs beyond TINY_ENCODER (key/value heads; head_dim where the default is not
# hidden_size / heads) and the transformers class name prefix
FAMILIES = {"llama": ({"num_key_value_heads": 1}, "Llama"),
            "qwen2": ({"num_key_value_heads": 1}, "Qwen2"),
            "mistral": ({"num_key_value_heads": 1, "head_dim": 16}, "Mistral"),
            "gemma": ({"num_key_value_heads": 1, "head_dim": 16}, "Gemma")}
ATOL = 1e-5


def decoder_folder(tmp_path, family: str = "llama"):
    return make_encoder_folder(tmp_path / family, family, **FAMILIES[family][0])


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return decoder_folder(tmp_path_factory.mktemp("decoders"))


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_families_pool_the_last_token_and_export_as_their_sequence_classifier(tmp_path, family):
    from transformers import AutoModelForSequenceClassification

    model = text_model(decoder_folder(tmp_path, family), pooling=None)
    backbone = model.backbone
    assert backbone.is_decoder and backbone.pooling == "last" and backbone.tokenizer.padding_side == "right"
    assert model.head.fc.bias is None and model.head_config["bias"] is False
    assert [g.name for g in backbone.layer_groups()] == [
        "encoder.embeddings", "encoder.layers.0", "encoder.layers.1", "encoder.final"]
    assert backbone.default_lora_layers() == [f"layers.{i}.self_attn.{p}" for i in range(2)
                                              for p in ("q_proj", "v_proj")]
    inputs = text_inputs(model)
    assert set(inputs) == {"input_ids", "attention_mask"}  # no token_type_ids for a decoder
    expected = logits_of(model, inputs)
    for i, text in enumerate(TEXTS):  # right padding: a text's logits do not depend on its batch
        torch.testing.assert_close(logits_of(model, dict(backbone.tokenizer([text], return_tensors="pt")))[0],
                                   expected[i], atol=ATOL, rtol=0)

    out = model.save_pretrained(tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [f"{FAMILIES[family][1]}ForSequenceClassification"]
    assert config["pad_token_id"] == backbone.tokenizer.pad_token_id
    assert json.loads((out / "hftransfer_config.json").read_text())["weights_format"] == "transformers"
    native = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(native(**inputs).logits, expected, atol=ATOL, rtol=0)
    assert torch.equal(logits_of(TransferModel.from_pretrained(out), inputs), expected)


def test_last_pooling_takes_the_last_token_of_either_padding_side():
    from hftransfer.models.modeling_hftransfer import pool

    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, None, "last").flatten().tolist() == [3.0, 7.0]


def test_a_tokenizer_without_pad_token_pads_with_its_eos_and_the_export_says_so(tmp_path, llama):
    from transformers import AutoTokenizer

    folder = decoder_folder(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token, tokenizer.eos_token = None, "[SEP]"
    tokenizer.save_pretrained(folder)
    model = text_model(folder, pooling=None)
    assert model.backbone.tokenizer.pad_token == "[SEP]"
    assert model.backbone.encoder.config.pad_token_id == tokenizer.convert_tokens_to_ids("[SEP]")
    saved = AutoTokenizer.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert saved.pad_token == "[SEP]" and saved.padding_side == "right"

    tokenizer.eos_token = None
    tokenizer.save_pretrained(folder)
    with pytest.raises(HFTransferError, match="neither a padding nor an end-of-sequence token"):
        text_model(folder, pooling=None)


def test_cls_pooling_of_a_decoder_is_refused_and_mean_pooling_exports_through_the_modeling_code(tmp_path, llama):
    with pytest.raises(HFTransferError, match="decoder LLM: its first token attends to nothing after it"):
        text_model(llama, pooling="cls")
    model = text_model(llama, pooling="mean")
    inputs = text_inputs(model)
    expected = logits_of(model, inputs)
    out = model.save_pretrained(tmp_path / "m")
    assert json.loads((out / "hftransfer_config.json").read_text())["weights_format"] == "hftransfer"
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"remote_code": [{"modality": "text", "repo": str(out), "texts": TEXTS}]}))
    script = tmp_path / "load.py"
    script.write_text(LOAD_WITHOUT_HFTRANSFER)
    proc = run_python(str(script), str(jobs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])["remote_code"][0]
    torch.testing.assert_close(torch.tensor(row["logits"]), expected, atol=ATOL, rtol=0)


def test_gradient_checkpointing_on_a_decoder_gives_the_same_gradients(llama):
    grads = []
    for enable in (False, True):
        model = text_model(llama, pooling=None)
        model.backbone.set_gradient_checkpointing(enable)
        model.train()
        model(**text_inputs(model), labels=torch.tensor([0, 1, 0])).loss.backward()
        grads.append(model.backbone.encoder.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=0)


@pytest.mark.integration
def test_decoder_lora_run_exports_a_classifier_that_transformers_loads_without_hftransfer(tmp_path, llama):
    from hftransfer.config import TrainConfig
    from hftransfer.runs.train import train

    out = tmp_path / "run"
    results = train(TrainConfig(
        model_name_or_path=str(llama), train_file=str(make_text_file(tmp_path / "train.csv")),
        validation_file=str(make_text_file(tmp_path / "val.csv", n=13, seed=1)), output_dir=str(out),
        strategy="lora", lora_r=4, num_train_epochs=2, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        learning_rate=0.01, head_learning_rate=0.01, save_total_limit=0, seed=0), "text")
    assert results["transfer"]["strategy"] == "lora"
    assert results["transfer"]["lora"]["target_modules"] == ["q_proj", "v_proj"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    model = TransferModel.from_pretrained(out)
    expected = logits_of(model, text_inputs(model))

    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"text": {"repo": str(out), "texts": TEXTS}}))
    script = tmp_path / "load.py"
    script.write_text(LOAD_WITHOUT_HFTRANSFER)
    proc = run_python(str(script), str(jobs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = json.loads(proc.stdout.strip().splitlines()[-1])["text"]
    torch.testing.assert_close(torch.tensor(plain["transformers"]), expected, atol=ATOL, rtol=0)
    assert plain["transformers_labels"] == {str(k): v for k, v in model.id2label.items()}
    for row, probs in zip(plain["pipeline"], expected.softmax(-1)):
        scores = {r["label"]: r["score"] for r in row}
        assert all(scores[label] == pytest.approx(probs[i].item(), abs=1e-4) for i, label in model.id2label.items())


def test_the_text_recipe_leaves_pooling_to_the_model(llama):
    """recipes/configs/text_cls.yaml names no pooling: a decoder gets last-token pooling, an encoder mean."""
    from builders import ROOT

    from hftransfer.config import load_config
    from hftransfer.config.parsing import read_config_file

    defaults = read_config_file(str(ROOT / "recipes" / "configs" / "text_cls.yaml"))
    cfg = load_config(["--model_name_or_path", str(llama), "--train_file", "t.csv"], defaults, modality="text",
                      validate=False)
    assert cfg.pooling is None
    assert text_model(llama, pooling=cfg.pooling).backbone.pooling == "last"
