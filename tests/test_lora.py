"""LoRA (peft): default targets per family, what trains, merged export == unmerged model, the adapter
reloaded by peft and by hftransfer, one-line errors, and tiny in-process runs (both modalities, exact resume).

Models are tiny and random (test_efficientnet's 1x1 convolutions, test_vit's fused qkv, a 2-layer BERT);
adapter B matrices are randomized so a dropped or mis-merged adapter changes the logits.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
from builders import (
    LABELS,
    TEXT_LABELS,
    TEXTS,
    image_inputs,
    image_model,
    launch_two_processes,
    logits_of,
    read_results,
    save_tiny_timm_weights,
    text_inputs,
    text_model,
)
from safetensors.torch import load_file

from hftransfer import TransferModel
from hftransfer.errors import HFTransferError
from hftransfer.models.lora import add_lora, is_lora_parameter, merged_copy, resolve_targets
from hftransfer.tuning.strategies import Strategy, apply_trainable

ATOL = 1e-5


def randomize_adapters(model, seed: int = 3, scale: float = 0.02):
    """Non-zero B matrices (peft starts them at zero, where merging is trivially exact)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def lora_model(kind: str, tiny_bert=None, weights: str | None = None):
    """A LoRA model of ``kind`` (efficientnet / vit / bert), adapters randomized."""
    if kind == "bert":
        model = text_model(tiny_bert)  # pooler pooling + linear head: the native BertForSequenceClassification layout
    else:
        name = {"efficientnet": "test_efficientnet", "vit": "test_vit"}[kind]
        model = image_model(name)
        if weights:
            model.backbone._load_strict(load_file(weights))
            model.base_weights = weights
        model.backbone.use_fast_layout()
    return randomize_adapters(add_lora(model, r=4, alpha=8))


def inputs_for(model):
    return text_inputs(model) if model.modality == "text" else image_inputs(model)


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    """Stand-ins for pretrained checkpoints, so that an adapter's base model can be rebuilt."""
    root = tmp_path_factory.mktemp("weights")
    out = {}
    for arch in ("test_efficientnet", "test_vit"):
        save_tiny_timm_weights(root / f"{arch}.safetensors", arch, seed=0)
        out[arch] = str(root / f"{arch}.safetensors")
    return out


# ---------------------------------------------------------------------------------------------- targets
def adapted_layers(model) -> dict:
    from peft.tuners.lora import LoraLayer

    return {n: m.get_base_layer() for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def test_default_targets_efficientnet_are_its_1x1_convolutions():
    model = lora_model("efficientnet")
    assert model.lora.target_modules == ["conv_pwl", "conv_pw", "conv_reduce", "conv_expand", "conv_head"]
    layers = adapted_layers(model)
    pointwise = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)
                 and m.groups == 1 and "lora_" not in n]
    assert sorted(layers) == sorted(n.removesuffix(".base_layer") for n in pointwise)
    assert all(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in layers.values())


def test_default_targets_vit_are_qkv_proj_fc1_fc2_not_the_patch_embedding():
    model = lora_model("vit")
    assert model.lora.target_modules == ["qkv", "attn.proj", "fc1", "fc2"]
    layers = adapted_layers(model)
    assert all(isinstance(m, torch.nn.Linear) for m in layers.values())
    assert not any("patch_embed" in n for n in layers)  # a 16x16 convolution named proj, left alone
    assert len(layers) == 4 * len(model.backbone.model.blocks)


