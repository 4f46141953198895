"""Run options: the option groups (``options``), ``TrainConfig`` / ``RankConfig``, and parsing flags and YAML."""
from .options import RankConfig, TrainConfig
from .parsing import build_parser, load_config, read_config_file, save_config

__all__ = ["TrainConfig", "RankConfig", "build_parser", "load_config", "read_config_file", "save_config"]
