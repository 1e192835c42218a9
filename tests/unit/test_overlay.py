"""overlay.py: the pictures users watch, from a mask."""
import numpy as np
import pytest

from donkey_saliency.config import DEFAULT_ALPHA, DEFAULT_COLORMAP
from donkey_saliency.errors import InputError
from donkey_saliency.compute.overlay import (
    COLORMAPS, blend, check_style, colorize, layer_picture, mask_to_uint8, overlay, side_by_side, stretch, to_rgb)


def test_the_default_style_is_a_valid_style():
    assert check_style(DEFAULT_ALPHA, DEFAULT_COLORMAP) == (DEFAULT_ALPHA, DEFAULT_COLORMAP)
    assert DEFAULT_COLORMAP in COLORMAPS


@pytest.mark.parametrize("alpha, colormap, words", [
    (1.5, "jet", "alpha must be between 0 and 1"),
    (float("nan"), "jet", "alpha must be between 0 and 1"),
    ("half", "jet", "alpha must be between 0 and 1"),
    (0.5, "rainbow", "unknown colormap 'rainbow'"),
])
def test_a_bad_style_is_one_clear_input_error(alpha, colormap, words):
    with pytest.raises(InputError, match=words):
        check_style(alpha, colormap)


def test_mask_to_uint8_rounds_and_clips():
    levels = mask_to_uint8(np.array([[-1.0, 0.0, 0.5, 1.0, 2.0]], np.float32))
    assert levels.dtype == np.uint8 and levels.tolist() == [[0, 0, 128, 255, 255]]


def test_gray_colormap_repeats_the_levels_and_jet_runs_blue_to_red():
    mask = np.array([[0.0, 1.0]], np.float32)
    assert colorize(mask, "gray").tolist() == [[[0, 0, 0], [255, 255, 255]]]
    cold, hot = colorize(mask, "jet")[0].astype(int)
    assert cold[2] > cold[0] and hot[0] > hot[2]  # RGB: blue where the mask is 0, red where it is 1


def test_blend_weights_the_heat_map_by_alpha():
    frame = np.full((4, 6, 3), 100, np.uint8)
    colored = np.full((2, 3, 3), 200, np.uint8)  # resized to the frame
    assert (blend(frame, colored, 0.0) == 100).all()
    assert (blend(frame, colored, 1.0) == 200).all()
    assert (blend(frame, colored, 0.25) == 125).all()


def test_overlay_has_the_frame_size_whatever_the_mask_size():
    gray_frame = np.zeros((120, 160), np.uint8)
    picture = overlay(gray_frame, np.ones((30, 40), np.float32))
    assert picture.shape == (120, 160, 3) and picture.dtype == np.uint8
    assert to_rgb(gray_frame[..., None]).shape == (120, 160, 3)


def test_stretch_spans_zero_to_one_and_calls_a_constant_map_flat():
    ramp, flat = stretch(np.arange(6, dtype=np.float32).reshape(2, 3) * 1e-6 + 3.0)
    assert not flat and ramp.min() == 0.0 and ramp.max() == pytest.approx(1.0)
    zeros, flat = stretch(np.full((2, 3), 7.0))
    assert flat and not zeros.any()


def test_layer_picture_scales_cells_up_by_a_whole_factor():
    picture = layer_picture(np.arange(12, dtype=np.float32).reshape(3, 4))
    assert picture.shape == (120, 160, 3)  # 160 // 4 = 40 pixels a cell
    assert (picture[:40, :40] == picture[0, 0]).all()
    with pytest.raises(ValueError, match="non-empty"):
        layer_picture(np.zeros((0, 4)))


def test_side_by_side_fits_heights():
    joined = side_by_side(np.zeros((10, 20, 3), np.uint8), np.zeros((5, 5), np.uint8))
    assert joined.shape == (10, 30, 3)
