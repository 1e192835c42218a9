"""The pilot's own steering, and its gradients, computed by the pilot's framework (TensorFlow).

For the tools that judge or compute masks off the car (``evaluate``, the gradient methods in
``methods.py``): Keras for .h5/.keras, the TFLite interpreter for .tflite. TensorFlow is a
development dependency; nothing on the car imports this module.
"""
import numpy as np

from .console import quiet_stdout
from .errors import ModelError, first_line
from .methods import gradient_relevance
from .pilots import check_pilot_file, load_pilot, reference


def _decoders(angle_size, categorical):
    """{name: function (N, k) angle output -> (N,) steering}, the primary one first."""
    if not categorical:
        return [("steering", lambda out: out[:, 0])]
    with quiet_stdout():  # donkeycar prints its banner on import; stdout is for the table
        from donkeycar.utils import linear_unbin

    bins = np.linspace(-1.0, 1.0, angle_size)
    return [("expected", lambda out: out @ bins),
            ("linear_unbin", lambda out: np.array([linear_unbin(row, N=angle_size) for row in out]))]


class PilotSteering(object):
    """The pilot's steering for uint8 frames (N, H, W, C), batched, from the pilot's own framework:
    Keras (``tf.keras.models.load_model``) for .h5/.keras, ``tf.lite.Interpreter`` for .tflite.
    Inputs other than the image (a memory pilot's ``mem_in``) get zeros: donkeycar's start memory
    with ``mem_start_speed`` 0. A categorical pilot is decoded two ways: the expected value over
    the 15 bins (smooth; the primary figure) and donkeycar's ``linear_unbin`` (the argmax it drives by)."""

    def __init__(self, path, batch=256):
        self.path = path
        self.batch = batch
        self.tflite = path.lower().endswith(".tflite")
        check_pilot_file(path)  # TensorFlow Lite's loader does not verify files: a damaged one can crash it
        try:
            input_shapes, output_sizes = self._load(path)
        except (OSError, ValueError, RuntimeError, TypeError) as error:
            raise ModelError("%s: not a pilot TensorFlow can load (%s)" % (path, first_line(error, 120)))
        images = [i for i, s in enumerate(input_shapes) if len(s) == 3]
        if not images:
            raise ModelError("%s has no image input" % path)
        self.image_input = images[0]
        self.input_shapes = input_shapes
        self.input_shape = tuple(int(v) for v in input_shapes[self.image_input])
        categorical = [i for i, size in enumerate(output_sizes) if size == 15]
        self.angle_output = categorical[0] if categorical else 0
        self.categorical = bool(categorical)
        self.decoders = _decoders(output_sizes[self.angle_output], self.categorical)
        extra = len(input_shapes) > 1
        self.kind = ("categorical" if self.categorical else "memory" if extra
                     else "inferred" if len(output_sizes) == 1 and output_sizes[0] == 1 else "linear")
        self.note = {
            "categorical": "angle from the 15-bin softmax: expected value over bins (primary) and "
                           "donkeycar.utils.linear_unbin (argmax)",
            "memory": "memory input (previous angle/throttle) all zeros, donkeycar's start memory",
        }.get(self.kind, "angle output as is")

    def _load(self, path):
        """(input shapes without the batch, output sizes) of the loaded pilot."""
        import tensorflow as tf

        if self.tflite:
            self.interpreter = tf.lite.Interpreter(model_path=path, num_threads=2)
            self._inputs = self.interpreter.get_input_details()
            self._outputs = self.interpreter.get_output_details()
            return ([tuple(d["shape"][1:]) for d in self._inputs],
                    [int(np.prod(d["shape"][1:])) for d in self._outputs])
        self.model = tf.keras.models.load_model(path, compile=False)
        return ([tuple(t.shape[1:]) for t in self.model.inputs],
                [int(np.prod(t.shape[1:])) for t in self.model.outputs])

    @property
    def decoding_names(self):
        return [name for name, _ in self.decoders]

    def input_feeds(self, count):
        """Zeros for every input (the image's place is overwritten by the caller)."""
        return [np.zeros((count,) + tuple(int(v) for v in s), np.float32) for s in self.input_shapes]

    def _raw(self, x):
        """The angle output for float frames in [0, 1]."""
        if not self.tflite:
            feeds = self.input_feeds(len(x))
            feeds[self.image_input] = x
            out = self.model(feeds if len(feeds) > 1 else x, training=False)
            out = out if isinstance(out, (list, tuple)) else [out]
            return np.asarray(out[self.angle_output]).reshape(len(x), -1)
        interp = self.interpreter
        for detail, shape in zip(self._inputs, self.input_shapes):
            interp.resize_tensor_input(detail["index"], [len(x)] + [int(v) for v in shape])
        interp.allocate_tensors()
        for i, (detail, feed) in enumerate(zip(self._inputs, self.input_feeds(len(x)))):
            interp.set_tensor(detail["index"], x if i == self.image_input else feed)
        interp.invoke()
        return interp.get_tensor(self._outputs[self.angle_output]["index"]).reshape(len(x), -1)

    def __call__(self, frames):
        """{decoding: (N,) steering} for uint8 frames (N, H, W, C)."""
        frames = np.asarray(frames)
        raw = np.concatenate([self._raw(frames[i:i + self.batch].astype(np.float32) / 255.0)
                              for i in range(0, len(frames), self.batch)])
        return {name: np.asarray(decode(raw), np.float64) for name, decode in self.decoders}


