"""The programmatic API: a pilot's fused graph on a backend, with input checking.

``Saliency.mask(rgb)`` is the contract other tools rely on: float32 (H, W) in [0, 1] at the
model's input size.
"""
import numpy as np

from . import backends
from .errors import InputError
from .graph import graph_for
from .methods import DEFAULT_METHOD, MethodMasks
from .opencv import import_cv2


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


class Saliency(object):
    """A pilot's saliency graph running on one backend.

    ``method`` (``methods.METHODS``): ``vbp`` is the graph's own mask. Another method is computed
    after inference from the graph's outputs and the pilot's gradients (TensorFlow, a Keras pilot:
    ``steering.GradientModel``), until the graph computes it itself."""

    def __init__(self, graph, backend, method=DEFAULT_METHOD, model_path=None):
        self.graph = graph
        self.backend = backend
        self.method_masks = MethodMasks(method, model_path)

    @property
    def method(self):
        return self.method_masks.method

    @classmethod
    def open(cls, model_path, backend="auto", cache_dir=None, features=False, method=DEFAULT_METHOD,
             **backend_options):
        MethodMasks(method, model_path)  # an unknown method fails before the graph is built
        graph = graph_for(model_path, cache_dir=cache_dir, features=features)
        return cls(graph, backends.create(graph, backend, **backend_options), method, model_path)

    @property
    def input_shape(self):
        return self.graph.input_shape

    @property
    def layer_names(self):
        return self.graph.layer_names

    def infer(self, frames):
        """Every graph output for a batch: ``mask``, ``mean_i`` (and ``features_i``), each (N, ...)."""
        return self.backend.infer(prepare_batch(frames, self.graph.input_shape))

    def masks(self, frames):
        """float32 (N, H, W) masks of ``self.method``."""
        x = prepare_batch(frames, self.graph.input_shape)
        return self.method_masks(x, self.backend.infer(x), self.graph.mask_name, self.graph.mean_names)

    def mask(self, rgb):
        """float32 (H, W) in [0, 1] at the model's input size, for one frame."""
        if self.method != DEFAULT_METHOD:
            return self.masks(prepare_frame(rgb, self.graph.input_shape)[None])[0]
        return self.backend.infer(prepare_frame(rgb, self.graph.input_shape)[None])[self.graph.mask_name][0]

    def close(self):
        self.backend.close()

    def __enter__(self):
        self.backend.activate()
        return self

    def __exit__(self, *exc):
        self.close()
        return False
