"""A fit's memory does not grow with its good frames: the bank builder reduces every chunk of rows
it holds, and the union of what it kept, so the rows it holds at once stay under a bound set by the
chunk and the bank, not by the rows fed; and the bank it then chooses covers every row about as
well as one chosen from all the rows at once."""

from __future__ import annotations

import math

import pytest
import torch

from edge.engine.bank import BankBuilder
from edge.engine.config import EngineConfig

WIDTHS = (16, 8)


def clustered_rows(count: int, seed: int) -> torch.Tensor:
    """Rows around 40 centres of different spreads, the two levels on different scales."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(40, sum(WIDTHS), generator=generator) * 4
    spread = torch.rand(40, 1, generator=generator) + 0.2
    pick = torch.randint(40, (count,), generator=generator)
    rows = centres[pick] + torch.randn(count, sum(WIDTHS), generator=generator) * spread[pick]
    rows[:, WIDTHS[0] :] *= 30  # the second level's activations are larger: the scales matter
    return rows


def radius(rows: torch.Tensor, bank: torch.Tensor, scales: torch.Tensor) -> float:
    """The largest distance from a (scaled) row to its nearest bank row."""
    scaled = rows * torch.repeat_interleave(scales, torch.tensor(WIDTHS))
    return float(torch.cdist(scaled, bank).amin(1).max())


def build(batches: list[torch.Tensor], chunk_rows: int) -> tuple[BankBuilder, torch.Tensor, torch.Tensor]:
    builder = BankBuilder(EngineConfig(coreset_fraction=0.01), WIDTHS, chunk_rows=chunk_rows)
    for batch in batches:
        builder.add(batch.clone())  # the builder scales what it holds in place
    bank, scales, _ = builder.finish()
    return builder, bank, scales


@pytest.mark.parametrize("batches", [20, 80])
def test_the_rows_held_stay_bounded_however_many_come(batches):
    rows = [clustered_rows(500, seed) for seed in range(batches)]
    builder, bank, _ = build(rows, chunk_rows=2000)
    total = 500 * batches
    assert bank.shape[0] == round(0.01 * total) and builder.rows == total and builder.reductions > 0
    # a chunk waiting (plus the batch that overfilled it), and the union of what the reductions
    # kept: at most a chunk, plus one reduction's rows before it is reduced to half a chunk
    waiting = 2000 + 500
    bound = waiting + 2000 + math.ceil(builder.keep * 0.01 * waiting)
    assert builder.peak_rows <= bound, (builder.peak_rows, bound)  # not a function of `batches`


def test_a_reduced_fit_covers_the_rows_as_well_as_one_that_held_them_all():
    rows = [clustered_rows(500, seed) for seed in range(40)]
    _, exact, exact_scales = build(rows, chunk_rows=10**9)  # never reduced: today's selection
    builder, reduced, scales = build(rows, chunk_rows=2000)
    every = torch.cat(rows)
    assert builder.reductions >= 8 and reduced.shape == exact.shape
    assert torch.allclose(scales, exact_scales)  # the scales of every row, not of a chunk's
    assert radius(every, reduced, scales) <= 1.15 * radius(every, exact, exact_scales)


def test_a_fit_within_one_chunk_is_never_reduced_and_gives_the_same_bank():
    rows = [clustered_rows(300, seed) for seed in range(5)]
    small, bank, scales = build(rows, chunk_rows=10**9)
    again, bank_again, scales_again = build(rows, chunk_rows=1500)
    assert small.reductions == again.reductions == 0
    default = BankBuilder(EngineConfig(coreset_fraction=0.01), WIDTHS)  # fit_chunk_rows 0: never
    for batch in rows * 200:
        default.add(batch)
    assert default.reductions == 0 and default.peak_rows == 300_000
    assert torch.equal(bank, bank_again) and torch.equal(scales, scales_again)
