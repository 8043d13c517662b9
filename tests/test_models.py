"""Contract tests for the model registry ``common.models``.

Every model must give (N, num_classes) logits on both CIFAR (3x32x32) and
Fashion-MNIST (1x28x28) inputs and expose the features it names in
``feature_layers``; the rest of the system (teacher server, distillation
losses) relies on exactly that.  CPU only, batch 2, eval mode.
"""
from __future__ import annotations

import pytest
import torch
import torchvision

from common.features import forward_with_features
from common.models import build_model, list_models

ZOO = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
       "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
       "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "MobileNetV2", "ShuffleV1", "ShuffleV2",
       "ResNet50"]

# Literature figure (millions, 100 classes; CRD / mdistiller tables) and, in the
# comment, the exact count these implementations give.
LITERATURE_PARAMS_M = {
    "resnet56": 0.86,     # 861,620
    "resnet110": 1.7,     # 1,736,564
    "resnet8x4": 1.2,     # 1,233,540
    "resnet32x4": 7.4,    # 7,433,860
    "wrn_16_2": 0.7,      # 703,284
    "wrn_40_2": 2.2,      # 2,255,156
    "vgg8": 3.9,          # 3,965,028
    "vgg13": 9.4,         # 9,462,180
    "MobileNetV2": 0.8,   # 812,836 (width 0.5)
    "ShuffleV1": 0.95,    # 949,258
    "ShuffleV2": 1.3,     # 1,355,528
    "ResNet50": 23.7,     # 23,705,252
}


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Batch-2 forwards are hundreds of tiny ops: intra-op threads only add
    synchronisation, and on a busy 2-core box they made this file ~7x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def run_with_features(model, x):
    model.eval()
    with torch.no_grad():
        return forward_with_features(model, x, model.feature_layers)


def test_registry_lists_the_zoo_and_torchvision():
    names = list_models()
    assert {n for n in names if not n.startswith(("torchvision.", "timm."))} == set(ZOO)
    assert {f"torchvision.{n}" for n in torchvision.models.list_models(module=torchvision.models)} \
        <= set(names)


@pytest.mark.parametrize("in_channels,size,num_classes", [(3, 32, 100), (1, 28, 10)],
                         ids=["cifar100", "fashion_mnist"])
@pytest.mark.parametrize("arch", ZOO)
def test_zoo_model_contract(arch, in_channels, size, num_classes):
    model = build_model(arch, num_classes, in_channels)
    logits, feats = run_with_features(model, torch.randn(2, in_channels, size, size))

    assert type(logits) is torch.Tensor and logits.shape == (2, num_classes)
    assert list(feats) == list(model.feature_layers)
    assert {"stem", "stage1", "stage2", "stage3", "pool"} <= set(feats)
    assert all(f.shape[0] == 2 for f in feats.values())
    assert feats["pool"].ndim == 2
    # "pool" is the embedding the classifier reads, not merely some 2-D tensor.
    torch.testing.assert_close(model.fc(feats["pool"]), logits)


@pytest.mark.parametrize("arch,expected_m", LITERATURE_PARAMS_M.items())
def test_parameter_counts_match_literature(arch, expected_m):
    count = sum(p.numel() for p in build_model(arch, 100).parameters())
    assert abs(count / 1e6 - expected_m) <= 0.10 * expected_m, f"{arch}: {count:,} parameters"


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("arch", ["torchvision.resnet18", "torchvision.mobilenet_v3_small"])
def test_torchvision_models(arch, in_channels):
    model = build_model(arch, 10, in_channels)
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == in_channels

    logits, feats = run_with_features(model, torch.randn(2, in_channels, 64, 64))
    assert type(logits) is torch.Tensor and logits.shape == (2, 10)
    assert feats and list(feats) == list(model.feature_layers)
    assert all(f.shape[0] == 2 for f in feats.values())


def test_torchvision_features_skip_values_overwritten_in_place():
    # torchvision ResNets run relu(inplace=True) right after bn1: a "bn1" hook
    # would silently return the post-ReLU tensor, so bn1 must not be offered.
    layers = build_model("torchvision.resnet18", 10).feature_layers
    assert "bn1" not in layers and {"relu", "layer4", "avgpool"} <= set(layers)
    assert "fc" not in layers


