"""Camera frames to the pilot's input: uint8, the model's channels and size. Pure functions."""
import numpy as np

from ..errors import InputError
from ..util.opencv import import_cv2


def as_uint8_image(frame):
    """uint8 (H, W) or (H, W, 3) from a camera frame of any common form, or InputError saying why.

    Accepts RGB, RGBA or grayscale, uint8 or float in [0, 1] / [0, 255]."""
    if frame is None:
        raise InputError("no image (None)")
    array = np.asarray(frame)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))) or 0 in array.shape:
        raise InputError("expected an image of shape (H, W, 3) or (H, W), got shape %s" % (array.shape,))
    if array.dtype != np.uint8:
        if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer)
                                       or np.issubdtype(array.dtype, np.floating)):
            raise InputError("expected a uint8 image, got dtype %s" % array.dtype)
        values = np.nan_to_num(array.astype(np.float32))
        if np.issubdtype(array.dtype, np.floating) and values.max() <= 1.0:
            values *= 255.0
        array = np.clip(values, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    return array


def fit_to_model(image, input_shape):
    """A uint8 image from ``as_uint8_image`` converted to the model's channels and size
    (area interpolation, like a camera scaler)."""
    cv2 = import_cv2()

    height, width, channels = input_shape
    if image.ndim == 2 and channels == 3:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.ndim == 3 and channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image.reshape(height, width, channels)


def prepare_frame(frame, input_shape):
    """One frame as uint8 (H, W, C) at the model's size, or InputError saying why not."""
    return fit_to_model(as_uint8_image(frame), input_shape)


def prepare_batch(frames, input_shape):
    """uint8 (N, H, W, C) from a sequence of frames (or an (N, H, W, C) array)."""
    array = np.asarray(frames) if not isinstance(frames, (list, tuple)) else None
    if array is not None and array.dtype == np.uint8 and array.ndim == 4 and array.shape[1:] == tuple(input_shape):
        return np.ascontiguousarray(array)  # already right: no copy
    return np.stack([prepare_frame(f, input_shape) for f in frames])
