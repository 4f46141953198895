"""``--gradient_checkpointing``: the same gradients with less stored, for timm and transformers backbones,
also when the lower layers are frozen (where reentrant checkpointing silently gives no gradients)."""
from __future__ import annotations

import pytest
import torch
from builders import IMAGE_TINY, LABELS, TEXT_LABELS, TEXTS, image_data_args, read_results, tiny_image_transfer_model

from hftransfer import TransferModel, create_transfer_model
from hftransfer.errors import HFTransferError
from hftransfer.models.backbone import Backbone
from hftransfer.tuning.strategies import apply_trainable


def image_model(checkpointing: bool, trainable_groups: int = 2) -> TransferModel:
    """Tiny EfficientNet, its top ``trainable_groups`` groups training, the stem and lower stages frozen."""
    model = tiny_image_transfer_model(LABELS, seed=0)
    if checkpointing:
        model.backbone.set_gradient_checkpointing(True)
    apply_trainable(model, trainable_groups)
    return model.train()  # frozen groups' BatchNorm layers stay in eval (the default --bn_stats frozen)


def text_model(folder, checkpointing: bool, trainable_groups: int = 1) -> TransferModel:
    """Tiny BERT with embeddings and all but the top ``trainable_groups`` encoder layers frozen."""
    torch.manual_seed(0)
    model = create_transfer_model("text", str(folder), TEXT_LABELS, pooling="mean")
    if checkpointing:
        model.backbone.set_gradient_checkpointing(True)
    apply_trainable(model, trainable_groups)
    return model.train()


def image_batch() -> dict:
    gen = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.randn(4, 3, 32, 32, generator=gen), "labels": torch.tensor([0, 1, 2, 1])}


def text_batch(model: TransferModel) -> dict:
    inputs = dict(model.backbone.tokenizer(TEXTS, return_tensors="pt", padding=True))
    return {**inputs, "labels": torch.tensor([1, 0, 0])}


def gradients(model: TransferModel, batch: dict) -> dict[str, torch.Tensor | None]:
    """Gradients of every trainable parameter after one backward pass (dropout seeded alike on both sides)."""
    torch.manual_seed(123)
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters() if p.requires_grad}


def saved_for_backward(model: TransferModel, batch: dict) -> int:
    """How many tensors autograd keeps from the forward pass (what checkpointing is there to cut)."""
    count = 0

    def pack(tensor):
        nonlocal count
        count += 1
        return tensor

    torch.manual_seed(123)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch).loss.backward()
    return count


def assert_same_gradients(plain: dict, checkpointed: dict) -> None:
    assert plain.keys() == checkpointed.keys()
    backbone = [n for n in plain if n.startswith("backbone.")]
    assert backbone, "no backbone parameter trains: the test would not exercise the frozen-input case"
    for name in plain:
        assert plain[name] is not None, name
        assert checkpointed[name] is not None, f"{name} got no gradient with checkpointing"
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_timm_gradients_with_checkpointing_equal_without_when_lower_layers_are_frozen():
    batch = image_batch()
    plain, checkpointed = image_model(False), image_model(True)
    assert checkpointed.backbone.model.grad_checkpointing
    assert_same_gradients(gradients(plain, batch), gradients(checkpointed, batch))
    assert saved_for_backward(checkpointed, batch) < saved_for_backward(plain, batch)


def test_reentrant_checkpointing_over_a_frozen_stem_would_lose_the_gradients():
    """The trap the non-reentrant setting avoids, shown on the same model: with timm's reentrant mode
    the trainable stages behind the frozen stem get no gradient at all, and nothing fails."""
    from timm.layers import set_reentrant_ckpt, use_reentrant_ckpt

    batch = image_batch()
    model = image_model(True)
    assert use_reentrant_ckpt() is False  # what set_gradient_checkpointing forced
    set_reentrant_ckpt(True)
    try:
        grads = gradients(model, batch)
    finally:
        set_reentrant_ckpt(False)
    lost = [n for n, g in grads.items() if n.startswith("backbone.") and g is None]
    assert lost, "reentrant checkpointing kept the gradients: this test no longer shows the trap"
    assert all(grads[n] is not None for n in grads if n.startswith("head."))


def test_bert_gradients_with_checkpointing_equal_without_when_lower_layers_are_frozen(tiny_bert):
    plain, checkpointed = text_model(tiny_bert, False), text_model(tiny_bert, True)
    batch = text_batch(plain)
    assert checkpointed.backbone.gradient_checkpointing
    assert_same_gradients(gradients(plain, batch), gradients(checkpointed, batch))
    assert saved_for_backward(checkpointed, batch) < saved_for_backward(plain, batch)


def test_bert_checkpointing_is_off_again_after_disable_and_leaves_eval_untouched(tiny_bert):
    model = text_model(tiny_bert, True)
    batch = text_batch(model)
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
    model.backbone.set_gradient_checkpointing(False)
    assert not model.backbone.gradient_checkpointing
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before)


def test_a_backbone_without_checkpointing_is_a_one_line_error():
    class Plain(Backbone):
        pass

    with pytest.raises(HFTransferError, match="Plain has no gradient checkpointing: drop --gradient_checkpointing"):
        Plain().set_gradient_checkpointing(True)


def test_recipe_run_with_checkpointing_trains_the_same_weights_and_records_it(tmp_path, image_data):
    """The whole loop (partial strategy: lower groups frozen) ends with the same parameters either way."""
    from hftransfer.config import load_config
    from hftransfer.runs.train import train

    runs = {}
    for flag in ("false", "true"):
        out = tmp_path / f"ckpt_{flag}"
        # bn_stats all: every BatchNorm keeps its statistics, which a recomputed forward would update twice
        cfg = load_config([*IMAGE_TINY, *map(str, image_data_args(image_data, out)), "--strategy", "partial",
                           "--unfreeze_top_k", "2", "--num_train_epochs", "1", "--bn_stats", "all",
                           "--checkpointing_steps", "no", "--gradient_checkpointing", flag])
        train(cfg, "image")
        runs[flag] = TransferModel.from_pretrained(out)
    plain, checkpointed = dict(runs["false"].named_parameters()), dict(runs["true"].named_parameters())
    start = dict(tiny_image_transfer_model(runs["false"].id2label, seed=42).named_parameters())
    top = runs["false"].layer_groups()[-2].params
    assert any(not torch.equal(plain[n], start[n]) for n in top), "the trainable groups did not train"
    for name, value in plain.items():
        torch.testing.assert_close(checkpointed[name], value, rtol=1e-4, atol=1e-6, msg=name)
    assert read_results(tmp_path / "ckpt_true")["transfer"]["gradient_checkpointing"] is True
    assert read_results(tmp_path / "ckpt_false")["transfer"]["gradient_checkpointing"] is False
    assert "gradient checkpointing (non-reentrant)" in (tmp_path / "ckpt_true" / "README.md").read_text()
