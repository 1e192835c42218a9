"""``SaliencyInterpreter``: a donkeycar ``Interpreter`` that runs the whole pilot as one graph.

donkeycar's ``KerasPilot`` runs its network through an interpreter (``donkeycar/parts/interpreter.py``,
donkeycar 4.4-5.3; both its interfaces: 4.x ``predict``/``get_input_shapes``, 5.x ``predict_from_dict``/
``get_input_shape``) and decodes the outputs itself (categorical unbinning, memory, ...). This one runs
the project's whole-pilot graph (``graph.build(network=...)``, float input: KerasPilot normalizes the
frame itself) on the project's backend, returns the pilot's outputs exactly as KerasInterpreter /
TfLite do, and keeps the mask of the same pass: ``latest_mask`` (float32 H x W), and listeners that get
it with the frame it belongs to (``SaliencyPart.accept_mask``). No TensorFlow is needed to run it.

donkeycar is imported when the class is first made (:func:`interpreter_class`), never at import.
"""
import logging
import time

import numpy as np

from ..api import Saliency
from ..errors import ModelError
from ..compute.graph import graph_for
from ..pilots import load_pilot

logger = logging.getLogger(__name__)

_CLASS = []  # the class, made once


def interpreter_class():
    """The ``SaliencyInterpreter`` class, a subclass of donkeycar's ``Interpreter``."""
    if not _CLASS:
        from donkeycar.parts.interpreter import Interpreter

        _CLASS.append(type("SaliencyInterpreter", (_SharedPass, Interpreter), {"__module__": __name__}))
    return _CLASS[0]


def SaliencyInterpreter(backend="auto", cache_dir=None, backend_options=None, head=True):  # noqa: N802 - makes that class
    return interpreter_class()(backend=backend, cache_dir=cache_dir, backend_options=backend_options, head=head)


class _SharedPass(object):
    """What ``SaliencyInterpreter`` adds to donkeycar's ``Interpreter`` (see the module docstring)."""

    def __init__(self, backend="auto", cache_dir=None, backend_options=None, head=True):
        super(_SharedPass, self).__init__()
        # head=False: the pilot alone (no mask in the pass; a gradient method's mask is computed by the
        # part's worker on its own graph, off the drive loop).
        self.head = head
        self.backend_name = backend
        self.cache_dir = cache_dir
        self.backend_options = dict(backend_options or {})
        self.saliency = None  # the whole-pilot graph on its backend (api.Saliency)
        self.model_path = None
        self.latest_mask = None  # float32 (H, W) in [0, 1]: the mask of the newest predict
        self.latest_means = None  # per conv layer, float32 (h, w)
        self._listeners = []
        self._tflite = False

    @property
    def graph(self):
        """The whole-pilot graph it runs (None before ``load``)."""
        return self.saliency.graph if self.saliency is not None else None

    # --- donkeycar's Interpreter interface ---------------------------------------------------------
    def load(self, model_path):
        """Read the pilot (.h5/.keras/.tflite; no TensorFlow) and build (or take from the cache) its graph."""
        self.model_path = str(model_path)
        graph = graph_for(self.model_path, cache_dir=self.cache_dir, whole=True, float_input=True, head=self.head)
        if not graph.float_input:  # an exported .onnx: the part's graph, without the pilot's outputs
            raise ModelError("%s is a saliency graph without the pilot's outputs; give the pilot file (.h5, "
                             ".keras or .tflite)" % self.model_path)
        self.close()  # a new model: activated again on the next predict
        self.saliency = Saliency(graph, self.backend_name, self.backend_options)
        pilot = graph.pilot
        self._tflite = self.model_path.lower().endswith(".tflite")
        self.input_keys = list(pilot["input_order"])
        self.output_keys = list(pilot["outputs"])
        shapes = dict(pilot["inputs"])
        shapes[pilot["image"]] = list(graph.input_shape)
        self.shapes = ({name: self._shape(shapes[name]) for name in self.input_keys}, {})

    def set_model(self, pilot):
        """KerasInterpreter builds the Keras model here; the graph comes from ``load`` instead."""

    def set_optimizer(self, optimizer):
        pass

    def compile(self, **kwargs):
        pass

    def get_input_shape(self, input_name):
        """As donkeycar's interpreter for the file gives it: (None, ...) like Keras, or TfLite's
        int32 array with batch 1."""
        if self.saliency is None:
            raise RuntimeError("load a model first")
        if input_name not in self.shapes[0]:
            raise RuntimeError("%s is not an input of %s" % (input_name, self.model_path))
        return self.shapes[0][input_name]

    def get_input_shapes(self):
        """donkeycar 4.4/4.5's name for it: every input's shape, in the model's input order."""
        return [self.get_input_shape(name) for name in self.input_keys]

    def predict(self, img_arr, *other_arr):
        """donkeycar 4.4/4.5 call ``predict(img, other_or_None)``; 5.x ``predict(img, *others)``."""
        others = tuple(a for a in other_arr if a is not None)
        return self.predict_from_dict(dict(zip(self.input_keys, (img_arr,) + others)))

    def predict_from_dict(self, input_dict):
        """The pilot's outputs for one sample (the batch axis removed; a list when there are several),
        as KerasInterpreter and TfLite return them; the mask goes to ``latest_mask`` and the listeners."""
        pilot = self.saliency.pilot
        image = np.asarray(input_dict[pilot["image"]], dtype=np.float32)
        extra = {name: np.asarray(input_dict[name], dtype=np.float32).reshape(shape) for name, shape in pilot["inputs"]}
        started = time.monotonic()
        # In the thread that predicts (CUDA contexts are per thread); an engine that fails, at activation
        # or on a frame, is replaced by ONNX Runtime on the same graph (api.Saliency's fallback).
        activating = self.saliency.backend is None
        outputs = self.saliency.infer_frame(image, extra)
        infer_ms = (time.monotonic() - started) * 1000.0
        if activating:
            logger.info("saliency: the pilot runs on %s", self.saliency.describe())
        if not self.head:  # the pilot alone: the part's worker computes the mask on its own graph
            values = [outputs[name] for name in self.output_keys]
            return values if len(values) > 1 else values[0]
        self.latest_mask = self.saliency.mask_of(outputs)
        self.latest_means = self.saliency.means_of(outputs)
        for callback in list(self._listeners):
            try:
                callback(image, self.latest_mask, self.latest_means, infer_ms)
            except Exception as error:  # the pilot must drive on whatever a listener does
                logger.warning("saliency: a mask listener failed: %s", error)
        values = [outputs[name] for name in self.output_keys]
        return values if len(values) > 1 else values[0]

    def summary(self):
        return "SaliencyInterpreter(%s, %s)" % (self.model_path, self.saliency.describe() if self.saliency else
                                                self.backend_name)

    # --- what it adds ------------------------------------------------------------------------------
    def add_listener(self, callback):
        """``callback(image, mask, means, infer_ms)`` after each predict, in the caller's thread (the drive
        loop): keep it short. ``image`` is the pilot's normalized float32 frame (H, W, C)."""
        self._listeners.append(callback)

    def close(self):
        if self.saliency is not None:
            self.saliency.close()

    def _shape(self, shape):
        if self._tflite:
            return np.array([1] + list(shape), dtype=np.int32)
        return (None,) + tuple(shape)

    def __str__(self):
        return "SaliencyInterpreter"


