"""How frames of any shape become network input, and the way back."""

import numpy as np
import pytest

from edge.engine.config import InputGeometry
from edge.engine.geometry import mask_to_frame, mask_to_input, place, prepare
from edge.errors import ImageError, UsageError


@pytest.mark.parametrize("frame_hw", [(320, 320), (1250, 500), (256, 4096), (77, 190), (900, 40)])
def test_area_inputs_cost_the_same_whatever_the_frame_shape(frame_hw):
    placement = place(frame_hw, InputGeometry(resize=224, mode="area"))
    height, width = placement.input_hw
    assert height % 16 == 0 and width % 16 == 0  # on the deepest level's grid
    assert abs(height * width / 224**2 - 1) < 0.2
    frame_aspect, input_aspect = frame_hw[1] / frame_hw[0], width / height
    assert abs(np.log(input_aspect / frame_aspect)) < 0.2  # aspect kept, up to the rounding


def test_each_mode_places_a_long_frame_as_documented():
    frame = (256, 4096)
    assert place(frame, InputGeometry(resize=224, mode="full_frame")).input_hw == (224, 3584)
    assert place(frame, InputGeometry(resize=224, mode="squash")).input_hw == (224, 224)
    assert place(frame, InputGeometry(resize=224, mode="area")).input_hw == (64, 896)
    crop = place(frame, InputGeometry(resize=256, crop=224))
    assert crop.input_hw == (224, 224) and crop.crop_box[1] == (4096 - 224) // 2


def test_fixed_input_sizes_are_known_before_any_frame():
    assert InputGeometry().fixed_input_hw == (224, 224)
    assert InputGeometry(resize=192, mode="squash").fixed_input_hw == (192, 192)
    assert InputGeometry(resize=224, mode="area").fixed_input_hw is None
    assert InputGeometry.full_frame(224).fixed_input_hw is None


def test_banks_written_before_modes_keep_their_meaning():
    """A bank's stored geometry had only resize, crop and roi: crop None meant the whole frame."""
    assert InputGeometry(resize=224, crop=None).mode == "full_frame"
    assert InputGeometry(resize=256, crop=224).mode == "center_crop"
    assert InputGeometry(resize=224, crop=224, mode="area").crop is None  # a crop only crops


def test_bad_geometries_are_usage_errors():
    with pytest.raises(UsageError, match="unknown geometry"):
        InputGeometry(mode="tiles")
    with pytest.raises(UsageError, match="resize"):
        InputGeometry(resize=8, mode="area")


def test_a_squashed_mask_goes_back_onto_its_frame():
    frame = np.zeros((100, 700), np.uint8)
    frame[40:60, 600:650] = 255
    geometry = InputGeometry(resize=128, mode="squash")
    pixels, placement = prepare(frame, geometry)
    assert pixels.shape == (128, 128, 3)
    mask = mask_to_input(frame > 0, placement) > 0
    back = mask_to_frame(mask, placement)
    assert back.shape == frame.shape
    assert (back[45:55, 610:640] == 255).all() and back[:, :550].max() == 0


def test_frames_that_would_cost_unbounded_work_are_refused_in_every_mode():
    for mode in ("area", "squash", "full_frame"):
        with pytest.raises(ImageError, match="longer than"):
            place((10, 20000), InputGeometry(resize=224, mode=mode))
    with pytest.raises(ImageError, match="enlarged more than"):
        place((8, 8), InputGeometry(resize=224, mode="area"))
