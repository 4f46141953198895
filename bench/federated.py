"""Federated vs each client alone vs centralised: the four Blitzer review domains as four clients (non-IID by
product), all-MiniLM-L6-v2 (bundled weights), accuracy on every client's test split and bytes communicated.

    python bench/federated.py --seeds 0 1 2                      # appends a table to bench/RESULTS.md
    python bench/federated.py --seeds 0 --max_train_samples 200 --rounds 2 --no-record   # smoke run

Per seed, with the same model, max length, batch size and learning rates everywhere:

* federated: ``hftransfer federate --client_data books dvd electronics kitchen`` (simulation engine) for every
  ``--aggregations`` x ``--strategies`` (head = linear_probe, top groups = partial, LoRA = lora), ``--rounds``
  rounds of ``--local_epochs``; the exported round's per-client test accuracy (``federated_results.json``:
  ``best_clients``), its mean over clients, and the mean bytes per round (down + up, every client) next to the
  share of the model one client receives per round (``travelling_fraction``);
* alone: ``recipes/text_cls.py`` on one domain's train / dev / test, ``rounds x local_epochs`` epochs (the same
  local computation as a federated client), scored on its own test split;
* centralised: the recipe on the four train splits pooled (dev pooled too), same epochs, the exported model
  scored on each domain's test split;
* centralised, constant LR (``--constant_lr_reference``): the same, at a constant learning rate without warmup,
  which is how a federated client trains each round (the recipe's default is warmup + cosine decay).

Each run is a subprocess with a fresh ``--output_dir`` and the Hub offline; ``--max_train_samples`` caps every
client's training split (the cap and all settings go into the RESULTS.md table).
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLITZER = ROOT.parent / "shared" / "data" / "blitzer"
DOMAINS = ("books", "dvd", "electronics", "kitchen")
MODEL = "all-MiniLM-L6-v2"
STRATEGY_NAMES = {"linear_probe": "head", "partial": "top groups", "lora": "LoRA"}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def common_flags(args, strategy: str, seed: int) -> list[str]:
    """The recipe settings every run shares (federated clients, alone, centralised)."""
    lr = {"lora": "1e-3", "partial": "5e-5", "linear_probe": "5e-5"}[strategy]  # LoRA's usual 10x higher rate
    return ["--model_name_or_path", MODEL, "--text_column_name", "sentence", "--strategy", strategy, "--seed",
            str(seed), "--max_seq_length",
            str(args.max_seq_length), "--per_device_train_batch_size", "16", "--learning_rate", lr,
            "--head_learning_rate", "1e-3", "--unfreeze_top_k", "2", "--checkpointing_steps", "no",
            "--overwrite_output_dir", *(["--max_train_samples", str(args.max_train_samples)]
                                        if args.max_train_samples else [])]


def run(command: list[str], log: Path) -> None:
    with open(log, "w") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(command)}\nsee {log}")


def federated(args, strategy: str, aggregation: str, seed: int, work: Path, root: Path) -> dict:
    out = work / f"fed_{aggregation}_{strategy}_{seed}"
    run([sys.executable, "-m", "hftransfer", "federate", "--modality", "text", "--client_data",
         *[str(root / d) for d in DOMAINS], "--aggregation", aggregation, "--num_rounds", str(args.rounds),
         "--local_epochs", str(args.local_epochs), "--output_dir", str(out), *common_flags(args, strategy, seed)],
        out.with_suffix(".log"))
    record = json.loads((out / "federated_results.json").read_text())
    accuracy = {DOMAINS[int(k)]: v["test_accuracy"] for k, v in record["best_clients"].items()}
    return {"accuracy": accuracy, "bytes_per_round": record["bytes_per_round_mean"],
            "fraction": record["travelling_fraction"], "best_round": record["best_round"]}


# what a federated client's local training uses: a fresh AdamW at the base learning rate each round, no schedule
CONSTANT_LR = ["--lr_scheduler_type", "constant", "--warmup_ratio", "0"]


def recipe(args, strategy: str, seed: int, out: Path, train: Path, dev: Path, test: Path, extra=()) -> Path:
    run([sys.executable, "recipes/text_cls.py", "--train_file", str(train), "--validation_file", str(dev),
         "--test_file", str(test), "--num_train_epochs", str(args.rounds * args.local_epochs), "--output_dir",
         str(out), *common_flags(args, strategy, seed), *extra], out.with_suffix(".log"))
    return out


def test_accuracy(model_dir: Path, test: Path) -> float:
    """The exported model's accuracy on a Blitzer test TSV (a real CSV reader: reviews hold tabs and newlines)."""
    from hftransfer.models.transfer_model import TransferModel

    rows = read_tsv(test)
    model = TransferModel.from_pretrained(model_dir).eval()
    # settings=model_dir: the run's own max_seq_length, as its test_accuracy was computed
    predictions = model.predict([r["sentence"] for r in rows], top_k=1, settings=model_dir)
    return statistics.mean(float(str(p["label"]) == str(r["label"])) for p, r in zip(predictions, rows))