class GradientModel(object):
    """Gradients of the primary steering (expected value for a categorical pilot) by TensorFlow,
    for the gradient methods: w.r.t. the input, and w.r.t. one conv level's activations.
    Keras pilots only (the TFLite interpreter gives no gradients)."""

    def __init__(self, steering, pilot, batch=32):
        import tensorflow as tf

        if pilot.format != "keras":
            raise ModelError("%s: gradients need a Keras pilot (.h5/.keras); the TFLite interpreter gives none"
                             % pilot.path)
        model = reference.keras_model(pilot.path)
        self.steering = steering
        self.batch = batch
        self.model = tf.keras.Model(model.inputs, reference.map_tensors(model, pilot.trunk) + list(model.outputs))
        self.levels = len(pilot.trunk.map_sources)
        self.bins = tf.constant(np.linspace(-1, 1, 15), tf.float32)
        self._cache = {}

    @classmethod
    def open(cls, model_path):
        pilot = load_pilot(model_path)
        return cls(PilotSteering(model_path), pilot), pilot.trunk.steps

    def _steer(self, outputs):
        import tensorflow as tf

        angle = outputs[self.levels + self.steering.angle_output]
        if self.steering.categorical:
            return tf.reduce_sum(angle * self.bins, axis=-1)
        return angle[:, 0]

    def _one_batch(self, x, level):
        import tensorflow as tf

        feeds = [tf.constant(f) for f in self.steering.input_feeds(len(x))]
        feeds[self.steering.image_input] = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(feeds[self.steering.image_input])
            outputs = self.model(feeds if len(feeds) > 1 else feeds[0], training=False)
            total = tf.reduce_sum(self._steer(outputs))
        if level is None:
            grad = tape.gradient(total, feeds[self.steering.image_input])
            return np.abs(np.asarray(grad)).sum(axis=-1)
        grad = tape.gradient(total, outputs[level])

        return gradient_relevance(np.asarray(outputs[level]), np.asarray(grad))

    def maps(self, frames, level=None):
        """(N, h, w): the input gradient's |d steering / d pixel| summed over colours (level None),
        or ``methods.gradient_relevance`` at conv level ``level``. The last answer per level is
        kept: several methods ask for the same map of the same frames."""
        import hashlib

        frames = np.ascontiguousarray(frames)
        key = (level, frames.shape, hashlib.sha1(frames.data).hexdigest())
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != level}
            self._cache[key] = self._compute(frames, level)
        return self._cache[key]

    def _compute(self, frames, level):
        return np.concatenate([self._one_batch(frames[i:i + self.batch].astype(np.float32) / 255.0, level)
                               for i in range(0, len(frames), self.batch)])
