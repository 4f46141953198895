"""``hftransfer federate``: lock and check the output folder, write the federation's config, run an engine, and
return the record the server wrote (``federated_results.json``)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config.federated_options import FederatedConfig
from ..errors import HFTransferError
from ..files import read_json
from ..models.devices import usable_cores
from ..training.checkpoint import RunLock, check_output_dir, clear_earlier_run, holds_earlier_run
from .config_file import write_federated_config
from .server import RESULTS_NAME, STATE_DIR


def with_threads(cfg: FederatedConfig) -> FederatedConfig:
    """Without ``--num_threads``, clients that train at the same time share the cores instead of each taking all."""
    if cfg.num_threads:
        return cfg
    at_once = cfg.client_count if cfg.engine == "deployment" and cfg.role == "all" else usable_cores() / cfg.client_cpus
    return dataclasses.replace(cfg, num_threads=max(1, int(usable_cores() // max(1, min(at_once, cfg.client_count)))))


def federate(cfg: FederatedConfig) -> dict:
    """Run the federation ``cfg`` describes (a ``--role client`` process runs its client until stopped)."""
    cfg = with_threads(cfg.validate(cfg.modality))
    if cfg.engine == "simulation" and cfg.role != "all":
        raise HFTransferError(f"--role {cfg.role} is for --engine deployment (separate processes): pass --engine "
                              "deployment, or drop --role to simulate every client in this command")
    if cfg.role == "client":
        from .deployment import run_client

        run_client(cfg)
        return {}
    output_dir = Path(cfg.output_dir)
    lock = RunLock(output_dir).acquire()
    try:
        check_output_dir(output_dir, cfg.overwrite_output_dir, bool(cfg.resume_from_checkpoint))
        if cfg.overwrite_output_dir and not cfg.resume_from_checkpoint and holds_earlier_run(output_dir):
            print(f"replacing the earlier run in {output_dir} (--overwrite_output_dir)")
            clear_earlier_run(output_dir)
        config_path = write_federated_config(cfg, output_dir / STATE_DIR)
        if cfg.engine == "simulation":
            from .simulation import run_simulation_engine

            run_simulation_engine(cfg, config_path)
        else:
            from .deployment import run_server_and_clients

            run_server_and_clients(cfg, config_path)
    finally:
        lock.release()
    results = read_json(output_dir / RESULTS_NAME)
    if results is None:
        raise HFTransferError(f"the federated run ended without {RESULTS_NAME}: see the server's log above; rerun "
                              "with --resume_from_checkpoint latest to continue from its last finished round")
    return results