def test_default_targets_of_a_large_vit_with_unfused_attention_and_swiglu():
    """EVA-02 large (and its relatives) project q, k, v separately and gate the MLP (SwiGLU): all of them adapt."""
    import timm

    from hftransfer.models.factory import create_backbone

    backbone = create_backbone("image", "test_vit", weights="random")
    backbone.model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=0, img_size=28,
                                       qkv_fused=False, swiglu_mlp=True, scale_mlp=True, depth=2)
    names = {n.split(".", 2)[2] for n in backbone.default_lora_layers()}
    assert names == {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.proj", "mlp.fc1_g", "mlp.fc1_x", "mlp.fc2"}


def test_default_targets_bert_are_the_attention_projections(tiny_bert):
    model = lora_model("bert", tiny_bert)
    assert model.lora.target_modules == ["query", "key", "value"]
    assert len(adapted_layers(model)) == 3 * model.backbone.encoder.config.num_hidden_layers


def test_unknown_target_lists_the_names_that_would_match():
    model = image_model("test_vit")
    with pytest.raises(HFTransferError, match=r"unknown LoRA target module 'qkvv'.*e\.g\. qkv") as e:
        resolve_targets(model.backbone, ["qkvv"])
    assert "\n" not in str(e.value)
    with pytest.raises(HFTransferError, match="a LayerNorm, which LoRA cannot adapt"):
        resolve_targets(model.backbone, ["norm1"])


def test_a_model_without_any_matching_layer_is_refused_in_one_line():
    model = image_model()
    model.backbone.model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())  # no 1x1 conv, no Linear
    with pytest.raises(HFTransferError, match=r"none of the layers LoRA adapts by default.*--lora_target_modules.*0") as e:
        add_lora(model)
    assert "\n" not in str(e.value)
    model.backbone.model = torch.nn.Sequential(torch.nn.ReLU())
    with pytest.raises(HFTransferError, match="no Linear, Conv or Embedding layer for LoRA to adapt"):
        add_lora(model)


def test_lora_options_are_checked(image_data, tmp_path):
    from hftransfer.config import TrainConfig

    cfg = TrainConfig(model_name_or_path="test_vit", train_dir=image_data["train"], output_dir=str(tmp_path),
                      strategy="full", lora_target_modules=["qkv"])
    with pytest.raises(HFTransferError, match="applies to --strategy lora"):
        cfg.validate()
    with pytest.raises(HFTransferError, match="--lora_r 0 is out of range"):
        TrainConfig(model_name_or_path="test_vit", train_dir=image_data["train"], strategy="lora", lora_r=0).validate()


# ---------------------------------------------------------------------------------------------- what trains
@pytest.mark.parametrize("train_norm", [False, True])
def test_only_adapters_and_head_train(train_norm):
    model = image_model("test_efficientnet")
    add_lora(model, train_norm=train_norm)
    strategy = Strategy("lora", len(model.layer_groups()) - 1)
    apply_trainable(model, strategy.trainable_groups(0), train_norm, strategy.adapter_only)
    norms = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
             for p, _ in m.named_parameters(recurse=False)}
    for name, p in model.named_parameters():
        expected = is_lora_parameter(name) or name.startswith("head.") or (train_norm and name in norms)
        assert p.requires_grad == expected, name
    from hftransfer.models.lora import record

    rec = record(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert rec["trainable_parameters"] == trainable
    assert rec["trainable_fraction"] == pytest.approx(trainable / sum(p.numel() for p in model.parameters()))
    assert 0 < rec["trainable_fraction"] < 0.5
    model.train()  # frozen BatchNorm (bn_stats frozen) keeps its statistics unless norms train
    assert all(m.training == train_norm for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_lp_lora_probes_first_then_trains_the_adapters_with_layer_decay():
    from hftransfer.tuning.strategies import param_groups

    model = image_model("test_vit")
    add_lora(model)
    n = len(model.layer_groups()) - 1
    strategy = Strategy("lp_lora", n, lp_epochs=1)
    assert [strategy.trainable_groups(e) for e in range(3)] == [0, n, n]
    assert strategy.phase_starts() == [0, 1] and strategy.uses_backbone_lr_for_head(1)
    apply_trainable(model, strategy.trainable_groups(0), adapter_only=True)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n, _ in model.named_parameters()
                                                                          if n.startswith("head.")}
    groups = param_groups(model, 1e-3, 1e-2, 0.01, layer_decay=0.5)
    lora_lrs = {g["layer"]: g["lr"] for g in groups for p in g["params"]
                if any(p is q for k, q in model.named_parameters() if is_lora_parameter(k))}
    assert len(set(lora_lrs.values())) > 1, "layer-wise decay should give the adapters of each group their own LR"


def test_lora_strategy_without_adapters_is_refused():
    model = image_model()
    with pytest.raises(HFTransferError, match="need LoRA adapters"):
        apply_trainable(model, 3, adapter_only=True)


def test_readme_and_description_of_lora():
    assert Strategy("lora", 3).description(lora_r=4, lora_alpha=8.0).startswith(
        "low-rank adapters (LoRA, rank 4, alpha 8)")


# ---------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("kind", ["efficientnet", "vit", "bert"])
def test_merged_model_gives_the_unmerged_logits(kind, tiny_bert):
    model = lora_model(kind, tiny_bert)
    x = inputs_for(model)
    merged = merged_copy(model).eval()
    assert merged.lora is None and not any(is_lora_parameter(n) for n, _ in merged.named_parameters())
    assert model.lora is not None and any(is_lora_parameter(n) for n, _ in model.named_parameters())  # untouched
    torch.testing.assert_close(logits_of(merged, x), logits_of(model, x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["test_efficientnet", "test_vit"])
def test_timm_export_is_merged_native_and_loads_in_plain_timm(tmp_path, arch):
    import timm

    model = lora_model("efficientnet" if arch == "test_efficientnet" else "vit")
    x = inputs_for(model)
    expected = logits_of(model, x)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "hftransfer_config.json").read_text())
    assert config["weights_format"] == "timm"
    assert config["lora"]["merged"] is True and config["lora"]["r"] == 4 and config["lora"]["alpha"] == 8
    assert config["lora"]["target_modules"] == model.lora.target_modules
    native = json.loads((tmp_path / "config.json").read_text())
    plain = timm.create_model(native["architecture"], num_classes=native["num_classes"]).eval()
    plain.load_state_dict(load_file(tmp_path / "model.safetensors"))  # strict: no LoRA key left over
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected, atol=ATOL, rtol=0)
    reloaded = TransferModel.from_pretrained(tmp_path)
    assert reloaded.lora is None
    torch.testing.assert_close(logits_of(reloaded, x), expected, atol=ATOL, rtol=0)


