"""The server's side: ask the clients for their labels, build the global model as a client would, run FedAvg /
FedProx for the rounds left, checkpoint the global tensors and the record after every round (a restarted server
resumes from them), keep the best round's model and export it as a centralised run does.

``output_dir/federated/`` holds ``global.safetensors`` (the last round's travelling tensors) and ``state.json``
(rounds done, the per-round record, the best round); ``federated_results.json`` is the record's final form.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from accelerate.utils import set_seed
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from ..config.federated_options import FederatedConfig
from ..errors import HFTransferError
from ..files import read_json, save_safetensors, write_json
from ..training.outputs import export_best_model, save_best_epoch
from ..training.setup import build_model, create_strategy
from ..tuning.strategies import apply_trainable
from .parameters import frozen_fingerprint, get_arrays, model_bytes, set_arrays, tensor_bytes, travelling_names
from .strategy import RoundLog
from .strategy import create_strategy as create_aggregation

STATE_DIR = "federated"
STATE_NAME = "state.json"
GLOBAL_NAME = "global.safetensors"
RESULTS_NAME = "federated_results.json"
SELECTION_METRIC = "eval_accuracy"  # the aggregated validation accuracy picks the exported round


@dataclass
class LabelSpace:
    """What ``build_model`` reads of a data bundle: the server has the clients' label names, not their data."""

    id2label: dict[int, str]
    multi_label: bool


def ask_clients(grid: Grid, cfg: FederatedConfig, timeout: float) -> list[dict]:
    """Every client's label names and training size (a query message), once ``--min_clients`` are connected."""
    while len(list(grid.get_node_ids())) < cfg.required_clients:
        time.sleep(1.0)
    messages = [Message(content=RecordDict({"config": ConfigRecord({"ask": "labels"})}), message_type=MessageType.QUERY,
                        dst_node_id=node) for node in grid.get_node_ids()]
    replies = [r for r in grid.send_and_receive(messages, timeout=timeout) if not r.has_error()]
    if not replies:
        raise HFTransferError("no client answered the server's first message: check the clients' logs")
    return [dict(next(iter(r.content.config_records.values()))) for r in replies]


def label_space(answers: list[dict], label_names: list[str] | None) -> LabelSpace:
    """The federation's classes: every client's own, or their union (sorted) where label skew left a client
    without some; each client re-numbers its labels onto them (the server sends them with every message)."""
    names = list(answers[0]["label-names"])
    multi_label = bool(answers[0]["multi-label"])
    differing = [a for a in answers[1:] if list(a["label-names"]) != names]
    if differing and (multi_label or label_names):
        other = differing[0]
        raise HFTransferError(f"client {other['client-id']} trains on labels {list(other['label-names'])} but "
                              f"client {answers[0]['client-id']} on {names}: with "
                              + ("multi-label data" if multi_label else "--label_names")
                              + " every client's training data must hold the same classes")
    if differing:
        names = sorted({str(n) for a in answers for n in a["label-names"]})
    return LabelSpace(id2label=dict(enumerate(label_names or names)), multi_label=multi_label)


def global_model(cfg: FederatedConfig, labels: LabelSpace):
    """The model every client builds (same seed, so the same frozen weights), trainable as the strategy says."""
    set_seed(cfg.seed)
    model = build_model(cfg, cfg.modality, labels)
    strategy = create_strategy(cfg, len(model.layer_groups()) - 1)
    apply_trainable(model, strategy.trainable_groups(0), cfg.train_norm, strategy.adapter_only)
    return model


class ServerRecord:
    """The run's record on disk: rounds done, per-round metrics and bytes, the best round; the global tensors."""

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)
        self.folder = self.output_dir / STATE_DIR
        self.state = read_json(self.folder / STATE_NAME, {}) or {}

    @property
    def rounds_done(self) -> int:
        return int(self.state.get("rounds_done", 0))

    def load_global(self) -> dict[str, np.ndarray] | None:
        from safetensors.numpy import load_file

        path = self.folder / GLOBAL_NAME
        return load_file(str(path)) if self.rounds_done and path.is_file() else None

    def save_round(self, arrays: dict[str, np.ndarray], entry: dict) -> None:
        """The round's tensors, then its record: a crash between the two leaves the previous round's state."""
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in arrays.items()}
        save_safetensors(self.folder / GLOBAL_NAME, tensors)
        self.state["rounds_done"] = entry["round"]
        self.state.setdefault("rounds", []).append(entry)
        write_json(self.folder / STATE_NAME, self.state)

    def improved(self, score: float | None) -> bool:
        best = self.state.get("best_metric")
        if score is None or (best is not None and score <= best):
            return False
        self.state["best_metric"], self.state["best_round"] = score, self.rounds_done + 1
        return True


