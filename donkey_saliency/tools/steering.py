"""The pilot's own steering, computed by the pilot's framework (TensorFlow): what ``evaluate`` judges
masks by, off the car. Keras for .h5/.keras, the TFLite interpreter for .tflite. TensorFlow is a
development dependency; nothing on the car imports this module.
"""
import numpy as np

from ..errors import ModelError, first_line
from ..pilots import check_pilot_file
from ..pilots.decoding import linear_unbin


def _decoders(angle_size, categorical):
    """{name: function (N, k) angle output -> (N,) steering}, the primary one first."""
    if not categorical:
        return [("steering", lambda out: out[:, 0])]
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
