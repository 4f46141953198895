"""Run options: the option groups (``options``), ``TrainConfig`` / ``RankConfig``, and parsing flags and YAML."""
from .options import RankConfig, TrainConfig
from .parsing import UsageErrorParser, build_parser, load_config, read_config_file, save_config

__all__ = ["TrainConfig", "RankConfig", "UsageErrorParser", "build_parser", "load_config", "read_config_file", "save_config"]
