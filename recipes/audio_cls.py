"""Fine-tune a pretrained backbone for audio classification: an ImageNet timm model on log-mel spectrograms, or a
transformers audio encoder (wav2vec2, HuBERT, AST, ...).

    accelerate launch recipes/audio_cls.py                       # the embedded default job
    accelerate launch recipes/audio_cls.py --train_dir CLIPS/ --validation_dir HELD_OUT/ --max_duration 2
    python recipes/audio_cls.py --model_name_or_path facebook/wav2vec2-base --dataset_name DATASET

With no data flags it fine-tunes ImageNet-pretrained tf_efficientnet_lite0 (offline weights) on log-mel
spectrograms of the bundled spoken digits (four speakers train, a fifth is held out for validation);
configs/audio_cls.yaml holds that job and the recipe's defaults, and --help lists the common and audio flags
with the defaults that run (the YAML's, where it sets one).
"""
from pathlib import Path

from hftransfer.cli.commands import run_recipe

if __name__ == "__main__":
    run_recipe("audio", Path(__file__).parent / "configs" / "audio_cls.yaml", description=__doc__)
