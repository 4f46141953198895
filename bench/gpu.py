"""GPU training-step throughput: hftransfer's step path vs a plain loop vs the HF Trainer (a few minutes).

    python bench/gpu.py                    # on a GPU: tf_efficientnet_lite0, ViT-B/16, BERT-base (seq 128), bf16
    python bench/gpu.py --models vit_base_patch16_224 --steps 50
    python bench/gpu.py --smoke            # anywhere (CPU too): tiny models, a few steps, checks the script runs

Needs torch, timm, transformers, accelerate and hftransfer; not ``datasets`` and no network: every
model is random-init (the BERT folder is written locally with a tokenizer over a small vocabulary) and
the data is synthetic, created once on the device. Per model it times, after warm-up steps:

1. ``recipe``  hftransfer's training step path: ``TimmBackbone(name, weights="random")`` +
   ``LinearHead`` in a ``TransferModel`` (text: ``create_transfer_model("text", folder, ...,
   pooling="cls")``), the backbone's fast layout (channels_last for images), AdamW over hftransfer's
   ``param_groups``, the ``Accelerator`` that ``hftransfer.training.runtime.create_accelerator`` builds with
   ``mixed_precision="bf16"``, ``prepare``, and per batch what ``hftransfer.training.loop.train_one_epoch``
   does: the library's own ``train_step`` (``accumulate``, ``backward``, grad clipping, step,
   ``zero_grad``), ``loss.item()`` and the ``TransferScheduler`` step; eager, and compiled the
   recipe's way (``--torch_compile``: ``Accelerator(dynamo_backend="inductor")``).
2. ``plain``   the same model in a minimal loop: ``torch.autocast(bf16)``, forward, ``backward``,
   ``AdamW.step``, ``zero_grad``; no clipping, no per-step host sync; eager and compiled.
3. ``trainer`` ``transformers.Trainer`` (``bf16=True``) on ``AutoModelForImageClassification`` from a
   ``TimmWrapperConfig`` / ``BertForSequenceClassification(BertConfig())``, fed by a synthetic
   ``torch.utils.data.Dataset`` whose tensors already live on the device (its default collator stacks them).

Recipe and plain loop skip the DataLoader (same pre-made device batches); the Trainer cannot. Reported:
samples/s and each path's ratio to the compiled plain loop (target: the recipe path within 15% of it).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

# Reference figures from the project's issue (H200, bf16): plain loop eager / compiled, HF Trainer.
REFERENCE_H200 = {
    "vit_base_patch16_224": {"plain eager": 2723, "plain compiled": 3462, "trainer eager": 1246},
    "bert_base": {"plain eager": 1925, "plain compiled": 2370, "trainer eager": 1044},
}
FULL_MODELS = ("tf_efficientnet_lite0", "vit_base_patch16_224", "bert_base")
SMOKE_MODELS = {"tf_efficientnet_lite0": "test_efficientnet", "vit_base_patch16_224": "test_vit", "bert_base": "bert_tiny"}
BERT_TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
NUM_LABELS = 2
LR, WEIGHT_DECAY, MAX_GRAD_NORM = 1e-4, 0.01, 1.0
POOL = 4  # distinct synthetic batches cycled through


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models (timm test_*, a 2-layer BERT), batch 4, a few steps")
    p.add_argument("--models", default=",".join(FULL_MODELS), help=f"comma-separated subset of {', '.join(FULL_MODELS)}")
    p.add_argument("--paths", default="recipe,plain,trainer", help="comma-separated subset of recipe, plain, trainer")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default 30; smoke 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10, covers compilation; smoke 2)")
    p.add_argument("--batch_image", type=int, default=None, help="image batch (default 128; smoke 4)")
    p.add_argument("--batch_text", type=int, default=None, help="text batch (default 128; smoke 4)")
    p.add_argument("--seq_len", type=int, default=None, help="text sequence length (default 128; smoke 32)")
    p.add_argument("--no_compile", action="store_true", help="skip the torch.compile runs")
    p.add_argument("--trainer_compile", action="store_true", help="also time the Trainer with torch_compile=True")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    args.steps = args.steps or (3 if args.smoke else 30)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.smoke else 10)
    args.batch_image = args.batch_image or (4 if args.smoke else 128)
    args.batch_text = args.batch_text or (4 if args.smoke else 128)
    args.seq_len = args.seq_len or (32 if args.smoke else 128)
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    args.path_list = [m.strip() for m in args.paths.split(",") if m.strip()]
    bad = [m for m in args.model_list if m not in FULL_MODELS] + [x for x in args.path_list if x not in ("recipe", "plain", "trainer")]
    if bad:
        p.error(f"unknown: {', '.join(bad)}")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cleanup() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    try:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    except Exception as e:  # noqa: BLE001 - best effort between runs
        print(f"(could not reset accelerate's state: {e})", file=sys.stderr)


# ---- models and data ----------------------------------------------------------------------------
class Spec:
    def __init__(self, key: str, args, device: torch.device, workdir: Path):
        self.key, self.device = key, device
        self.kind = "text" if key == "bert_base" else "image"
        self.arch = SMOKE_MODELS[key] if args.smoke else key
        self.batch = args.batch_text if self.kind == "text" else args.batch_image
        self.bert_sizes = BERT_TINY if args.smoke else {}  # {} = BertConfig() defaults: BERT-base
        g = torch.Generator(device="cpu").manual_seed(0)
        if self.kind == "image":
            import timm

            size = timm.create_model(self.arch, pretrained=False).pretrained_cfg["input_size"]
            self.input_size = tuple(size)
            self.batches = [{"pixel_values": torch.randn(self.batch, *size, generator=g).to(device),
                             "labels": torch.randint(0, NUM_LABELS, (self.batch,), generator=g).to(device)}
                            for _ in range(POOL)]
        else:
            from transformers import BertConfig

            self.folder = make_bert_folder(workdir / f"{self.arch}", self.bert_sizes)
            vocab = BertConfig(**self.bert_sizes).vocab_size
            self.input_size = (args.seq_len,)
            self.batches = [{"input_ids": torch.randint(1000 if vocab > 2000 else 5, vocab, (self.batch, args.seq_len), generator=g).to(device),
                             "attention_mask": torch.ones(self.batch, args.seq_len, dtype=torch.long).to(device),
                             "token_type_ids": torch.zeros(self.batch, args.seq_len, dtype=torch.long).to(device),
                             "labels": torch.randint(0, NUM_LABELS, (self.batch,), generator=g).to(device)}
                            for _ in range(POOL)]

    def transfer_model(self):
        """hftransfer's model, as ``create_transfer_model`` builds it."""
        import hftransfer

        id2label = {0: "a", 1: "b"}
        torch.manual_seed(0)
        if self.kind == "image":
            backbone = hftransfer.TimmBackbone(self.arch, weights="random")
            head = hftransfer.LinearHead(backbone.feature_dim, NUM_LABELS)
            return hftransfer.TransferModel(backbone, head, id2label, head_config={"type": "linear", "dropout": 0.0})
        return hftransfer.create_transfer_model("text", str(self.folder), id2label, weights="pretrained", pooling="cls")

    def hf_model(self):
        """The HF Trainer user's model: TimmWrapper from a config, or BertForSequenceClassification."""
        torch.manual_seed(0)
        if self.kind == "image":
            from transformers import AutoModelForImageClassification, TimmWrapperConfig

            config = TimmWrapperConfig(architecture=self.arch, num_labels=NUM_LABELS)
            return AutoModelForImageClassification.from_config(config)
        from transformers import BertConfig, BertForSequenceClassification

        return BertForSequenceClassification(BertConfig(num_labels=NUM_LABELS, **self.bert_sizes))


