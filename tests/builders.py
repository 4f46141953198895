"""Builders shared by the test modules: tiny generated data, tiny local models, run folders, subprocess helpers.

Nothing here downloads anything. conftest.py wraps some of these in fixtures (``tiny_bert``,
``image_data``, ``text_data``); test modules import the rest from here, never from each other.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from hftransfer import TransferModel

# hftransfer is imported inside the builders that need it, so that conftest.py (which imports this
# module) does not depend on any library module: a broken one fails only the tests that use it.

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_IMAGES = ROOT / "data" / "hymenoptera_160"
BUNDLED_TEXT = ROOT / "data" / "rt_polarity"

# ---------------------------------------------------------------------------------------------- labels, texts
LABELS = {0: "ants", 1: "bees", 2: "wasps"}
TEXT_LABELS = {0: "negative", 1: "positive"}
TEXTS = ["the movie was good", "a bad plot", "not very great actor"]

WORDS = ("good great fine superb bad awful poor dull movie film plot actor the a is was very not").split()
# the vocabulary of make_encoder_folder's tokenizer (before its w0, w1, ... fillers)
ENCODER_WORDS = "the a good bad movie film great awful plot actor was is not very".split()
# a tiny transformers encoder config (any family; make_tiny_bert sets its own vocab_size)
TINY_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=99)

# ---------------------------------------------------------------------------------------------- recipe arguments
IMAGE_TINY_MODEL = ["--model_name_or_path", "test_efficientnet", "--weights", "random"]
IMAGE_TINY = [*IMAGE_TINY_MODEL, "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
              "--head_learning_rate", "0.01"]


def image_data_args(image_data: dict, out) -> list:
    """The image recipe's data flags for the ``image_data`` fixture, writing to ``out``."""
    return ["--train_dir", image_data["train"], "--validation_dir", image_data["val"], "--output_dir", out]


def image_args(image_data: dict, out, *extra) -> list:
    """A complete tiny image recipe command line (random test_efficientnet) plus ``extra``."""
    return [*IMAGE_TINY, *image_data_args(image_data, out), *extra]


# ---------------------------------------------------------------------------------------------- data
def make_image_folder(root: Path, classes=("cats", "dogs"), per_class: int = 6, size: int = 32, seed: int = 0) -> Path:
    """Class-per-subfolder PNGs whose mean brightness depends on the class (learnable, tiny)."""
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


def noise_image(seed: int = 0, size: int = 48) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8"))


# ---------------------------------------------------------------------------------------------- tiny models
def make_tiny_bert(path: Path) -> Path:
    """A 2-layer BERT (hidden 32) with a WordPiece tokenizer over a tiny vocabulary, saved as a folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + list("abcdefghijklmnopqrstuvwxyz")
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(**{**TINY_ENCODER, "vocab_size": len(vocab)}, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    return path


def make_encoder_folder(folder: Path, model_type: str = "bert", seed: int = 0, **overrides) -> Path:
    """A transformers encoder of any family (random weights) with a BERT word-piece tokenizer built locally."""
    from transformers import AutoConfig, AutoModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *ENCODER_WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab + [f"w{i}" for i in range(TINY_ENCODER["vocab_size"] - len(vocab))]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **{**TINY_ENCODER, **overrides})
    AutoModel.from_config(config).save_pretrained(folder)
    return folder


def save_tiny_timm_weights(path: Path, arch: str = "test_efficientnet", seed: int | None = 0) -> dict:
    """A tiny timm backbone's random weights (no classifier) as safetensors: a stand-in for a pretrained
    checkpoint. Returns the state dict. ``seed=None`` keeps the current torch RNG state."""
    import timm
    from safetensors.torch import save_file

    if seed is not None:
        torch.manual_seed(seed)
    state = timm.create_model(arch, num_classes=0).state_dict()
    save_file(state, path)
    return state


class ScaledHead(torch.nn.Module):
    """A user-defined head: any nn.Module mapping features to logits, importable by its qualified name,
    so from_pretrained rebuilds it."""

    def __init__(self, in_features: int, num_labels: int):
        super().__init__()
        self.proj = torch.nn.Linear(in_features, num_labels)
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return self.proj(x) * self.scale


def tiny_image_transfer_model(labels, name: str = "test_efficientnet", seed: int = 0, **kwargs) -> TransferModel:
    """A randomly initialised tiny timm TransferModel (reproducible: the torch RNG is seeded first)."""
    from hftransfer import create_transfer_model

    torch.manual_seed(seed)
    return create_transfer_model("image", name, labels, weights="random", **kwargs)


def randomize_head(model: TransferModel, seed: int = 1) -> TransferModel:
    """Non-trivial head weights, so a swapped or dropped classifier cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


