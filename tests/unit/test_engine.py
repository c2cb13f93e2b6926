import numpy as np
import pytest

from edge.engine.config import EngineConfig, InputGeometry
from edge.engine.model import PatchCore
from edge.errors import ImageError, UsageError
from edge.imageio import read_image


@pytest.fixture(scope="module")
def test_images(synthetic_category):
    return [read_image(s.path) for s in synthetic_category.test]


def test_detects_synthetic_defects(fitted_model, synthetic_category, test_images):
    results = fitted_model.score(test_images)
    labels = np.array([s.label for s in synthetic_category.test])
    scores = np.array([r.score for r in results])
    assert scores[labels == 1].mean() > scores[labels == 0].max()


def test_scores_do_not_depend_on_the_batch(fitted_model, test_images):
    together = fitted_model.score(test_images[:8])
    alone = [fitted_model.score([image])[0] for image in test_images[:8]]
    for a, b in zip(together, alone, strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-5)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-4, atol=1e-4 * b.anomaly_map.max())


def test_mixed_sizes_and_greyscale_keep_input_order(fitted_model, test_images):
    import cv2

    wide = cv2.resize(test_images[5], (240, 160))
    grey = cv2.cvtColor(test_images[6], cv2.COLOR_RGB2GRAY)
    batch = [test_images[0], wide, grey, test_images[1]]
    mixed = fitted_model.score(batch)
    for image, result in zip(batch, mixed, strict=True):
        assert result.score == pytest.approx(fitted_model.score([image])[0].score, rel=1e-5)
        assert result.frame_map().shape == image.shape[:2]


def test_the_default_geometry_is_the_whole_frame_at_its_own_resolution(fitted_model, test_images):
    """`auto` is resolved at fitting: these 160 x 160 frames are below the 224² floor, so they go in
    whole at 224 x 224 (area), and the bank stores that, never `auto`."""
    assert fitted_model.config.geometry.mode == "area" and fitted_model.config.geometry.resize == 224
    result = fitted_model.score([test_images[0]])[0]
    assert result.anomaly_map.shape == (224, 224) and result.placement.crop_box == (0, 0, 224, 224)


def test_centre_crop_map_leaves_uninspected_border_at_fill(synthetic_category, test_images):
    train = [read_image(p) for p in synthetic_category.train]
    crop = PatchCore.fit(train, EngineConfig(geometry=InputGeometry(), coreset_fraction=0.1))
    result = crop.score([test_images[0]])[0]
    assert result.anomaly_map.shape == (224, 224)
    frame = result.frame_map(fill=-1.0)
    assert frame.shape == test_images[0].shape[:2]
    assert (frame[0, :] == -1.0).all() and (frame[frame.shape[0] // 2, frame.shape[1] // 2] > 0)


def _edge_defect(image: np.ndarray) -> np.ndarray:
    damaged = image.copy()
    damaged[70:90, 0:8] = 255  # a bright defect in the 10-pixel strip the centre crop cuts away
    return damaged


@pytest.mark.parametrize(
    "geometry", [InputGeometry.auto(), InputGeometry.full_frame(160)], ids=["auto", "full"]
)
def test_whole_frame_modes_see_a_defect_that_the_centre_crop_cuts_away(
    geometry, synthetic_category, test_images
):
    train = [read_image(p) for p in synthetic_category.train]
    full = PatchCore.fit(train, EngineConfig(geometry=geometry, coreset_fraction=0.1))
    crop = PatchCore.fit(train, EngineConfig(geometry=InputGeometry(), coreset_fraction=0.1))
    good, damaged = test_images[0], _edge_defect(test_images[0])
    full_good, full_bad = full.score([good, damaged])
    crop_good, crop_bad = crop.score([good, damaged])
    assert full_bad.score > 1.3 * full_good.score
    assert crop_bad.score == pytest.approx(crop_good.score, rel=0.05)
    frame = full_bad.frame_map()
    assert frame[70:90, 0:8].mean() > 1.4 * frame[70:90, 60:100].mean()


def test_region_of_interest_is_all_that_is_inspected(synthetic_category, test_images):
    train = [read_image(p) for p in synthetic_category.train]
    roi = (20, 30, 120, 100)
    model = PatchCore.fit(
        train, EngineConfig(geometry=InputGeometry.full_frame(96, roi=roi), coreset_fraction=0.1)
    )
    result = model.score([test_images[0]])[0]
    frame = result.frame_map(fill=-1.0)
    assert (frame[:30, :] == -1).all() and (frame[:, :20] == -1).all()
    assert (frame[30:130, 20:140] >= 0).all()
    with pytest.raises(ImageError, match="does not fit"):
        model.score([test_images[0][:50, :50]])


def test_bad_inputs_are_clear_errors(fitted_model):
    with pytest.raises(ImageError):
        fitted_model.score([np.zeros((10, 10, 4), np.uint8)])
    with pytest.raises(ImageError):
        fitted_model.score([np.zeros((10, 10, 3), np.float32)])
    with pytest.raises(UsageError):
        EngineConfig(coreset_fraction=0.0)
    with pytest.raises(UsageError):
        PatchCore.fit([], EngineConfig())
