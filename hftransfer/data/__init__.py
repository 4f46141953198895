"""Data: where examples come from (``sources``), labelled splits (``splits``), the target domain (``target``),
image manifests and text files (``manifests``, ``text_files``), and per-modality preprocessing (``preprocessing``)."""
from .sources import DataSource, load_raw_splits
from .splits import INDEX_COLUMN, DataBundle, prepare_splits, subset
from .target import TargetBundle, load_target_data

__all__ = ["DataSource", "load_raw_splits", "INDEX_COLUMN", "DataBundle", "prepare_splits", "subset", "TargetBundle",
           "load_target_data"]
