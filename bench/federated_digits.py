"""Federated vs each client alone vs centralised under Dirichlet label skew: UCI optdigits (scikit-learn's 1,797
8x8 digits) split over four clients by ``--partition dirichlet:ALPHA``'s own split (``hftransfer.data.partition``),
the bundled EfficientNet-Lite0 at 32x32 pixels, accuracy on every client's test split and bytes communicated.

    python bench/federated_digits.py --seeds 0 1 2                 # appends a table to bench/RESULTS.md
    python bench/federated_digits.py --seeds 0 --rounds 2 --strategies linear_probe --no-record   # smoke run

Per seed (the seed draws the clients' label shares, and seeds every run):

* the digits are written as ``{train,validation,test}/<digit>/`` folders (60 / 20 / 20 %, stratified,
  ``bench/digit_domains.py``), then each split is cut into the clients' shares with the same function and seeds
  ``hftransfer federate --partition dirichlet:ALPHA --num_clients 4`` uses, one folder per client;
* federated: ``hftransfer federate --client_data client_0 ... client_3`` (simulation engine) for every
  ``--aggregations`` x ``--strategies``; the exported round's test accuracy on each client's own test split;
* alone: ``recipes/image_cls.py`` on one client's train / validation / test, ``rounds x local_epochs`` epochs;
* centralised: the recipe on all clients' data pooled (the original splits), scored on each client's test split.

Each client's test split follows its own label distribution, so "accuracy on every client's test split" is the
accuracy that client cares about.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from digit_domains import write_domain  # noqa: E402
from federated import STRATEGY_NAMES, run, table  # noqa: E402

from hftransfer.data.partition import PartitionScheme, partition_indices  # noqa: E402

MODEL = "tf_efficientnet_lite0"
SPLITS = ("train", "validation", "test")


def common_flags(args, strategy: str, seed: int) -> list[str]:
    lr = {"lora": "1e-3", "partial": "3e-4", "linear_probe": "3e-4"}[strategy]
    return ["--model_name_or_path", MODEL, "--image_size", "32", "--augment", "false", "--strategy", strategy,
            "--seed", str(seed), "--per_device_train_batch_size", "32", "--learning_rate", lr,
            "--head_learning_rate", "1e-2", "--unfreeze_top_k", "2", "--checkpointing_steps", "no",
            "--overwrite_output_dir"]


def split_files(folder: Path) -> tuple[list[Path], np.ndarray]:
    files = sorted(folder.glob("*/*.png"))
    return files, np.array([int(f.parent.name) for f in files])


def client_folders(digits: Path, work: Path, clients: int, alpha: float, seed: int) -> list[Path]:
    """``work/client_<c>/{train,validation,test}/<digit>/``: each split cut by the partition's label shares."""
    scheme, roots = PartitionScheme("dirichlet", alpha), [work / f"client_{c}" for c in range(clients)]
    for split_seed, split in enumerate(SPLITS):  # the split seeds partition_bundle uses (train, eval, test)
        files, labels = split_files(digits / split)
        parts = partition_indices(labels, clients, scheme, seed=seed, num_classes=10, split_seed=split_seed)
        for root, part in zip(roots, parts):
            for i in part:
                target = root / split / files[i].parent.name / files[i].name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(files[i], target)
    return roots


def recipe(args, strategy: str, seed: int, out: Path, data: Path) -> Path:
    run([sys.executable, "recipes/image_cls.py", "--train_dir", str(data / "train"), "--validation_dir",
         str(data / "validation"), "--test_dir", str(data / "test"), "--num_train_epochs",
         str(args.rounds * args.local_epochs), "--output_dir", str(out), *common_flags(args, strategy, seed)],
        out.with_suffix(".log"))
    return out


def test_accuracy(model_dir: Path, test: Path) -> float:
    from hftransfer.models.transfer_model import TransferModel

    files, labels = split_files(test)
    model = TransferModel.from_pretrained(model_dir).eval()
    predictions = model.predict([str(f) for f in files], top_k=1, settings=model_dir)
    return float(np.mean([str(p["label"]) == str(y) for p, y in zip(predictions, labels)]))


