"""``--engine simulation``: Flower's simulation engine, the server and every client in this command.

Clients run in Ray actors (``--client_cpus`` cores each, so ``cores / client_cpus`` train at once) that keep their
prepared run between rounds; the server app runs in this process.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config.federated_options import FederatedConfig
from ..models.devices import usable_cores
from .apps import build_client_app, build_server_app


def backend_config(cfg: FederatedConfig) -> dict:
    """Ray's resources: CPU cores per client (and a GPU share when there is one), no dashboard, quiet workers."""
    resources = {"num_cpus": cfg.client_cpus}
    if torch.cuda.is_available():
        resources["num_gpus"] = 1.0 / min(cfg.client_count, max(1, int(usable_cores() // cfg.client_cpus)))
    return {"client_resources": resources,
            "init_args": {"num_cpus": max(usable_cores(), cfg.client_cpus), "include_dashboard": False,
                          "configure_logging": False}}


def run_simulation_engine(cfg: FederatedConfig, config_path: Path) -> None:
    from flwr.simulation import run_simulation

    run_simulation(server_app=build_server_app(str(config_path)), client_app=build_client_app(str(config_path)),
                   num_supernodes=cfg.client_count, backend_config=backend_config(cfg))
