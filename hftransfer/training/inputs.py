"""The run's data, read with what a ``TrainConfig`` (or ``RankConfig``) says: the one place the config meets ``data``.

``data`` takes explicit arguments (a ``DataSource``, column names, limits); these adapters convert the
run's options at the edge, as timm's ``optimizer_kwargs(cfg)`` does.
"""
from __future__ import annotations

from ..data import DataBundle, DataSource, TargetBundle, load_raw_splits, prepare_splits
from ..data import load_target_data as load_target_splits


def data_source(cfg) -> DataSource:
    """The labelled (source-domain) data the run names."""
    return DataSource(dataset_name=cfg.dataset_name, dataset_config_name=cfg.dataset_config_name,
                      train_dir=cfg.train_dir, validation_dir=cfg.validation_dir, test_dir=cfg.test_dir,
                      train_file=cfg.train_file, validation_file=cfg.validation_file, test_file=cfg.test_file)


def target_source(cfg) -> DataSource:
    """The target-domain data the run names (``--target_*``)."""
    return DataSource(dataset_name=cfg.target_dataset_name, train_dir=cfg.target_train_dir,
                      validation_dir=cfg.target_validation_dir, test_dir=cfg.target_test_dir,
                      train_file=cfg.target_train_file, validation_file=cfg.target_validation_file,
                      test_file=cfg.target_test_file)


def input_column(cfg, modality: str) -> str:
    return {"image": cfg.image_column_name, "audio": cfg.audio_column_name}.get(modality, cfg.text_column_name)


def load_data(cfg, modality: str, data_seed: int | None = None) -> DataBundle:
    """The labelled splits ``cfg`` names, for a ``modality`` model; ``data_seed`` (default ``cfg.seed``) seeds
    the held-out split and the subsets."""
    raw = load_raw_splits(modality, data_source(cfg), image_column=cfg.image_column_name,
                          audio_column=cfg.audio_column_name, label_column=cfg.label_column_name,
                          text_encoding=cfg.text_encoding)
    return prepare_splits(raw, input_column(cfg, modality), cfg.label_column_name, cfg.validation_fraction,
                          seed=cfg.seed if data_seed is None else data_seed, max_train_samples=cfg.max_train_samples,
                          max_eval_samples=cfg.max_eval_samples, max_predict_samples=cfg.max_predict_samples,
                          label_names=cfg.label_names)


def load_target_data(cfg, modality: str, id2label: dict[int, str], data_seed: int | None = None) -> TargetBundle:
    """The target-domain splits ``cfg`` names, labels mapped onto the source's ``id2label``."""
    return load_target_splits(modality, target_source(cfg), id2label=id2label, input_column=input_column(cfg, modality),
                              label_column=cfg.label_column_name, text_encoding=cfg.text_encoding,
                              seed=cfg.seed if data_seed is None else data_seed,
                              max_train_samples=cfg.max_train_samples, max_eval_samples=cfg.max_eval_samples,
                              max_predict_samples=cfg.max_predict_samples)


def audio_kwargs(cfg, modality: str) -> dict:
    """The audio backbone's settings a ``TrainConfig`` / ``RankConfig`` gives (none for images and text)."""
    if modality != "audio":
        return {}
    return {"sampling_rate": cfg.sampling_rate, "max_duration": cfg.max_duration, "n_mels": cfg.n_mels}
