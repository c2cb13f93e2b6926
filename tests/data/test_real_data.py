"""Accuracy floors on real images, minus the 0.003 tolerance. Needs EDGE_DATA_ROOT; about five
minutes on 2 cores.

- The paper's protocol (resize 256, centre crop 224, eq. 7 image score) against the official
  PatchCore's figures with the same backbone on the same MVTec AD files. Screw's image AUROC in that
  protocol depends on the coreset's random projection and start point far more than the tolerance
  (0.915, 0.943 and 0.929 for seeds 0, 1, 2), so it is held to the floor as a mean over three seeds.
- edge's defaults (geometry auto, image score map_max) against the same official figures at 1 %,
  and on KolektorSDD against the figures measured when they became the default (docs/engine.md),
  so that a change that loses accuracy on elongated greyscale frames is seen.
"""

import statistics
from dataclasses import replace

import pytest

from edge.engine.config import EngineConfig, InputGeometry
from edge.eval.mvtec import load_category
from edge.eval.runner import EvalOptions, evaluate_category

TOLERANCE = 0.003
FLOORS = {  # (category, coreset fraction): (image AUROC, pixel AUROC, PRO)
    ("bottle", 0.01): (1.000, 0.977, 0.932),
    ("screw", 0.01): (0.931, 0.989, 0.948),
    ("bottle", 0.1): (1.000, 0.980, 0.942),
}
DEFAULT_FLOORS = {  # edge's defaults at 1 %, seed 0
    ("mvtec", "bottle"): FLOORS[("bottle", 0.01)],
    ("mvtec", "screw"): FLOORS[("screw", 0.01)],
    ("kolektorsdd", "commutator"): (0.903, 0.934, 0.735),  # measured, docs/engine.md "Seeds"
}
SEED_MEAN = {("screw", 0.01): "image_auroc"}
SEEDS = (0, 1, 2)
METRICS = ("image_auroc", "pixel_auroc", "pro")


def evaluate(root, category: str, fraction: float, seed: int = 0, paper: bool = True) -> dict:
    config = EngineConfig(coreset_fraction=fraction, seed=seed)
    if paper:  # resize 256, centre crop 224, eq. 7, coreset chosen on a Gaussian projection
        config = replace(config, geometry=InputGeometry(), image_score="eq7", projection="random")
    return evaluate_category(load_category(root, category), EvalOptions(config, progress=False))


def _check(figures: dict, floors: tuple[float, ...], what: str) -> None:
    for metric, floor in zip(METRICS, floors, strict=True):
        value = round(figures[metric], 3)  # the figures are compared as reported: to 3 decimals
        assert value >= round(floor - TOLERANCE, 3), f"{what} {metric}: {value:.3f} < {floor} - 0.003"


@pytest.mark.slow
@pytest.mark.parametrize(("category", "fraction"), list(FLOORS))
def test_accuracy_floors(mvtec_root, category, fraction):
    figures = evaluate(mvtec_root, category, fraction)
    seed_mean = SEED_MEAN.get((category, fraction))
    if seed_mean:
        others = [evaluate(mvtec_root, category, fraction, seed)[seed_mean] for seed in SEEDS[1:]]
        figures[seed_mean] = statistics.mean([figures[seed_mean], *others])
    _check(figures, FLOORS[(category, fraction)], f"{category} {fraction:.0%}, paper's protocol,")


@pytest.mark.slow
@pytest.mark.parametrize(("data_set", "category"), list(DEFAULT_FLOORS))
def test_accuracy_floors_of_the_defaults(request, data_set, category):
    root = request.getfixturevalue("mvtec_root" if data_set == "mvtec" else "kolektor_root")
    figures = evaluate(root, category, 0.01, paper=False)
    _check(figures, DEFAULT_FLOORS[(data_set, category)], f"{category} 1 %, defaults,")
