"""Which parameters train in each phase, BatchNorm statistics, optimizer groups and the LR schedule."""
import math

import pytest
import torch
from builders import tiny_image_transfer_model

from hftransfer import HFTransferError, create_transfer_model
from hftransfer.tuning.strategies import Strategy, TransferScheduler, apply_trainable, param_groups

LABELS = {0: "a", 1: "b", 2: "c"}


@pytest.fixture
def image_model():
    return tiny_image_transfer_model(LABELS)


def trainable_groups(model):
    return [g.name for g in model.layer_groups() if all(dict(model.named_parameters())[p].requires_grad for p in g.params)]


def frozen_groups(model):
    return [g.name for g in model.layer_groups() if not any(dict(model.named_parameters())[p].requires_grad for p in g.params)]


def test_strategies_schedule_of_trainable_groups():
    n = 5
    assert [Strategy("full", n).trainable_groups(e) for e in range(3)] == [5, 5, 5]
    assert [Strategy("linear_probe", n).trainable_groups(e) for e in range(3)] == [0, 0, 0]
    assert [Strategy("partial", n, unfreeze_top_k=2).trainable_groups(e) for e in range(3)] == [2, 2, 2]
    assert [Strategy("gradual", n, unfreeze_every=2).trainable_groups(e) for e in range(14)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5, 5]
    lp_ft = Strategy("lp_ft", n, lp_epochs=2)
    assert [lp_ft.trainable_groups(e) for e in range(4)] == [0, 0, 5, 5]
    assert [lp_ft.uses_backbone_lr_for_head(e) for e in range(4)] == [False, False, True, True]
    assert lp_ft.phase_starts() == [0, 2]


def test_unknown_strategy_is_a_clear_error():
    with pytest.raises(HFTransferError, match="unknown strategy 'best'.*full, linear_probe"):
        Strategy("best", 3)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_apply_trainable_freezes_from_the_bottom(modality, tiny_bert, image_model):
    model = image_model if modality == "image" else create_transfer_model("text", str(tiny_bert), LABELS)
    groups = [g.name for g in model.layer_groups()]
    backbone = groups[:-1]
    apply_trainable(model, 0)
    assert trainable_groups(model) == ["head"]
    assert frozen_groups(model) == backbone
    apply_trainable(model, 2)
    assert trainable_groups(model) == backbone[-2:] + ["head"]
    assert frozen_groups(model) == backbone[:-2]
    assert apply_trainable(model, 2) is False  # nothing changed
    apply_trainable(model, len(backbone))
    assert trainable_groups(model) == groups


def test_train_norm_keeps_norm_layers_trainable_in_frozen_groups(image_model):
    apply_trainable(image_model, 0, train_norm=True)
    named = dict(image_model.named_parameters())
    bn = [n for n in named if ".bn1." in n]
    convs = [n for n in named if "conv" in n and n.endswith("weight")]
    assert bn
    assert all(named[n].requires_grad for n in bn)
    assert convs
    assert not any(named[n].requires_grad for n in convs)


