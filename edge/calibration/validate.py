"""How a calibrated bank does on labelled images (an MVTec-format category folder), at its threshold."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.engine.model import PatchCore
from edge.eval.mvtec import load_category
from edge.imageio import read_image


def validate(
    model: PatchCore, category_dir: Path, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """False-reject rate on test/good and recall on the defective test images, at the bank's threshold."""
    category = load_category(category_dir.parent, category_dir.name)
    threshold = model.threshold
    if threshold is None:
        raise ValueError("the bank has no calibrated threshold to validate")
    rejected: Counter = Counter()
    totals: Counter = Counter()
    scores = []
    for done, sample in enumerate(category.test, 1):
        score = model.score([read_image(sample.path)])[0].score
        scores.append(score)
        totals[sample.defect_type] += 1
        rejected[sample.defect_type] += score > threshold
        if progress is not None:
            progress(done, len(category.test))
    good = totals.pop("good", 0)
    false_rejects = rejected.pop("good", 0)
    defective = sum(totals.values())
    return {
        "category": str(category_dir),
        "threshold": threshold,
        "false_reject_rate": false_rejects / good if good else None,
        "recall": sum(rejected.values()) / defective if defective else None,
        "good_images": good,
        "false_rejects": false_rejects,
        "defective_images": defective,
        "recall_by_defect": {kind: rejected[kind] / totals[kind] for kind in sorted(totals)},
    }
