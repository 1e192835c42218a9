"""Keras pilots read without TensorFlow: the model's config JSON plus its weights, via h5py.

- ``.h5`` as ``donkey train`` writes it (Keras 2 HDF5): ``model_config`` attribute + ``model_weights``;
- ``.keras`` (a zip of ``config.json`` and ``model.weights.h5``), as Keras 2.13+ and Keras 3 write it;
- a SavedModel directory needs TensorFlow to be read at all; with it, the loaded model's own config
  and weights go through the same walker.
"""
import io
import json
import logging
import os
import re
import zipfile

import numpy as np

from ..errors import ModelError, first_line
from ..util.deps import require
from .limits import check_size, MAX_CONFIG_BYTES, MAX_PILOT_BYTES
from .network import append, dense, Input, Layer, Network, refuse, TRUNK_END
from .trunk import activation, Affine, batch_norm, model_type_from_names, SEQUENCE_HINT, TrunkBuilder

logger = logging.getLogger(__name__)

_CONVS = {"Conv2D", "Convolution2D", "DepthwiseConv2D"}
_POOLS = {"MaxPooling2D": "max", "MaxPool2D": "max", "AveragePooling2D": "avg", "AvgPool2D": "avg"}
_IDENTITIES = {"Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
               "ActivityRegularization", "Identity"}
# Decoder branches (donkey's 'latent' model) hang off the trunk; they are not on the decision path.
_DECODER_BRANCH = {"Conv2DTranspose", "UpSampling2D"}


class _Layer(object):
    def __init__(self, name, kind, config, inbound, nodes=None):
        self.name = name
        self.kind = kind  # Keras class name
        self.config = config
        self.inbound = inbound  # names of the layers feeding its first call
        self.nodes = nodes or []  # the raw inbound nodes (call arguments: a TFOpLambda's axis)


class KerasFile(object):
    """A Keras model's layers (config) and a way to get each layer's weights, whatever the container."""

    def __init__(self, config, weights):
        self.config = config  # the model config: {"class_name": ..., "config": {...}}
        self.weights = weights  # callable: layer name -> list of NumPy arrays (Keras' weight order)
        self.layers = _layers(config)

    @property
    def input_names(self):
        return _endpoint_names(self.config["config"], "input_layers") or \
            [l.name for l in self.layers if l.kind == "InputLayer"]

    @property
    def output_names(self):
        return _endpoint_names(self.config["config"], "output_layers")


def read(path):
    """The :class:`KerasFile` of a .h5/.hdf5/.keras file or a SavedModel directory."""
    try:
        if os.path.isdir(path):
            return _read_savedmodel(path)
        if zipfile.is_zipfile(path):
            return _read_keras_zip(path)
        return _read_h5(path)
    except ModelError:
        raise
    except Exception as error:  # h5py, zip and JSON each raise their own
        raise ModelError("cannot read %s as a Keras pilot: %s" % (path, first_line(error)))


def _read_h5(path):
    h5py = require("h5py")
    with h5py.File(path, "r") as handle:
        config = _attribute(path, handle.attrs, "model_config", None)
        if config is None:
            raise ModelError("cannot read %s as a Keras pilot: it holds weights only, no model config" % path)
        config = json.loads(config.decode("utf-8") if isinstance(config, bytes) else config)
        group = handle["model_weights"] if "model_weights" in handle else handle
        datasets = {}
        for name in _names(_attribute(path, group.attrs, "layer_names", [])):
            layer = group[name]
            datasets[name] = [layer[w] for w in _names(_attribute(path, layer.attrs, "weight_names", []))]
        weights = _read_datasets(path, datasets)
    return KerasFile(config, lambda name: weights.get(name, []))


def _attribute(path, attrs, name, default):
    """An HDF5 attribute's value, refused when its declared shape holds more than a model config can
    (variable-length strings count by their number: their text is stored in the file, uncompressed)."""
    if name not in attrs:
        return default
    declared = attrs.get_id(name)
    check_size(path, "attribute %s" % name, int(np.prod(declared.shape or ())) * declared.dtype.itemsize,
               MAX_CONFIG_BYTES)
    return attrs[name]


def _read_datasets(path, datasets):
    """{layer: [NumPy arrays]} from {layer: [h5py datasets]}, refused before any is read when their
    declared shapes add up to more than a pilot can hold (a compressed dataset may declare any)."""
    check_size(path, "its weights", sum(int(d.nbytes) for ds in datasets.values() for d in ds), MAX_PILOT_BYTES)
    return {name: [np.array(d) for d in ds] for name, ds in datasets.items()}


