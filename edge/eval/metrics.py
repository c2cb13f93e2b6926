"""Image AUROC, pixel AUROC and PRO (per-region overlap, MVTec AD's segmentation metric)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

PRO_MAX_FPR = 0.3


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of image scores against 0/1 labels (nan when only one class is present)."""
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores)))


def _flat(images: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(image).ravel() for image in images])


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    """AUROC over every pixel of every image (images may differ in size)."""
    return image_auroc(_flat(masks).astype(bool), _flat(maps))


def _region_weights(masks: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    """Each defect pixel weighs 1 / (its region's area × number of regions); normal pixels 0."""
    per_image = []
    regions = 0
    for mask in masks:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        per_image.append((labels, stats[1:, cv2.CC_STAT_AREA].astype(np.float64)))
        regions += count - 1
    weights = [
        np.concatenate([[0.0], 1.0 / (areas * max(regions, 1))])[labels].ravel()
        for labels, areas in per_image
    ]
    return np.concatenate(weights), regions


def pro_score(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], max_fpr: float = PRO_MAX_FPR) -> float:
    """Area under the PRO curve up to `max_fpr`, divided by `max_fpr` (so in [0, 1]).

    Exact at every distinct threshold: pixels are sorted once by score; the false-positive rate is
    the running count of normal pixels, the mean region overlap the running sum of region weights.
    Regions are 8-connected components of each ground-truth mask.
    """
    weights, regions = _region_weights(masks)
    normal = ~_flat(masks).astype(bool)
    if regions == 0 or not normal.any():
        return float("nan")
    flat_maps = _flat(maps)
    order = np.argsort(-flat_maps, kind="stable")
    scores = flat_maps[order]
    fpr = np.cumsum(normal[order]) / normal.sum()
    overlap = np.cumsum(weights[order])
    last_of_tie = np.append(scores[1:] != scores[:-1], True)
    fpr = np.concatenate([[0.0], fpr[last_of_tie]])
    overlap = np.concatenate([[0.0], overlap[last_of_tie]])
    inside = fpr <= max_fpr
    fpr_cut, overlap_cut = fpr[inside], overlap[inside]
    if fpr_cut[-1] < max_fpr:
        step = np.searchsorted(fpr, max_fpr)
        x0, x1, y0, y1 = fpr[step - 1], fpr[step], overlap[step - 1], overlap[step]
        y = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        fpr_cut = np.append(fpr_cut, max_fpr)
        overlap_cut = np.append(overlap_cut, y)
    return float(np.trapezoid(overlap_cut, fpr_cut) / max_fpr)
