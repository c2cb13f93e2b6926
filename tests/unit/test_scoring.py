import math

import numpy as np
import pytest
import torch

from edge.engine.scoring import anomaly_map, neighbour_table, reweighting_factors
from edge.engine.search import TorchIndex

BANK = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])


def reweighting_factor(patch: torch.Tensor, row: int, bank: torch.Tensor, neighbours: int) -> float:
    support = neighbour_table(bank, TorchIndex(bank), neighbours)[row : row + 1]
    return float(reweighting_factors(patch[None], support, bank)[0])


def test_eq7_matches_hand_computation():
    patch = torch.tensor([-1.0, 0.0])  # nearest bank feature m* = row 0, at distance 1
    # m*'s 3 nearest bank features: itself (0), row 1 and row 2 (both at 1); the patch's distances
    # to them are 1, 2 and sqrt(2); weight = 1 - e^1 / (e^1 + e^2 + e^sqrt2)
    expected = 1 - math.e / (math.e + math.e**2 + math.exp(math.sqrt(2)))
    factor = reweighting_factor(patch, 0, BANK, neighbours=3)
    assert factor == pytest.approx(expected, rel=1e-6)
    assert factor == pytest.approx(0.808849, abs=1e-6)


def test_eq7_is_stable_for_huge_distances():
    factor = reweighting_factor(torch.tensor([1e6, -1e6]), 0, BANK, neighbours=4)
    assert math.isfinite(factor) and 0.0 <= factor <= 1.0


def test_isolated_match_keeps_more_of_its_score_than_a_dense_one():
    dense = reweighting_factor(torch.tensor([-0.5, 0.0]), 0, BANK, neighbours=3)
    isolated = reweighting_factor(torch.tensor([6.0, 6.0]), 3, BANK, neighbours=3)
    assert isolated > dense


def test_anomaly_map_peaks_where_the_patch_is_and_is_smoothed():
    grid = np.zeros((8, 8), np.float32)
    grid[2, 5] = 1.0
    amap = anomaly_map(grid, (64, 64))
    assert amap.shape == (64, 64) and amap.dtype == np.float32
    peak = np.unravel_index(np.argmax(amap), amap.shape)
    assert abs(peak[0] - 2.5 * 8) <= 2 and abs(peak[1] - 5.5 * 8) <= 2
    upsampled_peak = 1.0
    assert amap.max() < upsampled_peak  # sigma-4 smoothing spreads the peak
    assert amap.min() >= 0.0


def test_the_neighbour_table_starts_with_each_row_then_its_nearest_others():
    table = neighbour_table(BANK, TorchIndex(BANK), neighbours=3)
    assert table[:, 0].tolist() == [0, 1, 2, 3]
    assert sorted(table[0, 1:].tolist()) == [1, 2] and table[3, 1:].tolist() in ([1, 2], [2, 1])
    duplicated = torch.cat([BANK, BANK[:1]])  # row 4 repeats row 0: each lists the other, not itself
    twins = neighbour_table(duplicated, TorchIndex(duplicated), neighbours=2)
    assert twins[0].tolist() == [0, 4] and twins[4].tolist() == [4, 0]
