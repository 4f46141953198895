"""Fine-tune a timm vision backbone for image classification.

    accelerate launch recipes/image_cls.py                       # the embedded default job
    accelerate launch recipes/image_cls.py --train_dir DIR --strategy lp_ft --num_train_epochs 5
    python recipes/image_cls.py --config my.yaml --learning_rate 3e-4

With no data flags it fine-tunes ImageNet-pretrained tf_efficientnet_lite0 (offline weights) on the
bundled ants/bees images; configs/image_cls.yaml holds that job and the recipe's
defaults, and --help lists the common and image flags with the defaults that run (the YAML's,
where it sets one).
"""
from pathlib import Path

from hftransfer.cli.commands import run_recipe

if __name__ == "__main__":
    run_recipe("image", Path(__file__).parent / "configs" / "image_cls.yaml", description=__doc__)
