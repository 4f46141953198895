"""timm's training augmentations by name: auto-augment policies (RandAugment, TrivialAugment, AugMix,
AutoAugment) and random erasing, built by timm itself, never re-implemented here."""
from __future__ import annotations

from ..errors import HFTransferError

# TrivialAugment (Mueller & Hutter 2021): one op per image at a magnitude drawn uniformly over the wide range;
# timm spells it as RandAugment with n=1 and a magnitude std above 100 (uniform sampling up to mmax)
TRIVIAL_AUGMENT = "rand-n1-m30-mmax30-mstd101"
POLICY_ALIASES = {"trivialaugment": TRIVIAL_AUGMENT, "trivial_augment": TRIVIAL_AUGMENT, "ta_wide": TRIVIAL_AUGMENT}


def timm_policy(name: str) -> str:
    """The timm config string of ``--auto_augment`` ``name`` (aliases such as trivialaugment resolved)."""
    return POLICY_ALIASES.get(name.lower(), name)


def auto_augment_transform(name: str, mean: tuple[float, ...] = (0.485, 0.456, 0.406), image_size: int = 224):
    """timm's transform for policy ``name`` (a PIL -> PIL callable): rand-*, augmix-*, or an AutoAugment policy."""
    from timm.data import auto_augment as aa

    policy = timm_policy(name)
    # timm's own hyper-parameters for these policies (transforms_factory.transforms_imagenet_train)
    hparams = {"translate_const": int(image_size * 0.45), "img_mean": tuple(round(255 * m) for m in mean)}
    try:
        if policy.startswith("rand"):
            return aa.rand_augment_transform(policy, hparams)
        if policy.startswith("augmix"):
            return aa.augment_and_mix_transform(policy, hparams)
        return aa.auto_augment_transform(policy, hparams)
    except (AssertionError, KeyError, ValueError, IndexError) as e:
        detail = f" ({e})" if str(e) else ""
        raise HFTransferError(f"--auto_augment '{name}' is not a timm policy{detail}: use e.g. rand-m9-mstd0.5-inc1, "
                              "trivialaugment, augmix-m5-w4-d2 or v0") from None


def check_auto_augment(name: str) -> None:
    """Refuse, in one line, a policy timm cannot build (before the run touches anything)."""
    auto_augment_transform(name)
