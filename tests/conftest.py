"""Shared fixtures: tiny generated data and tiny local models, so unit tests never need the network.

The builders behind them (and every other shared helper) live in builders.py.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from builders import make_image_folder, make_text_file, make_tiny_bert  # noqa: E402
from hub_fixtures import hub  # noqa: E402,F401  (re-exported fixture)


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
