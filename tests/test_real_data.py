"""Accuracy floors on real MVTec AD images: the official PatchCore's figures with the same backbone
on the same files, minus the 0.003 tolerance. Needs EDGE_DATA_ROOT; about three minutes on 2 cores.

Screw's image AUROC depends on the coreset's random projection and start point far more than the
tolerance (0.915, 0.943 and 0.929 for seeds 0, 1, 2), so it is held to the floor as a mean over
three seeds; every other figure is held at the default seed.
"""

import statistics

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
SEED_MEAN = {("screw", 0.01): "image_auroc"}
SEEDS = (0, 1, 2)
METRICS = ("image_auroc", "pixel_auroc", "pro")


def evaluate(root, category: str, fraction: float, seed: int = 0) -> dict:
    config = EngineConfig(coreset_fraction=fraction, seed=seed)
    return evaluate_category(load_category(root, category), EvalOptions(config, progress=False))


@pytest.mark.slow
@pytest.mark.parametrize(("category", "fraction"), list(FLOORS))
def test_accuracy_floors(mvtec_root, category, fraction):
    figures = evaluate(mvtec_root, category, fraction)
    seed_mean = SEED_MEAN.get((category, fraction))
    if seed_mean:
        others = [evaluate(mvtec_root, category, fraction, seed)[seed_mean] for seed in SEEDS[1:]]
        figures[seed_mean] = statistics.mean([figures[seed_mean], *others])
    for metric, floor in zip(METRICS, FLOORS[(category, fraction)], strict=True):
        value = figures[metric]
        assert value >= floor - TOLERANCE, (
            f"{category} {fraction:.0%} {metric}: {value:.4f} < {floor} - 0.003"
        )
