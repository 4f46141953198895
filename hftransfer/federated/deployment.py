"""``--engine deployment``: Flower's deployment engine, a SuperLink (server) and one SuperNode per client, each a
real process talking HTTP (``--insecure``: plain text, for loopback or a trusted network).

``--role server`` starts a SuperLink whose state lives in ``output_dir/federated/superlink.db`` (a restarted server
finds its clients registered again), submits the run with ``flwr run`` (the app is this package's
``apps:server_app`` / ``apps:client_app``, described by a generated ``pyproject.toml``), streams its log until it
ends, and stops the SuperLink. ``--role client`` runs one SuperNode for ``--client_id`` until stopped (restart it
to rejoin). ``--role all`` does both on this machine. Child processes get SIGTERM when their parent dies, and
each runs under ``process_guard``, which ends the processes Flower started for it, so a stopped or killed command
leaves no server, client or app process behind.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..config.federated_options import FederatedConfig
from ..errors import HFTransferError
from ..files import write_text
from .clients import client_dir
from .config_file import CONFIG_PATH_KEY, write_federated_config
from .server import STATE_DIR

APP_DIR = "flower_app"
FLWR_HOME_DIR = "flwr_home"
DATABASE_NAME = "superlink.db"
CONNECTION = "hftransfer"
STARTUP_SECONDS = 60  # how long a SuperLink may take to listen
PR_SET_PDEATHSIG = 1
GUARD = Path(__file__).with_name("process_guard.py")  # run by path: it starts without importing hftransfer

APP_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "hftransfer-federate"
version = "1.0.0"
description = "hftransfer federate: the app a SuperLink runs (generated)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "hftransfer"

[tool.flwr.app.components]
serverapp = "hftransfer.federated.apps:server_app"
clientapp = "hftransfer.federated.apps:client_app"

[tool.flwr.app.config]
{key} = "{config_path}"
"""


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux), so no orphan keeps the port."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def start(command: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """``command`` under ``process_guard``, so that stopping it (or our death) also ends the app processes Flower
    started for it, which could otherwise outlive it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115  (the child writes it for as long as it lives)
    return subprocess.Popen([sys.executable, str(GUARD), *command], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, preexec_fn=die_with_parent)


def executable(name: str) -> str:
    """A Flower command beside this Python (the ``flwr`` package's console scripts)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise HFTransferError(f"'{name}' is not installed beside {sys.executable}: pip install -e '.[federated]'")
    return str(path)


def wait_for_port(host: str, port: int, process: subprocess.Popen, what: str, log_path: Path) -> None:
    deadline = time.time() + STARTUP_SECONDS
    while time.time() < deadline:
        if process.poll() is not None:
            raise HFTransferError(f"the {what} exited with status {process.returncode} before listening on {host}:"
                                  f"{port}: see {log_path} (is the port taken? pass another --superlink)")
        with socket.socket() as probe:
            if probe.connect_ex((host, port)) == 0:
                return
        time.sleep(0.5)
    raise HFTransferError(f"the {what} did not listen on {host}:{port} within {STARTUP_SECONDS}s: see {log_path}")


def address(cfg: FederatedConfig) -> tuple[str, int]:
    host, _, port = cfg.superlink.rpartition(":")
    return host, int(port)


def start_superlink(cfg: FederatedConfig, folder: Path) -> subprocess.Popen:
    host, port = address(cfg)
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) == 0:
            raise HFTransferError(f"something already listens on {cfg.superlink}: stop it (an earlier server?) or pass "
                                  "another --superlink HOST:PORT")
    log_path = folder / "superlink.log"
    process = start([executable("flower-superlink"), "--insecure", "--host", host, "--port", str(port),
                     "--database", str(folder / DATABASE_NAME)], log_path, env=flower_home(folder))
    wait_for_port(host, port, process, "SuperLink", log_path)
    return process


def start_supernode(cfg: FederatedConfig, client_id: int, config_path: Path, log_path: Path) -> subprocess.Popen:
    """One client's SuperNode; its own runtime port (``--superlink``'s port + 1 + client id) so several share a host."""
    host, port = address(cfg)
    node_config = (f"partition-id={client_id} num-partitions={cfg.client_count} "
                   f"{CONFIG_PATH_KEY}='{config_path}'")
    return start([executable("flower-supernode"), "--insecure", "--superlink", f"{host}:{port}",
                  "--node-config", node_config, "--port", str(port + 1 + client_id)], log_path,
                 env=flower_home(log_path.parent))


def flower_home(folder: Path) -> dict:
    """Flower's home (installed apps, runtime folders, CLI connections) inside the run, not in ~/.flwr."""
    return {"FLWR_HOME": str(Path(folder) / FLWR_HOME_DIR)}


def write_app(cfg: FederatedConfig, folder: Path, config_path: Path) -> tuple[Path, dict]:
    """The Flower app folder ``flwr run`` packages, and a private Flower home naming the SuperLink connection."""
    app = folder / APP_DIR
    write_text(app / "pyproject.toml", APP_PYPROJECT.format(key=CONFIG_PATH_KEY, config_path=config_path))
    home = Path(flower_home(folder)["FLWR_HOME"])
    write_text(home / "config.toml", f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                                     f'address = "{cfg.superlink}"\ninsecure = true\n')
    return app, flower_home(folder)


def submit_run(cfg: FederatedConfig, folder: Path, config_path: Path) -> int:
    """``flwr run`` the app on the SuperLink and stream the run's log here until it ends; its exit status."""
    app, env = write_app(cfg, folder, config_path)
    command = [executable("flwr"), "run", str(app), CONNECTION, "--stream"]
    return subprocess.run(command, env={**os.environ, **env}, preexec_fn=die_with_parent).returncode


def run_server_and_clients(cfg: FederatedConfig, config_path: Path) -> None:
    """``--role server`` (and ``all``: every client's SuperNode too) until the run ends; then stop them."""
    folder = Path(cfg.output_dir) / STATE_DIR
    processes = [start_superlink(cfg, folder)]
    try:
        if cfg.role == "all":
            for client_id in range(cfg.client_count):
                processes.append(start_supernode(cfg, client_id, config_path, folder / f"client_{client_id}.log"))
        print(f"federated: SuperLink on {cfg.superlink} (log {folder / 'superlink.log'}); "
              + (f"{cfg.client_count} SuperNodes started" if cfg.role == "all" else
                 f"waiting for {cfg.required_clients} client(s): hftransfer federate --engine deployment --role client "
                 f"--client_id N ... --superlink {cfg.superlink}"))
        submit_run(cfg, folder, config_path)
    finally:
        for process in reversed(processes):
            stop(process)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_client(cfg: FederatedConfig) -> None:
    """``--role client``: this client's SuperNode, in the foreground until it is stopped (Ctrl-C / SIGTERM)."""
    folder = client_dir(cfg.output_dir, cfg.client_id)
    config_path = write_federated_config(cfg, folder)
    print(f"federated: client {cfg.client_id} connecting to {cfg.superlink} (log {folder / 'supernode.log'})")
    process = start_supernode(cfg, cfg.client_id, config_path, folder / "supernode.log")
    try:
        process.wait()
    finally:
        stop(process)
