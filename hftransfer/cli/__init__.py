"""Entry points: the ``hftransfer`` command (``rank``, ``predict``) and the recipes' ``run_recipe``."""
from .commands import main, run_recipe

__all__ = ["main", "run_recipe"]
