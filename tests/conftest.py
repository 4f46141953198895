"""Shared fixtures: tiny generated data and tiny local models, so unit tests never need the network."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from hub_fixtures import hub  # noqa: E402,F401  (re-exported fixture)

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_IMAGES = ROOT / "data" / "hymenoptera_160"
BUNDLED_TEXT = ROOT / "data" / "rt_polarity"

WORDS = ("good great fine superb bad awful poor dull movie film plot actor the a is was very not").split()


def make_image_folder(root: Path, classes=("cats", "dogs"), per_class: int = 6, size: int = 32, seed: int = 0) -> Path:
    """Class-per-subfolder PNGs whose mean brightness depends on the class (learnable, tiny)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = 60 + 120 * c
            pixels = np.clip(rng.normal(base, 30, (size, size, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def make_text_file(path: Path, n: int = 24, seed: int = 0, labels=("neg", "pos")) -> Path:
    """A CSV of short sentences; positive ones use positive words."""
    rng = np.random.default_rng(seed)
    rows = ["text,label"]
    for i in range(n):
        label = labels[i % len(labels)]
        pool = WORDS[:4] if label == labels[-1] else WORDS[4:8]
        words = list(rng.choice(pool, 3)) + list(rng.choice(WORDS[8:], 3))
        rows.append(f"{' '.join(words)},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


def make_tiny_bert(path: Path) -> Path:
    """A 2-layer BERT (hidden 32) with a WordPiece tokenizer over a tiny vocabulary, saved as a folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + list("abcdefghijklmnopqrstuvwxyz")
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def image_data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("images")
    return {"train": make_image_folder(root / "train"), "val": make_image_folder(root / "val", per_class=5, seed=1)}


@pytest.fixture(scope="session")
def text_data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("text")
    return {"train": make_text_file(root / "train.csv"), "val": make_text_file(root / "val.csv", n=13, seed=1)}


def run_recipe(recipe: str, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run ``recipes/<recipe>.py`` in a fresh interpreter, as a user would."""
    cmd = [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)


def read_results(output_dir: Path) -> dict:
    return json.loads((Path(output_dir) / "all_results.json").read_text())
