"""Run options: the option groups (``options``, ``data_options``), ``TrainConfig`` / ``RankConfig``
(``configs``), and parsing flags and YAML (``parsing``; ``help`` and ``aliases`` for the recipes' parsers)."""
from .configs import RankConfig, TrainConfig
from .parsing import UsageErrorParser, build_parser, load_config, read_config_file, save_config

__all__ = ["TrainConfig", "RankConfig", "UsageErrorParser", "build_parser", "load_config", "read_config_file", "save_config"]
