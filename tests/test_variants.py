"""The evaluation variants (`python -m edge.eval.variants`) on real MVTec images: what each
variant promises about its frames and masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.eval.mvtec import Category, load_category
from edge.eval.variants import EDGE_BAND, EDGE_CROP, main
from edge.imageio import read_image


def _small_copy(mvtec_root: Path) -> Category:
    """Bottle's first 6 train images, 3 good and every broken_large test image: a quick category."""
    bottle = load_category(mvtec_root, "bottle")
    good = [s for s in bottle.test if s.label == 0][:3]
    broken = [s for s in bottle.test if s.defect_type == "broken_large"]
    return Category("bottle", bottle.train[:6], good + broken)


def _write(monkeypatch: pytest.MonkeyPatch, category: Category, out: Path, variant: str) -> Category:
    monkeypatch.setattr("edge.eval.variants.load_category", lambda root, name: category)
    assert main([str(out), "bottle", str(out), "--variant", variant, "--seed", "3"]) == 0
    return load_category(out, f"bottle-{variant}")


def test_edges_puts_every_defect_beside_a_side_of_a_square_crop(mvtec_root, tmp_path, monkeypatch):
    written = _write(monkeypatch, _small_copy(mvtec_root), tmp_path, "edges")
    side = round(EDGE_CROP * 320)
    assert len(written.train) == 6 and len(written.test) == 3 + 20
    for path in written.train:
        assert read_image(path).shape[:2] == (side, side)
    distances = []
    for sample in written.test:
        image = read_image(sample.path)
        mask = sample.mask(image.shape[:2])
        assert image.shape[:2] == (side, side)
        if sample.label:
            assert mask.any(), f"{sample.path.name}: the crop lost its defect"
            ys, xs = np.nonzero(mask)  # the defect as cut: its own centre may lie further in
            distances.append(min(ys.min(), xs.min(), side - 1 - ys.max(), side - 1 - xs.max()))
        else:
            assert not mask.any()
    assert len(distances) == 20 and max(distances) <= round(EDGE_BAND * side)


def test_unknown_variants_are_refused_with_the_choices(mvtec_root, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("edge.eval.variants.load_category", lambda root, name: _small_copy(mvtec_root))
    assert main([str(tmp_path), "bottle", str(tmp_path), "--variant", "edge"]) == 2
    assert "multisize, edges or strip<K>" in caplog.text
    assert not (tmp_path / "bottle-edge").exists()
