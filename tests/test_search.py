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


@pytest.mark.parametrize("index_type", [TorchIndex, FaissIndex])
@pytest.mark.parametrize("k", [1, 5])
def test_matches_brute_force(data, index_type, k):
    bank, queries, exact = data
    distances, rows = index_type(bank).search(queries, k=k)
    expected_d, expected_rows = torch.topk(exact, k, dim=1, largest=False)
    assert distances.shape == (queries.shape[0], k)
    # the rows found lie at the true k smallest distances (float32 may order near-ties differently)
    torch.testing.assert_close(exact.gather(1, rows.long()), expected_d, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(distances.double(), expected_d, rtol=1e-4, atol=1e-4)
    assert (rows[:, 0].long() == expected_rows[:, 0]).float().mean() > 0.999


def test_distance_is_l2_not_squared():
    bank = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    distances, rows = TorchIndex(bank).search(torch.tensor([[3.0, 4.0]]))
    assert float(distances[0, 0]) == pytest.approx(5.0)
    assert int(rows[0, 0]) == 0
