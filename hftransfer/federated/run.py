"""``hftransfer federate``: lock and check the output folder, write the federation's config, run an engine, and
return the record the server wrote (``federated_results.json``)."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from ..config.federated_options import FederatedConfig
from ..errors import HFTransferError
from ..files import read_json
from ..models.devices import usable_cores
from ..training.checkpoint import KEPT_FILES, RunLock, check_output_dir, holds_earlier_run
from .clients import CLIENTS_DIR
from .config_file import write_federated_config
from .server import RESULTS_NAME, STATE_DIR


def with_threads(cfg: FederatedConfig) -> FederatedConfig:
    """Without ``--num_threads``, clients that train at the same time share the cores instead of each taking all."""
    if cfg.num_threads:
        return cfg
    at_once = cfg.client_count if cfg.engine == "deployment" and cfg.role == "all" else usable_cores() / cfg.client_cpus
    return dataclasses.replace(cfg, num_threads=max(1, int(usable_cores() // max(1, min(at_once, cfg.client_count)))))


def check_earlier_run(cfg: FederatedConfig, output_dir: Path) -> None:
    """Refuse (or, with --overwrite_output_dir, clear) an earlier run in output_dir; ``clients/`` is left alone: on
    one machine the ``--role client`` processes may already be writing their config and log there."""
    earlier = holds_earlier_run(output_dir) and any(p.name != CLIENTS_DIR and p.name not in KEPT_FILES
                                                    for p in output_dir.iterdir())
    if earlier:  # the recipes' refusal, word for word, unless overwriting or resuming
        check_output_dir(output_dir, cfg.overwrite_output_dir, bool(cfg.resume_from_checkpoint))
    if earlier and cfg.overwrite_output_dir and not cfg.resume_from_checkpoint:
        print(f"replacing the earlier run in {output_dir} (--overwrite_output_dir)")
        for item in output_dir.iterdir():
            if item.name != CLIENTS_DIR and item.name not in KEPT_FILES:
                shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()


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
        check_earlier_run(cfg, output_dir)
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
