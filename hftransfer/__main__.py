"""``python -m hftransfer <command>``: the same as the ``hftransfer`` console script."""
from .cli import main

main()
