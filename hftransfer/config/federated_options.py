"""``hftransfer federate``: the options of a federated run on Flower, on top of every recipe option.

Each client fine-tunes with the recipe's options (model, strategy, LoRA, batch size, learning rates,
preprocessing) on its own data; the server averages what the strategy trains (FedAvg, or FedProx's
proximal pull), every round, and exports the global model like a centralised run's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..data.partition import PartitionScheme
from ..errors import HFTransferError
from .configs import TrainConfig
from .fields import AT_LEAST_ONE, NON_NEGATIVE, Options, Range, option

ENGINES = ("simulation", "deployment")
ROLES = ("all", "server", "client")
AGGREGATIONS = ("fedavg", "fedprox")
MODALITIES = ("image", "text", "audio")
# strategies whose trainable set never changes: a phase switch would change what travels mid-run
FEDERATED_STRATEGIES = ("linear_probe", "partial", "lora", "full")
FEDERATED_DEFAULT_STRATEGY = "partial"  # replaces a recipe default that switches phases (the image recipe's lp_ft)
UNIT_FRACTION = Range(0, 1, lo_inclusive=False)  # (0, 1]
PORTS = Range(1024, 65535)


@dataclass
class FederatedOptions(Options):
    """Federated training on Flower: clients, rounds, aggregation, engine and its processes."""

    modality: str = option("image", "which recipe's options and defaults the clients train with (its YAML in "
                           "recipes/configs; with no data flags its bundled data, split by --partition)", MODALITIES)
    client_data: list[str] = option([], "one data source per client: a folder (class-per-subfolder images or a "
                                    "save_to_disk dataset), a file (csv / jsonl / json / parquet / txt), or a Hub "
                                    "dataset name; each client holds out its own validation split (and a folder's "
                                    "train/ validation/ test/ subfolders, or a dataset's splits, are used as such). In "
                                    "YAML an entry may also be a mapping of data flags (train_file, validation_file, "
                                    "test_file, ...)")
    partition: Optional[str] = option(None, "split the one dataset the data flags name into --num_clients clients "
                                      "instead: iid, or dirichlet:ALPHA (label skew: each class is shared out by a "
                                      "Dirichlet(ALPHA) draw, the same shares for train, validation and test; seeded "
                                      "by --seed; smaller ALPHA = more skew)")
    num_clients: Optional[int] = option(None, "clients with --partition (default 2); with --client_data, the number "
                                        "of sources", valid=Range(2))
    num_rounds: int = option(5, "federated rounds: each sends the global model's trainable tensors to the clients, "
                             "trains --local_epochs on each, averages the results and evaluates", valid=AT_LEAST_ONE)
    local_epochs: int = option(1, "epochs each client trains per round (a fresh AdamW state each round, constant "
                               "learning rate, as in FedAvg)", valid=AT_LEAST_ONE)
    aggregation: str = option("fedavg", "fedavg: the average of the clients' tensors weighted by their training "
                              "examples; fedprox: the same average, and each client adds mu/2 ||w - w_global||^2 "
                              "(--proximal_mu) to its loss", AGGREGATIONS)
    proximal_mu: float = option(0.01, "FedProx's mu (--aggregation fedprox)", valid=NON_NEGATIVE)
    fraction_train: float = option(1.0, "share of the connected clients sampled for training each round",
                                   valid=UNIT_FRACTION)
    min_clients: Optional[int] = option(None, "a round starts once this many clients are connected and trains on at "
                                        "least that many; replies of the others are not waited for past "
                                        "--round_timeout (default: every client; lower it so a round goes on without "
                                        "a killed client)", valid=AT_LEAST_ONE)
    round_timeout: float = option(3600.0, "seconds the server waits for the clients' replies of one round; a client "
                                  "that has not answered by then is left out of that round", valid=Range(1))
    engine: str = option("simulation", "simulation: Flower's simulation engine, every client in this command (Ray "
                         "actors); deployment: a Flower SuperLink and one SuperNode per client, real processes talking "
                         "over the network (see --role)", ENGINES)
    role: str = option("all", "with --engine deployment: all (the server and every client as processes on this "
                       "machine, over loopback), server (SuperLink + the run; restart it to resume), or client (one "
                       "SuperNode: --client_id, --superlink)", ROLES)
    client_id: Optional[int] = option(None, "with --role client: which client this process is (0-based: its "
                                      "--client_data entry or --partition share)", valid=NON_NEGATIVE)
    superlink: str = option("127.0.0.1:9391", "the SuperLink's address HOST:PORT (--role server listens on it, "
                            "clients connect to it)")
    client_cpus: float = option(1.0, "--engine simulation: CPU cores Ray reserves per client (how many clients train "
                                "at once)", valid=Range(0, lo_inclusive=False))

    @property
    def client_count(self) -> int:
        """How many clients the run has: one per --client_data source, else --num_clients (default 2)."""
        return len(self.client_data) if self.client_data else (self.num_clients or 2)

    @property
    def required_clients(self) -> int:
        return min(self.min_clients or self.client_count, self.client_count)

    def validate(self) -> "FederatedOptions":
        super().validate()
        self.check_federation()
        return self

    def check_federation(self) -> None:
        """The federation's own combinations (``validate`` adds each value's choices and range)."""
        if self.client_data and self.partition:
            raise HFTransferError("--client_data gives each client its own data and --partition splits one dataset: "
                                  "pass one of them")
        if self.client_data and self.num_clients and self.num_clients != len(self.client_data):
            raise HFTransferError(f"--num_clients {self.num_clients} but --client_data names {len(self.client_data)} "
                                  "sources: drop --num_clients (one client per source)")
        if self.client_data and len(self.client_data) < 2:
            raise HFTransferError("--client_data names one source: a federation needs two or more clients")
        if not self.client_data and not self.partition:
            raise HFTransferError("no clients: pass --client_data SOURCE SOURCE ... (one per client) or --partition "
                                  "iid / dirichlet:ALPHA to split the data flags' dataset into --num_clients")
        if self.min_clients and self.min_clients > self.client_count:
            raise HFTransferError(f"--min_clients {self.min_clients} is more than the {self.client_count} clients: "
                                  f"pass at most {self.client_count}")
        if self.role == "client" and self.client_id is None:
            raise HFTransferError("--role client needs --client_id N (0-based): which client's data it trains on")
        if self.client_id is not None and self.client_id >= self.client_count:
            raise HFTransferError(f"--client_id {self.client_id}: the run has clients 0-{self.client_count - 1}")
        host, _, port = self.superlink.rpartition(":")
        if not host or not port.isdigit() or int(port) not in PORTS:
            raise HFTransferError(f"--superlink '{self.superlink}' is not HOST:PORT with a port in 1024-65535 (e.g. "
                                  "127.0.0.1:9391)")
        if self.partition:
            PartitionScheme.parse(self.partition)  # a malformed scheme fails before anything loads


# TrainConfig first: --help lists the federation's options (the last base's fields) before the recipe's
@dataclass
class FederatedConfig(TrainConfig, FederatedOptions):
    """Everything ``hftransfer federate`` takes: the recipe's options (per client) and the federation's."""

    def validate(self, modality: str | None = None) -> "FederatedConfig":
        super().validate(modality)  # every group's checks, the federation's (FederatedOptions.validate) included
        if self.strategy not in FEDERATED_STRATEGIES:
            raise HFTransferError(f"--strategy {self.strategy} changes what trains between epochs, so what travels "
                                  f"would change mid-run: use one of {', '.join(FEDERATED_STRATEGIES)}")
        for flag, on in (("--tune", self.tune), ("--compare_scratch", self.compare_scratch),
                         ("--domain_adaptation", self.adaptation_loss != "none" or self.continued_pretraining),
                         ("--model_name_or_path auto", self.model_name_or_path == "auto"),
                         ("--shot_draws", self.num_draws > 1), ("--push_to_hub", self.push_to_hub),
                         ("--export_onnx", self.export_onnx), ("--model_ema", self.model_ema)):
            if on:
                raise HFTransferError(f"{flag} is not part of a federated run: drop it (export or push the "
                                      "federated model afterwards with hftransfer export / its output folder)")
        return self
