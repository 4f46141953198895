"""The federation's resolved config, written once by the command and read by the server and every client.

Flower starts the ServerApp and ClientApps itself (in Ray actors, or in processes of a SuperLink / SuperNode);
they receive the path of this file (``config-path``) and build their side of the run from it.
"""
from __future__ import annotations

from pathlib import Path

from ..config.federated_options import FederatedConfig
from ..errors import HFTransferError
from ..files import read_yaml, write_yaml

FEDERATION_CONFIG_NAME = "federation.yaml"
CONFIG_PATH_KEY = "config-path"  # the run config / node config key that carries it


def write_federated_config(cfg: FederatedConfig, folder: Path) -> Path:
    return write_yaml(Path(folder) / FEDERATION_CONFIG_NAME, cfg.to_dict())


def read_federated_config(path: str | Path) -> FederatedConfig:
    if not Path(path).is_file():
        raise HFTransferError(f"the federation's config '{path}' is missing: start the run with hftransfer federate, "
                              "which writes it")
    return FederatedConfig(**read_yaml(Path(path)))
