"""Whole runs: a recipe run (``train``) with its from-scratch and source-only twins, ``rank``, the automatic
backbone choice, and the Python API (``api``: ``finetune``, ``rank_backbones``, ``predict``)."""
