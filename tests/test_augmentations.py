"""timm's training augmentations: auto-augment policies, random erasing, Mixup / CutMix, and their seeding.

No downloads: a data config dict, and timm's tiny ``test_efficientnet`` with random weights where a model is needed.
"""
from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from hftransfer.data import INDEX_COLUMN
from hftransfer.data.augmentations import (
    BatchMixer,
    SeededAugmentation,
    auto_augment_transform,
    check_auto_augment,
    create_batch_mixer,
    random_erasing,
)
from hftransfer.data.preprocessing import Augmentation, ImagePipeline, collate_images, image_transforms
from hftransfer.errors import HFTransferError

DATA_CONFIG = {"input_size": (3, 32, 32), "interpolation": "bicubic", "crop_pct": 0.875,
               "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
POLICIES = ["rand-m9-mstd0.5-inc1", "trivialaugment", "augmix-m5-w4-d2"]


def picture(seed: int = 0, size=(48, 40)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))


def shuffle_global_rngs(seed: int) -> None:
    """Leave every global generator timm or torchvision could draw from in some other state."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    random.random(), np.random.rand(), torch.rand(3)


def step_names(transform) -> list[str]:
    return [type(t).__name__ for t in transform.transforms]


@pytest.mark.parametrize("policy", POLICIES + ["v0", "3a"])
def test_auto_augment_in_the_training_transform(policy):
    transform = image_transforms(DATA_CONFIG, True, as_uint8=True, color_jitter=0.4, auto_augment=policy)
    names = step_names(transform)
    assert names[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"] and names[-1] == "PILToTensor"
    assert names[2] in ("RandAugment", "AugMixAugment", "AutoAugment")
    # timm's rule: jitter only beside a '3a' policy
    assert ("ColorJitter" in names) == (policy == "3a")
    shuffle_global_rngs(0)
    out = transform(picture())
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)


def test_without_policy_the_transform_is_unchanged():
    names = step_names(image_transforms(DATA_CONFIG, True, as_uint8=True, color_jitter=0.4))
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "PILToTensor"]
    names = step_names(image_transforms(DATA_CONFIG, True, as_uint8=True, augment=False, auto_augment="v0", reprob=1))
    assert names == ["Resize", "CenterCrop", "PILToTensor"]  # augment off: the eval transform, nothing random


def test_random_erasing_makes_normalized_float_training_images():
    transform = image_transforms(DATA_CONFIG, True, as_uint8=True, reprob=1.0)
    assert step_names(transform)[-3:] == ["ToDtype", "Normalize", "RandomErasing"]
    plain = image_transforms(DATA_CONFIG, True, as_uint8=True, reprob=0.0)
    torch.manual_seed(0)
    random.seed(0)
    erased = transform(picture())
    torch.manual_seed(0)
    random.seed(0)
    reference = plain(picture())
    assert erased.dtype == torch.float32 and erased.shape == (3, 32, 32)
    mean, std = torch.tensor(DATA_CONFIG["mean"]).view(3, 1, 1), torch.tensor(DATA_CONFIG["std"]).view(3, 1, 1)
    normalized = (reference.float() / 255 - mean) / std
    changed = ~torch.isclose(erased, normalized, atol=1e-5)
    assert 0 < changed.float().mean() < 0.5  # one box (at most a third of the image) of per-pixel noise
    assert image_transforms(DATA_CONFIG, False, as_uint8=True, reprob=1.0)(picture()).dtype == torch.uint8


def test_pipeline_key_ignores_training_augmentation():
    plain = ImagePipeline(DATA_CONFIG)
    augmented = ImagePipeline(DATA_CONFIG, augmentation=Augmentation(auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25))
    assert plain.key == augmented.key  # the feature cache: frozen features come from the eval transform only


def test_pipeline_serves_float_training_batches_and_uint8_eval(tmp_path):
    import datasets

    images = [picture(i) for i in range(3)]
    ds = datasets.Dataset.from_dict({"image": images, "labels": [0, 1, 0], INDEX_COLUMN: [0, 1, 2]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "labels": datasets.Value("int64"),
                                                                INDEX_COLUMN: datasets.Value("int64")}))
    pipeline = ImagePipeline(DATA_CONFIG, augmentation=Augmentation(auto_augment="trivialaugment", reprob=0.5, seed=1))
    prepared = pipeline.prepare(ds, "image", "train")
    train = pipeline.collate([pipeline.train_view(prepared, "image")[i] for i in range(3)])
    evaluation = pipeline.collate([pipeline.eval_view(prepared, "image")[i] for i in range(3)])
    assert train["pixel_values"].dtype == torch.float32 and train["pixel_values"].shape == (3, 3, 32, 32)
    assert evaluation["pixel_values"].dtype == torch.uint8
    again = pipeline.collate([pipeline.train_view(prepared, "image")[i] for i in (2, 0, 1)])
    assert torch.equal(again["pixel_values"], train["pixel_values"][[2, 0, 1]])  # per example, not per batch


@pytest.mark.parametrize("setting", [{"auto_augment": p} for p in POLICIES] + [{"reprob": 0.5}])
def test_seeded_augmentation_depends_on_seed_epoch_index_only(setting):
    transform = image_transforms(DATA_CONFIG, True, as_uint8=True, color_jitter=0.4, **setting)
    seeded = SeededAugmentation(transform, seed=7)
    image = picture()
    shuffle_global_rngs(1)
    first = [seeded(image, i) for i in range(4)]
    shuffle_global_rngs(2)
    assert all(torch.equal(seeded(image, i), out) for i, out in enumerate(first))
    seeded.epoch = 1
    assert all(not torch.equal(seeded(image, i), out) for i, out in enumerate(first))


@pytest.mark.parametrize("op", [auto_augment_transform(p, image_size=32) for p in POLICIES] + [random_erasing(0.5)])
def test_timm_ops_alone_are_seeded_per_example(op):
    """Without the crop (seeded by torch), only Python's random and numpy's state vary the timm ops."""
    tensor_input = isinstance(op, type(random_erasing(0.5)))
    seeded = SeededAugmentation(op if not tensor_input else lambda x: op(x.clone()), seed=0)
    image = torch.zeros(3, 32, 32) if tensor_input else picture(size=(32, 32))

    def run(epoch: int, index: int) -> torch.Tensor:
        seeded.epoch = epoch
        out = seeded(image, index)
        return out if tensor_input else torch.from_numpy(np.asarray(out).copy())

    shuffle_global_rngs(3)
    outputs = [run(0, i) for i in range(6)]
    shuffle_global_rngs(4)
    assert all(torch.equal(run(0, i), out) for i, out in enumerate(outputs))
    assert any(not torch.equal(run(1, i), out) for i, out in enumerate(outputs))


def test_seeded_augmentation_restores_the_global_generators():
    seeded = SeededAugmentation(image_transforms(DATA_CONFIG, True, as_uint8=True, auto_augment="augmix-m5-w4-d2",
                                                 reprob=0.5), seed=0)
    shuffle_global_rngs(5)
    python, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    seeded(picture(), 0)
    assert random.getstate() == python and torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))


@pytest.mark.parametrize("policy", ["rand-n1-m0", "rand-n1-m30-mmax30-inc1"])
def test_posterize_to_no_bits_gives_black_not_an_error(policy):
    """timm asks for 0 (Posterize, magnitude 0) or -8 bits (PosterizeIncreasing, magnitude 30, as TrivialAugment
    draws): Pillow >= 13 raises on those, Pillow < 13 gave a black image, and so does the transform here."""
    transform = auto_augment_transform(policy, image_size=32)
    (posterize,) = [op for op in transform.ops if op.name.startswith("Posterize")]
    posterize.prob = 1.0
    out = np.asarray(posterize(picture(size=(32, 32))))
    assert out.shape == (32, 32, 3) and out.max() == 0


def test_bad_policy_is_one_line():
    for name in ("bogus", "rand-x9", "augmix-q3"):
        with pytest.raises(HFTransferError) as e:
            check_auto_augment(name)
        assert "\n" not in str(e.value) and name in str(e.value)
    with pytest.raises(HFTransferError):
        ImagePipeline(DATA_CONFIG, augmentation=Augmentation(auto_augment="nope"))


def test_pipeline_kwargs_reads_augmentation_options():
    from hftransfer.training.loaders import pipeline_kwargs

    cfg = SimpleNamespace(augment=True, crop_scale=[0.5, 1.0], color_jitter=0.2, seed=4, decode_size=None,
                          max_seq_length=16, auto_augment="v0", reprob=0.3)
    assert pipeline_kwargs(cfg)["augmentation"] == Augmentation((0.5, 1.0), 0.2, 4, auto_augment="v0", reprob=0.3)
    rank = SimpleNamespace(crop_scale=[0.08, 1.0], color_jitter=0.4, seed=0, decode_size=None, max_seq_length=16)
    assert pipeline_kwargs(rank)["augmentation"] is None
    del cfg.auto_augment, cfg.reprob
    assert pipeline_kwargs(cfg)["augmentation"] == Augmentation((0.5, 1.0), 0.2, 4)


def uint8_batch(size: int, num_classes: int = 5) -> dict:
    generator = torch.Generator().manual_seed(size)
    return {"pixel_values": torch.randint(0, 256, (size, 3, 16, 16), dtype=torch.uint8, generator=generator),
            "labels": torch.arange(size) % num_classes, INDEX_COLUMN: torch.arange(size)}


def normalized(pixels: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(DATA_CONFIG["mean"]).view(1, 3, 1, 1), torch.tensor(DATA_CONFIG["std"]).view(1, 3, 1, 1)
    return (pixels.float() / 255 - mean) / std


def mixer(**kwargs) -> BatchMixer:
    settings = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "label_smoothing": 0.1, "num_classes": 5,
                "mean": DATA_CONFIG["mean"], "std": DATA_CONFIG["std"], **kwargs}
    return BatchMixer(**settings)


def test_mixer_soft_targets_are_seeded():
    mix, batch = mixer(), uint8_batch(8)
    np.random.seed(0)
    numpy_state = np.random.get_state()
    out = mix(batch, seed=11)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))  # restored
    assert out["pixel_values"].dtype == torch.float32 and out["pixel_values"].shape == (8, 3, 16, 16)
    assert out["labels"].dtype == torch.float32 and out["labels"].shape == (8, 5)
    assert torch.allclose(out["labels"].sum(1), torch.ones(8))
    assert out["labels"].min() >= 0.1 / 5 - 1e-6  # label smoothing folded in
    assert torch.equal(out[INDEX_COLUMN], batch[INDEX_COLUMN]) and batch["pixel_values"].dtype == torch.uint8
    np.random.seed(123)
    again = mix(uint8_batch(8), seed=11)
    assert torch.equal(again["pixel_values"], out["pixel_values"]) and torch.equal(again["labels"], out["labels"])
    others = [mix(uint8_batch(8), seed=s)["labels"] for s in range(12, 16)]
    assert any(not torch.equal(o, out["labels"]) for o in others)


def test_mixer_leaves_an_odd_batchs_last_row_unmixed():
    mix = mixer(mixup_alpha=1.0, cutmix_alpha=0.0)
    batch = uint8_batch(5)
    out = mix(batch, seed=0)
    assert out["labels"].shape == (5, 5) and torch.allclose(out["labels"].sum(1), torch.ones(5))
    assert torch.allclose(out["pixel_values"][4], normalized(batch["pixel_values"])[4])
    expected = torch.full((5,), 0.1 / 5)
    expected[batch["labels"][4]] = 1 - 0.1 + 0.1 / 5
    assert torch.allclose(out["labels"][4], expected)
    assert not torch.allclose(out["pixel_values"][:4], normalized(batch["pixel_values"])[:4])  # the rest is mixed
    single = mix(uint8_batch(1), seed=0)
    assert torch.allclose(single["pixel_values"], normalized(uint8_batch(1)["pixel_values"]))
    assert torch.allclose(single["labels"][0].sum(), torch.tensor(1.0))


def test_mixer_takes_float_batches_as_normalized_and_does_not_mutate_them():
    batch = uint8_batch(4)
    batch["pixel_values"] = normalized(batch["pixel_values"])
    before = batch["pixel_values"].clone()
    mixed = mixer()(batch, seed=3)
    assert torch.equal(batch["pixel_values"], before)
    from_uint8 = mixer()(uint8_batch(4), seed=3)
    assert torch.allclose(mixed["pixel_values"], from_uint8["pixel_values"], atol=1e-5)


def test_mixer_output_feeds_the_backbone_as_its_own_normalization():
    from hftransfer import create_backbone

    backbone = create_backbone("image", "test_efficientnet", weights="random").eval()
    config = backbone.data_config
    size = config["input_size"][-1]
    one = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = {"pixel_values": one.repeat(4, 1, 1, 1), "labels": torch.tensor([0, 1, 2, 3])}
    mix = create_batch_mixer(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.0,
                             num_classes=4, mean=config["mean"], std=config["std"], multi_label=False)
    out = mix(batch, seed=0)  # identical images: mixing leaves them as they are, only normalized
    with torch.no_grad():
        assert torch.allclose(backbone(pixel_values=out["pixel_values"]), backbone(pixel_values=batch["pixel_values"]),
                              atol=1e-4)
    erased = collate_images([{"pixel_values": out["pixel_values"][i], "labels": i} for i in range(4)])
    assert erased["pixel_values"].dtype == torch.float32  # a float (random-erasing) batch collates as it is


def test_create_batch_mixer_refuses_multi_label_and_is_off_without_alpha():
    common = {"prob": 1.0, "switch_prob": 0.5, "label_smoothing": 0.1, "num_classes": 3,
              "mean": DATA_CONFIG["mean"], "std": DATA_CONFIG["std"]}
    assert create_batch_mixer(mixup_alpha=0.0, cutmix_alpha=0.0, multi_label=True, **common) is None
    assert create_batch_mixer(mixup_alpha=0.8, cutmix_alpha=0.0, multi_label=False,
                              **{**common, "prob": 0.0}) is None
    with pytest.raises(HFTransferError, match="single-label") as e:
        create_batch_mixer(mixup_alpha=0.8, cutmix_alpha=1.0, multi_label=True, **common)
    assert "\n" not in str(e.value)
    assert isinstance(create_batch_mixer(mixup_alpha=0.0, cutmix_alpha=1.0, multi_label=False, **common), BatchMixer)
