"""frames.py: any common camera frame to the pilot's input."""
import numpy as np
import pytest

from donkey_saliency.errors import InputError
from donkey_saliency.compute.frames import as_uint8_image, fit_to_model, prepare_batch, prepare_frame


def test_float_frames_in_zero_one_are_scaled_and_rgba_loses_alpha():
    image = as_uint8_image(np.full((2, 3, 4), 0.5, np.float32))
    assert image.dtype == np.uint8 and image.shape == (2, 3, 3) and (image == 127).all()
    assert (as_uint8_image(np.full((2, 3), 300.0)) == 255).all()  # float in 0..255, clipped
    assert as_uint8_image(np.zeros((2, 3, 1), np.uint8)).shape == (2, 3)


@pytest.mark.parametrize("frame, words", [
    (None, "no image"),
    (np.zeros((2, 3, 5), np.uint8), "expected an image of shape"),
    (np.zeros((0, 3, 3), np.uint8), "expected an image of shape"),
    (np.zeros((2, 3), bool), "expected a uint8 image"),
    (np.array([["a"]]), "expected"),
])
def test_what_is_not_an_image_is_an_input_error(frame, words):
    with pytest.raises(InputError, match=words):
        as_uint8_image(frame)


def test_fit_to_model_converts_channels_and_size():
    assert fit_to_model(np.zeros((240, 320), np.uint8), (120, 160, 3)).shape == (120, 160, 3)
    assert fit_to_model(np.zeros((120, 160, 3), np.uint8), (60, 80, 1)).shape == (60, 80, 1)
    assert prepare_frame(np.ones((120, 160, 3), np.float32), (120, 160, 3)).max() == 255


def test_a_ready_batch_is_not_copied_and_a_list_is_stacked():
    batch = np.zeros((2, 4, 4, 1), np.uint8)
    assert np.shares_memory(prepare_batch(batch, (4, 4, 1)), batch)
    stacked = prepare_batch([np.zeros((8, 8)), np.ones((8, 8), np.uint8)], (4, 4, 1))
    assert stacked.shape == (2, 4, 4, 1) and stacked.dtype == np.uint8