def one_seed(args, seed: int, work: Path, digits: Path) -> list[dict]:
    clients = client_folders(digits, work / "clients", args.num_clients, args.alpha, seed)
    sizes = {c.name: {s: len(list((c / s).glob("*/*.png"))) for s in SPLITS} for c in clients}
    rows = []
    for strategy in args.strategies:
        alone = {}
        for client in clients:
            out = recipe(args, strategy, seed, work / f"alone_{client.name}_{strategy}", client)
            alone[client.name] = json.loads((out / "all_results.json").read_text())["test_accuracy"]
        rows.append({"method": "each client alone", "strategy": strategy, "seed": seed, "accuracy": alone,
                     "sizes": sizes})
        central = recipe(args, strategy, seed, work / f"central_{strategy}", digits)
        rows.append({"method": "centralised", "strategy": strategy, "seed": seed,
                     "accuracy": {c.name: test_accuracy(central, c / "test") for c in clients}})
        for aggregation in args.aggregations:
            out = work / f"fed_{aggregation}_{strategy}"
            run([sys.executable, "-m", "hftransfer", "federate", "--modality", "image", "--client_data",
                 *map(str, clients), "--aggregation", aggregation, "--num_rounds", str(args.rounds),
                 "--local_epochs", str(args.local_epochs), "--output_dir", str(out),
                 *common_flags(args, strategy, seed)], out.with_suffix(".log"))
            record = json.loads((out / "federated_results.json").read_text())
            rows.append({"method": aggregation, "strategy": strategy, "seed": seed,
                         "accuracy": {f"client_{k}": v["test_accuracy"] for k, v in record["best_clients"].items()},
                         "bytes_per_round": record["bytes_per_round_mean"], "fraction": record["travelling_fraction"],
                         "best_round": record["best_round"]})
        for row in rows[-2 - len(args.aggregations):]:
            print(json.dumps(row), flush=True)
            with open(args.runs, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=["linear_probe", "lora"], choices=list(STRATEGY_NAMES))
    parser.add_argument("--aggregations", nargs="+", default=["fedavg", "fedprox"], choices=["fedavg", "fedprox"])
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller = more skew)")
    parser.add_argument("--num_clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local_epochs", type=int, default=1)
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                        help="append the table to bench/RESULTS.md")
    parser.add_argument("--runs", type=Path, default=ROOT / "bench" / "federated_digits_runs.jsonl",
                        help="JSON lines, one per row, appended as each row lands")
    parser.add_argument("--table_only", action="store_true", help="no runs: the table of the rows in --runs")
    args = parser.parse_args()
    if args.table_only:
        rows = [json.loads(line) for line in args.runs.read_text().splitlines() if line.strip()]
    else:
        os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        rows = []
        with tempfile.TemporaryDirectory(prefix="fed_digits_") as tmp:
            digits = write_domain("optdigits", Path(tmp))
            for seed in args.seeds:
                rows += one_seed(args, seed, Path(tmp) / f"seed_{seed}", digits)
    clients = sorted(rows[0]["accuracy"])
    text = table(rows, clients, worst=True)
    print(text)
    if args.record:
        seeds = sorted({r["seed"] for r in rows})
        command = "python bench/federated_digits.py " + " ".join(sys.argv[1:])
        header = (f"\n## Federated: optdigits under Dirichlet label skew ({dt.date.today()})\n\n`{command}` on "
                  f"{platform.machine()} ({os.cpu_count()} cores), {MODEL} at 32 px, seeds {seeds}, "
                  f"{args.num_clients} clients, dirichlet:{args.alpha:g}, {args.rounds} rounds x {args.local_epochs} "
                  "local epoch(s); test = each client's share of the test split.\n\n")
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(header + text + "\n")


if __name__ == "__main__":
    main()
