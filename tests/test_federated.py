"""Federated fine-tuning: the partition helper, what travels and its size, FedAvg / FedProx numerics, the proximal
term, the options' checks; then (integration) a simulated federation and one on loopback processes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from builders import image_model  # noqa: E402
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


# ------------------------------------------------------------------------------------------ whole runs
TINY_FEDERATION = ["--model_name_or_path", "test_efficientnet", "--weights", "random", "--per_device_train_batch_size",
                   "4", "--per_device_eval_batch_size", "4", "--head_learning_rate", "0.01", "--num_rounds", "2"]


def check_export(out, rounds: int) -> dict:
    """The record is complete and the export loads with hftransfer and with plain timm, giving the same logits."""
    import timm

    from hftransfer.models.transfer_model import TransferModel

    results = json.loads((out / "federated_results.json").read_text())
    assert results["rounds_done"] == rounds and len(results["rounds"]) == rounds
    for entry in results["rounds"]:
        assert entry["bytes_down_train"] > 0 and entry["bytes_up_train"] > 0 and "eval_accuracy" in entry["metrics"]
    assert 0 < results["travelling_fraction"] < 1
    model = TransferModel.from_pretrained(out).eval()
    native = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # timm alone reads the folder
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(native(pixels), model(pixel_values=pixels).logits, atol=1e-5, rtol=1e-4)
    return results


@pytest.mark.integration
def test_simulation_two_clients_two_rounds(tmp_path):
    from builders import make_image_folder, run_python

    data = make_image_folder(tmp_path / "data", per_class=12)
    out = tmp_path / "out"
    proc = run_python("-m", "hftransfer", "federate", *TINY_FEDERATION, "--train_dir", str(data), "--partition", "iid",
                      "--num_clients", "2", "--strategy", "partial", "--aggregation", "fedprox",
                      "--output_dir", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = check_export(out, rounds=2)
    assert set(results["rounds"][0]["clients"]) == {"0", "1"}  # both clients trained and evaluated each round
    assert "federated round 2/2" in proc.stdout


@pytest.mark.integration
def test_clients_holding_different_classes_train_one_model_over_their_union(tmp_path):
    from builders import make_image_folder, run_python

    folders = [make_image_folder(tmp_path / "client0", classes=("birds", "cats", "dogs"), per_class=6),
               make_image_folder(tmp_path / "client1", classes=("cats", "dogs"), per_class=6, seed=1)]
    out = tmp_path / "out"
    proc = run_python("-m", "hftransfer", "federate", *TINY_FEDERATION, "--client_data", *map(str, folders),
                      "--strategy", "linear_probe", "--output_dir", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = check_export(out, rounds=2)
    assert results["label_names"] == ["birds", "cats", "dogs"]
    assert set(results["rounds"][-1]["clients"]) == {"0", "1"}
    from hftransfer.models.transfer_model import TransferModel

    assert TransferModel.from_pretrained(out).id2label == {0: "birds", 1: "cats", 2: "dogs"}


def test_the_federations_classes_are_the_union_of_the_clients(tmp_path):
    import datasets

    from hftransfer.data import DataBundle
    from hftransfer.errors import HFTransferError
    from hftransfer.federated.clients import onto_label_names
    from hftransfer.federated.server import label_space

    answer = lambda i, names, multi=False: {"client-id": i, "label-names": names, "multi-label": multi}  # noqa: E731
    same = label_space([answer(0, ["a", "b"]), answer(1, ["a", "b"])], None)
    assert same.id2label == {0: "a", 1: "b"}
    union = label_space([answer(0, ["b", "c"]), answer(1, ["a", "b"])], None)
    assert union.id2label == {0: "a", 1: "b", 2: "c"}
    with pytest.raises(HFTransferError, match="with multi-label data every client's training data must hold"):
        label_space([answer(0, ["b", "c"], True), answer(1, ["a", "b"], True)], None)
    split = datasets.Dataset.from_dict({"text": ["x", "y", "z"], "labels": [0, 1, 0]})
    bundle = DataBundle(train=split, eval=split, id2label={0: "b", 1: "c"}, multi_label=False, input_column="text")
    mapped = onto_label_names(bundle, ["a", "b", "c"])
    assert mapped.id2label == {0: "a", 1: "b", 2: "c"} and mapped.train["labels"] == [1, 2, 1]
    assert mapped.eval["labels"] == [1, 2, 1] and mapped.test is None
    with pytest.raises(HFTransferError, match=r"\(c missing\): the server takes the classes of the clients"):
        onto_label_names(bundle, ["a", "b"])


def wait_for_round(out, rounds: int, server, timeout: float = 300) -> None:
    import time

    state = out / "federated" / "state.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if state.is_file() and json.loads(state.read_text()).get("rounds_done", 0) >= rounds:
            return
        assert server.poll() is None, "the server exited before round %d" % rounds
        time.sleep(1)
    raise AssertionError(f"round {rounds} did not finish within {timeout}s")


# ------------------------------------------------------------------------------------------ processes
# A child that starts a grandchild in a session of its own (as Flower's SuperLink starts its SuperExec), prints
# the grandchild's pid, then sleeps or exits with status 3.
DETACHING_CHILD = ("import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; "
                   "time.sleep(300)'], start_new_session=True); print(g.pid, flush=True); "
                   "time.sleep(300) if sys.argv[1] == 'sleep' else sys.exit(3)")


def alive(pid: int) -> bool:
    from hftransfer.federated.process_guard import state_and_parent

    found = state_and_parent(pid)
    return found is not None and found[0] != "Z"


def gone_within(pid: int, seconds: float = 15) -> bool:
    import time

    deadline = time.time() + seconds
    while alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    return not alive(pid)


@pytest.mark.parametrize("ending", ["stopped", "exits"])
def test_the_guard_ends_what_its_command_left_behind(ending):
    import subprocess
    import sys

    from hftransfer.federated import process_guard

    guard = subprocess.Popen([sys.executable, process_guard.__file__, sys.executable, "-c", DETACHING_CHILD,
                              "sleep" if ending == "stopped" else "exit"], stdout=subprocess.PIPE, text=True)
    grandchild = int(guard.stdout.readline())
    assert alive(grandchild)
    if ending == "stopped":
        guard.terminate()
    assert guard.wait(timeout=30) == (143 if ending == "stopped" else 3)  # the command's own status, or SIGTERM's
    assert gone_within(grandchild)


def test_without_proc_the_guard_still_stops_its_command(monkeypatch):
    """Where there is no ``/proc`` (macOS) the guard cannot see the process tree; it ends its own command."""
    import subprocess
    import sys

    from hftransfer.federated import process_guard

    monkeypatch.setattr(process_guard.os.path, "isdir", lambda path: False)
    assert process_guard.descendants(0) == []
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    process_guard.end_descendants(child, grace=5)
    assert child.poll() is not None and not alive(child.pid)  # (the guard reaps it, so no status is left to read)


def test_a_killed_parent_takes_the_guarded_processes_with_it():
    """SIGKILL to ``hftransfer federate`` (nothing of it runs): the guard hears of it through PR_SET_PDEATHSIG."""
    import signal
    import subprocess
    import sys

    from hftransfer.federated import process_guard

    # deployment.die_with_parent, inlined: importing hftransfer would take seconds
    parent_code = ("import ctypes, signal, subprocess, sys; die = lambda: ctypes.CDLL('libc.so.6').prctl(1, "
                   "signal.SIGTERM); subprocess.Popen(sys.argv[1:], preexec_fn=die).wait()")
    parent = subprocess.Popen([sys.executable, "-c", parent_code, sys.executable, process_guard.__file__,
                               sys.executable, "-c", DETACHING_CHILD, "sleep"], stdout=subprocess.PIPE, text=True)
    grandchild = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert gone_within(grandchild)


def deployment_command(tmp_path, client_count: int, *options: str) -> tuple[list[str], object]:
    """The ``federate --engine deployment`` command line every process of one test shares, on a free port, and its
    output folder; each client holds its own small image folder."""
    import socket
    import sys

    from builders import make_image_folder

    with socket.socket() as probe:  # a free port for the SuperLink; its clients take the next ones
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folders = [str(make_image_folder(tmp_path / f"client{i}", per_class=8, seed=i)) for i in range(client_count)]
    out = tmp_path / "out"
    return [sys.executable, "-m", "hftransfer", "federate", *TINY_FEDERATION, "--engine", "deployment",
            "--client_data", *folders, "--output_dir", str(out), "--superlink", f"127.0.0.1:{port}",
            "--round_timeout", "90", "--strategy", "linear_probe", *options], out


def stop_all(processes) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def processes_on(common: list[str], seconds: float = 30) -> list[str]:
    """The command lines of live processes that name the test's SuperLink or SuperNode addresses (Flower's app
    processes included), once they had ``seconds`` to end."""
    import os
    import time

    host, port = common[common.index("--superlink") + 1].rsplit(":", 1)
    addresses = [f"{host}:{int(port) + k}" for k in range(3)]
    deadline = time.time() + seconds
    while True:
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    command = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if alive(int(entry)) and any(address in command for address in addresses):
                found.append(command)
        if not found or time.time() > deadline:
            return found
        time.sleep(0.5)


@pytest.mark.integration
def test_deployment_survives_a_killed_client_that_rejoins_and_a_restarted_server(tmp_path):
    import subprocess

    # --min_clients 2: a round may lose a client, but none can start without both, so round 3 proves the rejoin
    common, out = deployment_command(tmp_path, 2, "--min_clients", "2", "--num_rounds", "3")
    logs = open(tmp_path / "processes.log", "w")

    def start(*role: str) -> subprocess.Popen:
        return subprocess.Popen([*common, *role], stdout=logs, stderr=subprocess.STDOUT)

    server = start("--role", "server")
    clients = [start("--role", "client", "--client_id", str(i)) for i in range(2)]
    try:
        wait_for_round(out, 1, server)
        clients[1].kill()  # SIGKILL mid round 2: its SuperNode is stopped with it (it dies with its parent)
        clients[1].wait()
        clients.append(start("--role", "client", "--client_id", "1"))  # the same command again: a new SuperNode
        wait_for_round(out, 2, server)
        server.kill()  # a crashed server: the SuperLink and the run die with it; client 0 reconnects on its own
        server.wait()
        server = start("--role", "server", "--resume_from_checkpoint", "latest")
        assert server.wait(timeout=400) == 0, (tmp_path / "processes.log").read_text()[-4000:]
    finally:
        stop_all([server, *clients])
    assert processes_on(common) == []  # no SuperLink, SuperNode or Flower app process outlives its command
    results = check_export(out, rounds=3)
    trained = [sorted(c for c, m in entry["clients"].items() if "train_loss" in m) for entry in results["rounds"]]
    assert trained == [["0", "1"], ["0"], ["0", "1"]]  # round 2 goes on without the killed client; it is back in 3
    assert results["rounds"][1]["failures"] >= 1
    assert "resuming after round 2" in (tmp_path / "processes.log").read_text()