def read_tsv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def write_tsv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, delimiter="\t")
        writer.writerow(["sentence", "label"])
        writer.writerows([r["sentence"], r["label"]] for r in rows)
    return path


def client_folders(work: Path, cap: int | None) -> Path:
    """Each domain's train / dev / test as the clients and every other row read them: dev and test capped at
    ``cap`` rows each (one seeded sample, the same for every method), train as is."""
    import random

    root = work / "domains"
    for domain in DOMAINS:
        (root / domain).mkdir(parents=True, exist_ok=True)
        for split in ("train", "dev", "test"):
            rows = read_tsv(BLITZER / domain / f"{split}.tsv")
            if cap and split != "train" and len(rows) > cap:
                rows = random.Random(f"{domain}/{split}").sample(rows, cap)
            write_tsv(root / domain / f"{split}.tsv", rows)
    return root


def pooled(split: str, work: Path, root: Path) -> Path:
    """The four domains' ``split`` TSVs as one file (header once)."""
    return write_tsv(work / f"pooled_{split}.tsv", [r for d in DOMAINS for r in read_tsv(root / d / f"{split}.tsv")])


def one_seed(args, seed: int, work: Path) -> list[dict]:
    rows, root = [], client_folders(work, args.max_eval_samples)
    for strategy in args.strategies:
        alone = {}
        for domain in DOMAINS:
            folder = root / domain
            out = recipe(args, strategy, seed, work / f"alone_{domain}_{strategy}_{seed}", folder / "train.tsv",
                         folder / "dev.tsv", folder / "test.tsv")
            alone[domain] = json.loads((out / "all_results.json").read_text())["test_accuracy"]
        rows.append({"method": "each client alone", "strategy": strategy, "seed": seed, "accuracy": alone})
        out = recipe(args, strategy, seed, work / f"central_{strategy}_{seed}", pooled("train", work, root),
                     pooled("dev", work, root), pooled("test", work, root))
        central = {domain: test_accuracy(out, root / domain / "test.tsv") for domain in DOMAINS}
        rows.append({"method": "centralised", "strategy": strategy, "seed": seed, "accuracy": central})
        if args.constant_lr_reference:  # the recipe's warmup + cosine vs the clients' constant rate
            out = recipe(args, strategy, seed, work / f"central_const_{strategy}_{seed}", pooled("train", work, root),
                         pooled("dev", work, root), pooled("test", work, root), extra=CONSTANT_LR)
            rows.append({"method": "centralised, constant LR", "strategy": strategy, "seed": seed,
                         "accuracy": {d: test_accuracy(out, root / d / "test.tsv") for d in DOMAINS}})
        for aggregation in args.aggregations:
            fed = federated(args, strategy, aggregation, seed, work, root)
            rows.append({"method": aggregation, "strategy": strategy, "seed": seed, **fed})
        for row in rows[-2 - len(args.aggregations) - args.constant_lr_reference:]:
            print(json.dumps(row), flush=True)
            with open(args.runs, "a") as f:  # each row as it lands: a long panel survives an interruption
                f.write(json.dumps(row) + "\n")
    return rows