def test_frozen_batchnorm_statistics_do_not_drift(image_model):
    bn_layers = lambda m: [x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)]  # noqa: E731
    apply_trainable(image_model, 1)  # only the top group (and head) train
    image_model.train()
    before = [b.running_mean.clone() for b in bn_layers(image_model)]
    frozen_flags = [not b.weight.requires_grad for b in bn_layers(image_model)]
    assert any(frozen_flags)
    assert not all(frozen_flags)
    x = torch.randn(4, 3, 32, 32) * 3 + 2
    image_model(pixel_values=x, labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    after = [b.running_mean for b in bn_layers(image_model)]
    for frozen, b0, b1 in zip(frozen_flags, before, after):
        if frozen:
            assert torch.equal(b0, b1), "a frozen BatchNorm updated its running statistics"
        else:
            assert not torch.equal(b0, b1), "a trainable BatchNorm did not update"


def test_bn_stats_all_keeps_every_batchnorm_in_eval(image_model):
    image_model.bn_stats = "all"
    image_model.train()
    bns = [m for m in image_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    assert not any(m.training for m in bns)
    assert image_model.head.training


def test_param_groups_decay_and_layer_decay(image_model):
    groups = param_groups(image_model, lr=1e-3, head_lr=1e-2, weight_decay=0.05, layer_decay=0.5)
    named = {id(p): n for n, p in image_model.named_parameters()}
    n_layers = len(image_model.layer_groups()) - 1
    covered = [named[id(p)] for g in groups for p in g["params"]]
    assert sorted(covered) == sorted(named.values())  # every parameter exactly once
    for g in groups:
        names = [named[id(p)] for p in g["params"]]
        if g["is_head"]:
            assert g["lr"] == 1e-2
        else:
            assert g["lr"] == pytest.approx(1e-3 * 0.5 ** (n_layers - 1 - g["layer"]))
        no_decay = g["name"].endswith("no_decay")
        assert g["weight_decay"] == (0.0 if no_decay else 0.05)
        if no_decay:
            assert all(n.endswith("bias") or "bn" in n or dict(image_model.named_parameters())[n].ndim == 1 for n in names)


def test_scheduler_warmup_cosine_and_lp_ft_restart(image_model):
    optimizer = torch.optim.AdamW(param_groups(image_model, lr=1e-3, head_lr=1e-2, weight_decay=0.0))
    strategy = Strategy("lp_ft", 8, lp_epochs=1)
    sched = TransferScheduler(optimizer, strategy, steps_per_epoch=10, num_epochs=3, lr=1e-3, warmup_ratio=0.1)
    head = next(g for g in optimizer.param_groups if g["is_head"])
    lrs = []
    for _ in range(30):
        lrs.append(head["lr"])
        sched.step()
    # phase 1 (10 steps): 1 warmup step then cosine from head_lr to ~0
    assert lrs[0] == pytest.approx(1e-2 * 1 / 2)
    assert lrs[1] == pytest.approx(1e-2)
    assert lrs[9] < 1e-3
    # phase 2 (20 steps): warmup restarts, head now at the backbone LR (gentle fine-tuning)
    assert lrs[10] == pytest.approx(1e-3 * 1 / 3)
    assert lrs[12] == pytest.approx(1e-3)
    expected = 1e-3 * 0.5 * (1 + math.cos(math.pi * (19 - 12) / 18))
    assert lrs[19] == pytest.approx(expected)
    last = list(sched.get_last_lr())
    sched2 = TransferScheduler(optimizer, strategy, 10, 3, 1e-3, 0.1)  # a fresh run starts at step 0 ...
    assert sched2.get_last_lr() != last
    sched2.load_state_dict(sched.state_dict())  # ... and a resumed one continues where it stopped
    assert sched2.get_last_lr() == last


def test_layer_decay_learning_rates_follow_the_schedule(image_model):
    """Group i of n: lr * decay^(n-1-i) * schedule(step), for groups unfrozen later too."""
    decay, lr = 0.5, 1e-3
    optimizer = torch.optim.AdamW(param_groups(image_model, lr=lr, head_lr=1e-2, weight_decay=0.0, layer_decay=decay))
    n = len(image_model.layer_groups()) - 1
    strategy = Strategy("gradual", n, unfreeze_every=1)
    sched = TransferScheduler(optimizer, strategy, steps_per_epoch=4, num_epochs=n + 1, lr=lr, warmup_ratio=0.25)
    total = 4 * (n + 1)
    for step in range(total):
        factor = sched.factor(step)
        warmup = int(0.25 * total)
        expected = (step + 1) / (warmup + 1) if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        assert factor == pytest.approx(expected)
        for g in optimizer.param_groups:
            base = 1e-2 if g["is_head"] else lr * decay ** (n - 1 - g["layer"])
            assert g["lr"] == pytest.approx(base * factor)
        sched.step()
