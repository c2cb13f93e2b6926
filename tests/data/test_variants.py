"""The evaluation variants (`python -m edge.eval.variants`) on real MVTec images: what each
variant promises about its frames and masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.eval.mvtec import load_category
from edge.eval.variants import EDGE_BAND, EDGE_CROP, VARIANTS, main
from edge.imageio import read_image


def _small_bottle(mvtec_root: Path, root: Path) -> Path:
    """An MVTec folder of links to bottle's first 6 train images, 3 good test images and every
    broken_large one with its mask: a quick category of real files."""
    bottle = load_category(mvtec_root, "bottle")
    good = [s for s in bottle.test if s.label == 0][:3]
    broken = [s for s in bottle.test if s.defect_type == "broken_large"]
    links = [(p, root / "bottle" / "train" / "good" / p.name) for p in bottle.train[:6]]
    for sample in good + broken:
        links.append((sample.path, root / "bottle" / "test" / sample.defect_type / sample.path.name))
        if sample.mask_path is not None:
            truth = root / "bottle" / "ground_truth" / sample.defect_type
            links.append((sample.mask_path, truth / sample.mask_path.name))
    for source, link in links:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source)
    return root


def test_edges_puts_every_defect_beside_a_side_of_a_square_crop(mvtec_root, tmp_path):
    source = _small_bottle(mvtec_root, tmp_path / "src")
    assert main([str(source), "bottle", str(tmp_path / "out"), "--variant", "edges", "--seed", "3"]) == 0
    written = load_category(tmp_path / "out", "bottle-edges")
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


def test_unknown_variants_are_refused_with_the_choices(mvtec_root, tmp_path, caplog):
    source = _small_bottle(mvtec_root, tmp_path / "src")
    assert main([str(source), "bottle", str(tmp_path / "out"), "--variant", "edge"]) == 2
    assert all(name in caplog.text for name in (*VARIANTS, "strip<K>")), caplog.text
    assert not (tmp_path / "out").exists()
