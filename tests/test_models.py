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
    assert {n for n in names if not n.startswith("torchvision.")} == set(ZOO)
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