def _member(path, archive, name, limit):
    """A zip member's bytes, refused from the size the zip's directory declares before any is inflated
    (zipfile never inflates more than that)."""
    info = archive.getinfo(name)
    check_size(path, name, info.file_size, limit)
    return archive.read(info)


def _read_keras_zip(path):
    h5py = require("h5py")
    with zipfile.ZipFile(path) as archive:
        config = json.loads(_member(path, archive, "config.json", MAX_CONFIG_BYTES).decode("utf-8"))
        data = _member(path, archive, "model.weights.h5", MAX_PILOT_BYTES)
    datasets = {}
    with h5py.File(io.BytesIO(data), "r") as handle:
        # Keras names each layer's group after its class, in the model's layer order
        # (layers/conv2d, layers/conv2d_1, ...), not after the layer's own name.
        seen = {}
        for layer in _layers(config):
            key = _snake_case(layer.kind)
            count = seen.get(key, 0)
            seen[key] = count + 1
            group_name = "layers/%s%s/vars" % (key, "_%d" % count if count else "")
            if group_name in handle:
                group = handle[group_name]
                datasets[layer.name] = [group[str(i)] for i in range(len(group))]
        weights = _read_datasets(path, datasets)
    return KerasFile(config, lambda name: weights.get(name, []))


def import_tensorflow():
    """TensorFlow, with the GPU hidden from it when this is the first use in the process: reading a
    pilot needs only the CPU, and TensorFlow would otherwise reserve most of the GPU's memory (on a
    Jetson shared with the CPU) that TensorRT then lacks. Once TensorFlow has set up its devices (a
    car whose own pilot runs on TensorFlow) it is left alone."""
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")  # should anything touch the GPU anyway
    tf = require("tensorflow")

    try:
        tf.config.set_visible_devices([], "GPU")
    except Exception as error:  # RuntimeError once TensorFlow has set up its devices
        logger.debug("TensorFlow keeps its GPU: %s", first_line(error))
    return tf


def _read_savedmodel(path):
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise ModelError("%s is a directory but not a SavedModel (no saved_model.pb)" % path)
    try:
        tf = import_tensorflow()
    except ImportError:
        raise ModelError("reading a SavedModel pilot needs TensorFlow; use the pilot's .h5 or .tflite file, or "
                         "export the graph once elsewhere with 'donkey-saliency export'")
    try:
        model = tf.keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras 3 loads no SavedModel at all
        model, why = None, first_line(error, 80)
    else:  # Keras 2 loads Keras 3's export() as a plain object, without the Keras layers
        why = "it keeps no Keras layers"
    if not hasattr(model, "to_json"):
        raise ModelError("%s is a SavedModel this Keras cannot read as a pilot (%s), e.g. Keras 3's model.export(), "
                         "which donkeycar 5.4 writes for TF-TRT; give the pilot's .keras, .h5 or .tflite file "
                         "instead (donkey train writes them beside it)" % (path, why))
    config = json.loads(model.to_json())
    weights = {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in model.layers}
    return KerasFile(config, lambda name: weights.get(name, []))


def _names(values):
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _snake_case(name):
    """Keras' own rule for the weight groups of a .keras file (Conv2D -> conv2d, ReLU -> re_lu)."""
    name = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    name = re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()
    return name if not name.startswith("_") else "private" + name


def _layers(config):
    """The model's layers in order, each with the names of the layers feeding it."""
    kind = config.get("class_name")
    body = config.get("config", {})
    if kind == "Sequential":
        layers, previous = [], None
        entries = body["layers"] if isinstance(body, dict) else body
        for entry in entries:
            name = entry.get("config", {}).get("name") or entry.get("name")
            layers.append(_Layer(name, entry["class_name"], entry.get("config", {}), [previous] if previous else []))
            previous = name
        return layers
    if kind not in ("Model", "Functional"):
        raise ModelError("the file holds a %s, not a Keras model" % kind)
    return [_Layer(entry.get("name") or entry["config"]["name"], entry["class_name"], entry.get("config", {}),
                   _inbound_names(entry.get("inbound_nodes") or []), entry.get("inbound_nodes") or [])
            for entry in body["layers"]]


