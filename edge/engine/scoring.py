"""From patch distances to an image score (paper eq. 7) and an anomaly map."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from edge.engine.search import NearestNeighbourIndex

MAP_SIGMA = 4.0
GAUSSIAN_TRUNCATE = 4.0  # kernel radius in sigmas, as scipy.ndimage's default


def neighbour_table(bank: torch.Tensor, index: NearestNeighbourIndex, neighbours: int) -> torch.Tensor:
    """(rows, neighbours) bank rows: each row itself, then its `neighbours` - 1 nearest other rows
    (as the search finds them): the support of eq. 7, built once per bank."""
    _, rows = index.search(bank, k=neighbours)
    rows = rows.to(bank.device)
    own = torch.arange(bank.shape[0], device=bank.device)[:, None]
    order = torch.sort((rows == own).to(torch.int8), dim=1, stable=True).indices  # others first, in order
    return torch.cat([own, rows.gather(1, order)[:, : neighbours - 1]], 1)


def reweighting_factors(patches: torch.Tensor, support: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Paper eq. 7 for a batch: 1 - softmax over each patch's distances to its nearest bank feature
    m* (support[:, 0]) and m*'s nearest bank neighbours (the rest of its support row).

    An anomalous patch whose m* sits in a sparse part of the bank (far from its own neighbours)
    keeps its score; one near a dense cluster is scaled down. The softmax is max-shifted by torch
    and computed in float64, so large distances cannot overflow.
    """
    distances = torch.linalg.vector_norm(bank[support] - patches[:, None, :], dim=2)
    return 1.0 - torch.softmax(distances.double(), dim=1)[:, 0]


def anomaly_map(patch_scores: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """Patch-grid scores → bilinear upsampling to the input size → Gaussian smoothing (σ = 4)."""
    upsampled = cv2.resize(
        patch_scores.astype(np.float32), (input_hw[1], input_hw[0]), interpolation=cv2.INTER_LINEAR
    )
    radius = int(GAUSSIAN_TRUNCATE * MAP_SIGMA + 0.5)
    return cv2.GaussianBlur(
        upsampled,
        (2 * radius + 1, 2 * radius + 1),
        sigmaX=MAP_SIGMA,
        sigmaY=MAP_SIGMA,
        borderType=cv2.BORDER_REFLECT,
    )


def patches_reaching(judged: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """(grid_h, grid_w) bool: the patches whose distance can move the map (`anomaly_map`) at a
    judged input pixel: the σ-smoothing reaches its kernel's radius, and the bilinear upsampling
    one grid cell on each side. Every other patch may go unsearched: the judged pixels' map values
    are the same without it."""
    radius = int(GAUSSIAN_TRUNCATE * MAP_SIGMA + 0.5)
    reach = cv2.dilate(judged.astype(np.uint8), np.ones((2 * radius + 1, 2 * radius + 1), np.uint8))
    height, width = judged.shape
    # the first input row (column) of each grid cell, input row y falling in cell y * grid_h // height;
    # the maximum over each cell's rows, then its columns, says whether any reached pixel is in it
    first_rows = -(-np.arange(grid_hw[0]) * height // grid_hw[0])
    first_columns = -(-np.arange(grid_hw[1]) * width // grid_hw[1])
    cells = np.maximum.reduceat(np.maximum.reduceat(reach, first_rows, axis=0), first_columns, axis=1)
    return cv2.dilate(cells, np.ones((3, 3), np.uint8)).astype(bool)


def map_peak(patch_scores: np.ndarray, stride: int) -> float:
    """The image score `map_max`: the peak of the map made at the patch grid's own resolution
    (grid x stride), so it depends on the patch distances alone, not on the input's exact size (a
    bank's calibration scores held-out embeddings without their frames). One patch's distance is
    shared with its neighbours by the bilinear upsampling and σ = 4 smoothing, so the peak needs a
    defect to span more than one patch's worth of evidence: steadier across coreset seeds than
    the single largest patch distance (docs/engine.md)."""
    height, width = patch_scores.shape
    return float(anomaly_map(patch_scores, (height * stride, width * stride)).max())