# donkeycar's pilot classes by model type (donkeycar.utils.get_model_by_type), and what each takes from cfg.
_PILOT_CLASSES = {"linear": "KerasLinear", "categorical": "KerasCategorical", "inferred": "KerasInferred",
                  "imu": "KerasIMU", "memory": "KerasMemory", "behavior": "KerasBehavioral",
                  "localizer": "KerasLocalizer"}
_PREFIXES = ("tflite_", "tensorrt_")


def pilot_on_saliency_interpreter(model_path, model_type=None, cfg=None, backend="auto", cache_dir=None,
                                  backend_options=None):
    """donkeycar's pilot for ``model_type`` (None: the type the file says) on a SaliencyInterpreter, loaded."""
    interpreter = SaliencyInterpreter(backend=backend, cache_dir=cache_dir, backend_options=backend_options)
    if model_type is None:
        model_type = load_pilot(model_path).trunk.model_type
    used = str(model_type)
    for prefix in _PREFIXES:
        used = used.replace(prefix, "")
    if used not in _PILOT_CLASSES:
        raise ModelError("model type %r has no single-frame donkeycar pilot saliency can share (it has %s)"
                         % (model_type, ", ".join(sorted(_PILOT_CLASSES))))
    from donkeycar.parts import keras as pilots

    options = {}
    if cfg is not None:
        options["input_shape"] = (cfg.IMAGE_H, cfg.IMAGE_W, cfg.IMAGE_DEPTH)
        if used in ("categorical", "behavior"):
            options["throttle_range"] = cfg.MODEL_CATEGORICAL_MAX_THROTTLE_RANGE
        if used == "memory":
            options.update(mem_length=getattr(cfg, "SEQUENCE_LENGTH", 3), mem_depth=getattr(cfg, "MEM_DEPTH", 0))
        if used == "behavior":
            options["num_behavior_inputs"] = len(cfg.BEHAVIOR_LIST)
        if used == "localizer":
            options["num_locations"] = cfg.NUM_LOCATIONS
    pilot = getattr(pilots, _PILOT_CLASSES[used])(interpreter=interpreter, **options)
    pilot.load(str(model_path))
    return pilot
