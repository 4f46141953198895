"""timm's training augmentations by name: auto-augment policies (RandAugment, TrivialAugment, AugMix,
AutoAugment), random erasing and Mixup / CutMix, built by timm itself, never re-implemented here; and the
per-example seeding that makes every one of them a function of (seed, epoch, example) for exact resumes.

torch and timm are imported where used: ``import hftransfer.data`` (which exports the mixer) stays light."""
from __future__ import annotations

import contextlib
import random
from typing import TYPE_CHECKING

import numpy as np

from ..errors import HFTransferError

if TYPE_CHECKING:
    import torch

# TrivialAugment (Mueller & Hutter 2021): one op per image at a magnitude drawn uniformly over the wide range;
# timm spells it as RandAugment with n=1 and a magnitude std above 100 (uniform sampling up to mmax)
TRIVIAL_AUGMENT = "rand-n1-m30-mmax30-mstd101"
POLICY_ALIASES = {"trivialaugment": TRIVIAL_AUGMENT, "trivial_augment": TRIVIAL_AUGMENT, "ta_wide": TRIVIAL_AUGMENT}


def timm_policy(name: str) -> str:
    """The timm config string of ``--auto_augment`` ``name`` (aliases such as trivialaugment resolved)."""
    return POLICY_ALIASES.get(name.lower(), name)


def auto_augment_transform(name: str, mean: tuple[float, ...] = (0.485, 0.456, 0.406), image_size: int = 224,
                           interpolation: str | None = None):
    """timm's transform for policy ``name`` (a PIL -> PIL callable): rand-*, augmix-*, or an AutoAugment policy.

    ``mean`` (0-1 scale) fills the pixels geometric ops uncover; ``interpolation`` (timm's name, e.g. bicubic)
    is the one their resampling uses (None: timm picks bilinear or bicubic at random per op).
    """
    from timm.data import auto_augment as aa
    from timm.data.transforms import str_to_pil_interp

    policy = timm_policy(name)
    # timm's own hyper-parameters for these policies (transforms_factory.transforms_imagenet_train)
    hparams = {"translate_const": int(image_size * 0.45), "img_mean": tuple(min(255, round(255 * m)) for m in mean)}
    if interpolation and interpolation != "random":
        hparams["interpolation"] = str_to_pil_interp(interpolation)
    try:
        if policy.startswith("rand"):
            return _pillow13_posterize(aa.rand_augment_transform(policy, hparams))
        if policy.startswith("augmix"):
            hparams["translate_pct"] = 0.3  # timm's AugMix setting, as transforms_imagenet_train passes it
            return _pillow13_posterize(aa.augment_and_mix_transform(policy, hparams))
        return _pillow13_posterize(aa.auto_augment_transform(policy, hparams))
    except (AssertionError, KeyError, ValueError, IndexError) as e:
        detail = f" ({e})" if str(e) else ""
        raise HFTransferError(f"--auto_augment '{name}' is not a timm policy{detail}: use e.g. rand-m9-mstd0.5-inc1, "
                              "trivialaugment, augmix-m5-w4-d2 or v0") from None


def _posterize(img, bits_to_keep, **__):
    """timm's ``posterize`` as it behaves on Pillow < 13: keeping 0 bits (or fewer) gives a black image.

    timm (1.0.31) asks for 0 bits (v0's Posterize at low magnitude) or fewer (TrivialAugment's
    PosterizeIncreasing at magnitude 30), which Pillow < 13 turned black (TensorFlow's posterize does too) and
    Pillow >= 13 refuses with a ValueError that would stop training mid-epoch.
    """
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep < 1:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def _pillow13_posterize(transform):
    """``transform`` with its timm Posterize ops running ``_posterize`` (RandAugment / AugMix keep them in
    ``ops``, AutoAugment in ``policy``, a list of sub-policies); every other op is timm's own."""
    from timm.data import auto_augment as aa

    for item in [*getattr(transform, "ops", []), *getattr(transform, "policy", [])]:
        for op in item if isinstance(item, (list, tuple)) else [item]:
            if getattr(op, "aug_fn", None) is aa.posterize:
                op.aug_fn = _posterize
    return transform


def check_auto_augment(name: str) -> None:
    """Refuse, in one line, a policy timm cannot build (before the run touches anything)."""
    auto_augment_transform(name)


def train_steps(data_config: dict, crop_scale=(0.08, 1.0), hflip: float = 0.5, color_jitter: float | None = 0.4,
                auto_augment: str | None = None) -> list:
    """The PIL -> PIL training steps, in timm's order (``transforms_imagenet_train``): random resized crop, flip,
    the auto-augment policy, color jitter. Sizes and interpolation come from timm's ``data_config``."""
    from torchvision.transforms import v2

    size = data_config["input_size"][-1]
    interpolation = v2.InterpolationMode(data_config.get("interpolation", "bilinear"))
    steps = [v2.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=interpolation)]
    steps += [v2.RandomHorizontalFlip(hflip)] if hflip > 0 else []
    if auto_augment:
        steps.append(auto_augment_transform(auto_augment, mean=data_config["mean"], image_size=size,
                                            interpolation=data_config.get("interpolation")))
    # timm's rule (transforms_factory): an auto-augment policy replaces color jitter, unless it is a '3a' policy,
    # which is designed to be followed by jitter
    if color_jitter and (not auto_augment or "3a" in auto_augment):
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    return steps


def random_erasing(probability: float):
    """timm's ``RandomErasing`` as its training transform uses it: per-pixel normal noise, on the CPU. It must
    follow the normalization, since the noise it draws is standard normal in normalized space."""
    from timm.data.random_erasing import RandomErasing

    return RandomErasing(probability, mode="pixel", device="cpu")


