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

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from edge.engine.backbones import Backbone

NEIGHBOURHOOD = 3
AREA = NEIGHBOURHOOD * NEIGHBOURHOOD


def pooling_matrix(inputs: int, outputs: int) -> torch.Tensor:
    """(outputs, inputs): the linear map of F.adaptive_avg_pool1d from `inputs` to `outputs` values."""
    matrix = torch.zeros(outputs, inputs, dtype=torch.float64)
    for row in range(outputs):
        start, end = (row * inputs) // outputs, -((-(row + 1) * inputs) // outputs)
        matrix[row, start:end] = 1.0 / (end - start)
    return matrix


class LocalAggregation(nn.Module):
    """A level's 3x3 neighbourhoods pooled to `width` values, as one fixed-weight grouped (for
    Lite0 and WideResNet50: depthwise) convolution: the same numbers as unfolding the zero-padded
    neighbourhoods and adaptively average-pooling them (`unfold_neighbourhoods`), without
    materialising C·9 values per position, and exportable to ONNX and TensorRT as a plain conv."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        dense = pooling_matrix(channels * AREA, width).reshape(width, channels, NEIGHBOURHOOD, NEIGHBOURHOOD)
        self.groups = _groups(dense)
        per_group, outs = channels // self.groups, width // self.groups
        weight = torch.stack(
            [dense[j, (j // outs) * per_group : (j // outs + 1) * per_group] for j in range(width)]
        )
        self.weight: torch.Tensor
        self.register_buffer("weight", weight.float())

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        return F.conv2d(level, self.weight, padding=NEIGHBOURHOOD // 2, groups=self.groups)


def _groups(dense: torch.Tensor) -> int:
    """The most groups a conv with these (width, C, 3, 3) weights splits into: each output's
    non-zero inputs within its own group's channels."""
    width, channels = dense.shape[:2]
    used = dense.abs().sum((2, 3)) > 0  # (width, C)
    common = math.gcd(width, channels)
    for groups in (g for g in range(common, 0, -1) if common % g == 0):
        per_group, outs = channels // groups, width // groups
        if all(
            used[j].nonzero().min() >= (j // outs) * per_group
            and used[j].nonzero().max() < (j // outs + 1) * per_group
            for j in range(width)
        ):
            return groups
    return 1


def unfold_neighbourhoods(level: torch.Tensor, width: int) -> torch.Tensor:
    """The definition (the reference implementation's): each position's zero-padded 3x3xC
    neighbourhood, flattened channel-major, adaptively average-pooled to `width` values."""
    n, channels, h, w = level.shape
    whole = F.unfold(level, NEIGHBOURHOOD, padding=NEIGHBOURHOOD // 2)  # (n, C·9, h·w)
    if width != channels * AREA:
        whole = F.adaptive_avg_pool1d(whole.transpose(1, 2), width).transpose(1, 2)
    return whole.reshape(n, width, h, w)


class PatchEmbedder(nn.Module):
    """uint8 NHWC images → (N, h, w, D) float32 unscaled patch embeddings on the stride-8 grid;
    the whole graph from pixels to embeddings, so it exports to ONNX as one piece."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.trunk = backbone.trunk.to(memory_format=torch.channels_last)
        spec = backbone.spec
        self.channels = spec.level_channels
        self.widths = spec.level_widths
        self.ratios = tuple(stride // spec.level_strides[0] for stride in spec.level_strides)
        self.aggregations = nn.ModuleList(
            LocalAggregation(c, w) for c, w in zip(self.channels, self.widths, strict=True)
        )
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0)

    @property
    def dim(self) -> int:
        return sum(self.widths)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC → normalised float NCHW in channels_last layout (the fast one for CPU convs)."""
        x = images.permute(0, 3, 1, 2).float()
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def aggregate(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Aggregate each level's neighbourhoods, resize onto the first level's grid, concatenate.

        Where a level's grid is exactly its stride ratio times smaller (inputs whose sides are
        multiples of the deepest stride), it is resized by that constant factor rather than to the
        first level's size: the same numbers, and an exported graph then holds no input size."""
        grid = tuple(levels[0].shape[-2:])
        parts = []
        for level, aggregation, ratio in zip(levels, self.aggregations, self.ratios, strict=True):
            part = aggregation(level)
            if tuple(part.shape[-2:]) != grid:
                if tuple(s * ratio for s in part.shape[-2:]) == grid:
                    part = F.interpolate(
                        part, scale_factor=float(ratio), mode="bilinear", align_corners=False
                    )
                else:
                    part = F.interpolate(part, size=grid, mode="bilinear", align_corners=False)
            parts.append(part)
        return torch.cat(parts, dim=1).permute(0, 2, 3, 1).contiguous()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.aggregate(self.trunk(self.normalise(images)))


def column_scales(level_scales: torch.Tensor, widths: tuple[int, ...]) -> torch.Tensor:
    """Per-level scales repeated over each level's columns (multiplied onto unscaled embeddings)."""
    return torch.repeat_interleave(level_scales.float(), torch.tensor(widths))


def scales_from_sums(
    count: int, total: torch.Tensor, total_sq: torch.Tensor, widths: tuple[int, ...]
) -> torch.Tensor:
    """Per-level scales that give every embedding value the same average variance over the training
    patches, so each level weighs in proportion to its width (as when the reference implementation
    pools levels to chosen widths), whatever the backbone's activation magnitudes. From the column
    sums and sums of squares (float64) of `count` rows: a fit keeps these, not the rows."""
    variance = (total_sq / count - (total / count) ** 2).clamp(min=0)
    bounds = torch.cumsum(torch.tensor((0, *widths)), 0).tolist()
    per_level = torch.stack([variance[a:b].mean() for a, b in pairwise(bounds)])
    per_level = per_level.clamp(min=1e-12)
    return (per_level.mean() / per_level).sqrt().float()
