"""From patch distances to an image score (paper eq. 7) and an anomaly map."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from edge.engine.search import NearestNeighbourIndex

MAP_SIGMA = 4.0
GAUSSIAN_TRUNCATE = 4.0  # kernel radius in sigmas, as scipy.ndimage's default


def reweighting_factor(
    patch: torch.Tensor, nearest_row: int, bank: torch.Tensor, index: NearestNeighbourIndex, neighbours: int
) -> float:
    """Paper eq. 7: 1 - softmax over the patch's distances to m* and m*'s nearest bank neighbours.

    An anomalous patch whose nearest bank feature m* sits in a sparse part of the bank (far from
    its own neighbours) keeps its score; one near a dense cluster is scaled down. The softmax is
    computed by torch (max-shifted), so large distances cannot overflow.
    """
    _, rows = index.search(bank[nearest_row : nearest_row + 1], k=neighbours)
    others = [int(r) for r in rows[0].tolist() if int(r) != nearest_row]
    support = torch.tensor([nearest_row, *others[: neighbours - 1]], dtype=torch.long)
    distances = torch.linalg.vector_norm(bank[support] - patch.to(bank.device)[None, :], dim=1)
    return float(1.0 - torch.softmax(distances.double(), dim=0)[0])


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
