"""TensorFlow Lite pilots (``.tflite``, what ``donkey train`` writes for a Raspberry Pi), read with
the small flatbuffer reader: no TensorFlow, no tflite-runtime.

donkeycar converts with ``keras_model_to_tflite``: float32, a Conv2D's bias, BatchNormalization and
ReLU fused into one CONV_2D op with a fused activation, Dropout gone. Float16 weights arrive through a
DEQUANTIZE op and weight-only (dynamic range) quantized weights as int8 with scales; both are turned
back into float32 here. Fully integer-quantized pilots (uint8/int8 frames) are refused.
"""
import re

import numpy as np

from ..errors import ModelError, first_line
from ..util.fileio import read_limited
from .limits import MAX_PILOT_BYTES
from .flatbuffer import FlatbufferError, Table
from .network import append, dense, Input, Layer, Network, refuse, TRUNK_END
from .trunk import Affine, SEQUENCE_HINT, TrunkBuilder, activation, model_type_from_names

# BuiltinOperator codes (TFLite schema) of the ops a trunk can hold.
_OPERATORS = {0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D",
              6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL", 19: "RELU",
              20: "RELU_N1_TO_1", 21: "RELU6", 22: "RESHAPE", 25: "SOFTMAX", 28: "TANH", 34: "PAD",
              37: "BATCH_TO_SPACE_ND", 38: "SPACE_TO_BATCH_ND", 41: "SUB", 42: "DIV", 45: "STRIDED_SLICE",
              54: "PRELU", 60: "PADV2", 65: "SLICE", 98: "LEAKY_RELU", 111: "ELU", 114: "QUANTIZE",
              117: "HARD_SWISH", 150: "GELU", 152: "RELU_0_TO_1"}
_ACTIVATION_OPS = {"RELU": "relu", "RELU6": "relu6", "RELU_N1_TO_1": "relu_n1_to_1", "RELU_0_TO_1": "relu_0_to_1",
                   "ELU": "elu", "LOGISTIC": "sigmoid", "TANH": "tanh", "LEAKY_RELU": "leaky_relu",
                   "HARD_SWISH": "hard_swish", "PRELU": "prelu", "GELU": "gelu"}
_FUSED = {0: None, 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh", 5: "sign_bit"}  # ActivationFunctionType
_PADDING = {0: "same", 1: "valid"}
# TensorType -> NumPy dtype.
_DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8",
           10: "float64"}
_FLOAT32 = 0
_QUANTIZED_HINT = ("saliency needs float activations: use the float .tflite that 'donkey train' writes, or the "
                   ".h5 pilot")


class _Tensor(object):
    def __init__(self, name, shape, dtype, data, scale, zero_point, quantized_dimension):
        self.name = name
        self.shape = shape  # tuple, -1 where unknown (the batch)
        self.dtype = dtype  # TensorType code
        self.data = data  # NumPy array for constants, else None
        self.scale = scale  # quantization scales (weight-only quantized constants), else None
        self.zero_point = zero_point
        self.quantized_dimension = quantized_dimension


class _Op(object):
    def __init__(self, kind, inputs, outputs, options):
        self.kind = kind
        self.inputs = inputs  # tensor indices (-1: optional input left out)
        self.outputs = outputs
        self.options = options  # the op's options table, or None


class _Graph(object):
    """Tensors, ops (in execution order) and inputs of a model's main subgraph."""

    def __init__(self, tensors, ops, inputs, signature_names, signature_tensors=([], []), outputs=()):
        self.tensors = tensors
        self.ops = ops
        self.inputs = inputs
        self.signature_names = signature_names  # (input names, output names): the Keras layer names
        self.signature_tensors = signature_tensors  # their tensor indices, in the same order
        self.outputs = list(outputs)  # the subgraph's output tensors (what runs without a signature)
        self.producers = {out: op for op in ops for out in op.outputs}

    def consumers(self, index):
        return [op for op in self.ops if index in op.inputs]

    def constant(self, index):
        """A constant tensor as float32 (float16 and int8 weights dequantized), else None."""
        if index < 0:
            return None
        tensor = self.tensors[index]
        if tensor.data is None:
            producer = self.producers.get(index)  # float16 weights: a DEQUANTIZE op of a constant
            if producer is not None and producer.kind == "DEQUANTIZE":
                return self.constant(producer.inputs[0])
            return None
        if tensor.scale is not None and tensor.dtype in (3, 9, 7):
            return _dequantize(tensor)
        return tensor.data.astype(np.float32) if tensor.dtype in (0, 1, 10) else tensor.data