@contextlib.contextmanager
def forked_host_rngs(python_seed: int | None = None, numpy_seed: int | None = None):
    """Seed Python's ``random`` and/or ``numpy.random`` global state inside the block and restore it after:
    timm's augmentations draw from these globals, and what ran before must not change what they draw."""
    python_state = random.getstate() if python_seed is not None else None
    numpy_state = np.random.get_state() if numpy_seed is not None else None
    try:
        if python_seed is not None:
            random.seed(python_seed)
        if numpy_seed is not None:
            np.random.seed(numpy_seed)
        yield
    finally:
        if python_state is not None:
            random.setstate(python_state)
        if numpy_state is not None:
            np.random.set_state(numpy_state)


class SeededAugmentation:
    """Random augmentation whose draws for example ``i`` in epoch ``e`` depend on (seed, e, i) only.

    Each example is transformed under its own seeds (torch's CPU generator, Python's ``random`` and
    ``numpy.random``, forked and restored around it: torchvision draws from the first, timm's auto-augment
    ops and random erasing from the second, RandAugment's op choice and AugMix from the third), so the
    augmentation of a batch does not depend on what ran before it: a run resumed in the middle of an epoch,
    or one whose loader workers see examples in another order, augments every example exactly as the
    uninterrupted run did. ``epoch`` is set by the loop before each epoch.
    """

    def __init__(self, transform, seed: int):
        self.transform, self.seed, self.epoch = transform, seed, 0

    def __call__(self, image, index: int):
        import torch

        draws = random.Random(f"{self.seed}/{self.epoch}/{index}")
        # the torch seed is the first draw, as before Python / numpy were seeded: older runs resume unchanged
        torch_seed = draws.getrandbits(63)
        with torch.random.fork_rng(devices=[]), forked_host_rngs(draws.getrandbits(64), draws.getrandbits(32)):
            # the CPU generator only: transforms run on the CPU, and torch.manual_seed would also queue a
            # CUDA seeding (with a captured stack trace) for every example
            torch.default_generator.manual_seed(torch_seed)
            return self.transform(image)


class BatchMixer:
    """timm's ``Mixup`` / CutMix (mode 'batch': one lambda per batch, each image mixed with the batch flipped).

    ``__call__(batch, seed)`` returns the batch with ``pixel_values`` mixed, as normalized float32 (a uint8
    batch is normalized here with ``mean`` / ``std``, 0-1 scale, the backbone's own: mixing uint8 would
    overflow, and the backbone takes float input as already normalized), and ``labels`` (class ids) replaced
    by timm's soft targets, float [B, num_classes] summing to 1, label smoothing folded in as timm does (the
    loss must then not smooth again). All randomness comes from ``seed``.
    """

    def __init__(self, *, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.0, num_classes: int,
                 mean: tuple[float, ...] = (0.485, 0.456, 0.406), std: tuple[float, ...] = (0.229, 0.224, 0.225)):
        from timm.data import Mixup

        self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                           mode="batch", label_smoothing=label_smoothing, num_classes=num_classes)
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        self.mean, self.std = tuple(mean), tuple(std)

    def normalized(self, pixels: torch.Tensor) -> torch.Tensor:
        """A float copy of ``pixels`` in normalized space (float batches, from random erasing, already are)."""
        import torch

        if pixels.dtype != torch.uint8:
            return pixels.clone()  # timm mixes in place: the caller's batch stays as it was
        mean = torch.tensor(self.mean, device=pixels.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(1, -1, 1, 1)
        return (pixels.float() / 255 - mean) / std

    def __call__(self, batch: dict, seed: int) -> dict:
        import torch
        from timm.data.mixup import mixup_target

        pixels, labels = self.normalized(batch["pixel_values"]), batch["labels"]
        # timm's Mixup asserts an even batch (its 'pair' mode needs one). An odd (last) batch mixes its first
        # B-1 images through timm and keeps the last one unmixed, with timm's smoothed one-hot target (lam = 1):
        # image and target then agree for every row. The rows are shuffled, so which one stays out is random.
        even = len(pixels) - len(pixels) % 2
        parts, targets = [], []
        if even:
            # timm's draws (lambda, mixup or cutmix, the box) come from numpy's global state
            with forked_host_rngs(numpy_seed=random.Random(f"mixup/{seed}").getrandbits(32)):
                mixed, mixed_targets = self.mixup(pixels[:even], labels[:even])
            parts.append(mixed)
            targets.append(mixed_targets)
        if even < len(pixels):
            parts.append(pixels[even:])
            targets.append(mixup_target(labels[even:], self.num_classes, 1.0, self.label_smoothing))
        return {**batch, "pixel_values": torch.cat(parts), "labels": torch.cat(targets)}


def create_batch_mixer(*, mixup_alpha: float, cutmix_alpha: float, prob: float, switch_prob: float,
                       label_smoothing: float, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...],
                       multi_label: bool) -> BatchMixer | None:
    """The ``BatchMixer`` for these settings, or None when neither mixup nor cutmix is on (or ``prob`` is 0);
    multi-label data is refused in one line: mixing its multi-hot targets is not what these options do."""
    if not ((mixup_alpha > 0 or cutmix_alpha > 0) and prob > 0):
        return None
    if multi_label:
        raise HFTransferError("--mixup / --cutmix support single-label classification only: drop them for "
                              "multi-label data")
    return BatchMixer(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                      label_smoothing=label_smoothing, num_classes=num_classes, mean=mean, std=std)