def make_bert_folder(path: Path, sizes: dict) -> Path:
    """A random-init BertModel (``sizes`` over BertConfig's BERT-base defaults) and a small-vocab tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    words = ["the", "a", "movie", "film", "good", "bad", "great", "boring", "plot", "actor", "is", "was", "not", "very"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + list("abcdefghijklmnopqrstuvwxyz")
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(**sizes)).save_pretrained(path)  # the model keeps BertConfig's vocab (30522 unless smoke)
    return path


# ---- timing -------------------------------------------------------------------------------------
def timed(step, spec: Spec, args) -> dict:
    for i in range(args.warmup):
        step(spec.batches[i % POOL])
    sync(spec.device)
    start = time.perf_counter()
    for i in range(args.steps):
        step(spec.batches[i % POOL])
    sync(spec.device)
    seconds = time.perf_counter() - start
    return {"samples_per_s": args.steps * spec.batch / seconds, "ms_per_step": 1000 * seconds / args.steps}


def run_recipe(spec: Spec, args, compiled: bool) -> dict:
    """hftransfer's setup and training loop body (its ``train_step``), minus data loading, evaluation and checkpoints."""
    from hftransfer.config import TrainConfig
    from hftransfer.training.loop import train_step
    from hftransfer.training.runtime import create_accelerator
    from hftransfer.tuning.strategies import Strategy, TransferScheduler, apply_trainable, param_groups

    cfg = TrainConfig(mixed_precision="bf16", learning_rate=LR, weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM,
                      strategy="full", torch_compile=compiled)
    accelerator = create_accelerator(cfg)
    model = spec.transfer_model()
    model.backbone.use_fast_layout()
    group_names = [g.name for g in model.layer_groups()[:-1]]
    strategy = Strategy(cfg.strategy, len(group_names))
    apply_trainable(model, strategy.trainable_groups(0), cfg.train_norm)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.learning_rate, cfg.effective_head_lr, cfg.weight_decay,
                                               cfg.layer_decay))
    model, optimizer = accelerator.prepare(model, optimizer)
    total_steps = args.warmup + args.steps
    scheduler = TransferScheduler(optimizer, strategy, total_steps, 1, cfg.learning_rate, cfg.warmup_ratio,
                                  schedule=cfg.lr_scheduler_type)
    model.train()
    totals = {"loss": 0.0, "batches": 0}

    def step(batch):
        loss = train_step(accelerator, model, optimizer, dict(batch), None, cfg.max_grad_norm).item()
        totals["loss"] += loss  # train_one_epoch: the running loss and the progress bar's postfix
        totals["batches"] += 1
        totals["postfix"] = f"{loss:.4f}"
        if accelerator.sync_gradients:
            scheduler.step()

    result = timed(step, spec, args)
    result["final_loss"] = totals["loss"] / max(1, totals["batches"])
    return result