def table(rows: list[dict], clients=DOMAINS, worst: bool = False) -> str:
    """Mean over seeds of each client's test accuracy, their mean (± sd over seeds), optionally the mean worst client,
    and bytes per round."""
    lines = ["| strategy | method | " + " | ".join(clients) + " | mean | " + ("worst client | " if worst else "")
             + "MB per round (all clients) | share of the model per client per round |",
             "|---" * (len(clients) + 5 + worst) + "|"]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["strategy"], row["method"]), []).append(row)
    for (strategy, method), group in groups.items():
        per_client = [statistics.mean(r["accuracy"][c] for r in group) for c in clients]
        means = [statistics.mean(r["accuracy"].values()) for r in group]
        spread = f" ± {statistics.stdev(means):.3f}" if len(means) > 1 else ""
        lowest = f" {statistics.mean(min(r['accuracy'].values()) for r in group):.3f} |" if worst else ""
        traffic = (f"{statistics.mean(r['bytes_per_round'] for r in group) / 1e6:.2f} | "
                   f"{statistics.mean(r['fraction'] for r in group):.2%}") if "fraction" in group[0] else "- | -"
        lines.append(f"| {STRATEGY_NAMES[strategy]} | {method} | " + " | ".join(f"{a:.3f}" for a in per_client)
                     + f" | {statistics.mean(means):.3f}{spread} |{lowest} {traffic} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGY_NAMES), choices=list(STRATEGY_NAMES))
    parser.add_argument("--aggregations", nargs="+", default=["fedavg", "fedprox"], choices=["fedavg", "fedprox"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local_epochs", type=int, default=1)
    parser.add_argument("--max_train_samples", type=int, default=None, help="cap per client (and per domain)")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--max_eval_samples", type=int, default=None,
                        help="cap each domain's dev and test split (one seeded sample shared by every method)")
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                        help="append the table to bench/RESULTS.md")
    parser.add_argument("--constant_lr_reference", action="store_true",
                        help="also train the centralised row at a constant learning rate, as the clients train")
    parser.add_argument("--runs", type=Path, default=ROOT / "bench" / "federated_runs.jsonl",
                        help="JSON lines, one per row, appended as each row lands")
    parser.add_argument("--table_only", action="store_true",
                        help="no runs: print (and with --record append) the table of the rows already in --runs")
    args = parser.parse_args()
    if args.table_only:
        rows = [json.loads(line) for line in args.runs.read_text().splitlines() if line.strip()]
    else:
        rows = []
        with tempfile.TemporaryDirectory(prefix="fedbench_") as tmp:
            for seed in args.seeds:
                rows += one_seed(args, seed, Path(tmp))
    text = table(rows)
    print(text)
    if args.record:
        command = "python bench/federated.py " + " ".join(sys.argv[1:])
        header = (f"\n## Federated: Blitzer domains as clients ({dt.date.today()})\n\n`{command}` on "
                  f"{platform.machine()} ({os.cpu_count()} cores), {MODEL}, seeds {sorted({r['seed'] for r in rows})}, "
                  f"{args.rounds} rounds x "
                  f"{args.local_epochs} local epoch(s), max length {args.max_seq_length}, train cap "
                  f"{args.max_train_samples or 'none'}; test = each domain's test.tsv (2,000 reviews"
                  + (f"; a seeded sample of {args.max_eval_samples}, the same for every row, and dev capped alike"
                     if args.max_eval_samples else "") + ").\n\n")
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(header + text + "\n")


if __name__ == "__main__":
    main()