def _inbound_names(nodes):
    """Layer names feeding a layer's first call. Keras 2 writes [[["conv", 0, 0, {}], ...]];
    Keras 3 writes [{"args": [{"config": {"keras_history": ["conv", 0, 0]}}], "kwargs": {}}]."""
    if not nodes:
        return []
    node = nodes[0]
    if isinstance(node, dict):
        names = []

        def collect(value):
            if isinstance(value, dict):
                history = value.get("config", {}).get("keras_history") if value.get("class_name") == \
                    "__keras_tensor__" else None
                if history:
                    names.append(history[0])
                else:
                    for item in value.values():
                        collect(item)
            elif isinstance(value, list):
                for item in value:
                    collect(item)

        collect(node.get("args", []))
        return names
    return [entry[0] for entry in node if isinstance(entry, list) and entry and isinstance(entry[0], str)]


def _endpoint_names(body, key):
    entries = body.get(key) or []
    if entries and isinstance(entries[0], str):  # a single [name, 0, 0]
        entries = [entries]
    return [e[0] for e in entries]


def _pair(value):
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value), int(value))


def _input_shape(layer):
    shape = layer.config.get("batch_input_shape") or layer.config.get("batch_shape")
    return tuple(shape) if shape else None


def _refuse_sequence_models(layers):
    kinds = {layer.kind for layer in layers}
    if "TimeDistributed" in kinds:
        raise ModelError("this pilot reads a sequence of frames (donkey model type 'rnn', TimeDistributed "
                         "layers); %s" % SEQUENCE_HINT)
    if kinds & {"Conv3D", "MaxPooling3D", "MaxPool3D"}:
        raise ModelError("this pilot is a 3-D CNN over a sequence of frames (donkey model type '3d'); %s"
                         % SEQUENCE_HINT)


def _image_input(keras_file):
    layers = {l.name: l for l in keras_file.layers}
    candidates = []
    for name in keras_file.input_names:
        layer = layers.get(name)
        shape = _input_shape(layer) if layer is not None else None
        if shape and len(shape) == 4 and shape[3] in (1, 3) and shape[1] and shape[2]:
            candidates.append(layer)
    if not candidates and keras_file.layers and keras_file.config.get("class_name") == "Sequential":
        first = keras_file.layers[0]
        shape = _input_shape(first)
        if shape and len(shape) == 4:
            candidates.append(first)
    if not candidates:
        shapes = [str(_input_shape(layers[n])[1:]) for n in keras_file.input_names if n in layers and
                  _input_shape(layers[n])]
        raise ModelError("the pilot has no image input (expected one of shape (H, W, 1 or 3); it has %s)"
                         % (", ".join(shapes) or "none"))
    named = [l for l in candidates if "img" in l.name]
    return (named or candidates)[0]


def _activation_of(layer):
    """The Activation a layer applies (its ``activation`` setting or what the layer is), or None."""
    config, kind = layer.config, layer.kind
    if kind == "ReLU":
        max_value, slope = config.get("max_value"), config.get("negative_slope") or 0.0
        if config.get("threshold"):
            raise ModelError("layer %s is a ReLU with a threshold, which saliency does not support" % layer.name)
        if slope:
            return activation("leaky_relu", layer.name, slope) if max_value is None else \
                activation("relu_with_slope_and_cap", layer.name)
        if max_value is None:
            return activation("relu", layer.name)
        return activation("relu6" if float(max_value) == 6.0 else "relu_max_%g" % float(max_value), layer.name)
    if kind == "LeakyReLU":
        alpha = config.get("alpha", config.get("negative_slope"))
        return activation("leaky_relu", layer.name, 0.3 if alpha is None else alpha)
    if kind == "ELU":
        return activation("elu", layer.name, config.get("alpha", 1.0))
    name = config.get("activation")
    if isinstance(name, dict):  # serialized activation objects
        name = name.get("config", {}).get("name") or name.get("class_name")
    if name is None or name == "linear":
        return None
    return activation(str(name).lower(), layer.name)


def _conv(builder, keras_file, layer):
    config = layer.config
    weights = keras_file.weights(layer.name)
    if not weights:
        raise ModelError("layer %s has no weights in the file" % layer.name)
    dilation = _pair(config.get("dilation_rate", 1))
    if layer.kind == "DepthwiseConv2D":  # (kh, kw, C, M): output channel c*M + m reads input channel c
        kernel = weights[0]
        weight = kernel.reshape(kernel.shape[0], kernel.shape[1], -1).transpose(2, 0, 1)[:, None]
        groups = kernel.shape[2]
    else:  # (kh, kw, I/groups, O)
        weight, groups = weights[0].transpose(3, 2, 0, 1), int(config.get("groups", 1))
    bias = weights[1] if config.get("use_bias", True) and len(weights) > 1 else None
    if config.get("data_format", "channels_last") != "channels_last":
        raise ModelError("layer %s is channels_first; donkey pilots are channels_last" % layer.name)
    builder.conv(layer.name, weight, bias, _pair(config["strides"]), config["padding"].lower(), dilation, groups,
                 source=layer.name)