def _dequantize(tensor):
    values = tensor.data.astype(np.float32)
    scale, zero = tensor.scale.astype(np.float32), tensor.zero_point
    zero = np.zeros_like(scale) if zero is None or not zero.size else zero.astype(np.float32)
    if scale.size > 1:  # per channel, along the quantized dimension
        shape = [1] * values.ndim
        shape[tensor.quantized_dimension] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (values - zero) * scale


def read_graph(path):
    """Parse the main subgraph; ModelError for anything that is not a readable TFLite flatbuffer."""
    try:
        data = read_limited(path, MAX_PILOT_BYTES, "a pilot", ModelError)
    except OSError as error:
        raise ModelError("cannot read %s: %s" % (path, first_line(error)))
    if data[4:8] != b"TFL3":
        raise ModelError("%s is not a TensorFlow Lite model (no TFL3 identifier)" % path)
    try:
        return _parse(data)
    except FlatbufferError as error:
        raise ModelError("%s is a damaged or truncated TensorFlow Lite file (%s)" % (path, first_line(error, 100)))


def _parse(data):
    model = Table.root(data)
    kinds = []
    for code in model.tables(1):  # operator_codes
        # Codes above 127 live in builtin_code; old files only have the deprecated byte.
        number = max(code.scalar(0, "<b"), code.scalar(3, "<i"))
        kinds.append(_OPERATORS.get(number, "OP_%d" % number))
    buffers = model.tables(4)
    subgraphs = model.tables(2)
    if not subgraphs:
        raise FlatbufferError("the model has no subgraph")
    graph = subgraphs[0]  # TFLite runs subgraph 0; others are called from it
    tensors = []
    for tensor in graph.tables(0):
        signature = tensor.array(7, "<i4")
        shape = signature if signature is not None and len(signature) else tensor.array(0, "<i4")
        shape = tuple(int(d) for d in (shape if shape is not None else ()))
        dtype = tensor.scalar(1, "<b")
        buffer_index = tensor.scalar(2, "<I")
        if buffer_index >= len(buffers):
            raise FlatbufferError("a tensor refers to a missing buffer")
        value = None
        raw = buffers[buffer_index].array(0, "u1") if buffer_index > 0 else None
        if raw is not None and len(raw) and dtype in _DTYPES:
            value = np.frombuffer(raw.tobytes(), dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"))
            if shape and all(d >= 0 for d in shape):
                if value.size != int(np.prod(shape)):
                    raise FlatbufferError("a constant's data does not fit its shape")
                value = value.reshape(shape)
        scale = zero_point = None
        dimension = 0
        quantization = tensor.table(4)
        if quantization is not None:
            scale = quantization.array(2, "<f4")
            zero_point = quantization.array(3, "<i8")
            dimension = quantization.scalar(6, "<i")
            scale = scale if scale is not None and len(scale) else None
        tensors.append(_Tensor(tensor.string(3), shape, dtype, value, scale, zero_point, dimension))
    count = len(tensors)
    ops = []
    for op in graph.tables(3):
        opcode = op.scalar(0, "<I")
        if opcode >= len(kinds):
            raise FlatbufferError("an operator has an unknown opcode")
        inputs = tuple(int(v) for v in _indices(op.array(1, "<i4"), count))
        outputs = tuple(int(v) for v in _indices(op.array(2, "<i4"), count))
        ops.append(_Op(kinds[opcode], inputs, outputs, op.table(4)))
    inputs = [int(v) for v in _indices(graph.array(1, "<i4"), count)]
    outputs = [int(v) for v in _indices(graph.array(2, "<i4"), count)]
    signature_names, signature_tensors = ([], []), ([], [])
    signatures = model.tables(7)
    if signatures:
        signature_names = tuple([entry.string(0) for entry in signatures[0].tables(field)] for field in (0, 1))
        signature_tensors = tuple([int(entry.scalar(1, "<I")) for entry in signatures[0].tables(field)]
                                  for field in (0, 1))
        if any(index >= count for indices in signature_tensors for index in indices):
            raise FlatbufferError("the signature refers to a tensor that does not exist")
    return _Graph(tensors, ops, inputs, signature_names, signature_tensors, outputs)


def _indices(values, count):
    values = values if values is not None else np.zeros(0, np.int32)
    if len(values) and (values.max() >= count or values.min() < -1):
        raise FlatbufferError("an operator or the graph refers to a tensor that does not exist")
    return values


# --------------------------------------------------------------------------------------------
# Trunk discovery

def _layer_name(tensor_name):
    """'model/conv2d_1/Conv2D' -> 'conv2d_1': the Keras layer's name, the second-to-last path part.

    A fused op's tensor joins the names of the TF ops it replaced with ';' in no fixed order
    ('model/conv2d_3/Relu;model/conv2d_3/BiasAdd;model/conv2d_5/Conv2D;...'): the most common wins."""
    votes = []
    for segment in tensor_name.split(":")[0].split(";"):
        parts = segment.split("/")
        votes.append(parts[-2] if len(parts) >= 2 else parts[0])
    name = max(votes, key=lambda v: (votes.count(v), -votes.index(v))) if votes else ""
    return (name or "tensor")[:40]


def _scope_suffix(graph, tensor):
    """donkeycar 5.4 writes .tflite files through a traced tf.function (no signature), where TensorFlow
    suffixes every Keras name scope: model 'linear' -> 'linear_1/conv2d_1_1/...'. The suffix ('_1'),
    read off the model's scope, or '' for files with a signature (named as Keras names them)."""
    if graph.signature_names[0]:
        return ""
    scope = graph.tensors[tensor].name.split(";")[0].split("/")[0]
    match = re.match(r"^.+(_\d+)$", scope) if "/" in graph.tensors[tensor].name else None
    return match.group(1) if match else ""


def _conv_segment(tensor_name):
    """The part of a fused conv output's name that the conv op itself gave ('m/c2/Conv2D' in
    'm/relu/Relu;m/bn/FusedBatchNormV3;m/c2/Conv2D'), or the whole name."""
    for segment in tensor_name.split(":")[0].split(";"):
        if segment.rsplit("/", 1)[-1].lower().startswith(("conv", "depthwise")):
            return segment
    return tensor_name


def _keras_name(name, suffix):
    return name[:-len(suffix)] if suffix and name.endswith(suffix) and len(name) > len(suffix) else name


def _unique(names):
    seen, result = {}, []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        result.append(name if seen[name] == 1 else "%s_%d" % (name, seen[name]))
    return result


def _image_input(graph):
    candidates = []
    for index in graph.inputs:
        tensor = graph.tensors[index]
        if len(tensor.shape) == 5:
            raise ModelError("this pilot reads a sequence of frames (input %s has shape %s: donkey model type "
                             "'rnn' or '3d'); %s" % (tensor.name, tensor.shape[1:], SEQUENCE_HINT))
        if len(tensor.shape) == 4 and tensor.shape[3] in (1, 3) and tensor.shape[1] > 0 and tensor.shape[2] > 0:
            candidates.append(index)
    if not candidates:
        raise ModelError("the pilot has no image input (expected one of shape (H, W, 1 or 3); it has %s)"
                         % ", ".join(str(graph.tensors[i].shape[1:]) for i in graph.inputs))
    named = [i for i in candidates if "img" in graph.tensors[i].name]
    index = (named or candidates)[0]
    if graph.tensors[index].dtype != _FLOAT32:
        raise ModelError("this .tflite pilot takes %s frames (integer-quantized, e.g. for a Coral Edge TPU); %s"
                         % (_DTYPES.get(graph.tensors[index].dtype, "non-float"), _QUANTIZED_HINT))
    return index


def _model_type(graph, first_map):
    """donkey's model type from the Keras input and output names that the converter keeps in the
    signature, else the Keras model's name that tensor names start with."""
    input_names, output_names = graph.signature_names
    guess = model_type_from_names(input_names + [graph.tensors[i].name for i in graph.inputs], output_names)
    if guess:
        return guess
    prefix = graph.tensors[first_map].name.split(";")[0].split("/")[0]
    if not prefix or prefix == graph.tensors[first_map].name:
        return "tflite"
    name = _keras_name(prefix, _scope_suffix(graph, first_map))
    # donkeycar's KerasInferred is a network named 'linear' with one output ('n_outputs0'), a name only a
    # signature keeps: without one (donkeycar 5.4's files) the output count tells the two apart.
    if name == "linear" and not output_names and len(graph.outputs) == 1:
        return "inferred"
    return name


def _fused_activation(op, name):
    kind = _FUSED.get(op.options.scalar(_FUSED_FIELD[op.kind], "<b") if op.options is not None else 0, "unknown")
    return None if kind is None else activation(kind, name)


# Field index of fused_activation_function in each op's options table.
_FUSED_FIELD = {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 4, "AVERAGE_POOL_2D": 5, "MAX_POOL_2D": 5, "ADD": 0, "MUL": 0,
                "SUB": 0, "DIV": 0, "FULLY_CONNECTED": 0, "CONCATENATION": 1}


def _conv(builder, graph, op, name):
    options = op.options
    weight = graph.constant(op.inputs[1])
    if options is None or weight is None or weight.ndim != 4:
        raise ModelError("op %s (%s) lacks its weights or geometry in the file (damaged?)" % (name, op.kind))
    padding = _PADDING.get(options.scalar(0, "<b"))
    if padding is None:
        raise ModelError("op %s has an unknown padding" % name)
    stride = (options.scalar(2, "<i"), options.scalar(1, "<i"))
    if op.kind == "CONV_2D":  # (O, kh, kw, I)
        weight, groups = weight.transpose(0, 3, 1, 2), 1
        dilation = (options.scalar(5, "<i", 1), options.scalar(4, "<i", 1))
    else:  # depthwise (1, kh, kw, C*M): output channel c*M + m reads input channel c
        weight, groups = weight.transpose(3, 0, 1, 2), builder.channels
        dilation = (options.scalar(6, "<i", 1), options.scalar(5, "<i", 1))
    bias = graph.constant(op.inputs[2]) if len(op.inputs) > 2 else None
    builder.conv(name, weight, bias, stride, padding, dilation, groups, source=op.outputs[0])


def _pool(builder, op, name):
    options = op.options
    if options is None:
        raise ModelError("op %s (%s) lacks its geometry in the file (damaged?)" % (name, op.kind))
    padding = _PADDING.get(options.scalar(0, "<b"))
    kernel = (options.scalar(4, "<i"), options.scalar(3, "<i"))
    stride = (options.scalar(2, "<i"), options.scalar(1, "<i"))
    builder.pool(name, "max" if op.kind == "MAX_POOL_2D" else "avg", kernel, stride, padding)


def _pad_border(graph, op):
    """((top, bottom), (left, right)) of a PAD that only pads H and W with zeros; None otherwise."""
    paddings = graph.constant(op.inputs[1])
    if paddings is None or paddings.size != 8:
        return None
    paddings = paddings.reshape(4, 2)
    if paddings[0].any() or paddings[3].any():
        return None
    if op.kind == "PADV2" and len(op.inputs) > 2 and op.inputs[2] >= 0:
        value = graph.constant(op.inputs[2])
        if value is None or value.any():
            return None
    return tuple(tuple(int(v) for v in row) for row in paddings[1:3])


def _crop_border(graph, op, in_shape, out_shape):
    """((top, bottom), (left, right)) of a slice that only cuts H and W (Cropping2D); None otherwise."""
    if len(out_shape) != 4 or in_shape[0] != out_shape[0] or in_shape[3] != out_shape[3]:
        return None
    begin = graph.constant(op.inputs[1])
    if begin is None or begin.size != 4:
        return None
    begin = [int(v) for v in begin.reshape(4)]
    if op.kind == "STRIDED_SLICE":
        options = op.options
        strides = graph.constant(op.inputs[3]) if len(op.inputs) > 3 else None
        if options is None or strides is None or any(int(s) != 1 for s in strides.reshape(-1)):
            return None
        # ellipsis, new_axis, shrink_axis masks and offset: not a plain crop
        if any(options.scalar(field, "<i") for field in (2, 3, 4)) or options.scalar(5, "<b"):
            return None
        begin_mask = options.scalar(0, "<i")
        begin = [0 if begin_mask & (1 << axis) else b for axis, b in enumerate(begin)]
    border = []
    for axis in (1, 2):
        start = begin[axis] + (in_shape[axis] if begin[axis] < 0 else 0)
        end_gap = in_shape[axis] - start - out_shape[axis]
        if start < 0 or end_gap < 0:
            return None
        border.append((start, end_gap))
    return tuple(border)


def _arithmetic(graph, op, tensor, channels):
    """A constant MUL/ADD/SUB/DIV on the running tensor as an Affine; None when it is not one."""
    others = [i for i in op.inputs if i != tensor]
    if len(others) != 1 or len(op.inputs) != 2:
        return None
    value = graph.constant(others[0])
    if value is None or value.size not in (1, channels) or (value.ndim and value.shape[-1] != value.size):
        return None
    value = value.reshape(-1).astype(np.float32) if value.size > 1 else np.float32(value.reshape(-1)[0])
    first = op.inputs[0] == tensor
    if op.kind == "MUL":
        return Affine(value, np.float32(0))
    if op.kind == "ADD":
        return Affine(np.float32(1), value)
    if op.kind == "SUB":
        return Affine(np.float32(1), -value) if first else Affine(np.float32(-1), value)
    if op.kind == "DIV" and first:
        return Affine(np.float32(1) / value, np.float32(0))
    return None


def _swish(graph, tensor, consumers):
    """x -> LOGISTIC -> MUL(x, sigmoid): Keras' swish as the converter writes it; the MUL op or None."""
    if len(consumers) != 2:
        return None
    logistic = [op for op in consumers if op.kind == "LOGISTIC"]
    mul = [op for op in consumers if op.kind == "MUL"]
    if len(logistic) != 1 or len(mul) != 1 or sorted(mul[0].inputs) != sorted((tensor, logistic[0].outputs[0])):
        return None
    return mul[0]


def tflite_trunk(path):
    """Walk the chain of spatial ops from the image input into a :class:`~.trunk.Trunk`."""
    graph = read_graph(path)
    image = _image_input(graph)
    builder = TrunkBuilder(graph.tensors[image].shape[1:], input_source=image)
    labels = []
    tensor = image
    while True:
        consumers = graph.consumers(tensor)
        swish = _swish(graph, tensor, consumers)
        if swish is not None:
            builder.pointwise(activation("swish", graph.tensors[swish.outputs[0]].name), source=swish.outputs[0])
            tensor = swish.outputs[0]
            continue
        if len(consumers) != 1 or len(consumers[0].outputs) != 1:
            break  # the chain ends or branches
        op = consumers[0]
        out = op.outputs[0]
        out_name = graph.tensors[out].name
        in_shape, out_shape = graph.tensors[tensor].shape, graph.tensors[out].shape
        if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D"):
            if len(out_shape) != 4 or op.inputs[0] != tensor:
                break
            if graph.tensors[out].dtype != _FLOAT32:
                raise ModelError("this .tflite pilot computes its convolutions in 8-bit integers (quantized); %s"
                                 % _QUANTIZED_HINT)
            if op.kind.endswith("POOL_2D"):
                _pool(builder, op, out_name)
                labels.append(out_name)
            else:
                # A conv's filter tensor carries the layer's plain name; its fused output a list of names.
                # Without a signature (donkeycar 5.4) filters are MLIR constants ('arith.constant3').
                label = graph.tensors[op.inputs[1]].name
                if "/" not in label:
                    label = _conv_segment(out_name)
                _conv(builder, graph, op, label)
                labels.append(label)
            if tuple(builder.hw) != tuple(out_shape[1:3]):
                raise ModelError("op %s: output %s does not follow from its geometry (expected %s)"
                                 % (out_name, tuple(out_shape[1:3]), tuple(builder.hw)))
            fused = _fused_activation(op, out_name)
            if fused is not None:
                builder.pointwise(fused, source=out)
        elif op.kind in ("PAD", "PADV2"):
            border = _pad_border(graph, op) if op.inputs[0] == tensor else None
            if border is None:
                break  # pads over batch/channels: not a ZeroPadding2D
            builder.zero_pad(out_name, border)
            labels.append(out_name)
        elif op.kind in ("STRIDED_SLICE", "SLICE"):
            border = _crop_border(graph, op, in_shape, out_shape) if op.inputs[0] == tensor else None
            if border is None:
                break
            builder.crop(out_name, border)
            labels.append(out_name)
        elif op.kind in _ACTIVATION_OPS:
            alpha = op.options.scalar(0, "<f", 0.2) if op.kind == "LEAKY_RELU" and op.options is not None else None
            builder.pointwise(activation(_ACTIVATION_OPS[op.kind], out_name, alpha), source=out)
        elif op.kind in ("ADD", "SUB", "MUL", "DIV"):
            affine = _arithmetic(graph, op, tensor, builder.channels)
            if affine is None or tuple(out_shape[1:3]) != tuple(builder.hw):
                break  # a merge of two branches (residual) ends the chain
            builder.pointwise(affine, source=out)
            fused = _fused_activation(op, out_name)
            if fused is not None:
                builder.pointwise(fused, source=out)
        elif op.kind == "SPACE_TO_BATCH_ND":
            raise ModelError("this .tflite pilot has a dilated convolution (SPACE_TO_BATCH_ND), which saliency "
                             "does not read from .tflite files; use the .h5 pilot")
        elif op.kind == "QUANTIZE":
            raise ModelError("this .tflite pilot quantizes its frames to 8-bit integers; %s" % _QUANTIZED_HINT)
        else:
            break  # RESHAPE (Flatten), FULLY_CONNECTED, MEAN, CONCATENATION ...: the trunk ends here
        tensor = out
    trunk = builder.finish(None)
    trunk.chain_sources = [image, tensor]  # where the trunk starts and ends in the file
    trunk.model_type = _model_type(graph, trunk.map_sources[0])
    suffix = _scope_suffix(graph, trunk.map_sources[0])
    names = _unique([_keras_name(_layer_name(label), suffix) for label in labels[:len(trunk.steps)]])
    trunk.steps = [s._replace(name=n) for s, n in zip(trunk.steps, names)]
    return trunk


# --------------------------------------------------------------------------------------------
# The whole pilot

def tensor_key(name):
    """An input tensor's name as donkeycar 5.4's TfLite keys it ('serving_default_img_in:0' -> 'img_in')."""
    if name.startswith("serving_default_"):
        name = name[len("serving_default_"):]
    return name[:-2] if name.endswith(":0") else name


def tflite_network(path, trunk):
    """The ops past the trunk, as a :class:`~.network.Network`, with the inputs and outputs named and
    ordered as donkeycar's TfLite interpreter gives them: by its signature (which TFLite keeps sorted by
    name), or, in a file without one (donkeycar 5.4's), inputs by tensor name and outputs in tensor index
    order, named '0', '1', ... as donkeycar 5.4's TfLite names them."""
    graph = read_graph(path)
    names, indices = graph.signature_names, graph.signature_tensors
    if names[0] and names[1]:
        inputs = sorted(zip(names[0], indices[0]))
        outputs = sorted(zip(names[1], indices[1]))
    else:
        inputs = sorted((tensor_key(graph.tensors[i].name), i) for i in graph.inputs)
        outputs = [(str(n), i) for n, i in enumerate(sorted(graph.outputs))]
    if not inputs or not outputs:
        raise ModelError("%s has no inputs or outputs to run" % path)
    image_name = [name for name, index in inputs if index == trunk.chain_sources[0]]
    if not image_name:
        raise ModelError("the pilot's image input is not among its inputs")
    alias = {trunk.chain_sources[-1]: TRUNK_END}
    alias.update((index, name) for name, index in inputs)
    flat = set(name for name, index in inputs if len(graph.tensors[index].shape) == 2)
    needed, todo = set(), [index for _, index in outputs]
    while todo:
        index = todo.pop()
        if index in needed or index in alias:
            continue
        needed.add(index)
        producer = graph.producers.get(index)
        if producer is not None:
            todo.extend(i for i in producer.inputs if i >= 0 and graph.constant(i) is None)
    layers = []
    for op in graph.ops:
        if not needed.intersection(op.outputs):
            continue
        out = op.outputs[0]
        name = "t%d" % out
        label = graph.tensors[out].name
        data_inputs = [i for i in op.inputs if i >= 0 and graph.constant(i) is None]
        if any(i not in alias for i in data_inputs):
            raise ModelError("op %s (%s) reads a tensor of the conv trunk other than its end, which the whole-pilot "
                             "graph does not support" % (label, op.kind))
        sources = [alias[i] for i in data_inputs]
        if op.kind == "RESHAPE":
            shape = graph.tensors[out].shape
            if len(shape) != 2:
                refuse(label, "RESHAPE to %s" % (shape[1:],))
            if sources == [TRUNK_END]:
                layers.append(Layer("flatten", name, sources, None))
            elif sources[0] in flat:
                alias[out] = sources[0]
                continue
            else:
                refuse(label, "RESHAPE of a tensor other than the trunk's end")
        elif op.kind == "FULLY_CONNECTED":
            weight = graph.constant(op.inputs[1])
            if weight is None or weight.ndim != 2 or any(s not in flat for s in sources[:1]) or len(sources) != 1:
                refuse(label, "FULLY_CONNECTED with a non-constant weight or on an unflattened tensor")
            bias = graph.constant(op.inputs[2]) if len(op.inputs) > 2 else None
            append(layers, dense(name, sources, weight.T, bias), _fused_activation(op, label))
        elif op.kind == "SOFTMAX":
            beta = op.options.scalar(0, "<f", 1.0) if op.options is not None else 1.0
            if beta != 1.0 or len(graph.tensors[out].shape) != 2:
                refuse(label, "SOFTMAX with beta %g" % beta)
            layers.append(Layer("activation", name, sources, "softmax"))
        elif op.kind == "CONCATENATION":
            axis = op.options.scalar(0, "<i") if op.options is not None else 0
            if axis not in (1, -1) or any(s not in flat for s in sources):
                refuse(label, "CONCATENATION along axis %d" % axis)
            append(layers, Layer("concat", name, sources, None), _fused_activation(op, label))
        elif op.kind in _ACTIVATION_OPS:
            alpha = op.options.scalar(0, "<f", 0.2) if op.kind == "LEAKY_RELU" and op.options is not None else None
            layers.append(Layer("activation", name, sources, activation(_ACTIVATION_OPS[op.kind], label, alpha)))
        else:
            refuse(label, op.kind)
        alias[out] = name
        flat.add(name)
    return Network([Input(n, tuple(graph.tensors[i].shape[1:])) for n, i in inputs], image_name[0], layers,
                   [(n, alias.get(i, "t%d" % i)) for n, i in outputs])