def test_bert_export_is_merged_and_loads_in_transformers_and_pipeline(tmp_path, tiny_bert):
    from transformers import AutoModelForSequenceClassification, pipeline

    model = lora_model("bert", tiny_bert)
    x = inputs_for(model)
    expected = logits_of(model, x)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "hftransfer_config.json").read_text())["weights_format"] == "transformers"
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**x).logits, expected, atol=ATOL, rtol=0)
    scores = pipeline("text-classification", model=str(tmp_path))(TEXTS, top_k=None)
    probs = torch.softmax(expected, -1)
    for row, p in zip(scores, probs):
        by_label = {d["label"]: d["score"] for d in row}
        assert by_label[TEXT_LABELS[1]] == pytest.approx(p[1].item(), abs=1e-5)


def test_mean_pooling_export_uses_the_custom_code_layout_with_merged_weights(tmp_path, tiny_bert):
    from transformers import AutoModelForSequenceClassification

    model = randomize_adapters(add_lora(text_model(tiny_bert, pooling="mean"), r=4, alpha=8))
    x = inputs_for(model)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "hftransfer_config.json").read_text())["remote_code"]
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**x).logits, logits_of(model, x), atol=ATOL, rtol=0)


def test_timm_adapter_attaches_to_the_base_model_with_peft(tmp_path, timm_weights):
    import timm
    from peft import PeftModel

    model = lora_model("vit", weights=timm_weights["test_vit"])
    x = inputs_for(model)
    expected = logits_of(model, x)
    model.save_pretrained(tmp_path)
    adapter = tmp_path / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors"} <= set(os.listdir(adapter))
    peft_config = json.loads((adapter / "adapter_config.json").read_text())
    assert peft_config["r"] == 4 and peft_config["lora_alpha"] == 8 and peft_config["peft_type"] == "LORA"
    base = timm.create_model("test_vit", num_classes=0)
    base.load_state_dict(load_file(timm_weights["test_vit"]))  # the "pretrained" base weights
    peft_model = PeftModel.from_pretrained(base, adapter, is_trainable=True).eval()
    assert any(p.requires_grad for n, p in peft_model.named_parameters() if "lora_" in n)
    head = torch.nn.Linear(base.num_features, len(LABELS))
    head.load_state_dict({k.removeprefix("fc."): v for k, v in load_file(adapter / "head.safetensors").items()})
    with torch.no_grad():
        torch.testing.assert_close(head(peft_model(x)), expected, atol=ATOL, rtol=0)
        merged = peft_model.merge_and_unload()  # peft's own merge agrees with hftransfer's export
        torch.testing.assert_close(head(merged(x)), expected, atol=ATOL, rtol=0)