def image_model(name: str = "test_efficientnet", head: str = "linear", labels=LABELS, **kwargs) -> TransferModel:
    return randomize_head(tiny_image_transfer_model(labels, name, head=head, **kwargs))


def text_model(folder: Path, pooling: str = "pooler", head: str = "linear", labels=TEXT_LABELS, **kwargs) -> TransferModel:
    from hftransfer import create_transfer_model

    torch.manual_seed(0)
    return randomize_head(create_transfer_model("text", str(folder), labels, head=head, pooling=pooling, **kwargs))


def image_inputs(model: TransferModel, seeds=(0, 1)) -> torch.Tensor:
    """The eval preprocessing hftransfer trains with (timm's resize + center crop + normalize)."""
    from hftransfer.data.preprocessing import image_transforms

    transform = image_transforms(model.backbone.data_config, False)
    return torch.stack([transform(noise_image(s)) for s in seeds])


def text_inputs(model: TransferModel) -> dict:
    return dict(model.backbone.tokenizer(TEXTS, return_tensors="pt", padding=True))


def logits_of(model: TransferModel, inputs) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(inputs, dict):
            return model(**inputs).logits
        return model(pixel_values=inputs).logits


# ---------------------------------------------------------------------------------------------- run folders
def make_run_dir(out: Path, model, modality: str, extra_results: dict | None = None, **cfg_kwargs) -> Path:
    """A finished run's output_dir: model files, all_results.json (with the recipe), config.yaml, checkpoints."""
    from hftransfer.config import TrainConfig, save_config
    from hftransfer.training.describe import describe_run
    from hftransfer.tuning.strategies import Strategy

    defaults = dict(model_name_or_path="test_efficientnet", weights="random", strategy="lp_ft", layer_decay=0.8,
                    num_train_epochs=3, learning_rate=1e-4, head_learning_rate=1e-3, per_device_train_batch_size=4,
                    output_dir=str(out))
    if modality == "image":
        defaults.update(train_dir=str(out.parent / "data" / "train"), validation_dir=str(out.parent / "data" / "val"))
    cfg = TrainConfig(**{**defaults, **cfg_kwargs})
    group_names = [g.name for g in model.layer_groups()[:-1]]
    strategy = Strategy(cfg.strategy, len(group_names), cfg.unfreeze_top_k, cfg.unfreeze_every, cfg.lp_epochs)
    bundle = SimpleNamespace(train=range(12), eval=range(9), id2label=model.id2label, multi_label=model.multi_label)
    transfer = describe_run(cfg, modality, bundle, model, strategy, group_names)
    model.save_pretrained(out)
    save_config(cfg, out / "config.yaml")
    labels = list(model.id2label.values())
    per_class = {label: {"precision": 0.5 + 0.1 * i, "recall": 0.75, "f1": 0.6, "support": 3} for i, label in enumerate(labels)}
    history = [{"epoch": e, "train_loss": 1.0 / e, "eval_loss": 0.9 / e, "eval_accuracy": 0.5 + 0.1 * e,
                "eval_f1": 0.4 + 0.1 * e} for e in range(1, cfg.num_train_epochs + 1)]
    results = {"eval_accuracy": 0.7777777777777778, "eval_f1": 0.7, "eval_loss": 0.3, "eval_samples": 9,
               "eval_per_class": per_class, "best_epoch": 3, "epochs": cfg.num_train_epochs, "train_samples": 12,
               "train_runtime": 12.3, "train_loss": 0.33, "world_size": 1, "history": history, "transfer": transfer.to_dict(),
               **(extra_results or {})}
    (out / "all_results.json").write_text(json.dumps(results, indent=2))
    (out / "eval_predictions.jsonl").write_text('{"index": 0, "label": 1, "prediction": 1}\n')
    (out / "checkpoints" / "step_3").mkdir(parents=True)
    (out / "checkpoints" / "step_3" / "optimizer.bin").write_bytes(b"\0" * 64)
    (out / "best_model").mkdir()
    (out / "best_model" / "model.safetensors").write_bytes(b"\0" * 64)
    return out


