"""Pure functions from a mask to a picture: colour, blend, resize. No state, no I/O."""
import numpy as np

from ..config import DEFAULT_ALPHA, DEFAULT_COLORMAP
from ..errors import InputError
from ..util.opencv import import_cv2

COLORMAPS = ("jet", "inferno", "magma", "viridis", "turbo", "hot", "plasma", "gray")
LAYER_DISPLAY_WIDTH = 160  # layer maps are a few cells wide: scale them up (nearest) so cells stay crisp
FLAT = 1e-12  # a map whose values span less than this is constant: shown black


def check_style(alpha, colormap):
    """``(alpha, colormap)`` as the drawing functions take them, or InputError naming the bad value:
    alpha is the heat map's weight in [0, 1], colormap one of ``COLORMAPS``."""
    try:
        weight = float(alpha)
    except (TypeError, ValueError):
        weight = float("nan")
    if not 0.0 <= weight <= 1.0:  # NaN fails too
        raise InputError("alpha must be between 0 and 1 (the heat map's weight), not %r" % (alpha,))
    if colormap not in COLORMAPS:
        raise InputError("unknown colormap %r (choose from: %s)" % (colormap, ", ".join(COLORMAPS)))
    return weight, colormap


def _cv2_colormap(name):
    cv2 = import_cv2()

    key = "COLORMAP_" + name.upper()
    if not hasattr(cv2, key):
        raise ValueError("unknown colormap %r (choose from: %s)" % (name, ", ".join(COLORMAPS)))
    return getattr(cv2, key)


_LUTS = {}


def _rgb_lut(colormap):
    """(256, 1, 3) uint8 RGB table of a colormap: cv2.LUT with it is applyColorMap, ~15x faster."""
    if colormap not in _LUTS:
        cv2 = import_cv2()

        bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), _cv2_colormap(colormap))
        _LUTS[colormap] = np.ascontiguousarray(bgr[..., ::-1])
    return _LUTS[colormap]


def colorize(mask, colormap=DEFAULT_COLORMAP):
    """float mask in [0, 1] (h, w) -> uint8 RGB (h, w, 3)."""
    cv2 = import_cv2()

    levels = np.clip(np.asarray(mask, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if colormap == "gray":
        return np.repeat(levels[..., None], 3, axis=2)
    return cv2.LUT(cv2.cvtColor(levels, cv2.COLOR_GRAY2BGR), _rgb_lut(colormap))


def resize_to(image, hw):
    """Resize an image or mask to (h, w); smooth (linear) so upscaled masks do not look blocky."""
    cv2 = import_cv2()

    if image.shape[:2] == tuple(hw):
        return image
    return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def blend(frame, colored, alpha=DEFAULT_ALPHA):
    """alpha * colored + (1 - alpha) * frame, uint8 RGB of the frame's size."""
    cv2 = import_cv2()

    colored = resize_to(colored, frame.shape[:2])
    return cv2.addWeighted(colored, float(alpha), frame, 1.0 - float(alpha), 0.0)


def to_rgb(frame):
    """Grayscale (h, w) or (h, w, 1) -> RGB; RGB passes through."""
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    return np.repeat(frame.reshape(frame.shape[0], frame.shape[1], 1), 3, axis=2)


def overlay(frame, mask, alpha=DEFAULT_ALPHA, colormap=DEFAULT_COLORMAP):
    """The heat map of ``mask`` over ``frame`` (uint8 RGB, any size): the picture users watch."""
    frame = to_rgb(frame)
    return blend(frame, resize_to(colorize(mask, colormap), frame.shape[:2]), alpha)


def mask_to_uint8(mask):
    """float [0, 1] -> uint8 (h, w) for recording and streaming as grayscale."""
    return np.clip(np.asarray(mask, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def side_by_side(*images):
    """Images of equal height next to each other (review video, web snapshots)."""
    height = max(i.shape[0] for i in images)
    fitted = [resize_to(to_rgb(i), (height, int(round(i.shape[1] * height / float(i.shape[0]))))) for i in images]
    return np.concatenate(fitted, axis=1)


def stretch(values):
    """A map min-max normalised to [0, 1] on its own, for display; and whether it was flat (constant:
    all zeros then)."""
    values = np.asarray(values, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    if high - low <= FLAT:
        return np.zeros(values.shape, dtype=np.float32), True
    return (values - low) / (high - low), False


def layer_picture(level_map, colormap="inferno", width=LAYER_DISPLAY_WIDTH):
    """One layer's averaged map -> uint8 RGB for display: min-max normalised on its own (a constant
    map is black), coloured, scaled up by a whole factor with nearest neighbours."""
    cv2 = import_cv2()

    values = np.nan_to_num(np.asarray(level_map, dtype=np.float32))
    if values.ndim != 2 or values.size == 0:
        raise ValueError("a layer map must be a non-empty (h, w) array, not shape %s" % (values.shape,))
    picture = colorize(stretch(values)[0], colormap)
    factor = max(1, int(width // max(1, values.shape[1])))
    if factor > 1:
        picture = cv2.resize(picture, (values.shape[1] * factor, values.shape[0] * factor),
                             interpolation=cv2.INTER_NEAREST)
    return picture
