import pytest
import torch

from edge.engine.coreset import greedy_coreset, principal_projection, random_projection


def naive_greedy(points: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """The textbook loop: update every distance after every pick."""
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(points.shape[0], (1,), generator=generator))]
    distances = ((points - points[chosen[0]]) ** 2).sum(1)
    while len(chosen) < count:
        chosen.append(int(torch.argmax(distances)))
        distances = torch.minimum(distances, ((points - points[chosen[-1]]) ** 2).sum(1))
    return torch.tensor(chosen)


def covering_radius(points: torch.Tensor, subset: torch.Tensor) -> float:
    return float(torch.cdist(points, points[subset]).min(1).values.max())


def clustered(seed: int) -> tuple[torch.Tensor, float]:
    """Clusters of very different sizes (a random subset misses the small ones), and the largest
    distance of a point from its own cluster's centre."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(24, 16, generator=generator) * 10
    sizes = [2000 if i < 4 else 15 for i in range(24)]
    offsets = [torch.randn(n, 16, generator=generator) * 0.3 for n in sizes]
    spread = max(float(o.norm(dim=1).max()) for o in offsets)
    return torch.cat([c + o for c, o in zip(centres, offsets, strict=True)]), spread


@pytest.mark.parametrize(("pool", "centre_block"), [(64, 256), (64, 8), (512, 1), (6000, 256)])
def test_matches_textbook_greedy_exactly(pool: int, centre_block: int):
    points = torch.randn(6000, 24, generator=torch.Generator().manual_seed(3))
    # a small pool forces many rounds, and small centre blocks leave points partly refreshed: the
    # paths where a wrong bound or a skipped centre would change the picks
    fast = greedy_coreset(points, 300, seed=5, pool=pool, centre_block=centre_block)
    assert torch.equal(fast, naive_greedy(points, 300, seed=5))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_covering_radius_beats_random_subset_on_clustered_data(seed: int):
    points, spread = clustered(seed)
    count = 48
    greedy_radius = covering_radius(points, greedy_coreset(points, count, seed=seed))
    random_subset = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(seed))[:count]
    random_radius = covering_radius(points, random_subset)
    assert greedy_radius < 0.25 * random_radius
    # greedy k-center is a 2-approximation, and the 24 cluster centres alone cover every point
    # within `spread`, so the optimal 48-centre radius is at most `spread`
    assert greedy_radius <= 2 * spread


def test_deterministic_for_seed_and_different_across_seeds():
    points = torch.randn(3000, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy_coreset(points, 50, seed=1), greedy_coreset(points, 50, seed=1))
    assert not torch.equal(greedy_coreset(points, 50, seed=1), greedy_coreset(points, 50, seed=2))


def test_full_fraction_returns_every_point_and_bad_counts_fail():
    points = torch.randn(100, 4)
    assert torch.equal(greedy_coreset(points, 100), torch.arange(100))
    with pytest.raises(ValueError):
        greedy_coreset(points, 0)
    with pytest.raises(ValueError):
        greedy_coreset(points, 101)


def test_projection_is_seeded_and_skipped_when_not_reducing():
    assert torch.equal(random_projection(472, 128, 0), random_projection(472, 128, 0))
    assert random_projection(472, 128, 0).shape == (472, 128)
    assert random_projection(100, 128, 0) is None


def test_principal_projection_keeps_distances_of_features_that_span_fewer_values():
    # features that vary along 10 directions of 64: 16 principal axes hold all of their spread
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(64, 10, generator=generator))[0]
    points = torch.randn(2000, 10, generator=generator) * torch.linspace(5, 1, 10) @ basis.T + 3.0
    axes = principal_projection(points.clone(), 16)  # the sample is centred in place
    assert axes.shape == (64, 16)
    assert torch.allclose(axes.T @ axes, torch.eye(16), atol=1e-5)
    full = torch.cdist(points[:200].double(), points.double())

    def worst_error(projected: torch.Tensor) -> float:
        return float((torch.cdist(projected[:200].double(), projected.double()) - full).abs().max())

    assert worst_error(points @ axes) < 1e-3
    # a Gaussian projection of the same width keeps them only on average
    assert worst_error(points @ random_projection(64, 16, 0)) > 1.0
    assert principal_projection(points, 64) is None
    points[5, 3] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        principal_projection(points, 16)


def test_identical_points_end_and_non_finite_points_are_refused():
    # every distance is 0 after the first pick: the loop must still end with `count` picks
    assert greedy_coreset(torch.zeros(5000, 8), 40, pool=64).shape == (40,)
    points = torch.randn(100, 4)
    points[7, 2] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        greedy_coreset(points, 10)


def test_progress_reports_rising_pick_counts_up_to_count():
    points = torch.randn(6000, 24, generator=torch.Generator().manual_seed(4))
    calls: list[tuple[int, int]] = []
    greedy_coreset(points, 300, pool=64, progress=lambda done, total: calls.append((done, total)))
    done = [d for d, _ in calls]
    assert len(calls) > 1 and done == sorted(done) and calls[-1] == (300, 300)
    assert {t for _, t in calls} == {300}