def read_results(output_dir: Path) -> dict:
    return json.loads((Path(output_dir) / "all_results.json").read_text())


# ---------------------------------------------------------------------------------------------- subprocesses
def run_python(*args, env: dict | None = None, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python <args>`` in a fresh interpreter, output captured as text. ``env`` replaces the whole
    environment (None: inherit this one)."""
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def run_recipe(recipe: str, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run ``recipes/<recipe>.py`` in a fresh interpreter, as a user would."""
    return run_python(ROOT / "recipes" / f"{recipe}.py", *args, env={**os.environ, **(env or {})}, timeout=timeout)


def launch_two_processes(recipe: str, *args, env=None, timeout=600,
                         launcher=("--multi_gpu",)) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes 2 recipes/<recipe>.py <args>`` on CPU (gloo), one torch
    thread each so the two ranks share these cores instead of fighting over them. ``launcher``: the engine's
    launch flags instead of ``--multi_gpu`` (DDP), e.g. ``--config_file recipes/accelerate_configs/fsdp2.yaml``.
    A DeepSpeed config launches without accelerate's CPU flag, which would turn DeepSpeed off."""
    launch = ["-m", "accelerate.commands.launch", *launcher, "--num_processes", "2", "--main_process_port", "0",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    deepspeed = any("deepspeed" in str(flag) for flag in launcher)
    environment = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    return run_python(*launch, ROOT / "recipes" / f"{recipe}.py", *args,
                      env={**environment, **({} if deepspeed else {"ACCELERATE_USE_CPU": "1"}), "OMP_NUM_THREADS": "1",
                           **(env or {})}, timeout=timeout)


def recipe_in_process(capsys, recipe: str, *args) -> subprocess.CompletedProcess:
    """``recipes/<recipe>.py`` called in this interpreter (its ``run_recipe``), exit status and output captured:
    for the one-line-error checks, which need no fresh interpreter and so skip its seconds of imports."""
    from hftransfer.cli.commands import run_recipe as run

    capsys.readouterr()
    code = 0
    try:
        run("image" if recipe == "image_cls" else "text", ROOT / "recipes" / "configs" / f"{recipe}.yaml",
            [str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def cli_in_process(capsys, *args) -> subprocess.CompletedProcess:
    """``hftransfer ARGS`` (``cli.main``) in this interpreter, exit status and output captured."""
    from hftransfer.cli.commands import main

    capsys.readouterr()
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


# ---------------------------------------------------------------------------------------------- loading elsewhere
# A script for a fresh interpreter: loads pushed or saved models with timm / transformers only (hftransfer is
# made unimportable first) and prints their logits, labels and pipeline outputs as one JSON line.
# the prelude of every such script: importing hftransfer (or any of its modules) raises ImportError
BLOCK_HFTRANSFER = '''import sys


class BlockHFTransfer:
    def find_spec(self, name, path=None, target=None):
        if name == "hftransfer" or name.startswith("hftransfer."):
            raise ImportError("hftransfer is blocked in this process")
        return None


sys.meta_path.insert(0, BlockHFTransfer())
'''
LOAD_WITHOUT_HFTRANSFER = BLOCK_HFTRANSFER + r'''
"""Load pushed models with timm / transformers only; hftransfer is made unimportable first."""
import json

import timm
import torch
from PIL import Image
from transformers import (AutoModelForImageClassification, AutoModelForSequenceClassification, AutoTokenizer,
                          pipeline)

jobs = json.load(open(sys.argv[1]))
out = {}
if "image" in jobs:
    job = jobs["image"]
    image = Image.open(job["image"]).convert("RGB")
    model = timm.create_model("hf-hub:" + job["repo"], pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    pixels = transform(image).unsqueeze(0)
    wrapper = AutoModelForImageClassification.from_pretrained(job["repo"]).eval()
    with torch.no_grad():
        out["image"] = {
            "timm": model(pixels).tolist(),
            "timm_labels": list(model.pretrained_cfg["label_names"]),
            "transformers": wrapper(pixel_values=pixels).logits.tolist(),
            "transformers_labels": {str(k): v for k, v in wrapper.config.id2label.items()},
            "pipeline": pipeline("image-classification", model=job["repo"])(image, top_k=None),
        }
if "text" in jobs:
    job = jobs["text"]
    tokenizer = AutoTokenizer.from_pretrained(job["repo"])
    model = AutoModelForSequenceClassification.from_pretrained(job["repo"]).eval()
    with torch.no_grad():
        logits = model(**tokenizer(job["texts"], return_tensors="pt", padding=True)).logits
    out["text"] = {
        "transformers": logits.tolist(),
        "transformers_labels": {str(k): v for k, v in model.config.id2label.items()},
        "pipeline": pipeline("text-classification", model=job["repo"])(job["texts"], top_k=None),
    }
for job in jobs.get("remote_code", []):  # custom-code exports: the repo's own modeling_hftransfer.py
    row = {}
    if job["modality"] == "image":
        from transformers import AutoImageProcessor

        image = Image.open(job["image"]).convert("RGB")
        pixels = AutoImageProcessor.from_pretrained(job["repo"])(image, return_tensors="pt")["pixel_values"]
        model = AutoModelForImageClassification.from_pretrained(job["repo"], trust_remote_code=True).eval()
        with torch.no_grad():
            row["logits"] = model(pixel_values=pixels).logits.tolist()
        row["pixels"] = pixels.tolist()
        row["pipeline"] = pipeline("image-classification", model=job["repo"], trust_remote_code=True)(image, top_k=None)
    else:
        tokenizer = AutoTokenizer.from_pretrained(job["repo"], trust_remote_code=True)
        model = AutoModelForSequenceClassification.from_pretrained(job["repo"], trust_remote_code=True).eval()
        with torch.no_grad():
            row["logits"] = model(**tokenizer(job["texts"], return_tensors="pt", padding=True)).logits.tolist()
        row["pipeline"] = pipeline("text-classification", model=job["repo"], trust_remote_code=True)(
            job["texts"], top_k=None)
    row["labels"] = {str(k): v for k, v in model.config.id2label.items()}
    row["class"] = type(model).__name__
    out.setdefault("remote_code", []).append(row)
assert not any(name.startswith("hftransfer") for name in sys.modules)
print(json.dumps(out))
'''


def make_tiny_bert_with_vocab(path: Path) -> Path:
    """``make_tiny_bert`` with a tokenizer that splits its words (not all ``[UNK]``): transformers 5 takes the
    vocabulary as ``vocab=`` and ignores 4.x's ``vocab_file=``. For tests that need the words (masked-LM training)."""
    import inspect

    from transformers import BertTokenizerFast

    make_tiny_bert(path)
    key = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    BertTokenizerFast(**{key: str(path / "vocab.txt")}, do_lower_case=True).save_pretrained(path)
    return path
