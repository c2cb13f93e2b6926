import itertools

import pytest
import torch

from edge.engine.search import BANK_TILE, QUERY_TILE, FaissIndex, TorchIndex


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(BANK_TILE * 2 + 77, 64, generator=generator)
    queries = torch.randn(QUERY_TILE + 300, 64, generator=generator)
    exact = torch.cdist(queries.double(), bank.double())
    return bank, queries, exact


INDEXES = {
    "torch-fp32": lambda bank: TorchIndex(bank, precision="fp32"),
    "torch-bf16": lambda bank: TorchIndex(bank, precision="bf16"),
    "faiss": FaissIndex,
}


@pytest.mark.parametrize("kind", list(INDEXES))
@pytest.mark.parametrize("k", [1, 5])
def test_matches_brute_force(data, kind, k):
    bank, queries, exact = data
    distances, rows = INDEXES[kind](bank).search(queries, k=k)
    expected_d, expected_rows = torch.topk(exact, k, dim=1, largest=False)
    assert distances.shape == (queries.shape[0], k)
    # the rows found lie at the true k smallest distances (float32 may order near-ties differently)
    torch.testing.assert_close(exact.gather(1, rows.long()), expected_d, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(distances.double(), expected_d, rtol=1e-4, atol=1e-4)
    assert (rows[:, 0].long() == expected_rows[:, 0]).float().mean() > 0.999


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_distance_is_l2_not_squared(precision):
    bank = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    distances, rows = TorchIndex(bank, precision=precision).search(torch.tensor([[3.0, 4.0]]))
    assert float(distances[0, 0]) == pytest.approx(5.0)
    assert int(rows[0, 0]) == 0


def test_bf16_candidates_are_measured_exactly():
    """Near-duplicates closer than bf16 can tell apart: the rescoring still returns the true nearest
    row and its exact distance."""
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(50, 32, generator=generator) * 100
    bank = torch.cat([base, base + 1e-3])  # pairs 1e-3 apart on values of about 100
    query = base[7:8] + 1e-3 + 1e-4
    distances, rows = TorchIndex(bank, precision="bf16").search(query, k=1)
    assert int(rows[0, 0]) == 57
    assert float(distances[0, 0]) == pytest.approx(float((query - bank[57]).norm()), rel=1e-5)


def test_auto_precision_follows_the_device_not_the_cpu_flags():
    from edge.engine.search import cpu_has_native_bf16, resolve_precision

    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"


def test_smallest_columns_is_the_topk_set():
    from edge.engine.search import SELECTION_GROUP, smallest_columns

    generator = torch.Generator().manual_seed(3)
    for columns in (SELECTION_GROUP * 40, SELECTION_GROUP * 40 + 5, 20):
        scores = torch.randn(300, columns, generator=generator)
        for count in (1, 5, 9):
            expected = torch.topk(scores, count, dim=1, largest=False).indices.sort(1).values
            assert torch.equal(smallest_columns(scores, count).sort(1).values, expected)


def low_rank_data(dim: int, rank: int, rows: int, queries: int, seed: int):
    """Features like a backbone's: most of the variance on a few axes, a noise floor on the rest."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=generator)).Q[:, :rank]

    def sample(n: int) -> torch.Tensor:
        return (
            torch.randn(n, rank, generator=generator) * 3 @ basis.T
            + torch.randn(n, dim, generator=generator) * 0.3
        )

    return sample(rows), sample(queries)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_projected_search_measures_exactly_and_finds_nearly_every_nearest_row(precision):
    """Every distance returned is the exact distance to the row returned, never below the true
    nearest one; on 472-wide data with the variance on 100 axes, at least 99.5 % are the nearest."""
    from edge.engine.search import ProjectedIndex

    bank, queries = low_rank_data(472, 100, 3000, 2000, seed=4)
    distances, rows = ProjectedIndex(bank, precision=precision).search(queries, k=1)
    exact = torch.cdist(queries.double(), bank.double())
    truth = exact.min(1).values
    torch.testing.assert_close(distances[:, 0].double(), exact.gather(1, rows)[:, 0], rtol=1e-5, atol=1e-5)
    assert bool((distances[:, 0].double() >= truth * (1 - 1e-5)).all())
    recall = ((distances[:, 0].double() - truth).abs() <= 1e-4 * truth).double().mean()
    assert recall >= 0.995, recall


def test_projected_search_on_narrow_data_is_exact(data):
    """Where the data has no more values than the projection keeps, the candidates hold the
    true nearest rows."""
    from edge.engine.search import ProjectedIndex

    bank, queries, exact = data
    distances, _ = ProjectedIndex(bank).search(queries, k=5)
    expected_d, _ = torch.topk(exact, 5, dim=1, largest=False)
    torch.testing.assert_close(distances.double(), expected_d, rtol=1e-4, atol=1e-4)


def test_auto_search_is_projected_on_the_cpu_and_torch_reads_as_exact():
    from edge.engine.config import EngineConfig
    from edge.engine.search import ProjectedIndex, build_index

    bank = torch.randn(100, 8)
    assert isinstance(build_index(bank, "auto"), ProjectedIndex)
    assert isinstance(build_index(bank, "exact"), TorchIndex)
    assert EngineConfig(search="torch").search == "exact"  # banks saved before the choice


def test_query_tiles_are_equal_bounded_and_cover_every_query():
    from edge.engine.search import MAX_QUERY_TILE, MIN_QUERY_TILE, SCORE_TILE, query_tiles

    for queries, columns in [(1600, 3360), (2280, 50000), (1, 16), (5000, 3360), (700, SCORE_TILE)]:
        tiles = query_tiles(queries, columns)
        assert tiles[0][0] == 0 and tiles[-1][1] == queries
        assert all(a[1] == b[0] for a, b in itertools.pairwise(tiles))
        sizes = [stop - start for start, stop in tiles]
        assert max(sizes) - min(sizes) <= max(sizes) // len(sizes) + 1  # no ragged last tile
        assert all(size * columns <= SCORE_TILE or size <= MIN_QUERY_TILE for size in sizes)
        assert max(sizes) <= MAX_QUERY_TILE
    assert query_tiles(1600, 3360) == [(0, 800), (800, 1600)]  # a 320² frame, a 1 % bottle bank
    assert len(query_tiles(2280, 6080)) == 4  # a KolektorSDD frame: tiles of 570
    assert len(query_tiles(2280, 50016)) == 18  # about 128 queries against 50,000 rows


def test_projected_search_gives_the_same_in_tiles(monkeypatch):
    """Tiling the queries changes no result (several tiles against one)."""
    from edge.engine.search import ProjectedIndex

    bank, queries = low_rank_data(96, 40, 2000, 1500, seed=5)
    index = ProjectedIndex(bank, precision="fp32")
    whole = index.search(queries, k=3)
    monkeypatch.setattr("edge.engine.search.SCORE_TILE", 300 * 2016)
    monkeypatch.setattr("edge.engine.search.MIN_QUERY_TILE", 1)
    tiled = index.search(queries, k=3)
    torch.testing.assert_close(tiled[0], whole[0])
    assert torch.equal(tiled[1], whole[1])


def test_reference_distances_are_the_brute_force_minimum(data):
    from edge.engine.search import reference_distances

    bank, queries, exact = data
    torch.testing.assert_close(reference_distances(bank, queries), exact.min(1).values, rtol=1e-9, atol=1e-9)