def _batch_norm(keras_file, layer, channels):
    config = layer.config
    weights = list(keras_file.weights(layer.name))
    axis = config.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    if axis not in (-1, 3):
        raise ModelError("layer %s normalises axis %s; only the channel axis is supported" % (layer.name, axis))
    gamma = weights.pop(0) if config.get("scale", True) else np.ones(channels, np.float32)
    beta = weights.pop(0) if config.get("center", True) else np.zeros(channels, np.float32)
    if len(weights) != 2:
        raise ModelError("layer %s lacks its moving statistics in the file" % layer.name)
    return batch_norm(gamma, beta, weights[0], weights[1], float(config.get("epsilon", 1e-3)))


def _rescaling(layer):
    config = layer.config
    return Affine(np.float32(config.get("scale", 1.0)), np.float32(config.get("offset", 0.0)))


def keras_trunk(keras_file):
    """Walk the chain of spatial layers from the image input into a :class:`~.trunk.Trunk`."""
    layers = keras_file.layers
    _refuse_sequence_models(layers)
    image = _image_input(keras_file)
    height, width, channels = (int(d) for d in _input_shape(image)[1:])
    builder = TrunkBuilder((height, width, channels), input_source=image.name)
    consumers = {}
    for layer in layers:
        for name in layer.inbound:
            consumers.setdefault(name, []).append(layer)
    # Sequential models list their first layer as the input when it carries the input shape.
    current = image.name
    chain = [image.name]
    pending = [image] if image.kind != "InputLayer" else []
    while True:
        if pending:
            layer = pending.pop()
        else:
            following = [l for l in consumers.get(current, []) if l.kind not in _DECODER_BRANCH]
            if len(following) != 1 or len(following[0].inbound) != 1:
                break  # the chain ends, branches or merges (Concatenate with other inputs)
            layer = following[0]
        kind = layer.kind
        if kind in _CONVS:
            _conv(builder, keras_file, layer)
            applied = _activation_of(layer)
            if applied is not None:
                builder.pointwise(applied, source=layer.name)
        elif kind in _POOLS:
            config = layer.config
            pool = _pair(config["pool_size"])
            builder.pool(layer.name, _POOLS[kind], pool, _pair(config.get("strides") or pool),
                         config.get("padding", "valid").lower())
        elif kind in ("Cropping2D", "ZeroPadding2D"):
            border = layer.config["cropping" if kind == "Cropping2D" else "padding"]
            border = tuple(_pair(v) for v in border) if isinstance(border, (list, tuple)) else \
                ((border, border), (border, border))
            (builder.crop if kind == "Cropping2D" else builder.zero_pad)(layer.name, border)
        elif kind in ("ReLU", "LeakyReLU", "ELU", "Activation"):
            applied = _activation_of(layer)
            if applied is not None:
                builder.pointwise(applied, source=layer.name)
        elif kind == "BatchNormalization":
            builder.pointwise(_batch_norm(keras_file, layer, builder.channels), source=layer.name)
        elif kind == "Rescaling":
            builder.pointwise(_rescaling(layer), source=layer.name)
        elif kind in _IDENTITIES or kind == "InputLayer":
            pass
        elif kind == "SeparableConv2D":
            raise ModelError("layer %s is a SeparableConv2D, which saliency does not read yet" % layer.name)
        else:
            break  # Flatten, Dense, global pooling, Lambda, merges: the trunk ends here
        current = layer.name
        chain.append(current)
    model_type = model_type_from_names(keras_file.input_names, keras_file.output_names) or \
        keras_file.config.get("config", {}).get("name") or "keras"
    trunk = builder.finish(model_type)
    trunk.chain_sources = chain  # the layers the trunk stands for; the last one is where it ends
    return trunk


# --------------------------------------------------------------------------------------------
# The whole pilot

_CONCAT_FUNCTIONS = {"concat", "concatenate", "keras.backend.concatenate"}


