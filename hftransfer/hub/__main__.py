"""``python -m hftransfer.hub OUTPUT_DIR --hub_model_id ...``: push a finished run again, without retraining."""
from .push import main

main()
