"""Publishing: model cards (``card``), Hub pushes and downloads (``push``), Hub failures as one line (``errors``).

The hub works on folders and run files only: it imports the package's root modules (errors, files,
records) and never model code, so ``import hftransfer.hub`` loads neither torch nor a backbone.
"""
