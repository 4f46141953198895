"""What each sharded engine costs: per-device peak memory and step time of DDP, FSDP2 and DeepSpeed ZeRO through
accelerate, for a decoder-LLM classifier (hftransfer's ``TransferModel`` over a random-init Qwen2 of ~0.9B or
~0.14B parameters; full fine-tuning, AdamW, bf16 autocast, gradient checkpointing), one process per engine.

    python bench/gpu_scale.py                       # every engine x both sizes, one table (a lent GPU)
    python bench/gpu_scale.py --recipes             # first: the text recipe under each accelerate config
    python bench/gpu_scale.py --sizes tiny --engines ddp,fsdp   # a CPU smoke test of the script itself

One GPU cannot show sharding across devices; what it shows is each engine's per-device cost at one process,
and which engines fit a model that DDP cannot: ``--memory_cap_gib`` caps the process's share of the GPU
(``torch.cuda.set_per_process_memory_fraction``) so that the 0.9B model's training state (~15 GB in fp32
weights, gradients and Adam moments) does not fit whole, as on a 12 GB device. Every row is its own
``accelerate launch`` (accelerate's state is per process); a failed or out-of-memory row is recorded as such.

On the lent machine (its image has torch, accelerate, transformers, timm, peft; not hftransfer's other needs nor
DeepSpeed), carry wheels in a git-ignored ``.whl/``: ``DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation
deepspeed`` (pure Python; its ops compile on use) plus, for Python 3.12 manylinux, ``datasets dill multiprocess
evaluate optuna alembic SQLAlchemy Mako colorlog greenlet soundfile hjson pydantic pydantic_core annotated-types
typing-inspection`` (``pip download --no-deps --only-binary=:all: --python-version 3.12 ...``), then run
``pip install --no-index --no-deps --target /tmp/site .whl/*.whl; PYTHONPATH=/tmp/site:$PWD python3
bench/gpu_scale.py --recipes; ... python3 bench/gpu_scale.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name -> (hidden, layers, intermediate): Qwen2 shapes, vocabulary 32k, 16 heads
SIZES = {"0.9B": (2048, 16, 5504), "0.14B": (1024, 8, 2816), "tiny": (64, 2, 128)}
FSDP = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
        "--fsdp_reshard_after_forward", "true", "--fsdp_state_dict_type", "SHARDED_STATE_DICT"]
ENGINES = {
    "ddp": [],
    "fsdp": FSDP,
    "fsdp_offload": [*FSDP, "--fsdp_offload_params", "true"],
    "zero2": {"stage": 2},
    "zero3": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
    "zero3_offload": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True,
                      "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}},
}
BATCH, SEQ = 8, 256


def deepspeed_flags(zero: dict, folder: Path) -> list[str]:
    config = {"train_micro_batch_size_per_gpu": BATCH, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
              "bf16": {"enabled": True}, "zero_optimization": zero,
              # hftransfer's optimizer is torch's AdamW (its parameter groups carry the strategy's LRs)
              "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False}
    path = folder / f"ds_{zero['stage']}_{'offload' if 'offload_param' in zero else 'gpu'}.json"
    path.write_text(json.dumps(config))
    return ["--use_deepspeed", "--deepspeed_config_file", str(path)]


def run_row(engine: str, size: str, cap: float, folder: Path, timeout: float, processes: int = 1,
            batch: int = BATCH, seq: int = SEQ) -> dict:
    flags = ENGINES[engine]
    flags = deepspeed_flags(flags, folder) if isinstance(flags, dict) else flags
    if engine == "ddp" and processes > 1:
        flags = ["--multi_gpu"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--num_machines",
           "1", "--dynamo_backend", "no", "--main_process_port", "29555", "--mixed_precision", "bf16", *flags,
           __file__, "--worker", "--size", size, "--memory_cap_gib", str(cap), "--batch", str(batch), "--seq", str(seq)]
    start = time.time()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    if engine.startswith("zero"):  # accelerate's CPU flag turns DeepSpeed off; on CPU, DeepSpeed brings up gloo itself
        env.pop("ACCELERATE_USE_CPU", None)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"engine": engine, "size": size, "status": f"timeout after {timeout:.0f}s"}
    ranks = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if ranks:
        ranks.sort(key=lambda r: r["rank"])
        # what each process holds of the training state differs only under sharding: one entry per process
        state = [r.pop("state_gib") for r in ranks]
        return {"engine": engine, "size": size, "processes": processes, **ranks[0], "state_gib_per_process": state,
                "wall_s": round(time.time() - start, 1)}
    tail = [line for line in proc.stderr.splitlines() if line.strip()][-3:]
    return {"engine": engine, "size": size, "status": "failed: " + " | ".join(tail)[-400:]}


def make_model_folder(size: str, folder: Path) -> Path:
    """A Qwen2 config (no weights: ``--weights random``) and a word-piece tokenizer, written locally."""
    from transformers import BertTokenizerFast, Qwen2Config

    hidden, layers, intermediate = SIZES[size]
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(32000 - 5)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate, vocab_size=32000,
                num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=SEQ).save_pretrained(folder)
    return folder


def worker(size: str, cap_gib: float, batch_size: int, seq: int) -> dict:
    import torch
    from accelerate import Accelerator

    from hftransfer.models.transfer_model import create_transfer_model
    from hftransfer.training.sharding import (HostCopy, build_models_whole, complete_cpu_deepspeed, complete_cpu_fsdp,
                                              engine_name, no_split_modules)

    cuda = torch.cuda.is_available()
    if cuda and cap_gib:
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 2**30 / torch.cuda.mem_get_info()[1]))
    accelerator = Accelerator()
    complete_cpu_fsdp(accelerator)  # what hftransfer's create_accelerator does after accelerate's setup
    complete_cpu_deepspeed(accelerator)
    build_models_whole(accelerator)
    with tempfile.TemporaryDirectory() as tmp:
        model = create_transfer_model("text", str(make_model_folder(size, Path(tmp) / "m")), {0: "a", 1: "b"},
                                      weights="random")
    model.backbone.set_gradient_checkpointing(True)
    model._no_split_modules = no_split_modules(model)
    host = HostCopy(accelerator, model) if engine_name(accelerator) else None
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, 32000, (batch_size, seq), generator=generator),
             "attention_mask": torch.ones(batch_size, seq, dtype=torch.long),
             "labels": torch.randint(0, 2, (batch_size,), generator=generator)}
    batch = {k: v.to(accelerator.device) for k, v in batch.items()}
    result = {"params_M": round(params / 1e6), "engine_name": engine_name(accelerator) or "DDP (whole model)",
              "device": torch.cuda.get_device_name() if cuda else "cpu", "cap_gib": cap_gib if cuda else None}
    times = []
    try:
        for step in range(4):
            sync = torch.cuda.synchronize if cuda else (lambda: None)
            sync()
            start = time.perf_counter()
            with accelerator.autocast():
                loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError as error:
        result.update(status="out of memory", at_step=len(times), detail=str(error).splitlines()[0][:160])
    else:
        result.update(status="ok", step_s=round(sum(times[1:]) / len(times[1:]), 3), first_step_s=round(times[0], 2))
    if cuda:
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    result["rank"], result["state_gib"] = accelerator.process_index, round(training_state_bytes(model, optimizer) / 2**30, 3)
    if host is not None and result["status"] == "ok" and params < 3e8:
        result["export_check"] = export_round_trip(accelerator, model, host, batch)
    return result


def training_state_bytes(model, optimizer) -> int:
    """Bytes this process holds of parameters, gradients left after the step (none: ``zero_grad(set_to_none)``) and
    optimizer state (its shards under FSDP; DeepSpeed's partitions live in its own optimizer, counted through the
    engine's flat fp32 groups where it exposes them)."""
    import torch

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    # ZeRO-3 leaves each parameter an empty placeholder; its partition is ds_tensor
    tensors = [getattr(p, "ds_tensor", local(p)) for p in model.parameters()]
    tensors += [local(p.grad) for p in model.parameters() if p.grad is not None]
    inner = getattr(optimizer, "optimizer", optimizer)
    for state in getattr(inner, "state", {}).values():
        tensors += [local(v) for v in state.values() if torch.is_tensor(v)]
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):  # ZeRO-2 / ZeRO-3 masters
        tensors += [t for t in getattr(inner, name, []) if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


def export_round_trip(accelerator, model, host, batch) -> str:
    """hftransfer's export path under the engine: the whole weights gathered on the main process, then put back
    into the shards; the loss must not move."""
    import torch

    model.eval()
    with torch.no_grad(), accelerator.autocast():
        before = model(**batch).loss.item()
    copy = host.gather(accelerator, model)
    host.scatter(accelerator, model)
    with torch.no_grad(), accelerator.autocast():
        after = model(**batch).loss.item()
    count = len(copy.state_dict()) if copy is not None else 0
    return f"gathered {count} tensors; loss {before:.5f} -> {after:.5f} after scattering them back"


RECIPE_CONFIGS = ("fsdp2", "deepspeed_zero2", "deepspeed_zero3")


def recipe_checks(folder: Path, timeout: float) -> list[dict]:
    """``accelerate launch --config_file recipes/accelerate_configs/<engine>.yaml recipes/text_cls.py`` with LoRA on a
    tiny Qwen2 and a test split (the best weights scattered back into the shards to score it), then the export
    loaded by transformers' ``AutoModelForSequenceClassification`` with the logits hftransfer's model gives."""
    model = make_model_folder("tiny", folder / "qwen")
    rows = ["text,label"] + [f"w{i} w{i + 1} w{i + 2},{'pos' if i % 2 else 'neg'}" for i in range(48)]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    results = []
    for config in RECIPE_CONFIGS:
        out = folder / f"run_{config}"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "recipes" / "accelerate_configs" / f"{config}.yaml"), "--num_processes", "1",
               "--main_process_port", "29556", str(ROOT / "recipes" / "text_cls.py"), "--model_name_or_path",
               str(model), "--weights", "random", "--train_file", str(folder / "data.csv"), "--validation_file",
               str(folder / "data.csv"), "--test_file", str(folder / "data.csv"), "--strategy", "lora",
               "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--output_dir", str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            results.append({"config": config, "status": f"timeout after {timeout:.0f}s"})
            continue
        if proc.returncode != 0:
            tail = [line for line in proc.stderr.splitlines() if line.strip()][-3:]
            results.append({"config": config, "status": "failed: " + " | ".join(tail)[-500:]})
            continue
        results.append({"config": config, "status": "ok", **native_check(out)})
    return results


