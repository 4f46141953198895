"""Federated fine-tuning: the partition helper, what travels and its size, FedAvg / FedProx numerics, the proximal
term, the options' checks; then (integration) a simulated federation and one on loopback processes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict  # noqa: E402

from hftransfer.config.federated_options import FederatedConfig  # noqa: E402
from hftransfer.data.partition import PartitionScheme, check_client_sizes, partition_indices  # noqa: E402
from hftransfer.errors import HFTransferError  # noqa: E402
from hftransfer.federated.parameters import (  # noqa: E402
    frozen_fingerprint,
    get_arrays,
    model_bytes,
    set_arrays,
    tensor_bytes,
    travelling_names,
)
from hftransfer.federated.strategy import RoundLog, create_strategy, weighted_metrics  # noqa: E402
from hftransfer.models.lora import add_lora  # noqa: E402
from hftransfer.tuning.regularizers import ProximalTerm  # noqa: E402
from hftransfer.tuning.strategies import Strategy, apply_trainable  # noqa: E402

from builders import image_model  # noqa: E402


# ------------------------------------------------------------------------------------------ partition
@pytest.mark.parametrize("scheme", ["iid", "dirichlet:0.3", "dirichlet:100"])
def test_partition_is_disjoint_covering_and_seeded(scheme):
    labels = np.repeat(np.arange(5), 40)
    parts = partition_indices(labels, 4, PartitionScheme.parse(scheme), seed=3)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(labels)))  # every example exactly once
    again = partition_indices(labels, 4, PartitionScheme.parse(scheme), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition_indices(labels, 4, PartitionScheme.parse(scheme), seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def test_small_alpha_skews_labels_and_large_alpha_does_not():
    labels = np.repeat(np.arange(10), 100)

    def mean_dominant_share(alpha):
        parts = partition_indices(labels, 5, PartitionScheme("dirichlet", alpha), seed=0)
        return np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts])

    assert mean_dominant_share(0.1) > 0.45  # a few classes dominate each client
    assert mean_dominant_share(1000.0) < 0.15  # near-uniform: about 1/10 each


def test_iid_parts_are_equal_sized():
    parts = partition_indices(np.zeros(10, dtype=int), 3, PartitionScheme.parse("iid"), seed=0)
    assert sorted(len(p) for p in parts) == [3, 3, 4]


@pytest.mark.parametrize("text", ["dirichlet", "dirichlet:0", "dirichlet:-1", "dirichlet:abc", "iid:2", "shards"])
def test_bad_partition_is_one_line(text):
    with pytest.raises(HFTransferError, match="--partition"):
        PartitionScheme.parse(text)


def test_empty_client_names_the_fix():
    with pytest.raises(HFTransferError, match="raise ALPHA"):
        check_client_sizes([10, 1, 9], "training")


# ------------------------------------------------------------------------------------------ what travels
def trainable(strategy: str, **kwargs):
    model = image_model()
    if strategy == "lora":
        add_lora(model, r=2, alpha=4)
    groups = len(model.layer_groups()) - 1
    plan = Strategy(strategy, groups, kwargs.get("top_k", 1), 1, 0, 0)
    apply_trainable(model, plan.trainable_groups(0), False, plan.adapter_only)
    return model


def test_linear_probe_sends_only_the_head():
    model = trainable("linear_probe")
    names = travelling_names(model)
    assert names and all(name.startswith("head.") for name in names)
    assert tensor_bytes(model.state_dict()[n] for n in names) < 0.05 * model_bytes(model)


def test_lora_sends_adapters_and_head_and_partial_adds_top_group_buffers():
    lora = travelling_names(trainable("lora"))
    assert any("lora_" in n for n in lora) and any(n.startswith("head.") for n in lora)
    assert all("lora_" in n or n.startswith("head.") for n in lora)
    partial = trainable("partial")
    names = travelling_names(partial)
    trained = {n for n, p in partial.named_parameters() if p.requires_grad}
    assert trained < set(names)  # the trained group's BatchNorm statistics travel with its weights
    assert all(n in trained or n.endswith(("running_mean", "running_var")) for n in names)


def test_arrays_round_trip_and_frozen_fingerprint():
    model, other = trainable("partial"), trainable("partial")
    names = travelling_names(model)
    with torch.no_grad():
        for name in names[:3]:
            model.state_dict()[name].add_(1.0)
    assert frozen_fingerprint(model, names) == frozen_fingerprint(other, names)  # only travelling tensors moved
    set_arrays(other, get_arrays(model, names))
    for name in names:
        torch.testing.assert_close(other.state_dict()[name], model.state_dict()[name])
    with pytest.raises(HFTransferError, match="same model"):
        set_arrays(other, {names[0]: np.zeros((7, 7), dtype=np.float32)})


# ------------------------------------------------------------------------------------------ aggregation
def reply(values: dict, examples: int, client: int, node: int) -> Message:
    sent = Message(content=RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=MessageType.TRAIN)
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in values.items()}),
                          "metrics": MetricRecord({"num-examples": examples, "client-id": client, "train_loss": 1.0})})
    return Message(content, reply_to=sent)


@pytest.fixture
def message_context(monkeypatch):
    """Flower stamps messages with the running task's run id, which the engines set; here there is no run."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


