"""A trained model named by a user, with the run settings its predictions depend on.

``hftransfer predict`` and ``hftransfer.predict`` both take a run folder or a Hub repo id; this is the
one place that tells the two apart and finds the run's ``config.yaml`` (``InferenceSettings``).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import HFTransferError
from ..files import ONNX_DIR, ONNX_INT8_NAME, ONNX_MODEL_NAME, RUN_CONFIG_NAME
from .inference import InferenceSettings
from .transfer_model import TransferModel

logger = logging.getLogger(__name__)


def load_saved_model(source: str, revision: str | None = None) -> tuple[TransferModel, InferenceSettings]:
    """(model, settings) of a ``save_pretrained`` folder (a run's ``output_dir``, ``best_model/``) or a Hub repo id.

    A folder's settings come from its ``config.yaml`` (its parent's for ``best_model/``); a repo's from the
    ``config.yaml`` that ``--push_to_hub`` uploads with the run; defaults when there is none.
    """
    folder = Path(source)
    if folder.is_dir():
        return TransferModel.from_pretrained(folder), InferenceSettings.from_run(folder)
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1 or (folder.parent != Path(".")
                                                                                 and folder.parent.is_dir())
    if looks_local:  # a mistyped folder must not turn into a Hub download
        raise HFTransferError(f"model folder '{source}' does not exist: pass a run's output_dir or a Hub repo id "
                              "(user/name)")
    return TransferModel.from_pretrained(source, revision=revision), hub_settings(source, revision)


def hub_settings(repo_id: str, revision: str | None = None) -> InferenceSettings:
    """The settings in the repo's ``config.yaml``, else the defaults (said in a warning)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return InferenceSettings.from_file(hf_hub_download(repo_id.removeprefix("hf-hub:"), RUN_CONFIG_NAME,
                                                           revision=revision))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        logger.warning(f"{repo_id} has no {RUN_CONFIG_NAME}: using the default preprocessing settings (give "
                       "max_seq_length / decode_size if the run used others)")
        return InferenceSettings()


def hub_onnx_file(repo_id: str, *, quantized: bool = False, revision: str | None = None) -> Path:
    """A Hub repo's ``onnx/model.onnx`` (``model_int8.onnx`` with ``quantized``), downloaded into the snapshot the
    model files came from (so its ``export_results.json`` lies beside it), for ``--backend onnxruntime``."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    name = ONNX_INT8_NAME if quantized else ONNX_MODEL_NAME
    try:
        return Path(hf_hub_download(repo_id.removeprefix("hf-hub:"), f"{ONNX_DIR}/{name}", revision=revision))
    except EntryNotFoundError:
        raise HFTransferError(f"the Hub repo {repo_id} has no {ONNX_DIR}/{name}: push a run folder that holds an "
                              "export (hftransfer export RUN_DIR, or train with --export_onnx), or pass onnx_file"
                              ) from None
