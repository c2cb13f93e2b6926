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
