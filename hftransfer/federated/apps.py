"""Flower's two apps, ``server_app`` and ``client_app`` (Flower's Message API), as both engines load them: the
simulation engine from these objects, the deployment engine by name (``hftransfer.federated.apps:server_app``).

Each reads the federation's config from the path its context carries (``config-path``: the run config for the
server; for a client, its node config, else the run config) and which client it is from its node config
(``partition-id``, which both engines set).
"""
from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from .config_file import CONFIG_PATH_KEY, read_federated_config


def client_identity(context: Context, config_path: str | None) -> tuple[str, int]:
    path = config_path or context.node_config.get(CONFIG_PATH_KEY) or context.run_config[CONFIG_PATH_KEY]
    return str(path), int(context.node_config["partition-id"])


def label_names(config: dict) -> list[str] | None:
    """The federation's classes, which the server sends with every train and evaluate message."""
    names = config.get("label-names")
    return [str(n) for n in names] if names else None


def received_arrays(msg: Message) -> dict:
    return {name: value.numpy() for name, value in msg.content["arrays"].items()}


def build_client_app(config_path: str | None = None) -> ClientApp:
    """The ClientApp; ``config_path`` fixes the config (simulation), else the context names it (deployment)."""
    app = ClientApp()

    @app.query()
    def describe(msg: Message, context: Context) -> Message:
        from .client import client_data, describe_reply

        data = client_data(*client_identity(context, config_path))
        return Message(RecordDict({"config": ConfigRecord(describe_reply(data))}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        from .client import client_run, train_reply

        config = dict(msg.content["config"])
        client = client_run(*client_identity(context, config_path), label_names(config))
        config["round"] = int(config["server-round"]) + int(config.get("round-offset", 0))
        trained, metrics = train_reply(client, received_arrays(msg), config)
        return Message(RecordDict({"arrays": ArrayRecord(numpy_dict(trained)), "metrics": MetricRecord(metrics)}),
                       reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        from .client import client_run, evaluate_reply

        config = dict(msg.content["config"]) if "config" in msg.content else {}
        client = client_run(*client_identity(context, config_path), label_names(config))
        return Message(RecordDict({"metrics": MetricRecord(evaluate_reply(client, received_arrays(msg)))}),
                       reply_to=msg)

    return app


def build_server_app(config_path: str | None = None) -> ServerApp:
    """The ServerApp; ``config_path`` as for ``build_client_app``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from .server import run_server

        run_server(grid, read_federated_config(config_path or str(context.run_config[CONFIG_PATH_KEY])))

    return app


client_app = build_client_app()  # the deployment engine's components (pyproject's [tool.flwr.app.components])
server_app = build_server_app()


def numpy_dict(arrays: dict) -> dict:
    from flwr.app import Array

    return {name: Array(value) for name, value in arrays.items()}