def run_plain(spec: Spec, args, compiled: bool) -> dict:
    model = spec.transfer_model().to(spec.device)
    if spec.kind == "image":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    if compiled:
        model = torch.compile(model)
    model.train()
    device_type = spec.device.type

    def step(batch):
        batch = dict(batch)
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(step, spec, args)


class SyntheticDataset(torch.utils.data.Dataset):
    """Per-example views into device tensors: what the Trainer's DataLoader indexes and collates."""

    def __init__(self, batches: list[dict], length: int):
        self.tensors = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
        self.n, self.length = len(next(iter(self.tensors.values()))), length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return {k: v[i % self.n] for k, v in self.tensors.items()}


def run_trainer(spec: Spec, args, compiled: bool, workdir: Path) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    total_steps = args.warmup + args.steps
    marks = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == args.warmup:
                sync(spec.device)
                marks["start"] = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if state.global_step == total_steps:
                sync(spec.device)
                marks["end"] = time.perf_counter()

    model = spec.hf_model()
    training_args = TrainingArguments(
        output_dir=str(workdir / "trainer"), per_device_train_batch_size=spec.batch, max_steps=total_steps,
        learning_rate=LR, weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM, bf16=True,
        use_cpu=spec.device.type == "cpu", dataloader_num_workers=0, dataloader_pin_memory=False,
        save_strategy="no", eval_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
        torch_compile=compiled, seed=0,
    )
    dataset = SyntheticDataset(spec.batches, spec.batch * total_steps)
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=default_data_collator,
                      callbacks=[Timer()])
    trainer.train()
    seconds = marks["end"] - marks["start"]
    del trainer, model
    return {"samples_per_s": args.steps * spec.batch / seconds, "ms_per_step": 1000 * seconds / args.steps}


