"""The programmatic API, and the one owner of "a graph on a backend": ``Saliency``.

The part, the shared-pilot interpreter and every tool hold one. It activates the backend in the
thread that will infer (with the fallback from a failing TensorRT to ONNX Runtime), runs frames, and
reads the graph's outputs for its callers, who never need the graph's tensor names.

``Saliency.mask(rgb)`` is the contract other tools rely on: float32 (H, W) in [0, 1] at the
model's input size.
"""
import logging

import numpy as np

from . import backends
from .errors import InputError, ModelError, first_line
from .compute.frames import prepare_batch, prepare_frame
from .compute.graph import graph_for
from .compute.methods import DEFAULT_METHOD, DEFAULT_OUTPUT, VBP, MethodMasks, check_output
from .pilots.decode import ANGLE_BINS, angle_and_throttle, expected_steering, steering_decodings

logger = logging.getLogger(__name__)


class Saliency(object):
    """A pilot's saliency graph running on one backend.

    ``backend``: a backend name (``backends.names()``), or a backend instance to run as it is.
    ``method`` (``methods.METHODS``): ``vbp`` is the graph's own mask; the others are computed from the
    graph's backward pass of ``output`` (steering | throttle), in the same run. ``level``: Grad-CAM's
    conv level (default the deepest).

    The fallback (``activate(fallback=True)``, the default, and what ``with`` does): a backend other
    than ONNX Runtime that fails to activate, or whose engine fails while running a frame, is
    replaced by ONNX Runtime on the same graph - one warning each time - and the frame is run again
    there. ONNX Runtime's own failures are raised."""

    def __init__(self, graph, backend="auto", backend_options=None, method=DEFAULT_METHOD, model_path=None,
                 level=None):
        self.graph = graph
        self.backend_name = backend if isinstance(backend, str) else getattr(backend, "name", "custom")
        self.backend_options = dict(backend_options or {})
        self.backend = None if isinstance(backend, str) else backend
        self.fallback = True
        self.method_masks = MethodMasks(method, model_path, level)

    @classmethod
    def open(cls, model_path, backend="auto", cache_dir=None, features=False, method=DEFAULT_METHOD,
             output=DEFAULT_OUTPUT, level=None, whole=False, float_input=False, head=True, strict=True,
             backend_options=None, **more_backend_options):
        """The graph for a pilot file (built, or from the cache), on ``backend``; not yet activated.
        ``whole``: the pilot's own outputs too; ``head=False``: the pilot alone (``vbp``, no mask).
        ``strict=False``: a graph that cannot compute the method (an exported graph without the backward
        pass) is taken anyway; its masks then fail, and the part falls back to ``vbp``."""
        backend_options = dict(backend_options or {}, **more_backend_options)
        methods = MethodMasks(method, model_path, level)  # an unknown method fails before the graph is built
        check_output(output)
        graph = graph_for(model_path, cache_dir=cache_dir, features=features, whole=whole, float_input=float_input,
                          head=head, output=output if methods.output_needed else None,
                          keep=methods.needed_outputs(features) if methods.output_needed else None)
        if strict and methods.output_needed and graph.output is None:
            raise InputError("method %s needs the pilot file or a graph exported with --output, not %s"
                             % (method, model_path))
        return cls(graph, backend, backend_options, method, model_path, level)

    # --- what the graph is ----------------------------------------------------------------------
    @property
    def method(self):
        return self.method_masks.method

    @property
    def output(self):
        """The output the masks explain (steering | throttle); None for ``vbp``, which reads no output."""
        return self.graph.output

    @property
    def input_shape(self):
        return self.graph.input_shape

    @property
    def input_hw(self):
        return self.graph.input_hw

    @property
    def layer_names(self):
        return self.graph.layer_names

    @property
    def source(self):
        """The pilot file the graph was built from (as the graph records it)."""
        return self.graph.source

    @property
    def pilot(self):
        """What the whole-pilot graph carries of the pilot (its inputs and outputs), else None."""
        return self.graph.pilot

    def describe(self):
        return self.backend.describe() if self.backend is not None else self.backend_name

    # --- the lifecycle ---------------------------------------------------------------------------
    def activate(self, fallback=True):
        """Create and activate the backend in this thread (the one that will infer: CUDA contexts are
        per thread). ``fallback``: see the class docstring; without it a failure is raised."""
        self.fallback = fallback
        if self.backend is None:
            if fallback:
                self.backend = backends.activate_with_fallback(self.graph, self.backend_name, self.backend_options)
            else:
                self.backend = backends.create(self.graph, self.backend_name, **self.backend_options)
        self.backend.activate()
        return self

    def close(self):
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()

    def __enter__(self):
        return self.activate(fallback=True)

    def __exit__(self, *exc):
        self.close()
        return False

    # --- running frames --------------------------------------------------------------------------
    def infer(self, frames, extra=None):
        """Every graph output for a batch: ``mask``, ``mean_i`` (and ``features_i``, and a whole
        pilot's outputs), each (N, ...). ``frames``: uint8 (N, H, W, C) frames of any size, or the
        pilot's float images (a whole-pilot graph); ``extra``: its other inputs by name."""
        batch = frames if self.graph.float_input else prepare_batch(frames, self.graph.input_shape)
        return self._run(batch, extra)

    def infer_frame(self, frame, extra=None):
        """Every graph output for one frame at the model's input size (and ``extra``, a whole pilot's
        other inputs for it), the batch axis removed."""
        extra = {name: value[None] for name, value in extra.items()} if extra else None
        return {name: value[0] for name, value in self._run(frame[None], extra).items()}

    def _run(self, batch, extra=None):
        # a whole-pilot graph's other inputs default to zeros (donkeycar's start memory, no behaviour,
        # a still IMU): what a mask of the image alone holds them at
        feeds = self.graph.default_feeds(len(batch))
        feeds.update(extra or {})
        extra = feeds
        if self.backend is None:
            self.activate(self.fallback)
        try:
            return self.backend.infer(batch, extra) if extra else self.backend.infer(batch)
        except Exception as error:
            if not self._falls_back_from(self.backend):
                raise
            failed = self.backend
            logger.warning("saliency backend %s failed while running (%s); running the same graph on %s from now on",
                           failed.name, first_line(error, None), backends.FALLBACK)
        self.backend = None
        try:
            failed.close()
        except Exception as error:  # a broken engine must not keep its replacement from starting
            logger.warning("saliency: closing the failed backend %s: %s", failed.name, first_line(error, None))
        self.backend = backends.backend_class(backends.FALLBACK)(self.graph, **self.backend_options).activate()
        return self.backend.infer(batch, extra) if extra else self.backend.infer(batch)

    def _falls_back_from(self, backend):
        """Only a registered backend other than ONNX Runtime is replaced (a wrapper that injects faults
        in a test has no registered name, and ONNX Runtime has nothing to fall back to)."""
        name = getattr(backend, "name", None)
        return self.fallback and name in backends.names() and name not in ("auto", backends.FALLBACK)

    # --- reading the outputs ---------------------------------------------------------------------
    def mask_of(self, outputs):
        """The graph's own (VisualBackProp) mask in ``outputs`` (of a batch, or of one frame)."""
        return outputs[self.graph.mask_name]

    def pilot_outputs_of(self, outputs):
        """A whole-pilot graph's own outputs in ``outputs``, in donkeycar's order (its interpreters')."""
        return [outputs[name] for name in self.graph.pilot["outputs"]]

    def means_of(self, outputs):
        """Each conv layer's channel-averaged map in ``outputs``, shallow to deep."""
        return [outputs[name] for name in self.graph.mean_names]

    def method_masks_of(self, outputs, method_masks=None):
        """(N, H, W) masks of the configured method (or of ``method_masks``) from the graph's ``outputs``
        for a batch."""
        return (method_masks or self.method_masks)(outputs)

    def masks(self, frames):
        """float32 (N, H, W) masks of ``self.method``."""
        return self.method_masks_of(self.infer(frames))

    def mask(self, rgb):
        """float32 (H, W) in [0, 1] at the model's input size, for one frame."""
        return self.masks(prepare_frame(rgb, self.graph.input_shape)[None])[0]


