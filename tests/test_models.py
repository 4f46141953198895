"""Backbone adapters, heads and TransferModel, on tiny local models and on the bundled real weights."""
import pytest
import torch
from builders import BUNDLED_IMAGES, ScaledHead, tiny_image_transfer_model

from hftransfer import HFTransferError, MLPHead, TransferModel, create_backbone, create_transfer_model
from hftransfer.models.bundled import bundled_timm_state_dict, remap_lukemelas_efficientnet
from hftransfer.models.heads import classification_loss

LABELS = {0: "a", 1: "b", 2: "c"}


def test_timm_backbone_contract():
    backbone = create_backbone("image", "test_vit", weights="random")
    feats = backbone(pixel_values=torch.randn(2, 3, *backbone.data_config["input_size"][1:]))
    assert feats.shape == (2, backbone.feature_dim)
    groups = backbone.layer_groups()
    names = [n for n, _ in backbone.named_parameters()]
    assert sorted(p for g in groups for p in g.params) == sorted(names)  # a partition of all parameters
    assert len(groups) >= 3
    assert "patch_embed" in groups[0].name


def test_unknown_timm_model_suggests_names():
    with pytest.raises(HFTransferError, match="unknown timm model 'resnet5O'.*did you mean resnet50"):
        create_backbone("image", "resnet5O")


def test_text_backbone_mean_pooling_ignores_padding(tiny_bert):
    backbone = create_backbone("text", str(tiny_bert), pooling="mean").eval()
    tok = backbone.tokenizer
    alone = tok(["good movie"], return_tensors="pt")
    padded = tok(["good movie", "the film was very very dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = backbone(**alone)
        b = backbone(**padded)
    assert torch.allclose(a[0], b[0], atol=1e-5)
    assert backbone.feature_dim == 32
    assert backbone.encoder.pooler is None  # unused pooler dropped


def test_text_backbone_groups_and_pooling_options(tiny_bert):
    backbone = create_backbone("text", str(tiny_bert), pooling="cls")
    assert [g.name for g in backbone.layer_groups()] == ["encoder.embeddings", "encoder.encoder.layer.0", "encoder.encoder.layer.1"]
    pooled = create_backbone("text", str(tiny_bert), pooling="pooler")
    assert pooled.layer_groups()[-1].name == "encoder.final"
    with pytest.raises(HFTransferError, match="unknown pooling"):
        create_backbone("text", str(tiny_bert), pooling="max")


def test_heads_and_losses():
    mlp = MLPHead(16, 3, hidden_sizes=[8, 4], dropout=0.0)
    assert mlp(torch.randn(5, 16)).shape == (5, 3)
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    single = classification_loss(logits, torch.tensor([0, 1]), multi_label=False)
    assert single == pytest.approx(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).item())
    smoothed = classification_loss(logits, torch.tensor([0, 1]), multi_label=False, label_smoothing=0.2)
    assert smoothed > single
    multi = classification_loss(logits, torch.tensor([[1.0, 1.0], [0.0, 1.0]]), multi_label=True)
    assert multi == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([[1.0, 1.0], [0.0, 1.0]])).item())


@pytest.mark.parametrize("head", ["linear", "mlp", "custom"])
def test_save_and_load_round_trip(tmp_path, tiny_bert, head):
    torch.manual_seed(0)
    head_arg = ScaledHead(32, 3) if head == "custom" else head
    model = create_transfer_model("text", str(tiny_bert), LABELS, head=head_arg, head_hidden_sizes=(16,)).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = TransferModel.from_pretrained(tmp_path / "m")
    batch = model.backbone.tokenizer(["good film", "a very dull plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, loaded(**batch).logits, atol=1e-6)
    assert loaded.id2label == LABELS
    assert type(loaded.head) is type(model.head)


def test_image_round_trip_and_labels(tmp_path):
    model = tiny_image_transfer_model({0: "x", 1: "y"}, multi_label=True).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = TransferModel.from_pretrained(tmp_path / "m")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=x).logits, loaded(pixel_values=x).logits, atol=1e-6)
    assert loaded.multi_label
    assert loaded.label2id == {"x": 0, "y": 1}


@pytest.mark.integration
def test_bundled_efficientnet_loads_strictly_and_matches_every_key():
    import timm

    state = bundled_timm_state_dict("tf_efficientnet_lite0")
    reference = timm.create_model("tf_efficientnet_lite0").state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.items()}
    with pytest.raises(KeyError):  # a checkpoint of another layout cannot slip through the remap
        remap_lukemelas_efficientnet({"_blocks.0._weird.weight": torch.zeros(1), "_blocks.0._project_conv.weight": torch.zeros(4, 1, 1, 1)})


@pytest.mark.integration
def test_bundled_efficientnet_is_really_imagenet_pretrained():
    """Zero-shot: the ImageNet 'ant' (310) vs 'bee' (309) logits separate the bundled val photos."""
    import timm
    from PIL import Image

    net = timm.create_model("tf_efficientnet_lite0")
    net.load_state_dict(bundled_timm_state_dict("tf_efficientnet_lite0"))
    net.eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=net))
    correct = total = 0
    for label, folder in ((310, "ants"), (309, "bees")):
        files = sorted((BUNDLED_IMAGES / "val" / folder).glob("*.jpg"))[:12]
        x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
        with torch.no_grad():
            logits = net(x)[:, [310, 309]]
        predicted = torch.where(logits.argmax(1) == 0, 310, 309)
        correct += (predicted == label).sum().item()
        total += len(files)
    assert correct / total >= 0.9


@pytest.mark.integration
def test_bundled_minilm_is_really_pretrained():
    """Sentence embeddings from the bundled encoder put paraphrases closer than unrelated sentences."""
    backbone = create_backbone("text", "all-MiniLM-L6-v2", pooling="mean").eval()
    texts = ["a wonderful, moving film", "a beautiful and touching movie", "the stock market fell sharply today"]
    with torch.no_grad():
        e = torch.nn.functional.normalize(backbone(**backbone.tokenizer(texts, padding=True, return_tensors="pt")), dim=-1)
    assert (e[0] @ e[1]) > (e[0] @ e[2]) + 0.3
    assert backbone.feature_dim == 384
    assert len(backbone.layer_groups()) == 7
