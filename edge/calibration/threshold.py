"""A threshold from good frames only: score frames the bank was not fitted on, then place the
threshold where the target share of good frames would be rejected, and say how sure that is.

Held-out scores: k-fold (each frame scored by a bank fitted on the other folds), leave-one-out in
the low-shot regime (2-10 frames), and for a single frame, shifted/relit/noisy copies of it
scored against its own bank. Banks fitted on fewer frames score good frames a little higher, so
the held-out scores, and the threshold, err towards fewer false rejects.

The threshold is the larger of the empirical (1 - target) quantile and a log-normal tail fitted
to the held-out scores (which is what speaks when there are too few frames for the quantile),
raised by the stated margin. The expected false-reject rate is the share of held-out scores above
it, with a one-sided 95 % Clopper-Pearson upper bound: with n frames and none above, that bound
is about 3/n, so a 1 % target needs about 300 frames to be shown.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch
from scipy.stats import beta, norm

from edge.engine.config import EngineConfig
from edge.engine.embedding import embed_images
from edge.engine.extractors import Extractor
from edge.engine.model import PatchCore

LOW_SHOT = 10  # up to this many frames: leave-one-out, and a low-shot warning
SCORE_GROUP = 64  # held-out frames' embeddings read back at a time
CONFIDENCE = 0.95


@dataclass
class ThresholdChoice:
    threshold: float
    target_frr: float
    margin: float
    method: str
    held_out: int
    above: int  # held-out scores above the threshold
    expected_frr: float
    frr_upper_95: float
    quantile_threshold: float
    tail_threshold: float
    frames_needed: int  # held-out frames for the target to be shown at 95 % confidence
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def upper_bound(above: int, total: int) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen `above` times in `total`."""
    return 1.0 if above >= total else float(beta.ppf(CONFIDENCE, above + 1, total - above))


def choose_threshold(scores: np.ndarray, target_frr: float, margin: float, method: str) -> ThresholdChoice:
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    count = len(scores)
    quantile = float(np.quantile(scores, 1.0 - target_frr, method="higher"))
    logs = np.log(np.maximum(scores, 1e-12))
    spread = float(logs.std(ddof=1)) if count > 1 else 0.0
    tail = float(math.exp(logs.mean() + norm.ppf(1.0 - target_frr) * spread))
    threshold = max(quantile, tail) * (1.0 + margin)
    above = int((scores > threshold).sum())
    needed = math.ceil(math.log(1 - CONFIDENCE) / math.log(1 - target_frr))
    choice = ThresholdChoice(
        threshold=threshold,
        target_frr=target_frr,
        margin=margin,
        method=method,
        held_out=count,
        above=above,
        expected_frr=above / count,
        frr_upper_95=upper_bound(above, count),
        quantile_threshold=quantile,
        tail_threshold=tail,
        frames_needed=needed,
    )
    if count < needed:
        choice.warnings.append(
            f"{count} held-out good frames cannot show a {target_frr:.1%} false-reject rate: the rate "
            f"may be up to {choice.frr_upper_95:.1%} (95 % bound); collect about {needed} frames"
        )
    if count <= LOW_SHOT:
        choice.warnings.append(
            f"low-shot calibration ({count} frames, {method}): the threshold rests on a fitted tail, "
            "not on observed rejects; expect it to need correcting with --add as the line runs"
        )
    return choice


def _augmented(image: np.ndarray, seed: int, copies: int = 8) -> list[np.ndarray]:
    """Nuisance variants of one good frame: small shifts, a little more or less light, sensor noise."""
    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    variants = []
    for _ in range(copies):
        shift = rng.uniform(-0.02, 0.02, 2) * (width, height)
        matrix = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
        moved = cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
        lit = moved.astype(np.float32) * rng.uniform(0.95, 1.05) + rng.normal(0, 2.0, moved.shape)
        variants.append(np.clip(lit, 0, 255).astype(np.uint8))
    return variants


def folds_for(count: int, folds: int, seed: int) -> list[np.ndarray]:
    """Held-out index sets: leave-one-out up to LOW_SHOT frames, else `folds` shuffled folds."""
    order = np.random.default_rng(seed).permutation(count)
    parts = count if count <= LOW_SHOT else min(folds, count)
    return [np.sort(part) for part in np.array_split(order, parts)]


def held_out_scores(
    extractor: Extractor,
    config: EngineConfig,
    images: Sequence[np.ndarray],
    embeddings: Sequence[torch.Tensor],
    folds: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    patches: Callable[[int, np.ndarray, PatchCore], None] | None = None,
) -> tuple[np.ndarray, str]:
    """One score per frame from a bank that did not see it (or, for one frame, of its variants).

    `embeddings` may read each from disk as asked (an EmbeddingSpool): a fold streams the others'
    into its bank and scores its own SCORE_GROUP at a time, so nothing holds them all.
    `progress` is called with (banks fitted, banks to fit): one bank per fold. `patches` is called
    with each held-out frame's index, its patch distances and the bank that scored them (k-fold
    and leave-one-out; not for a single frame's variants)."""
    if len(images) == 1:
        bank = PatchCore.from_embeddings(
            [embeddings[0].reshape(-1, embeddings[0].shape[-1]).clone()], config, extractor, {}
        )
        variants = embed_images(extractor, config, _augmented(images[0], seed))
        return np.array(bank.image_scores(variants)), "augmented copies of one frame"
    scores = np.zeros(len(images))
    parts = folds_for(len(images), folds, seed)
    for done, held in enumerate(parts, 1):
        kept = np.setdiff1d(np.arange(len(images)), held)
        chunks = (embeddings[i].reshape(-1, embeddings[i].shape[-1]).clone() for i in kept)
        bank = PatchCore.from_embeddings(chunks, config, extractor, {})
        for start in range(0, len(held), SCORE_GROUP):
            group = held[start : start + SCORE_GROUP]
            scored = bank.patch_scores([embeddings[i] for i in group])
            scores[group] = [score for score, _ in scored]
            if patches is not None:
                for index, (_, grid) in zip(group, scored, strict=True):
                    patches(int(index), grid, bank)
        if progress is not None:
            progress(done, len(parts))
    method = "leave-one-out" if len(parts) == len(images) else f"{len(parts)}-fold"
    return scores, method