def native_check(out: Path) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hftransfer import TransferModel

    saved = json.loads((out / "all_results.json").read_text())
    batch = AutoTokenizer.from_pretrained(out)(["w1 w2 w3", "w7 w8 w9"], return_tensors="pt", padding=True)
    with torch.no_grad():
        native = AutoModelForSequenceClassification.from_pretrained(out).eval()(**batch).logits
        ours = TransferModel.from_pretrained(out).eval()(**batch).logits
    return {"sharding": saved.get("sharding"), "eval_accuracy": saved["eval_accuracy"],
            "test_accuracy": saved.get("test_accuracy"), "native_class": type(
                AutoModelForSequenceClassification.from_pretrained(out)).__name__,
            "max_logit_diff": float((native - ours).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="0.14B")
    parser.add_argument("--sizes", default="0.14B,0.9B")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--memory_cap_gib", type=float, default=12.0)
    parser.add_argument("--timeout", type=float, default=150)
    parser.add_argument("--processes", type=int, default=1, help="processes per row (CPU: ACCELERATE_USE_CPU=1)")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--seq", type=int, default=SEQ)
    parser.add_argument("--out", default=None, help="a JSON-lines file the rows are appended to, as they finish")
    parser.add_argument("--recipes", action="store_true", help="run the recipe checks (and nothing else)")
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.size, args.memory_cap_gib, args.batch, args.seq)), flush=True)
        return
    if args.recipes:
        with tempfile.TemporaryDirectory() as tmp:
            for row in recipe_checks(Path(tmp), args.timeout):
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
        return
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            for engine in args.engines.split(","):
                row = run_row(engine, size, args.memory_cap_gib, Path(tmp), args.timeout, args.processes, args.batch,
                              args.seq)
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
