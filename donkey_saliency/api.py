"""The programmatic API: a pilot's fused graph on a backend, with input checking.

``Saliency.mask(rgb)`` is the contract other tools rely on: float32 (H, W) in [0, 1] at the
model's input size.
"""
from . import backends
from .frames import prepare_batch, prepare_frame
from .graph import graph_for
from .methods import DEFAULT_METHOD, MethodMasks


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
