"""Where the part is: each frame registered against its recipe's reference frame (a turn and a
shift), so that regions drawn on the reference follow a part that moves and turns.

A coarse shift by phase correlation, then OpenCV's ECC (a Euclidean motion) refined from it, on
frames scaled to WORK_SIDE pixels; turns beyond ECC's reach from a straight start are tried from
TURN_STEP steps up to the recipe's largest turn. ECC's correlation coefficient is the confidence:
a frame below the recipe's bound is not registered (and not judged as if it were).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge.errors import EdgeError

WORK_SIDE = 160  # the longer side registration works at: about 1-3 ms per frame here
TURN_STEP = 8.0  # degrees between the starts tried when the straight one does not converge
ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-5)
SMOOTHING = 5  # ECC's Gaussian pre-filter size
TURN_TOLERANCE = 1.0  # degrees a found turn may pass the recipe's largest (the estimate's own error)


class RegistrationError(EdgeError):
    """A frame that cannot be placed against the reference with the confidence asked for."""


@dataclass(frozen=True)
class Motion:
    matrix: np.ndarray  # 2x3: reference frame pixels → this frame's pixels
    confidence: float  # ECC's correlation coefficient (1: the same picture)

    @property
    def turn_deg(self) -> float:
        return math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0]))

    def apply(self, corners: tuple[tuple[int, int], ...]) -> np.ndarray:
        points = np.asarray(corners, np.float64)
        return points @ self.matrix[:, :2].T + self.matrix[:, 2]


class Registrar:
    """Registers frames against one reference frame."""

    def __init__(self, reference: np.ndarray, max_turn_deg: float, min_confidence: float) -> None:
        self.frame_hw = reference.shape[:2]
        self.scale = WORK_SIDE / max(self.frame_hw)
        self.template = self._prepare(reference)
        self.max_turn_deg, self.min_confidence = max_turn_deg, min_confidence
        height, width = self.template.shape
        self.centre = (width / 2, height / 2)
        self.window = cv2.createHanningWindow((width, height), cv2.CV_32F)
        self.everywhere = np.full((height, width), 255, np.uint8)  # ECC's mask: every pixel counts

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        size = (max(1, round(grey.shape[1] * self.scale)), max(1, round(grey.shape[0] * self.scale)))
        return cv2.resize(grey, size, interpolation=cv2.INTER_AREA).astype(np.float32)

    def _starts(self) -> list[float]:
        turns = [0.0]
        step = TURN_STEP
        while step <= self.max_turn_deg + 1e-9:
            turns += [step, -step]
            step += TURN_STEP
        return turns

    def register(self, frame: np.ndarray) -> Motion:
        """The motion of `frame` against the reference; RegistrationError below the bound."""
        if frame.shape[:2] != self.frame_hw:
            raise RegistrationError(
                f"registration: the reference is {self.frame_hw[1]}x{self.frame_hw[0]}, "
                f"this frame {frame.shape[1]}x{frame.shape[0]}"
            )
        moving = self._prepare(frame)
        (dx, dy), _ = cv2.phaseCorrelate(self.template, moving, self.window)
        best: tuple[float, np.ndarray] | None = None
        starts = [(turn, shift) for turn in self._starts() for shift in ((dx, dy), (0.0, 0.0))]
        for turn, shift in starts:  # phase correlation's shift first; it is lost when the turn is large
            start = cv2.getRotationMatrix2D(self.centre, -turn, 1.0).astype(np.float32)
            start[:, 2] += shift
            try:
                score, warp = cv2.findTransformECC(
                    self.template,
                    moving,
                    start,
                    cv2.MOTION_EUCLIDEAN,
                    ECC_CRITERIA,
                    self.everywhere,
                    SMOOTHING,
                )
            except cv2.error:  # did not converge from this start
                continue
            if best is None or score > best[0]:
                best = (float(score), warp)
            if score >= self.min_confidence:
                break
        if best is None or best[0] < self.min_confidence:
            found = "no convergence" if best is None else f"confidence {best[0]:.2f}"
            raise RegistrationError(f"registration: {found}, below the recipe's {self.min_confidence:.2f}")
        matrix = best[1].astype(np.float64)
        matrix[:, 2] /= self.scale  # the rotation part does not depend on the scale
        motion = Motion(matrix, best[0])
        if abs(motion.turn_deg) > self.max_turn_deg + TURN_TOLERANCE:
            raise RegistrationError(
                f"registration: the part is turned {motion.turn_deg:.1f}°, more than the recipe's "
                f"{self.max_turn_deg:g}°"
            )
        return motion