def test_text_adapter_attaches_to_the_base_encoder_with_peft(tmp_path, tiny_bert):
    from peft import PeftModel
    from transformers import AutoModel

    model = lora_model("bert", tiny_bert)
    model.base_weights = "pretrained"
    x = inputs_for(model)
    expected = logits_of(model, x)
    model.save_pretrained(tmp_path)
    encoder = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_bert), tmp_path / "adapter").eval()
    head = torch.nn.Linear(encoder.config.hidden_size, len(TEXT_LABELS))
    head.load_state_dict({k.removeprefix("fc."): v for k, v in load_file(tmp_path / "adapter" / "head.safetensors").items()})
    with torch.no_grad():
        torch.testing.assert_close(head(encoder(**x).pooler_output), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["efficientnet", "bert"])
def test_from_pretrained_loads_the_adapter_folder_trainable(tmp_path, kind, tiny_bert, timm_weights):
    model = lora_model(kind, tiny_bert, weights=timm_weights["test_efficientnet"])
    if kind == "bert":
        model.base_weights = "pretrained"  # the tiny BERT folder's own weights
    x = inputs_for(model)
    expected = logits_of(model, x)
    model.save_pretrained(tmp_path)
    reloaded = TransferModel.from_pretrained(tmp_path / "adapter")
    assert reloaded.lora.target_modules == model.lora.target_modules
    torch.testing.assert_close(logits_of(reloaded, x), expected, atol=ATOL, rtol=0)
    for name, p in reloaded.named_parameters():  # adapters and head train, the base stays frozen
        assert p.requires_grad == (is_lora_parameter(name) or name.startswith("head.")), name
    merged = TransferModel.from_pretrained(tmp_path)
    torch.testing.assert_close(logits_of(merged, x), expected, atol=ATOL, rtol=0)


def test_adapter_on_random_base_weights_is_refused_with_the_fix(tmp_path):
    model = lora_model("efficientnet")  # weights="random": the base cannot be rebuilt
    model.save_pretrained(tmp_path)
    with pytest.raises(HFTransferError, match="load the merged model in its parent folder"):
        TransferModel.from_pretrained(tmp_path / "adapter")


def test_trained_norms_travel_with_the_adapter(tmp_path, timm_weights):
    model = image_model("test_efficientnet")
    model.backbone._load_strict(load_file(timm_weights["test_efficientnet"]))
    model.base_weights = timm_weights["test_efficientnet"]
    add_lora(model, train_norm=True)
    randomize_adapters(model)
    with torch.no_grad():  # norm layers that moved in training (--train_norm)
        model.backbone.model.bn1.weight.mul_(1.5)
        model.backbone.model.bn1.running_mean.add_(0.3)
    x = inputs_for(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter" / "norms.safetensors").is_file()
    torch.testing.assert_close(logits_of(TransferModel.from_pretrained(tmp_path / "adapter"), x), logits_of(model, x),
                               atol=ATOL, rtol=0)


def test_saving_a_plain_model_over_a_lora_save_removes_the_stale_adapter(tmp_path):
    lora_model("efficientnet").save_pretrained(tmp_path)
    assert (tmp_path / "adapter").is_dir()
    image_model().save_pretrained(tmp_path)
    assert not (tmp_path / "adapter").exists()


# ---------------------------------------------------------------------------------------------- runs
def run_in_process(modality: str, **kwargs) -> dict:
    from hftransfer.config import TrainConfig
    from hftransfer.runs.train import train

    base = dict(per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=0.01,
                head_learning_rate=0.01, num_train_epochs=2, save_total_limit=0, seed=0)
    values = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in {**base, **kwargs}.items()}
    return train(TrainConfig(**values), modality)