def round_entry(round_number: int, logged: dict, seconds: float) -> dict:
    """One round's line of the record: bytes each way, failures, the aggregated and the per-client metrics."""
    from .strategy import weighted_metrics

    clients = logged.get("clients", {})
    rows = [dict(m, **{"num-examples": m.get("train_examples", 0)}) for m in clients.values()]
    bytes_total = sum(logged.get(k, 0) for k in ("bytes_down_train", "bytes_up_train", "bytes_down_evaluate",
                                                  "bytes_up_evaluate"))
    return {"round": round_number, "seconds": seconds, "failures": logged.get("failures", 0),
            "clients_trained": sum(1 for m in clients.values() if "train_loss" in m),
            **{k: v for k, v in logged.items() if k.startswith(("bytes_", "sampled_"))}, "bytes_total": bytes_total,
            "metrics": weighted_metrics(rows), "clients": clients}


def run_server(grid: Grid, cfg: FederatedConfig) -> dict:
    """The whole server side of ``hftransfer federate``; returns the final record (``federated_results.json``)."""
    record = ServerRecord(cfg.output_dir)
    labels = label_space(ask_clients(grid, cfg, cfg.round_timeout), cfg.label_names)
    model = global_model(cfg, labels)
    names = travelling_names(model)
    arrays = record.load_global() or get_arrays(model, names)
    sent = tensor_bytes(model.state_dict()[n] for n in names)
    record.state.update({"label_names": list(labels.id2label.values()), "model_bytes": model_bytes(model),
                         "travelling_bytes": sent, "travelling_fraction": sent / model_bytes(model),
                         "travelling_tensors": len(names), "aggregation": cfg.aggregation, "strategy": cfg.strategy,
                         "num_clients": cfg.client_count})
    offset = record.rounds_done
    if offset:
        print(f"federated: resuming after round {offset} of {cfg.num_rounds} from {record.folder / GLOBAL_NAME}")
    if offset < cfg.num_rounds:
        train_rounds(grid, cfg, record, model, arrays, offset, frozen_fingerprint(model, names))
    return finish(record, cfg)


def train_rounds(grid: Grid, cfg: FederatedConfig, record: ServerRecord, model, arrays: dict, offset: int,
                 fingerprint: str) -> None:
    """Flower's strategy loop over the rounds left; after each, the checkpoint and (if better) the best model."""
    from flwr.app import Array

    log = RoundLog()
    strategy = create_aggregation(cfg.aggregation, cfg.proximal_mu, cfg.fraction_train, cfg.required_clients, log)
    started = [time.time()]

    def after_round(server_round: int, global_arrays: ArrayRecord):
        if server_round == 0:  # Flower's call before the first round: nothing trained yet
            return None
        entry = round_entry(offset + server_round, log.entry(server_round), time.time() - started[0])
        current = {name: value.numpy() for name, value in global_arrays.items()}
        score = entry["metrics"].get(SELECTION_METRIC)
        if record.improved(score):
            set_arrays(model, current)
            save_best_epoch(model, record.output_dir, {k.removeprefix("eval_"): v for k, v in entry["metrics"].items()
                                                       if k.startswith("eval_")}, [])
        record.save_round(current, entry)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in entry["metrics"].items() if k.startswith(("eval_acc", "test_acc")))
        print(f"federated round {entry['round']}/{cfg.num_rounds}: {entry['clients_trained']} client(s) trained, "
              f"{entry['failures']} failed; {shown}; {entry['bytes_total'] / 1e6:.2f} MB sent")
        started[0] = time.time()
        return None

    classes = list(model.id2label.values())  # each client re-numbers its labels onto these
    train_config = ConfigRecord({"local-epochs": cfg.local_epochs, "frozen-fingerprint": fingerprint,
                                 "round-offset": offset, "label-names": classes})
    strategy.start(grid=grid, initial_arrays=ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                   num_rounds=cfg.num_rounds - offset, timeout=cfg.round_timeout, train_config=train_config,
                   evaluate_config=ConfigRecord({"round-offset": offset, "label-names": classes}),
                   evaluate_fn=after_round)


def finish(record: ServerRecord, cfg: FederatedConfig) -> dict:
    """Export the best round's global model into output_dir and write ``federated_results.json``."""
    if "best_round" not in record.state:
        raise HFTransferError("no round produced an evaluated global model (every client failed?): see the clients' "
                              "logs, then rerun with --resume_from_checkpoint latest")
    export_best_model(record.output_dir)
    best = record.state["rounds"][record.state["best_round"] - 1]
    results = {**record.state, "best_metrics": best["metrics"], "best_clients": best["clients"],
               "bytes_per_round_mean": float(np.mean([r["bytes_total"] for r in record.state["rounds"]]))}
    write_json(record.output_dir / RESULTS_NAME, results)
    print(f"federated: exported round {record.state['best_round']} ({SELECTION_METRIC} "
          f"{record.state['best_metric']:.4f}) -> {record.output_dir}")
    return results
