"""Fine-tune a transformers text encoder (BERT-style) for text classification.

    accelerate launch recipes/text_cls.py                        # the embedded default job
    accelerate launch recipes/text_cls.py --train_file train.csv --validation_file dev.csv --strategy gradual
    python recipes/text_cls.py --model_name_or_path bert-base-uncased --dataset_name rotten_tomatoes

With no data flags it fine-tunes all-MiniLM-L6-v2 (offline weights) on the bundled rotten-tomatoes
sentences; configs/text_cls.yaml holds that job and the recipe's
defaults, and --help lists the common and text flags with the defaults that run (the YAML's,
where it sets one).
"""
from pathlib import Path

from hftransfer.cli.commands import run_recipe

if __name__ == "__main__":
    run_recipe("text", Path(__file__).parent / "configs" / "text_cls.yaml", description=__doc__)