def _concat_axis(layer):
    """The axis a Concatenate layer or a TFOpLambda(tf.concat) joins along."""
    if layer.kind == "Concatenate":
        return layer.config.get("axis", -1)
    axis = -1
    for node in layer.nodes[:1]:
        if isinstance(node, list):
            for entry in node:
                if isinstance(entry, list) and len(entry) > 3 and isinstance(entry[3], dict):
                    axis = entry[3].get("axis", axis)
        elif isinstance(node, dict):
            axis = node.get("kwargs", {}).get("axis", axis)
    return axis


def keras_network(keras_file, trunk):
    """The layers past the trunk, as a :class:`~.network.Network` (Dense, Flatten, Concatenate, ...)."""
    by_name = {l.name: l for l in keras_file.layers}
    image = by_name[trunk.chain_sources[0]]
    if image.kind != "InputLayer":
        raise ModelError("the pilot's image input is not an Input layer (a Sequential model); the whole-pilot graph "
                         "reads functional donkey pilots")
    inputs = [Input(name, tuple(int(d) for d in _input_shape(by_name[name])[1:])) for name in keras_file.input_names]
    outputs = keras_file.output_names
    alias = {trunk.chain_sources[-1]: TRUNK_END}
    alias.update((i.name, i.name) for i in inputs)
    # Only what feeds an output from the trunk's end and the inputs: a decoder branch does not matter.
    needed, todo = set(), list(outputs)
    while todo:
        name = todo.pop()
        if name not in needed and name not in alias and name in by_name:
            needed.add(name)
            todo.extend(by_name[name].inbound)
    flat = set(i.name for i in inputs if len(i.shape) == 1)  # tensors that are (N, features)
    inside = set(trunk.chain_sources[:-1])
    layers = []
    for layer in keras_file.layers:
        if layer.name not in needed or layer.name in alias or layer.kind == "InputLayer":
            continue
        if layer.name in inside:
            raise ModelError("layer %s sits inside the conv trunk and also feeds the pilot's output, which the "
                             "whole-pilot graph does not support" % layer.name)
        sources = [alias.get(name, name) for name in layer.inbound]
        kind = layer.kind
        if kind in _IDENTITIES or (kind == "Flatten" and sources[0] in flat):
            alias[layer.name] = sources[0]
            continue
        if kind == "Flatten":
            if sources != [TRUNK_END]:
                raise ModelError("layer %s flattens a tensor that is not the conv trunk's end" % layer.name)
            layers.append(Layer("flatten", layer.name, sources, None))
        elif kind == "Dense":
            if any(name not in flat for name in sources):
                raise ModelError("layer %s is a Dense on the unflattened conv trunk, which the whole-pilot graph "
                                 "does not support" % layer.name)
            weights = keras_file.weights(layer.name)
            if not weights:
                raise ModelError("layer %s has no weights in the file" % layer.name)
            bias = weights[1] if layer.config.get("use_bias", True) and len(weights) > 1 else None
            append(layers, dense(layer.name, sources, weights[0], bias), _softmax_or_activation(layer))
        elif kind in ("ReLU", "LeakyReLU", "ELU", "Activation", "Softmax"):
            applied = _softmax_or_activation(layer)
            if applied is None:
                alias[layer.name] = sources[0]
                continue
            layers.append(Layer("activation", layer.name, sources, applied))
        elif kind == "Concatenate" or (kind == "TFOpLambda" and layer.config.get("function") in _CONCAT_FUNCTIONS):
            if any(name not in flat for name in sources) or _concat_axis(layer) not in (1, -1):
                raise ModelError("layer %s concatenates other than (batch, features) tensors along their features"
                                 % layer.name)
            layers.append(Layer("concat", layer.name, sources, None))
        else:
            refuse(layer.name, kind if kind != "TFOpLambda" else "TFOpLambda(%s)" % layer.config.get("function"))
        flat.add(layer.name)
    return Network(inputs, image.name, layers, [(name, alias.get(name, name)) for name in outputs])


def _softmax_or_activation(layer):
    name = layer.config.get("activation")
    if layer.kind == "Softmax" or (isinstance(name, str) and name.lower() == "softmax"):
        axis = layer.config.get("axis", -1)
        if axis not in (-1, 1, [-1], [1]):
            raise ModelError("layer %s takes a softmax along axis %s; only the features axis is supported"
                             % (layer.name, axis))
        return "softmax"
    return _activation_of(layer)
