"""Accuracy floors on real MVTec AD images (the official PatchCore's figures with the same backbone
on the same files, minus the 0.003 tolerance). Needs EDGE_DATA_ROOT; about a minute on 2 cores."""

import pytest

from edge.engine.config import EngineConfig
from edge.eval.mvtec import load_category
from edge.eval.runner import EvalOptions, evaluate_category

TOLERANCE = 0.003
FLOORS = {  # (category, coreset fraction): (image AUROC, pixel AUROC, PRO)
    ("bottle", 0.01): (1.000, 0.977, 0.932),
    ("screw", 0.01): (0.931, 0.989, 0.948),
    ("bottle", 0.1): (1.000, 0.980, 0.942),
}


@pytest.mark.slow
@pytest.mark.parametrize(("category", "fraction"), list(FLOORS))
def test_accuracy_floors(mvtec_root, category, fraction):
    figures = evaluate_category(
        load_category(mvtec_root, category),
        EvalOptions(EngineConfig(coreset_fraction=fraction), progress=False),
    )
    floors = FLOORS[(category, fraction)]
    measured = (figures["image_auroc"], figures["pixel_auroc"], figures["pro"])
    for name, value, floor in zip(("image AUROC", "pixel AUROC", "PRO"), measured, floors, strict=True):
        assert value >= floor - TOLERANCE, (
            f"{category} {fraction:.0%}: {name} {value:.4f} < {floor} - {TOLERANCE}"
        )
