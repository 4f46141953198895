"""FedAvg / FedProx from Flower, with what a run records: bytes sent and received, per-client metrics, and the
aggregated evaluation weighted by each split's own example counts."""
from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

SPLIT_COUNTS = {"eval": "eval_examples", "test": "test_examples", "train": "num-examples"}


def weighted_metrics(rows: list[dict]) -> dict:
    """Every ``<split>_<metric>`` averaged over the clients, weighted by that split's example counts."""
    merged: dict[str, float] = {}
    for split, count_key in SPLIT_COUNTS.items():
        holders = [row for row in rows if count_key in row and any(k.startswith(f"{split}_") for k in row)]
        total = sum(row[count_key] for row in holders)
        names = {k for row in holders for k in row if k.startswith(f"{split}_") and not k.endswith("_examples")}
        for name in sorted(names):
            if total > 0 and all(name in row for row in holders):
                merged[name] = sum(row[name] * row[count_key] for row in holders) / total
    return merged


def aggregate_rows(records, weighted_by_key: str) -> MetricRecord:
    """Flower's metric aggregation hook: our per-split weighting instead of one weight for every metric."""
    rows = [dict(next(iter(record.metric_records.values()))) for record in records]
    return MetricRecord({**weighted_metrics(rows), "clients": len(rows)})


def message_bytes(message: Message) -> int:
    """A message's payload as Flower counts it: every array's serialized bytes, config and metric values, keys."""
    return sum(record.count_bytes() for record in message.content.values())


class RoundLog:
    """What one round sent and received, filled by the strategy's hooks."""

    def __init__(self):
        self.rounds: dict[int, dict] = {}

    def entry(self, server_round: int) -> dict:
        return self.rounds.setdefault(server_round, {"bytes_down_train": 0, "bytes_up_train": 0,
                                                     "bytes_down_evaluate": 0, "bytes_up_evaluate": 0,
                                                     "clients": {}, "failures": 0})

    def sent(self, server_round: int, messages: list[Message], kind: str) -> None:
        self.entry(server_round)[f"bytes_down_{kind}"] += sum(map(message_bytes, messages))
        self.entry(server_round)[f"sampled_{kind}"] = len(messages)

    def received(self, server_round: int, replies: list[Message], kind: str) -> None:
        entry = self.entry(server_round)
        for reply in replies:
            if reply.has_error():
                entry["failures"] += 1
                continue
            entry[f"bytes_up_{kind}"] += message_bytes(reply)
            metrics = dict(next(iter(reply.content.metric_records.values())))
            client = str(int(metrics.pop("client-id")))
            entry["clients"].setdefault(client, {}).update(
                {k: v for k, v in metrics.items() if k != "num-examples"} |
                ({"train_examples": metrics["num-examples"]} if kind == "train" else {}))


def recording(base: type) -> type:
    """``base`` (FedAvg or FedProx) that logs every message's size and every reply's metrics in ``self.log``."""

    class Recording(base):
        def __init__(self, *args, log: RoundLog, **kwargs):
            super().__init__(*args, **kwargs)
            self.log = log

        def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                            grid: Grid) -> Iterable[Message]:
            messages = list(super().configure_train(server_round, arrays, config, grid))
            self.log.sent(server_round, messages, "train")
            return messages

        def aggregate_train(self, server_round: int, replies: Iterable[Message]):
            replies = list(replies)
            self.log.received(server_round, replies, "train")
            return super().aggregate_train(server_round, replies)

        def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                               grid: Grid) -> Iterable[Message]:
            messages = list(super().configure_evaluate(server_round, arrays, config, grid))
            self.log.sent(server_round, messages, "evaluate")
            return messages

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
            replies = list(replies)
            self.log.received(server_round, replies, "evaluate")
            return super().aggregate_evaluate(server_round, replies)

    Recording.__name__ = Recording.__qualname__ = base.__name__
    return Recording


def create_strategy(aggregation: str, proximal_mu: float, fraction_train: float, min_clients: int,
                    log: RoundLog):
    """Flower's FedAvg or FedProx over ``min_clients`` or more connected clients, recording into ``log``."""
    kwargs = {"fraction_train": fraction_train, "fraction_evaluate": 1.0, "min_train_nodes": min_clients,
              "min_evaluate_nodes": min_clients, "min_available_nodes": min_clients, "log": log,
              "train_metrics_aggr_fn": aggregate_rows, "evaluate_metrics_aggr_fn": aggregate_rows}
    if aggregation == "fedprox":
        return recording(FedProx)(proximal_mu=proximal_mu, **kwargs)
    return recording(FedAvg)(**kwargs)