# ---- main ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        print("no GPU here: the full sizes would take hours on CPU; use --smoke to check the script", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    print(f"device: {name}; torch {torch.__version__}; bf16 autocast; batch image {args.batch_image}, text "
          f"{args.batch_text} x seq {args.seq_len}; {args.warmup} warm-up + {args.steps} timed steps"
          f"{'; SMOKE sizes (tiny models)' if args.smoke else ''}")
    variants = []
    for path in ("plain", "recipe", "trainer"):
        if path not in args.path_list:
            continue
        variants.append((path, False))
        if (path != "trainer" and not args.no_compile) or (path == "trainer" and args.trainer_compile):
            variants.append((path, True))

    results = []
    with tempfile.TemporaryDirectory(prefix="hftransfer-gpu-") as tmp:
        workdir = Path(tmp)
        for key in args.model_list:
            spec = Spec(key, args, device, workdir)
            for path, compiled in variants:
                label = f"{path} {'compiled' if compiled else 'eager'}"
                print(f"  {key} ({spec.arch}) {label} ...", end=" ", flush=True)
                started = time.perf_counter()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    if path == "recipe":
                        r = run_recipe(spec, args, compiled)
                    elif path == "plain":
                        r = run_plain(spec, args, compiled)
                    else:
                        r = run_trainer(spec, args, compiled, workdir)
                    r["ok"] = True
                    r["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
                    print(f"{r['samples_per_s']:.1f}/s ({time.perf_counter() - started:.0f}s incl. warm-up)")
                except Exception as e:  # noqa: BLE001 - report and go on with the other runs
                    r = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
                    print(f"FAILED {r['error']}")
                results.append({"model": key, "arch": spec.arch, "path": label, "batch": spec.batch, **r})
                cleanup()
            del spec
            cleanup()

    print()
    print(format_table(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "torch": torch.__version__, "smoke": args.smoke,
                                               "results": results}, indent=2) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


def format_table(results: list[dict], args) -> str:
    header = ["model", "path", "batch", "samples/s", "ms/step", "peak GPU MB",
              "vs plain eager" if args.no_compile else "vs plain compiled", "reference H200 (issue)"]
    rows, verdicts = [], []
    for key in args.model_list:
        mine = [r for r in results if r["model"] == key]
        base = next((r for r in mine if r["path"] == "plain compiled" and r["ok"]), None)
        if base is None:  # --no_compile: compare with the eager plain loop
            base = next((r for r in mine if r["path"] == "plain eager" and r["ok"]), None)
        unit = "seq/s" if key == "bert_base" else "img/s"
        for r in mine:
            ref = REFERENCE_H200.get(key, {}).get(r["path"])
            if not r["ok"]:
                rows.append([key, r["path"], str(r["batch"]), "failed", "", "", "", r["error"][:60]])
                continue
            ratio = r["samples_per_s"] / base["samples_per_s"] if base else math.nan
            peak = f"{r['peak_gpu_mb']:.0f}" if r.get("peak_gpu_mb") is not None else "-"
            rows.append([key, r["path"], str(r["batch"]), f"{r['samples_per_s']:.1f} {unit}", f"{r['ms_per_step']:.1f}", peak,
                         f"{ratio:.2f}x" if base else "n/a", f"{ref:,} {unit}" if ref and not args.smoke else ""])
        rec = next((r for r in mine if r["path"] == "recipe compiled" and r["ok"]), None)
        if base and rec:
            ratio = rec["samples_per_s"] / base["samples_per_s"]
            verdicts.append(f"{key}: recipe compiled at {ratio:.2f}x of the compiled plain loop: "
                            f"target (>= 0.85x) {'met' if ratio >= 0.85 else 'NOT met'}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))
    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    if verdicts:
        out += [""] + verdicts
    if args.smoke:
        out += ["", "smoke sizes: the numbers only show that every path runs, not how fast it is"]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
