"""The README's two plain-onnxruntime examples ("Inference and deployment"), run as the README writes them.

Each fenced block after an ``<!-- onnx-example: NAME -->`` marker is run in a fresh interpreter in which
hftransfer cannot be imported (an import hook refuses it; the repo is neither the working directory nor on
PYTHONPATH), against an export of a tiny model made here: only the export folder, the inputs and the
example inputs' list are substituted. Its printed labels must be those of ``TransferModel.predict`` on both
backends, and its logits (printed by a line appended here) those of torch within the export's tolerance,
so the README's preprocessing is hftransfer's own, not an approximation.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from builders import BLOCK_HFTRANSFER, ROOT, image_model, run_python, text_model
from PIL import Image

from hftransfer.models.inference import predict
from hftransfer.runs.export import TOLERANCE, export_model

pytestmark = pytest.mark.integration  # fresh interpreters

MARKER = re.compile(r"<!-- onnx-example: (\w+) -->\s*```python\n(.*?)```", re.S)
REPORT = '''
import json as _json
import sys as _sys
print("LOGITS " + _json.dumps(logits.tolist()))
print("LOADED " + _json.dumps(sorted(m for m in ("hftransfer", "torch") if m in _sys.modules)))
'''
TEXTS = ["the movie was good", "a bad plot, and not very great actor", "great great film", "dull"]


def readme_example(name: str) -> str:
    examples = dict(MARKER.findall((ROOT / "README.md").read_text()))
    assert name in examples, f"README.md has no <!-- onnx-example: {name} --> block"
    return examples[name]


def substitute(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in code, f"the README example no longer contains {old}: update this test"
        code = code.replace(old, new)
    return code


def run_without_hftransfer(code: str, cwd) -> tuple[list[str], np.ndarray, list[str]]:
    """The printed labels, the logits and which of hftransfer / torch the process loaded."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = run_python("-c", BLOCK_HFTRANSFER + code + REPORT, env=env, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    logits = np.array(json.loads(next(line for line in lines if line.startswith("LOGITS "))[7:]))
    loaded = json.loads(next(line for line in lines if line.startswith("LOADED "))[7:])
    return [line for line in lines if not line.startswith(("LOGITS ", "LOADED "))], logits, loaded


def images(folder) -> list[str]:
    """Images of several shapes, larger and smaller than the decode size, as PNG and JPEG."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(300, 220), (190, 400), (150, 170), (500, 500), (240, 161)]):
        ramp = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.2, 1, (1, 1, 3))
        pixels = np.clip(ramp + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"image{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def spread_predictions(model, inputs: list) -> None:
    """Center the random head's logits over ``inputs``, so that not every input gets the same label."""
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias -= predict(model, inputs, device="cpu", mixed_precision="no").logits.mean(0)


def check_same_as_hftransfer(model, inputs: list, export, printed: list[str], logits: np.ndarray) -> None:
    torch_run = predict(model, inputs, device="cpu", mixed_precision="no")
    labels = [p["label"] for p in model.predict(inputs, device="cpu")]
    onnx_labels = [p["label"] for p in model.predict(inputs, backend="onnxruntime", onnx_file=export)]
    assert printed == labels == onnx_labels
    assert len(set(labels)) > 1  # the labels tell the inputs apart (see spread_predictions)
    assert np.abs(logits - torch_run.logits.numpy()).max() <= TOLERANCE


def test_the_readme_image_example_prints_hftransfers_labels_without_hftransfer(tmp_path):
    model = image_model()
    paths = images(tmp_path)
    spread_predictions(model, paths)
    export = tmp_path / "export"
    export_model(model, export)
    code = substitute(readme_example("image"), {'"outputs/image_cls/onnx"': repr(str(export)),
                                                '["a.jpg", "b.jpg"]': repr(paths)})
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    printed, logits, loaded = run_without_hftransfer(code, cwd)
    assert loaded == []  # neither hftransfer nor torch: onnxruntime, numpy and PIL
    check_same_as_hftransfer(model, paths, export, printed, logits)


def test_the_readme_text_example_prints_hftransfers_labels_without_hftransfer(tmp_path, tiny_bert):
    model = text_model(tiny_bert, pooling="mean")
    spread_predictions(model, TEXTS)
    export = tmp_path / "export"
    export_model(model, export)
    code = substitute(readme_example("text"), {'"outputs/text_cls/onnx"': repr(str(export)),
                                               '["a gripping, beautifully acted film", "dull, and far too long"]':
                                                   repr(TEXTS)})
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    printed, logits, loaded = run_without_hftransfer(code, cwd)
    assert "hftransfer" not in loaded
    check_same_as_hftransfer(model, TEXTS, export, printed, logits)


def test_the_examples_are_the_readmes_and_the_blocker_works(tmp_path):
    assert set(dict(MARKER.findall((ROOT / "README.md").read_text()))) == {"image", "text"}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = run_python("-c", BLOCK_HFTRANSFER + "import hftransfer", env=env, cwd=tmp_path)
    assert proc.returncode != 0 and "hftransfer is blocked" in proc.stderr
