import numpy as np
import pytest

from edge.eval.metrics import image_auroc, pixel_auroc, pro_score


def test_pro_on_a_hand_built_case():
    # region A = 2 pixels, region B = 1 pixel, 7 normal pixels
    mask = np.array([[1, 1, 0, 0, 0], [0, 0, 0, 0, 1]], bool)
    scores = np.array([[0.9, 0.5, 0.7, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1, 0.8]], np.float32)
    # thresholds 0.9 → PRO 0.25 at FPR 0; 0.8 → 0.75 at 0; 0.7 → 0.75 at 1/7; 0.5 → 1.0 at 1/7
    # area to FPR 0.3: 0.75 * 1/7 + 1.0 * (0.3 - 1/7), normalised by 0.3
    expected = (0.75 / 7 + (0.3 - 1 / 7)) / 0.3
    assert pro_score([mask], [scores]) == pytest.approx(expected, rel=1e-9)


def test_pro_regions_count_equally_whatever_their_size():
    mask = np.zeros((10, 10), bool)
    mask[0:5, 0:5] = True  # a large region, fully found
    mask[9, 9] = True  # a one-pixel region, missed
    scores = np.zeros((10, 10), np.float32)
    scores[0:5, 0:5] = 1.0
    # threshold 1 finds the large region only: PRO 0.5 at FPR 0; below it everything: (1, 1).
    # The curve from (0, 0.5) to (1, 1) reaches 0.65 at FPR 0.3: area 0.3 * (0.5 + 0.65) / 2
    assert pro_score([mask], [scores]) == pytest.approx((0.5 + 0.65) / 2, rel=1e-9)
    assert pro_score([mask], [mask.astype(np.float32)]) == pytest.approx(1.0)


def test_pro_accepts_images_of_different_sizes():
    masks = [np.eye(4, dtype=bool), np.zeros((3, 6), bool)]
    maps = [np.eye(4, dtype=np.float32), np.zeros((3, 6), np.float32)]
    assert pro_score(masks, maps) == pytest.approx(1.0)


def test_aurocs():
    assert image_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert image_auroc(np.array([0, 0, 1, 1]), np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert np.isnan(image_auroc(np.array([1, 1]), np.array([0.1, 0.2])))
    mask = np.array([[0, 1], [1, 0]], bool)
    assert pixel_auroc([mask], [mask.astype(np.float32)]) == 1.0
