"""A client's side of a round: its run built once per process (data, model, strategy, loaders, optimizer, through
``training.setup``), then, per message, the global tensors loaded, ``--local_epochs`` trained with the loop's own
``train_step`` (FedProx's proximal term where L2-SP would go), or the global model evaluated on its splits.

Flower's simulation engine keeps a client's process between rounds (the run is reused); the deployment engine
starts a ClientApp process per message (the run is rebuilt from the same config and seed: the same result).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config.federated_options import FederatedConfig
from ..data import DataBundle
from ..errors import HFTransferError
from ..training.evaluate import evaluate
from ..training.feature_cache import fill_feature_cache
from ..training.loop import train_step
from ..training.runtime import configure_threads, create_accelerator, step_seed
from ..training.setup import TrainingRun, load_bundle, setup
from ..tuning.regularizers import ProximalTerm
from .clients import client_config, label_counts, onto_label_names, partition_bundle
from .parameters import frozen_fingerprint, get_arrays, set_arrays, travelling_names


@dataclass
class ClientData:
    """One client's data, loaded once per process: what it answers the server's first question from."""

    client_id: int
    cfg: FederatedConfig
    accelerator: object
    bundle: DataBundle


@dataclass
class ClientRun:
    """One client's prepared run and what the federation needs to know about it."""

    client_id: int
    run: TrainingRun
    names: list[str]  # the state_dict keys that travel
    fingerprint: str  # of the frozen tensors, checked against the server's
    label_counts: dict[str, int] = field(default_factory=dict)
    features_ready: bool = False  # the frozen backbone's features are cached (linear probe)


# per process: a simulation client reuses its data and run every round
_DATA: dict[tuple[str, int], ClientData] = {}
_RUNS: dict[tuple[str, int], ClientRun] = {}


def load_client_data(cfg: FederatedConfig, client_id: int) -> ClientData:
    """Client ``client_id``'s splits: its own source, or its --partition share of the one dataset."""
    cfg = client_config(cfg, client_id)
    accelerator = create_accelerator(cfg)
    configure_threads(cfg.num_threads, accelerator)
    bundle = load_bundle(cfg, cfg.modality, accelerator, data_seed=None)
    if cfg.partition:
        bundle = partition_bundle(bundle, cfg, client_id)
    return ClientData(client_id, cfg, accelerator, bundle)


def build_client_run(data: ClientData, label_names: list[str] | None = None) -> ClientRun:
    """The client's run, prepared like a recipe's, over the federation's classes (``label_names``, which the
    server sends: the union of every client's classes, so a client may hold only some of them)."""
    bundle = onto_label_names(data.bundle, label_names) if label_names else data.bundle
    run = setup(data.cfg, data.cfg.modality, data.accelerator, Path(data.cfg.output_dir), bundle=bundle)
    names = travelling_names(run.module)
    return ClientRun(client_id=data.client_id, run=run, names=names,
                     fingerprint=frozen_fingerprint(run.module, names), label_counts=label_counts(bundle))


def client_data(config_path: str, client_id: int) -> ClientData:
    key = (config_path, client_id)
    if key not in _DATA:
        from .config_file import read_federated_config

        _DATA[key] = load_client_data(read_federated_config(config_path), client_id)
    return _DATA[key]


def client_run(config_path: str, client_id: int, label_names: list[str] | None = None) -> ClientRun:
    key = (config_path, client_id)
    if key not in _RUNS:
        _RUNS[key] = build_client_run(client_data(config_path, client_id), label_names)
    return _RUNS[key]


def check_same_model(client: ClientRun, fingerprint: str) -> None:
    if fingerprint and fingerprint != client.fingerprint:
        raise HFTransferError(f"client {client.client_id}'s frozen weights differ from the server's: every party must "
                              "build the same --model_name_or_path with the same --weights and --seed")


def cache_features(client: ClientRun) -> bool:
    """Whether the run trains and evaluates on the frozen backbone's cached features (linear probe); fills them
    once per process, since that backbone never changes (a deployment client's first message may be an evaluation)."""
    run = client.run
    cached = run.on_cached_features(0)
    if cached and not client.features_ready:
        fill_feature_cache(run.accelerator, run.model, run.loaders, cache_dir=run.cfg.feature_cache_dir,
                           dtype_name=run.cfg.feature_cache_dtype)
        client.features_ready = True
    return cached


def local_training(client: ClientRun, round_number: int, local_epochs: int, proximal_mu: float) -> float:
    """``local_epochs`` epochs on the client's training split from the global tensors just loaded; returns the mean
    loss. Each round starts a fresh AdamW state at the base learning rates (FedAvg's local SGD)."""
    run, cfg = client.run, client.run.cfg
    optimizer = getattr(run.optimizer, "optimizer", run.optimizer)  # accelerate's wrapper holds torch's
    optimizer.state.clear()
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"]
    proximal = ProximalTerm(run.module, proximal_mu) if proximal_mu > 0 else None
    cached = cache_features(client)
    loader = run.loaders.cached_train if cached else run.loaders.train
    run.model.train()
    total, batches = 0.0, 0
    for local_epoch in range(local_epochs):
        epoch = (round_number - 1) * local_epochs + local_epoch  # a new shuffle and augmentation draw every epoch
        loader.set_epoch(epoch)
        run.loaders.set_epoch(epoch)
        for batch_index, batch in enumerate(loader):
            torch.manual_seed(step_seed(cfg.seed, epoch, batch_index, client.client_id))
            loss = train_step(run.accelerator, run.model, run.optimizer, batch, proximal, cfg.max_grad_norm)
            total, batches = total + loss.item(), batches + 1
    return total / max(1, batches)


def train_reply(client: ClientRun, arrays: dict, config: dict) -> tuple[dict, dict]:
    """A train message's answer: the trained tensors and the metrics the server records and weights by."""
    check_same_model(client, str(config.get("frozen-fingerprint", "")))
    set_arrays(client.run.module, arrays)
    start = time.time()
    loss = local_training(client, int(config["round"]), int(config["local-epochs"]),
                          float(config.get("proximal-mu", 0)))
    metrics = {"num-examples": len(client.run.bundle.train), "client-id": client.client_id, "train_loss": loss,
               "train_seconds": time.time() - start}
    return get_arrays(client.run.module, client.names), metrics


def evaluate_reply(client: ClientRun, arrays: dict) -> dict:
    """An evaluate message's answer: the global model on the client's validation split (and test split, if any)."""
    run = client.run
    set_arrays(run.module, arrays)
    cache_features(client)
    metrics = {"num-examples": len(run.bundle.eval), "client-id": client.client_id}
    loaders = [("eval", run.eval_loader(0), len(run.bundle.eval))]
    if run.loaders.test is not None:
        loaders.append(("test", run.loaders.test, len(run.bundle.test)))
    for prefix, loader, count in loaders:
        scores, _ = evaluate(run.accelerator, run.model, loader, run.module.num_labels, run.module.multi_label)
        metrics.update({f"{prefix}_accuracy": scores["accuracy"], f"{prefix}_f1": scores["f1"],
                        f"{prefix}_loss": scores["loss"], f"{prefix}_examples": count})
    run.model.train()
    return metrics


def describe_reply(data: ClientData) -> dict:
    """A query's answer: what the server needs before round 1 (the client's classes, its training examples)."""
    bundle = data.bundle
    counts = label_counts(bundle)
    return {"client-id": data.client_id, "label-names": list(bundle.id2label.values()),
            "multi-label": bundle.multi_label, "train-examples": len(bundle.train),
            "label-counts": [counts.get(name, 0) for name in bundle.id2label.values()]}
