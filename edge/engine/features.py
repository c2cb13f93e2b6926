"""Locally aware patch features (the paper's section 3.1), as a torch module of pure compute.

Each level's 3x3 neighbourhood (stride 1, zero-padded at the border) is flattened to a C·9 vector
and adaptively average-pooled to the level's width (declared by the backbone), as the reference
implementation does. For EfficientNet-Lite0 the stride-8 level keeps its neighbourhood whole (360
values: the fine spatial detail that pixel-level accuracy needs) and the stride-16 level averages
each channel over it (112 values: context). The stride-16 level is bilinearly resized onto the
stride-8 grid, each level is scaled to equal per-value variance (fitted on the training patches),
and the levels are concatenated. docs/engine.md gives the figures behind these choices.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from edge.engine.backbones import Backbone

NEIGHBOURHOOD = 3
AREA = NEIGHBOURHOOD * NEIGHBOURHOOD


class PatchEmbedder(nn.Module):
    """uint8 NHWC images → (N, h, w, D) float32 patch embeddings on the stride-8 grid."""

    def __init__(self, backbone: Backbone, level_scales: torch.Tensor | None = None) -> None:
        super().__init__()
        self.trunk = backbone.trunk.to(memory_format=torch.channels_last)
        spec = backbone.spec
        self.channels = spec.level_channels
        self.widths = spec.level_widths
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0)
        scales = torch.ones(len(self.widths)) if level_scales is None else level_scales.float()
        self.register_buffer("level_scales", scales)

    @property
    def dim(self) -> int:
        return sum(self.widths)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC → normalised float NCHW in channels_last layout (the fast one for CPU convs)."""
        x = images.permute(0, 3, 1, 2).float()
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.trunk(x)

    @staticmethod
    def neighbourhoods(level: torch.Tensor, width: int) -> torch.Tensor:
        """Each position's zero-padded 3x3xC neighbourhood, flattened channel-major and adaptively
        average-pooled to `width` values (C·9: kept whole; C: each channel's 3x3 mean)."""
        n, channels, h, w = level.shape
        if width == channels:  # the same numbers as pooling the flattened vector, computed directly
            return F.avg_pool2d(level, NEIGHBOURHOOD, stride=1, padding=NEIGHBOURHOOD // 2)
        whole = F.unfold(level, NEIGHBOURHOOD, padding=NEIGHBOURHOOD // 2)  # (n, C·9, h·w)
        if width != channels * AREA:
            whole = F.adaptive_avg_pool1d(whole.transpose(1, 2), width).transpose(1, 2)
        return whole.reshape(n, width, h, w)

    def aggregate(self, levels: list[torch.Tensor], scaled: bool = True) -> torch.Tensor:
        """Aggregate each level's neighbourhoods, resize onto the first level's grid, concatenate."""
        grid = levels[0].shape[-2:]
        parts = []
        for index, (level, width) in enumerate(zip(levels, self.widths, strict=True)):
            part = self.neighbourhoods(level, width)
            if part.shape[-2:] != grid:
                part = F.interpolate(part, size=grid, mode="bilinear", align_corners=False)
            parts.append(part * self.level_scales[index] if scaled else part)
        return torch.cat(parts, dim=1).permute(0, 2, 3, 1).contiguous()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.aggregate(self.levels(self.normalise(images)))


def equal_variance_scales(chunks: list[torch.Tensor], widths: tuple[int, ...]) -> torch.Tensor:
    """Per-level scales that give every embedding value the same average variance over the training
    patches, so each level weighs in proportion to its width (as when the reference implementation
    pools levels to chosen widths), whatever the backbone's activation magnitudes."""
    count = sum(c.shape[0] for c in chunks)
    total = sum(c.double().sum(0) for c in chunks)
    total_sq = sum((c.double() ** 2).sum(0) for c in chunks)
    variance = (total_sq / count - (total / count) ** 2).clamp(min=0)
    bounds = torch.cumsum(torch.tensor((0, *widths)), 0).tolist()
    per_level = torch.stack([variance[a:b].mean() for a, b in pairwise(bounds)])
    per_level = per_level.clamp(min=1e-12)
    return (per_level.mean() / per_level).sqrt().float()