class PilotPass(object):
    """A pilot's own outputs for uint8 frames (any size: fitted to the pilot's input), from its whole
    graph on a backend (``Saliency.open(whole=True)``): the one way the tools read a pilot's steering
    and throttle, as the car's ``SaliencyInterpreter`` does; no TensorFlow. ``masks=True``: also the
    masks of ``method`` from the same pass (``masks_and_steering``); else the pilot alone. Inputs
    besides the image get zeros: donkeycar's start memory (``mem_start_speed`` 0). The backend starts
    in the thread of the first pass (CUDA contexts are per thread)."""

    BATCH = 64

    def __init__(self, model_path, backend="auto", masks=False, method=DEFAULT_METHOD, output=DEFAULT_OUTPUT,
                 level=None, batch=BATCH):
        if not masks:
            method = VBP  # the pilot alone: no backward pass, no mask
        self.saliency = Saliency.open(model_path, backend, method=method, output=output, level=level, whole=True,
                                      head=masks)
        if self.saliency.pilot is None:
            raise ModelError("%s is an exported saliency graph without the pilot's outputs; give the pilot file "
                             "(.h5, .keras or .tflite)" % model_path)
        self.path = model_path
        self.batch = batch
        self.input_shape = self.saliency.input_shape
        self._sizes = None  # each output's width, learnt from the first pass

    def _pass(self, frames):
        outputs = self.saliency.infer(frames)
        values = [np.asarray(v).reshape(len(v), -1) for v in self.saliency.pilot_outputs_of(outputs)]
        self._sizes = self._sizes or [v.shape[1] for v in values]
        return outputs, values

    def _angle(self, values):
        """The steering output: a categorical pilot's 15-bin softmax, else the first output."""
        return next((v for v in values if v.shape[1] == ANGLE_BINS), values[0])

    def outputs(self, frames):
        """Per output, in donkeycar's order: (N, k) values, ``batch`` frames per pass."""
        parts = [self._pass(frames[i:i + self.batch])[1] for i in range(0, len(frames), self.batch)]
        return [np.concatenate(column) for column in zip(*parts)] if parts else []

    def steering(self, frames):
        """(N,) steering: a categorical pilot's expected value over its bins (smooth), else its angle."""
        return expected_steering(self._angle(self.outputs(frames)))

    def steering_decodings(self, frames):
        """{decoding: (N,) steering}, the primary one first: a categorical pilot's expected value and
        donkeycar's arg-max (``linear_unbin``); else {'steering': the angle output}."""
        return steering_decodings(self._angle(self.outputs(frames)))

    def angle_and_throttle(self, frames):
        """[(angle, throttle) as donkeycar drives them, or None where the layout is not one it reads]."""
        values = self.outputs(frames)
        return [angle_and_throttle([v[i] for v in values]) for i in range(len(frames))]

    def masks_and_steering(self, frames):
        """(N, H, W) masks of the method and (N,) steering from one pass over one batch (``masks=True``)."""
        outputs, values = self._pass(frames)
        return np.asarray(self.saliency.method_masks_of(outputs), np.float32), expected_steering(self._angle(values))

    @property
    def kind(self):
        """categorical | memory (inputs besides the image) | inferred (one output of one value) | linear."""
        if self._sizes is None:
            self._pass(np.zeros((1,) + tuple(self.input_shape), np.uint8))
        if ANGLE_BINS in self._sizes:
            return "categorical"
        if self.saliency.pilot["inputs"]:
            return "memory"
        return "inferred" if self._sizes == [1] else "linear"

    def close(self):
        self.saliency.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def pilot_values_for(model_path, backend="auto"):
    """The pilot's values for the review page and the video: a :class:`PilotPass`, or None (one warning)
    for an exported graph that carries no pilot outputs."""
    if str(model_path).lower().endswith(".onnx") and graph_for(model_path).pilot is None:
        logger.warning("pilot values n/a: %s is an exported saliency graph without the pilot's outputs", model_path)
        return None
    return PilotPass(model_path, backend)
