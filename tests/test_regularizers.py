"""L2-SP: penalty value and gradient against hand computations, dtypes, frozen references, weight decay."""
import math

import pytest
import torch
from builders import tiny_image_transfer_model

from hftransfer import HFTransferError, create_transfer_model
from hftransfer.tuning.regularizers import L2SP, decoupled_weight_decay_groups
from hftransfer.tuning.strategies import param_groups

LABELS = {0: "a", 1: "b"}
ALPHA, BETA = 0.3, 0.07


@pytest.fixture
def model():
    return tiny_image_transfer_model(LABELS)


def backbone_params(model):
    return {f"backbone.{n}": p for n, p in model.backbone.named_parameters()}


def squares(tensor) -> float:
    return math.fsum(x * x for x in tensor.detach().double().flatten().tolist())


def hand_penalty(model, l2sp, alpha, beta) -> float:
    drift = math.fsum(squares(p.double() - l2sp.reference(n).double())
                      for n, p in backbone_params(model).items() if p.requires_grad)
    head = math.fsum(squares(p) for p in model.head.parameters())
    return alpha / 2 * drift + beta / 2 * head


def test_snapshot_covers_every_backbone_parameter_and_no_buffer(model):
    l2sp = L2SP(model, ALPHA, BETA)
    assert list(l2sp.names) == list(backbone_params(model))
    assert not any(n.startswith("head.") for n in l2sp.names)
    assert len(list(l2sp.buffers())) == len(l2sp.names) < len(list(model.backbone.state_dict()))
    for name, param in backbone_params(model).items():
        ref = l2sp.reference(name)
        assert torch.equal(ref, param)
        assert ref.data_ptr() != param.data_ptr()
        assert not ref.requires_grad


def test_penalty_matches_hand_computation_for_known_perturbations(model):
    l2sp = L2SP(model, ALPHA, BETA)
    params = backbone_params(model)
    stem, bias = params["backbone.model.conv_stem.weight"], params["backbone.model.bn1.bias"]
    with torch.no_grad():
        stem.add_(0.1)
        bias[0] += 2.0
    drift = 0.1 ** 2 * stem.numel() + 2.0 ** 2
    head = squares(model.head.fc.weight) + squares(model.head.fc.bias)
    expected = ALPHA / 2 * drift + BETA / 2 * head
    value = l2sp(model)
    assert value.shape == ()
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert value.item() == pytest.approx(hand_penalty(model, l2sp, ALPHA, BETA), rel=1e-5)
    assert L2SP(model, ALPHA, 0.0)(model).item() == 0.0
    assert l2sp(model).item() == pytest.approx(expected, rel=1e-6)  # no state carried between calls


def test_gradient_is_alpha_drift_on_backbone_and_beta_w_on_head(model):
    l2sp = L2SP(model, ALPHA, BETA)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    frozen = backbone_params(model)["backbone.model.blocks.0.0.conv.weight"]
    frozen.requires_grad_(False)
    value = l2sp(model)
    assert value.item() == pytest.approx(hand_penalty(model, l2sp, ALPHA, BETA), rel=1e-5)
    value.backward()
    assert frozen.grad is None
    for name, p in backbone_params(model).items():
        if p is not frozen:
            torch.testing.assert_close(p.grad, ALPHA * (p.detach() - l2sp.reference(name)), rtol=1e-5, atol=1e-7)
    for p in model.head.parameters():
        torch.testing.assert_close(p.grad, BETA * p.detach(), rtol=1e-5, atol=1e-7)
    assert all(ref.grad is None for ref in l2sp.buffers())


def test_zero_at_init_without_head_term(model):
    l2sp = L2SP(model, ALPHA, 0.0)
    value = l2sp(model)
    assert value.item() == 0.0
    assert value.dtype == torch.float32
    value.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    assert L2SP(model, 0.0, 0.0)(model).item() == 0.0


def test_float32_and_correct_in_bfloat16(model):
    l2sp = L2SP(model, ALPHA, BETA)
    model.to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    value = l2sp(model)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(hand_penalty(model, l2sp, ALPHA, BETA), rel=1e-5)
    assert value.item() > BETA / 2 * math.fsum(squares(p) for p in model.head.parameters())  # rounding drift counted
    value.backward()
    assert all(p.grad.dtype == torch.bfloat16 for p in model.parameters())

    native = L2SP(model, ALPHA, 0.0)
    assert native.reference("backbone.model.conv_stem.weight").dtype == torch.bfloat16
    assert native(model).item() == 0.0
    assert native(model).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert l2sp(model).dtype == torch.float32


def test_references_stay_fixed_while_the_model_trains(model):
    l2sp = L2SP(model, ALPHA, BETA)
    before = {n: l2sp.reference(n).clone() for n in l2sp.names}
    assert list(l2sp.parameters()) == []
    assert l2sp.state_dict() == {}
    model_ptrs = {p.data_ptr() for p in model.parameters()}
    assert not any(ref.data_ptr() in model_ptrs for ref in l2sp.buffers())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    out = model(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]))
    (out.loss + l2sp(model)).backward()
    optimizer.step()
    moved = [n for n, p in backbone_params(model).items() if not torch.equal(p, before[n])]
    assert moved
    assert all(torch.equal(l2sp.reference(n), before[n]) for n in l2sp.names)
    assert l2sp(model).item() > 0
    l2sp.to(torch.float64)
    assert all(ref.dtype == torch.float64 for ref in l2sp.buffers())  # buffers follow .to()


def test_head_replacement_and_clear_errors(model):
    l2sp = L2SP(model, ALPHA, BETA)
    model.reset_classifier({0: "a", 1: "b", 2: "c"})
    assert l2sp(model).item() == pytest.approx(BETA / 2 * math.fsum(squares(p) for p in model.head.parameters()), rel=1e-5)
    with pytest.raises(HFTransferError, match=">= 0"):
        L2SP(model, -0.1, BETA)
    other = create_transfer_model("image", "test_vit", LABELS, weights="random")
    with pytest.raises(HFTransferError, match="no reference weight"):
        l2sp(other)


def test_decoupled_weight_decay_groups_zeroes_decay_only_when_active(model):
    inactive = param_groups(model, 1e-3, 1e-2, weight_decay=0.05)
    snapshot = [dict(g) for g in inactive]
    assert decoupled_weight_decay_groups(inactive, l2sp_active=False) == snapshot
    assert any(g["weight_decay"] == 0.05 for g in inactive)

    active = param_groups(model, 1e-3, 1e-2, weight_decay=0.05)
    out = decoupled_weight_decay_groups(active, l2sp_active=True)
    assert out is active
    assert all(g["weight_decay"] == 0.0 for g in out)
    assert [{k: v for k, v in g.items() if k != "weight_decay"} for g in out] == \
           [{k: v for k, v in g.items() if k != "weight_decay"} for g in snapshot]
    assert any(g["is_head"] for g in out)
    assert any(not g["is_head"] for g in out)
    optimizer = torch.optim.AdamW(out)
    assert all(g["weight_decay"] == 0.0 for g in optimizer.param_groups)
