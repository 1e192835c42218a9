"""Load a pilot file and find its conv trunk: the image input and the spatial layers with their geometry.

Everything VisualBackProp needs is read from the model itself (kernel, stride, padding, sizes) -
never assumed from donkeycar's defaults, which differ between model types.

The trunk is a chain of :class:`Step` in forward order. ``conv`` steps own an averaged map (their
post-activation output); ``pool``, ``crop`` and ``pad`` steps are geometry only.
"""
import logging
import math
import os
from collections import namedtuple

from .errors import ModelError, first_line

logger = logging.getLogger(__name__)

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
TFLITE_SUFFIXES = (".tflite",)

Step = namedtuple("Step", "kind name kernel stride padding border in_hw out_hw channels")
Step.__doc__ = """One spatial layer of the trunk.

kind     'conv' | 'pool' | 'crop' | 'pad'
kernel   (kh, kw), dilation already folded in (effective extent); (1, 1) for crop/pad
stride   (sh, sw); (1, 1) for crop/pad
padding  'valid' | 'same' for conv/pool; None otherwise
border   ((top, bottom), (left, right)) removed by crop / added by pad; None otherwise
in_hw, out_hw  spatial sizes before and after the layer
channels output channels
"""


def pad_before(step):
    """(top, left) implicit zero padding of a conv/pool step (TF 'same' puts the odd pixel at the end)."""
    if step.padding != "same":
        return (0, 0)
    result = []
    for size_in, size_out, k, s in zip(step.in_hw, step.out_hw, step.kernel, step.stride):
        total = max((size_out - 1) * s + k - size_in, 0)
        result.append(total // 2)
    return tuple(result)


def conv_output_size(size_in, kernel, stride, padding):
    if padding == "same":
        return int(math.ceil(size_in / float(stride)))
    return (size_in - kernel) // stride + 1


def receptive_fields(steps):
    """Per step: (receptive field (h, w), jump (h, w)) in input pixels - the textbook recurrence."""
    field, jump, result = [1, 1], [1, 1], []
    for step in steps:
        for axis in (0, 1):
            field[axis] += (step.kernel[axis] - 1) * jump[axis]
            jump[axis] *= step.stride[axis]
        result.append((tuple(field), tuple(jump)))
    return result


class Trunk(object):
    """The image input's shape and the spatial steps, plus the tensors that produce the maps."""

    def __init__(self, input_shape, steps, map_handles, model_type):
        self.input_shape = tuple(input_shape)  # (H, W, C)
        self.steps = list(steps)
        # One handle per conv step (a Keras tensor or a TFLite tensor index): its averaged map's source.
        self.map_handles = list(map_handles)
        self.model_type = model_type

    @property
    def input_hw(self):
        return self.input_shape[:2]

    @property
    def convs(self):
        return [s for s in self.steps if s.kind == "conv"]

    @property
    def layer_names(self):
        return [s.name for s in self.convs]

    def table(self):
        """Rows for ``donkey-saliency summary``."""
        rows = []
        for step, (field, jump) in zip(self.steps, receptive_fields(self.steps)):
            rows.append(dict(layer=step.name, kind=step.kind, kernel=step.kernel, stride=step.stride,
                             padding=step.padding or ("crop %s" % (step.border,) if step.kind == "crop" else
                                                      "pad %s" % (step.border,)),
                             output="%dx%dx%d" % (step.out_hw + (step.channels,)), receptive_field=field,
                             jump=jump))
        return rows


# --------------------------------------------------------------------------------------------
# Keras (.h5 / .keras / SavedModel directory)

_POINTWISE_ACTIVATIONS = {"ReLU", "LeakyReLU", "ELU", "PReLU", "ThresholdedReLU", "Softmax"}
_POINTWISE_OTHER = {"BatchNormalization", "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
                    "AlphaDropout", "ActivityRegularization", "LayerNormalization", "Rescaling",
                    "Normalization", "Identity"}
_CONVS = {"Conv2D", "SeparableConv2D", "DepthwiseConv2D", "Convolution2D"}
_POOLS = {"MaxPooling2D", "AveragePooling2D", "MaxPool2D", "AvgPool2D"}
# Decoder branches (donkey's 'latent' model) hang off the trunk; they are not on the decision path.
_DECODER_BRANCH = {"Conv2DTranspose", "UpSampling2D"}


def load_keras(path):
    """The Keras model, or ModelError with one line saying why not."""
    try:
        import tensorflow as tf
    except ImportError:
        raise ModelError("reading a Keras pilot needs TensorFlow (pip install tensorflow); "
                         "or export the graph once elsewhere with 'donkey-saliency export'")
    try:
        return tf.keras.models.load_model(path, compile=False)
    except Exception as error:  # h5py, protobuf, zip and Keras each raise their own
        raise ModelError("cannot read %s as a Keras pilot: %s" % (path, first_line(error)))


def _class(layer):
    return layer.__class__.__name__


def _has_activation(layer):
    activation = getattr(layer, "activation", None)
    return activation is not None and getattr(activation, "__name__", "") != "linear"


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _refuse_sequence_models(model):
    classes = {_class(layer) for layer in model.layers}
    if "TimeDistributed" in classes:
        raise ModelError("this pilot reads a sequence of frames (donkey model type 'rnn', TimeDistributed "
                         "layers); saliency supports single-frame 2-D pilots (linear, categorical, inferred, "
                         "memory, behavior, localizer, imu)")
    if classes & {"Conv3D", "MaxPooling3D"}:
        raise ModelError("this pilot is a 3-D CNN over a sequence of frames (donkey model type '3d'); "
                         "saliency supports single-frame 2-D pilots (linear, categorical, inferred, memory, "
                         "behavior, localizer, imu)")


def _image_input(model):
    candidates = []
    for tensor in model.inputs:
        shape = tuple(tensor.shape)
        if len(shape) == 4 and shape[3] in (1, 3) and shape[1] and shape[2]:
            candidates.append(tensor)
    if not candidates:
        raise ModelError("the pilot has no image input (expected one of shape (H, W, 1 or 3); it has %s)"
                         % ", ".join(str(tuple(t.shape)[1:]) for t in model.inputs))
    named = [t for t in candidates if "img" in t.name]
    return (named or candidates)[0]


def _consumers(model, tensor):
    found = []
    for layer in model.layers:
        if _class(layer) == "InputLayer":
            continue
        for node in layer._inbound_nodes:  # Keras keeps no public consumer list
            inputs = node.input_tensors
            if not isinstance(inputs, (list, tuple)) and inputs is tensor:
                found.append((layer, node))
    return found


def _next_layer(model, tensor):
    """The single trunk layer consuming ``tensor``, or None where the chain ends or branches."""
    consumers = [(l, n) for l, n in _consumers(model, tensor) if _class(l) not in _DECODER_BRANCH]
    if len(consumers) == 1:
        return consumers[0]
    if len(consumers) > 1:
        logger.info("conv trunk ends where it branches into %s", ", ".join(l.name for l, _ in consumers))
    return None


def keras_trunk(model):
    """Walk the chain of spatial layers from the image input (see module docstring)."""
    _refuse_sequence_models(model)
    image = _image_input(model)
    height, width, channels = (int(d) for d in tuple(image.shape)[1:])
    steps, handles = [], []
    hw = (height, width)
    tensor = image
    conv_map = None  # (tensor, saw_activation) of the conv whose pointwise tail we are in
    while True:
        found = _next_layer(model, tensor)
        if found is None:
            break
        layer, node = found
        kind = _class(layer)
        out = node.output_tensors
        if isinstance(out, (list, tuple)):
            break
        out_shape = tuple(out.shape)
        if kind in _CONVS or kind in _POOLS:
            if len(out_shape) != 4:
                break
            config = layer.get_config()
            if kind in _CONVS:
                kernel = _pair(config["kernel_size"])
                dilation = _pair(config.get("dilation_rate", 1))
                kernel = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
                stride = _pair(config["strides"])
            else:
                kernel = _pair(config["pool_size"])
                stride = _pair(config["strides"] or config["pool_size"])
            padding = config["padding"].lower()
            if padding not in ("valid", "same"):
                raise ModelError("layer %s has padding %r; only 'valid' and 'same' are supported"
                                 % (layer.name, padding))
            out_hw = (int(out_shape[1]), int(out_shape[2]))
            expected = tuple(conv_output_size(i, k, s, padding) for i, k, s in zip(hw, kernel, stride))
            if expected != out_hw:
                raise ModelError("layer %s: output %s does not follow from its geometry (expected %s)"
                                 % (layer.name, out_hw, expected))
            step_kind = "conv" if kind in _CONVS else "pool"
            steps.append(Step(step_kind, layer.name, kernel, stride, padding, None, hw, out_hw, int(out_shape[3])))
            if step_kind == "conv":
                handles.append(out)
                conv_map = [len(handles) - 1, _has_activation(layer)]
            else:
                conv_map = None
            hw = out_hw
        elif kind in ("Cropping2D", "ZeroPadding2D"):
            border = tuple(tuple(int(v) for v in pair) for pair in layer.get_config()[
                "cropping" if kind == "Cropping2D" else "padding"])
            out_hw = (int(out_shape[1]), int(out_shape[2]))
            steps.append(Step("crop" if kind == "Cropping2D" else "pad", layer.name, (1, 1), (1, 1), None,
                              border, hw, out_hw, int(out_shape[3])))
            conv_map = None
            hw = out_hw
        elif kind in _POINTWISE_ACTIVATIONS or (kind == "Activation" and _has_activation(layer)):
            if conv_map is not None:
                handles[conv_map[0]], conv_map[1] = out, True
        elif kind in _POINTWISE_OTHER or kind in ("Activation", "Lambda"):
            if len(out_shape) != 4 or tuple(int(d) for d in out_shape[1:3]) != hw:
                break
            # Before any activation (conv -> BN -> ReLU) the map moves along; after it, it stays put.
            if conv_map is not None and not conv_map[1] and kind not in ("Dropout", "SpatialDropout2D"):
                handles[conv_map[0]] = out
        else:
            break  # Flatten, Dense, global pooling, merges: the trunk ends here
        tensor = out
    # Trailing geometry steps after the last conv do not affect the mask.
    while steps and steps[-1].kind != "conv":
        steps.pop()
    if not steps:
        raise ModelError("the pilot has no Conv2D layer on its image path, so there is nothing to explain")
    return Trunk((height, width, channels), steps, handles, _model_type(model))


def model_type_from_names(input_names, output_names):
    """donkey's model type from its input and output layer names (donkeycar's keras.py names them),
    or None when they say nothing. Shared by the Keras and TFLite readers."""
    inputs = " ".join(input_names)
    for hint, kind in (("mem_in", "memory"), ("behavior_in", "behavior"), ("imu_in", "imu")):
        if hint in inputs:
            return kind
    outputs = set(output_names)
    if "zloc" in outputs:
        return "localizer"
    if {"angle_out", "throttle_out"} <= outputs:
        return "categorical"
    dense_outputs = [name for name in outputs if name.startswith("n_outputs")]
    if dense_outputs:
        return "linear" if len(dense_outputs) > 1 else "inferred"
    return None


def _model_type(model):
    """donkey's model type (for messages and summaries), else the Keras model's name."""
    guess = model_type_from_names([t.name for t in model.inputs], model.output_names)
    return guess or model.name or "keras"


class Pilot(object):
    """A loaded pilot: its file, its trunk, and two ways to compute the trunk's maps."""

    def __init__(self, path, trunk, keras_model=None, tflite_path=None):
        self.path = path
        self.trunk = trunk
        self.keras_model = keras_model
        self.tflite_path = tflite_path

    def feature_maps(self, frames):
        """Post-activation maps (N, h, w, C) of each conv step for uint8 frames (N, H, W, C), computed
        by the pilot's own framework (Keras or the TFLite interpreter) with donkey's img/255 input.
        The independent side of every graph-versus-reference test."""
        import numpy as np

        x = np.asarray(frames, dtype=np.float32) / 255.0
        if self.keras_model is not None:
            import tensorflow as tf

            model = tf.keras.Model(_image_input(self.keras_model), self.trunk.map_handles)
            maps = model(x, training=False)
            maps = maps if isinstance(maps, (list, tuple)) else [maps]
            return [np.asarray(m) for m in maps]
        from . import tflite_model

        return tflite_model.feature_maps(self.tflite_path, self.trunk, x)

    def trunk_onnx(self, opset):
        """ONNX ModelProto: float input 'image' (N, H, W, C) in [0, 1] -> outputs map_0..map_{L-1}
        (N, C_l, h_l, w_l), NCHW so the converter's layout transposes cancel out."""
        if self.keras_model is None:
            from . import tflite_model

            return tflite_model.trunk_onnx(self.tflite_path, self.trunk, opset)
        import tensorflow as tf
        import tf2onnx

        submodel = tf.keras.Model(_image_input(self.keras_model), self.trunk.map_handles)
        height, width, channels = self.trunk.input_shape

        signature = [tf.TensorSpec([None, height, width, channels], tf.float32, name="image")]

        @tf.function(input_signature=signature)
        def trunk(image):
            maps = submodel(image, training=False)
            maps = maps if isinstance(maps, (list, tuple)) else [maps]
            return [tf.transpose(m, [0, 3, 1, 2]) for m in maps]

        proto, _ = tf2onnx.convert.from_function(trunk, input_signature=signature, opset=opset)
        return _rename_outputs(proto, ["map_%d" % i for i in range(len(self.trunk.map_handles))])


def _rename_outputs(proto, new_names):
    """Give the converter's outputs stable names, in order."""
    graph = proto.graph
    if len(graph.output) != len(new_names):
        raise ModelError("the trunk converted to %d outputs, expected %d" % (len(graph.output), len(new_names)))
    renames = {out.name: new for out, new in zip(graph.output, new_names)}
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for out in graph.output:
        out.name = renames[out.name]
    return proto


def load_pilot(path):
    """Load a pilot file (.h5 .keras .hdf5 .tflite, or a SavedModel directory) and find its trunk."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError("model file not found: %s" % path)
    lower = path.lower().rstrip("/")
    if lower.endswith(TFLITE_SUFFIXES):
        from . import tflite_model

        return Pilot(path, tflite_model.tflite_trunk(path), tflite_path=path)
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise ModelError("%s is a directory but not a SavedModel (no saved_model.pb)" % path)
    elif not lower.endswith(KERAS_SUFFIXES):
        raise ModelError("%s: unknown pilot format (expected .h5, .keras, .tflite or a SavedModel directory)"
                         % path)
    model = load_keras(path)
    return Pilot(path, keras_trunk(model), keras_model=model)
