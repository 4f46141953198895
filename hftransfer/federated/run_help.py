"""``hftransfer federate --help``'s description, and which recipe's options the command parses."""
from __future__ import annotations

import argparse

from ..config import read_config_file
from ..config.federated_options import MODALITIES
from ..errors import HFTransferError

FEDERATE_DESCRIPTION = """Federated fine-tuning on Flower: every client fine-tunes the recipe's model and strategy on
its own data; each round the server sends the tensors the strategy trains (head, top groups or LoRA adapters), the
clients train --local_epochs and send theirs back, and the server averages them (FedAvg, or FedProx with the
proximal term in each client's loss). Per-round metrics, bytes and the global model's checkpoint go to
output_dir/federated/; the best round's global model is exported to output_dir like a recipe run's.

  hftransfer federate --modality text --partition dirichlet:0.5 --num_clients 4 --strategy lora
  hftransfer federate --modality text --client_data books/ dvd/ kitchen/ --aggregation fedprox
  hftransfer federate --engine deployment --role server --client_data a/ b/ --output_dir out   # then per client:
  hftransfer federate --engine deployment --role client --client_id 0 --client_data a/ b/ --output_dir out

--modality picks the recipe (recipes/configs/<modality>_cls.yaml): its defaults, and its bundled data when no data
flag is given (a recipe default --strategy that switches phases, the image recipe's lp_ft, becomes partial).
A restarted server continues from its last round with --resume_from_checkpoint latest."""


def modality_of(argv: list[str]) -> str:
    """``--modality`` from the flags, else from the ``--config`` YAML, else image (the first recipe)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--modality")
    parser.add_argument("--config")
    known, _ = parser.parse_known_args(argv)
    modality = known.modality or read_config_file(known.config).get("modality") or "image"
    if modality not in MODALITIES:
        raise HFTransferError(f"--modality '{modality}': use {', '.join(MODALITIES)}")
    return modality
