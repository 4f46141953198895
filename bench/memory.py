"""Peak memory and step time of training steps with and without ``--gradient_checkpointing``.

    python bench/memory.py                          # tf_efficientnet_lite0, batch 32, 224 px; appends to bench/RESULTS.md
    python bench/memory.py --steps 3 --no-record    # a quick look, nothing written
    python bench/memory.py --model all-MiniLM-L6-v2 --batch 32 --seq_len 128

Each setting runs in its own fresh interpreter (``--child``), so one setting's peak never hides in
the other's: the parent reads the child's peak RSS from ``os.wait4`` (the kernel's high-water mark
of the whole process, model and optimizer state included). The child also reports its RSS after
building the model and optimizer and after a warm-up step, so the table separates what the
activations add. Each step is the library's: ``TransferModel`` with the backbone's fast layout,
forward with labels (cross-entropy), backward, AdamW step; every layer trains (``full``) or only
the top two groups (``partial``: the frozen-lower-layers case checkpointing must still get right).
Inputs are random tensors of the model's input size (images) or random token ids (text).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"


def rss_mb() -> float:
    """This process's current resident set (Linux /proc), in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def child(args) -> None:
    import torch

    from hftransfer import create_transfer_model
    from hftransfer.tuning.strategies import apply_trainable

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    modality = "text" if "minilm" in args.model.lower() else "image"
    model = create_transfer_model(modality, args.model, {0: "a", 1: "b"})
    model.backbone.use_fast_layout()
    if args.checkpointing:
        model.backbone.set_gradient_checkpointing(True)
    groups = len(model.layer_groups()) - 1
    apply_trainable(model, groups if args.strategy == "full" else 2)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    if modality == "image":
        size = model.backbone.data_config["input_size"][-1]
        batch = {"pixel_values": torch.randn(args.batch, 3, size, size)}
    else:
        vocab = model.backbone.encoder.config.vocab_size
        batch = {"input_ids": torch.randint(1000, vocab, (args.batch, args.seq_len)),
                 "attention_mask": torch.ones(args.batch, args.seq_len, dtype=torch.long)}
    batch["labels"] = torch.randint(0, 2, (args.batch,))
    built = rss_mb()

    def step():
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocator pools, AdamW state
    warm = rss_mb()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"built_mb": built, "after_warmup_mb": warm, "step_s": statistics.median(times),
                      "steps": args.steps}))


def run_child(args, checkpointing: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--batch", str(args.batch), "--seq_len",
           str(args.seq_len), "--steps", str(args.steps), "--threads", str(args.threads), "--strategy", args.strategy]
    cmd += ["--checkpointing"] if checkpointing else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child failed ({' '.join(cmd)}):\n{err[-3000:]}")
    row = json.loads(out.strip().splitlines()[-1])
    row["peak_mb"] = usage.ru_maxrss / 1e3  # kB on Linux
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--strategies", nargs="+", default=["full", "partial"], choices=["full", "partial"])
    parser.add_argument("--strategy", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-record", dest="record", action="store_false", help="print only, do not append to RESULTS.md")
    args = parser.parse_args()
    if args.child:
        return child(args)
    rows = []
    for strategy in args.strategies:
        args.strategy = strategy
        for checkpointing in (False, True):
            row = {"strategy": strategy, "checkpointing": checkpointing, **run_child(args, checkpointing)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    lines = ["| strategy | --gradient_checkpointing | peak RSS MB | RSS after build MB | peak - build MB | "
             "step s (median) | peak vs off | step time vs off |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        off = next(r for r in rows if r["strategy"] == row["strategy"] and not r["checkpointing"])
        lines.append(f"| {row['strategy']} | {'on' if row['checkpointing'] else 'off'} | {row['peak_mb']:.0f} | "
                     f"{row['built_mb']:.0f} | {row['peak_mb'] - row['built_mb']:.0f} | {row['step_s']:.2f} | "
                     f"{row['peak_mb'] / off['peak_mb']:.2f}x | {row['step_s'] / off['step_s']:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        import torch

        command = "python bench/memory.py " + " ".join(sys.argv[1:])
        when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        section = (f"\n## Gradient checkpointing: peak memory and step time, {when}\n\n"
                   f"- command: `{command.strip()}`\n"
                   f"- machine: nproc {os.cpu_count()}, {platform.processor() or platform.machine()}; torch "
                   f"{torch.__version__}, {args.threads} thread(s), CPU only; load average at the end "
                   f"{os.getloadavg()[0]:.2f}\n"
                   f"- model {args.model}, batch {args.batch}" + ("" if "minilm" not in args.model.lower() else
                                                                   f", {args.seq_len} tokens") +
                   f", fp32, one warm-up step then the median of {args.steps}; each setting in its own process "
                   "(peak RSS from `os.wait4`); full = every layer trains, partial = only the top two groups\n\n"
                   f"{table}\n")
        with open(RESULTS, "a") as f:
            f.write(section)
        print(f"-> appended to {RESULTS}")


if __name__ == "__main__":
    main()