@pytest.mark.parametrize("aggregation", ["fedavg", "fedprox"])
def test_aggregation_is_the_example_weighted_mean(aggregation, message_context):
    log = RoundLog()
    strategy = create_strategy(aggregation, 0.1, 1.0, 2, log)
    replies = [reply({"w": [1.0, 2.0]}, 10, 0, 1), reply({"w": [4.0, 8.0]}, 30, 1, 2)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), [0.25 * 1 + 0.75 * 4, 0.25 * 2 + 0.75 * 8])
    assert metrics["train_loss"] == pytest.approx(1.0) and metrics["clients"] == 2
    assert log.rounds[1]["bytes_up_train"] > 2 * 8  # two float32 pairs, and their serialization headers
    assert set(log.rounds[1]["clients"]) == {"0", "1"}


def test_fedprox_sends_mu_and_metrics_weight_by_their_own_split():
    from flwr.serverapp.strategy import FedProx

    assert isinstance(create_strategy("fedprox", 0.5, 1.0, 2, RoundLog()), FedProx)
    rows = [{"eval_accuracy": 1.0, "eval_examples": 1, "test_accuracy": 0.0, "test_examples": 3},
            {"eval_accuracy": 0.0, "eval_examples": 3, "test_accuracy": 1.0, "test_examples": 1}]
    assert weighted_metrics(rows) == {"eval_accuracy": 0.25, "test_accuracy": 0.25}


def test_proximal_term_value_and_gradient():
    model = torch.nn.Linear(3, 2)
    frozen = torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    proximal = ProximalTerm(model, mu=0.5)
    assert proximal(model).item() == 0.0  # at the global weights
    with torch.no_grad():
        model.weight.add_(2.0)
        model.bias.add_(5.0)  # frozen: not part of the term
    value = proximal(model)
    assert value.item() == pytest.approx(0.5 / 2 * 6 * 4.0)
    value.backward()
    torch.testing.assert_close(model.weight.grad, torch.full((2, 3), 0.5 * 2.0))
    assert frozen.weight.grad is None
    with pytest.raises(HFTransferError, match="proximal_mu"):
        ProximalTerm(model, mu=-1)


# ------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("kwargs, match", [
    ({}, "no clients"),
    ({"partition": "iid", "client_data": ["a", "b"]}, "pass one of them"),
    ({"client_data": ["a"]}, "two or more"),
    ({"partition": "iid", "strategy": "gradual"}, "what travels"),
    ({"partition": "iid", "min_clients": 3}, "at most 2"),
    ({"partition": "iid", "engine": "deployment", "role": "client"}, "--client_id"),
    ({"partition": "iid", "superlink": "localhost"}, "HOST:PORT"),
    ({"partition": "iid", "tune": True}, "not part of a federated run"),
])
def test_federated_options_refuse_in_one_line(kwargs, match):
    with pytest.raises(HFTransferError, match=match):
        FederatedConfig(model_name_or_path="test_efficientnet", **kwargs).validate("image")
