"""``python -m hftransfer <command>``: the same as the ``hftransfer`` console script."""
from .cli.commands import main

main()