def test_image_lora_run_trains_only_adapters_and_exports_both_forms(tmp_path, image_data, timm_weights):
    out = tmp_path / "run"
    results = run_in_process("image", model_name_or_path="test_efficientnet", weights=timm_weights["test_efficientnet"],
                             train_dir=image_data["train"], validation_dir=image_data["val"], output_dir=str(out),
                             strategy="lora", lora_r=2, layer_decay=0.8, gradient_accumulation_steps=2)
    transfer = results["transfer"]
    assert transfer["strategy"] == "lora" and transfer["lora"]["r"] == 2
    assert transfer["phases"][0]["trainable_fraction"] == pytest.approx(transfer["lora"]["trainable_fraction"])
    base = load_file(timm_weights["test_efficientnet"])
    ckpt = load_file(max((out / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1])) / "model.safetensors")
    for key, value in ckpt.items():  # base weights never move; the adapters do
        if not is_lora_parameter(key) and key.startswith("backbone.model."):
            native = key.removeprefix("backbone.model.").replace(".base_layer.", ".")
            torch.testing.assert_close(value, base[native], atol=0, rtol=0, msg=key)
    assert any(ckpt[k].abs().sum() > 0 for k in ckpt if "lora_B" in k), "the adapters never trained"
    card = (out / "README.md").read_text()
    assert "**LoRA**: rank 2, alpha 16" in card and "**merged**" in card
    merged, adapter = TransferModel.from_pretrained(out), TransferModel.from_pretrained(out / "adapter")
    x = image_inputs(merged)
    torch.testing.assert_close(logits_of(merged, x), logits_of(adapter, x), atol=ATOL, rtol=0)


def test_text_lp_lora_run_crosses_the_phase_change_and_exports_natively(tmp_path, text_data, tiny_bert):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "run"
    results = run_in_process("text", model_name_or_path=str(tiny_bert), train_file=text_data["train"],
                             validation_file=text_data["val"], output_dir=str(out), strategy="lp_lora",
                             lp_epochs=1, pooling="pooler", num_train_epochs=2)
    phases = results["transfer"]["phases"]
    assert [p["trainable_fraction"] < 0.5 for p in phases] == [True, True] and len(phases) == 2
    assert phases[0]["trainable_fraction"] < phases[1]["trainable_fraction"]
    model = TransferModel.from_pretrained(out)
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    x = text_inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(plain(**x).logits, logits_of(model, x), atol=ATOL, rtol=0)
    torch.testing.assert_close(logits_of(TransferModel.from_pretrained(out / "adapter"), x), logits_of(model, x),
                               atol=ATOL, rtol=0)


def test_lora_run_resumed_mid_epoch_ends_with_the_same_weights(tmp_path, image_data, timm_weights):
    common = dict(model_name_or_path="test_efficientnet", weights=timm_weights["test_efficientnet"],
                  train_dir=image_data["train"], validation_dir=image_data["val"], strategy="lp_lora", lp_epochs=1,
                  num_train_epochs=3, checkpointing_steps="2", lora_dropout=0.1, feature_cache="off")
    reference = tmp_path / "reference"
    run_in_process("image", output_dir=str(reference), **common)  # 3 steps per epoch: step_4 is mid-epoch 2
    resumed = tmp_path / "resumed"
    run_in_process("image", output_dir=str(resumed), resume_from_checkpoint=str(reference / "checkpoints" / "step_4"),
                   **common)
    a, b = (load_file(d / "checkpoints" / "step_9" / "model.safetensors") for d in (reference, resumed))
    assert a.keys() == b.keys() and any(is_lora_parameter(k) for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_results(reference)["history"] == read_results(resumed)["history"]


@pytest.mark.integration
def test_two_process_lora_run_keeps_the_ranks_in_sync(tmp_path, image_data):
    out = tmp_path / "run"
    proc = launch_two_processes(
           "image_cls", "--model_name_or_path", "test_vit", "--weights", "random", "--train_dir", image_data["train"],
           "--validation_dir", image_data["val"], "--output_dir", out, "--num_train_epochs", "2",
           "--per_device_train_batch_size", "3", "--per_device_eval_batch_size", "4", "--strategy", "lp_lora",
           "--lp_epochs", "1",
           "--learning_rate", "0.01", "--ddp_timeout", "120", "--save_total_limit", "0")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = read_results(out)
    assert results["world_size"] == 2 and results["eval_samples"] == 10
    ckpts = sorted((out / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    first, second = load_file(ckpts[0] / "model.safetensors"), load_file(ckpts[1] / "model.safetensors")
    lora_keys = [k for k in first if is_lora_parameter(k)]
    assert lora_keys and any(not torch.equal(first[k], second[k]) for k in lora_keys), "the adapters never trained"
    assert all(torch.equal(first[k], second[k]) for k in first if k.startswith("backbone.") and not is_lora_parameter(k))
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