def test_unknown_name_suggests_close_match():
    with pytest.raises(ValueError, match="resnet32x4") as info:
        build_model("resnet32x5", 10)
    message = str(info.value)
    assert "\n" not in message and "list_models()" in message
    with pytest.raises(ValueError, match="torchvision.resnet18"):
        build_model("torchvision.resnet19", 10)


# --- timm -------------------------------------------------------------------------------------------

# One small member of each family tried (ResNet, MobileNet, EfficientNet, ViT, ConvNeXt), at 32x32.
TIMM_FAMILIES = ["timm.resnet10t", "timm.mobilenetv3_small_050", "timm.efficientnet_lite0",
                 "timm.vit_tiny_patch16_224", "timm.convnext_atto"]


def _timm_twin(model, arch, size):
    """The same network straight from timm (its own forward), holding the same weights."""
    import timm

    name = arch.removeprefix("timm.")
    options = {"img_size": size} if timm.models.get_pretrained_cfg(name).fixed_input_size else {}
    twin = timm.create_model(name, pretrained=False, num_classes=10, **options).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def test_registry_lists_every_timm_name():
    import timm

    names = list_models()
    assert {f"timm.{n}" for n in timm.list_models()} <= set(names)
    assert names.index("resnet8") < names.index("torchvision.resnet18") < names.index("timm.resnet10t")


@pytest.mark.parametrize("arch", TIMM_FAMILIES)
def test_timm_models_answer_timms_logits_and_name_timms_features(arch):
    from common.flops import forward_flops_per_image

    model = build_model(arch, 10, 3, image_size=(32, 32)).eval()
    twin = _timm_twin(model, arch, 32)
    x = torch.randn(2, 3, 32, 32)
    logits, feats = run_with_features(model, x)
    with torch.no_grad():
        final, maps = twin.forward_intermediates(x)
        torch.testing.assert_close(logits, twin(x))
        torch.testing.assert_close(feats["pool"], twin.forward_head(final, pre_logits=True))
    assert list(feats) == [f"stage{i}" for i in range(len(twin.feature_info))] + ["pool"]
    for i, expected in enumerate(maps):  # timm's own N x C x H x W maps, a ViT's tokens included
        assert feats[f"stage{i}"].ndim == 4
        torch.testing.assert_close(feats[f"stage{i}"], expected)
    assert list(model.state_dict()) == list(twin.state_dict())  # timm's checkpoints load by name
    assert forward_flops_per_image(model, (3, 32, 32)) == forward_flops_per_image(twin, (3, 32, 32)) > 0


def test_timm_models_take_other_channel_counts_and_copy_with_their_taps():
    import copy

    model = build_model("timm.resnet10t", 10, 1)
    assert model.conv1[0].in_channels == 1
    twin = copy.deepcopy(model)  # (the backward FLOP count measures a copy)
    x = torch.randn(2, 1, 32, 32)
    logits, feats = run_with_features(twin, x)
    assert logits.shape == (2, 10) and feats["stage4"].shape == (2, 512, 1, 1)


def test_a_timm_pool_is_what_the_classifier_reads_and_the_logits_stay_timms():
    """VOLO's head adds an auxiliary head's answer to the classifier's: ``pool`` is still the classifier's input."""
    model = build_model("timm.volo_d1_224", 10, image_size=(32, 32)).eval()
    twin = _timm_twin(model, "timm.volo_d1_224", 32)
    x = torch.randn(2, 3, 32, 32)
    logits, feats = run_with_features(model, x)
    with torch.no_grad():
        torch.testing.assert_close(logits, twin(x))
        assert not torch.allclose(model.head(feats["pool"]), logits)
        torch.testing.assert_close(feats["pool"], twin.forward_head(twin.forward_features(x), pre_logits=True))


def test_a_timm_model_without_one_classifier_offers_no_pool():
    model = build_model("timm.deit_tiny_distilled_patch16_224", 10, image_size=(32, 32)).eval()
    logits, feats = run_with_features(model, torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and "pool" not in feats and feats["stage11"].shape == (2, 192, 2, 2)


def test_a_teacher_that_cannot_take_the_images_is_one_line():
    from common.teacher_model import load_teacher

    with pytest.raises(ValueError, match="timm.vit_tiny_patch16_224 cannot take 3x8x8 images: ") as info:
        load_teacher(arch="timm.vit_tiny_patch16_224", input_shape=(3, 8, 8))  # 16x16 patches
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="timm.resnet10t"):
        build_model("timm.resnet10u", 10)
