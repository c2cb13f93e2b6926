"""Which collected frames may enter a bank: no near-duplicates, no blurred or badly exposed frames.

A stopped line delivers the same part again and again; a bank (and, worse, a threshold) built on
those copies has seen one part, not many. Near-duplicates are judged online against every frame
already accepted; blur and exposure are judged against the median of the whole collection, since
what counts as sharp or bright depends on the scene.

Measured on MVTec AD train/good (bottle 209, screw 320 frames): closest distinct pairs differ by
1.07 and 1.76 grey levels (mean absolute difference of 32x32 thumbnails) while copies with sensor
noise of sigma 3 differ by 0.81 and 0.54; the least sharp good frame has 0.67 and 0.79 of the
median sharpness (variance of the Laplacian), a Gaussian blur of sigma 1 leaves 0.13 and 0.14;
mean brightness spans 133-140 and 170-200.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

THUMBNAIL_SIDE = 32
DUPLICATE_GREY_LEVELS = 1.0  # thumbnails closer than this on average: the same part again
BLUR_RATIO = 0.4  # sharpness below this share of the collection's median: blurred
EXPOSURE_SHIFT = 64.0  # mean brightness this far (grey levels) from the collection's median
EXPOSURE_LIMITS = (8.0, 247.0)  # mean brightness outside these: no usable image at all
MIN_FOR_RELATIVE = 5  # blur and exposure need this many frames to compare against


def grey(image: np.ndarray) -> np.ndarray:
    image = image if image.dtype == np.uint8 else (image >> 8).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


@dataclass
class FrameStats:
    thumbnail: np.ndarray
    sharpness: float
    brightness: float

    @classmethod
    def of(cls, image: np.ndarray) -> FrameStats:
        mono = grey(image)
        thumbnail = cv2.resize(mono, (THUMBNAIL_SIDE, THUMBNAIL_SIDE), interpolation=cv2.INTER_AREA)
        sharpness = float(cv2.Laplacian(mono, cv2.CV_64F).var())
        return cls(thumbnail.astype(np.float32), sharpness, float(mono.mean()))


@dataclass
class QualityReport:
    accepted: list[int] = field(default_factory=list)  # indices into the collection, in order
    rejected: Counter = field(default_factory=Counter)  # reason → count
    reasons: dict[int, str] = field(default_factory=dict)  # index of a rejected frame → reason
    relative_checks: bool = True  # False when too few frames to judge blur and exposure

    def to_dict(self) -> dict:
        return {
            "accepted": len(self.accepted),
            "rejected": dict(self.rejected),
            "blur_and_exposure_checked": self.relative_checks,
        }


class DuplicateFilter:
    """Online: is this frame a near-duplicate of one already accepted?"""

    def __init__(self) -> None:
        self.thumbnails: list[np.ndarray] = []

    def seen(self, stats: FrameStats) -> bool:
        if self.thumbnails:
            distances = np.abs(np.stack(self.thumbnails) - stats.thumbnail).mean(axis=(1, 2))
            if float(distances.min()) < DUPLICATE_GREY_LEVELS:
                return True
        self.thumbnails.append(stats.thumbnail)
        return False


def screen(stats: list[FrameStats], reference: list[FrameStats] = ()) -> QualityReport:
    """Accept or reject each frame of `stats`. `reference`: frames accepted before (--add), which
    count towards the medians and which a new frame must not duplicate."""
    everything = [*reference, *stats]
    report = QualityReport(relative_checks=len(everything) >= MIN_FOR_RELATIVE)
    sharpness = float(np.median([s.sharpness for s in everything])) if everything else 0.0
    brightness = float(np.median([s.brightness for s in everything])) if everything else 0.0
    duplicates = DuplicateFilter()
    duplicates.thumbnails.extend(s.thumbnail for s in reference)
    for index, frame in enumerate(stats):
        reason = None
        if frame.brightness < EXPOSURE_LIMITS[0]:
            reason = "under_exposed"
        elif frame.brightness > EXPOSURE_LIMITS[1]:
            reason = "over_exposed"
        elif report.relative_checks and frame.brightness < brightness - EXPOSURE_SHIFT:
            reason = "under_exposed"
        elif report.relative_checks and frame.brightness > brightness + EXPOSURE_SHIFT:
            reason = "over_exposed"
        elif report.relative_checks and frame.sharpness < BLUR_RATIO * sharpness:
            reason = "blurred"
        elif duplicates.seen(frame):
            reason = "near_duplicate"
        if reason is None:
            report.accepted.append(index)
        else:
            report.rejected[reason] += 1
            report.reasons[index] = reason
    return report
