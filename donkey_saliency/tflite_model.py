"""TensorFlow Lite pilots (``.tflite``, what ``donkey train`` writes for a Raspberry Pi).

donkeycar 5.3 converts with ``keras_model_to_tflite``: plain float32, no quantization, with the
TFLite converter's fusions - a Conv2D's bias, BatchNormalization and ReLU become one CONV_2D op with
a fused activation, so that op's output tensor already is the post-activation map VisualBackProp
wants. Dropout disappears.

The geometry (filter size, stride, padding, crop and pad borders) is read from the flatbuffer with
tf2onnx's TFLite schema classes; the maps come from the TFLite interpreter itself (the reference
side of the tests), and the ONNX trunk from ``tf2onnx.convert.from_tflite`` cut at the conv outputs.
"""
import logging

from .errors import ModelError, first_line
from .model import Step, Trunk, conv_output_size, model_type_from_names

logger = logging.getLogger(__name__)

_CONVS = {"CONV_2D", "DEPTHWISE_CONV_2D"}
_POOLS = {"MAX_POOL_2D", "AVERAGE_POOL_2D", "L2_POOL_2D"}
_PADS = {"PAD", "PADV2"}
_CROPS = {"STRIDED_SLICE", "SLICE"}
_ACTIVATIONS = {"RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "LEAKY_RELU", "ELU", "PRELU", "LOGISTIC",
                "TANH", "HARD_SWISH", "GELU"}
# Pointwise arithmetic with a constant (an unfused BatchNormalization or Rescaling).
_ARITHMETIC = {"ADD", "SUB", "MUL", "DIV"}
_SEQUENCE_HINT = ("saliency supports single-frame 2-D pilots (linear, categorical, inferred, memory, behavior, "
                  "localizer, imu)")
_QUANTIZED_HINT = ("saliency needs float activations: use the float .tflite that 'donkey train' writes, or the "
                   ".h5/.savedmodel pilot")
# The option fields this module reads; every TFLite options class has some of them.
_OPTION_FIELDS = ("Padding", "StrideH", "StrideW", "DilationHFactor", "DilationWFactor", "FilterHeight",
                  "FilterWidth", "FusedActivationFunction", "BeginMask", "EndMask", "EllipsisMask",
                  "NewAxisMask", "ShrinkAxisMask", "Offset")
_PADDING = {0: "same", 1: "valid"}  # tflite.Padding
_FLOAT32, _NUMPY_TYPES = 0, {0: "float32", 2: "int32", 3: "uint8", 4: "int64", 9: "int8", 7: "int16"}


class TfliteTrunk(Trunk):
    """A :class:`~donkey_saliency.model.Trunk` whose map handles are TFLite tensor indices."""

    def __init__(self, input_shape, steps, map_handles, model_type, input_index, input_name, map_names):
        super(TfliteTrunk, self).__init__(input_shape, steps, map_handles, model_type)
        self.input_index = input_index  # the image input's tensor index
        self.input_name = input_name  # ... and its name (tf2onnx addresses tensors by name)
        self.map_names = list(map_names)  # names of the map_handles tensors


def _tensorflow():
    try:
        import tensorflow as tf
        import tf2onnx  # noqa: F401  (its TFLite schema reads the geometry)
    except ImportError as error:
        raise ModelError("reading a .tflite pilot needs TensorFlow and tf2onnx (pip install tensorflow tf2onnx; "
                         "missing: %s); or export the graph once elsewhere with 'donkey-saliency export'"
                         % getattr(error, "name", error))
    return tf


def _interpreter(path, preserve_all_tensors=False):
    """tf.lite.Interpreter with tensors allocated. It does not verify the flatbuffer (a damaged file
    can crash it), so it only ever opens files that ``_read_graph`` has checked."""
    tf = _tensorflow()
    try:
        interpreter = tf.lite.Interpreter(model_path=path, experimental_preserve_all_tensors=preserve_all_tensors)
        interpreter.allocate_tensors()
    except Exception as error:  # ValueError or RuntimeError, depending on where the file breaks
        raise ModelError("cannot read %s as a TensorFlow Lite pilot: %s" % (path, first_line(error)))
    return interpreter


# --------------------------------------------------------------------------------------------
# The flatbuffer as plain Python

class _Tensor(object):
    def __init__(self, name, shape, type_code, data):
        self.name = name
        self.shape = shape  # tuple, -1 where unknown (the batch)
        self.type_code = type_code  # tflite.TensorType
        self.data = data  # numpy array for constants, else None


class _Op(object):
    def __init__(self, kind, inputs, outputs, options):
        self.kind = kind  # BuiltinOperator name, e.g. 'CONV_2D'
        self.inputs = inputs  # tensor indices (-1: optional input left out)
        self.outputs = outputs
        self.options = options  # dict of the _OPTION_FIELDS this op has


class _Graph(object):
    """Tensors, ops (in execution order) and inputs of a model's main subgraph."""

    def __init__(self, tensors, ops, inputs, signature_names):
        self.tensors = tensors
        self.ops = ops
        self.inputs = inputs
        self.signature_names = signature_names  # (input names, output names): the Keras layer names

    def consumers(self, index):
        return [op for op in self.ops if index in op.inputs]

    def constant(self, index):
        if index < 0 or self.tensors[index].data is None:
            return None
        return self.tensors[index].data


def _enum_names(enum_class):
    return {value: key for key, value in vars(enum_class).items() if not key.startswith("_")}


def _read_graph(path):
    """Parse the main subgraph; ModelError for anything that is not a readable TFLite flatbuffer."""
    import numpy as np

    _tensorflow()
    from tf2onnx import tflite_utils
    from tf2onnx.tflite.BuiltinOperator import BuiltinOperator
    from tf2onnx.tflite.Model import Model

    with open(path, "rb") as handle:
        data = bytearray(handle.read())
    if data[4:8] != b"TFL3":
        raise ModelError("%s is not a TensorFlow Lite model (no TFL3 identifier)" % path)
    operator_names = _enum_names(BuiltinOperator)
    try:
        model = Model.GetRootAsModel(data, 0)
        kinds = []
        for i in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(i)
            # Codes above 127 live in BuiltinCode; old files only have the deprecated byte.
            number = max(code.DeprecatedBuiltinCode(), code.BuiltinCode())
            kinds.append(operator_names.get(number, "UNKNOWN_%d" % number))
        _check_bounds(model, len(data))
        graph = model.Subgraphs(0)  # TFLite runs subgraph 0; others are called from it
        tensors = []
        for i in range(graph.TensorsLength()):
            tensor = graph.Tensors(i)
            if not tensor.ShapeSignatureIsNone():
                shape = tuple(int(d) for d in tensor.ShapeSignatureAsNumpy())
            elif not tensor.ShapeIsNone():
                shape = tuple(int(d) for d in tensor.ShapeAsNumpy())
            else:
                shape = ()
            value = None
            buffer = model.Buffers(tensor.Buffer()) if tensor.Buffer() > 0 else None
            if buffer is not None and not buffer.DataIsNone() and tensor.Type() in _NUMPY_TYPES:
                value = np.frombuffer(buffer.DataAsNumpy().tobytes(), dtype=_NUMPY_TYPES[tensor.Type()])
                value = value.reshape(shape) if shape and all(d >= 0 for d in shape) else value
            tensors.append(_Tensor((tensor.Name() or b"").decode("utf-8", "replace"), shape, tensor.Type(), value))
        ops = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            options = {}
            options_name = tflite_utils.lookup_enum(op.BuiltinOptionsType(), "BuiltinOptions")
            options_class = tflite_utils.get_options_class(options_name)
            if options_class is not None and op.BuiltinOptions() is not None:
                parsed = options_class()
                parsed.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
                options = {f: getattr(parsed, f)() for f in _OPTION_FIELDS if hasattr(parsed, f)}
            inputs = tuple(int(v) for v in op.InputsAsNumpy()) if op.InputsLength() else ()
            outputs = tuple(int(v) for v in op.OutputsAsNumpy()) if op.OutputsLength() else ()
            ops.append(_Op(kinds[op.OpcodeIndex()], inputs, outputs, options))
        inputs = [int(v) for v in graph.InputsAsNumpy()] if graph.InputsLength() else []
        signature_names = ([], [])
        if model.SignatureDefsLength():
            signature = model.SignatureDefs(0)
            signature_names = tuple([entry.Name().decode("utf-8", "replace") for entry in entries]
                                    for entries in ([signature.Inputs(j) for j in range(signature.InputsLength())],
                                                    [signature.Outputs(j) for j in range(signature.OutputsLength())]))
    except ModelError:
        raise
    except Exception as error:  # a damaged flatbuffer fails anywhere, with anything
        raise ModelError("%s is a damaged or truncated TensorFlow Lite file (%s)" % (path, first_line(error, 100)))
    return _Graph(tensors, ops, inputs, signature_names)


def _check_bounds(model, size):
    """Touch every table and vector the TFLite interpreter will follow. Its C++ loader does not verify
    the flatbuffer and crashes the process on a truncated file; Python's reads are bounds-checked."""
    if model.SubgraphsLength() < 1:  # ValueErrors here become one ModelError in _read_graph
        raise ValueError("the model has no subgraph")
    model.Description()
    model.MetadataBufferAsNumpy()
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Buffer() >= model.BuffersLength():
            raise ValueError("metadata %r refers to a missing buffer" % model.Metadata(i).Name())
    for i in range(model.SignatureDefsLength()):  # the interpreter indexes tensors by these
        signature = model.SignatureDefs(i)
        if signature.SubgraphIndex() >= model.SubgraphsLength():
            raise ValueError("signature %d refers to a missing subgraph" % i)
        count = model.Subgraphs(signature.SubgraphIndex()).TensorsLength()
        for entry in [signature.Inputs(j) for j in range(signature.InputsLength())] + \
                [signature.Outputs(j) for j in range(signature.OutputsLength())]:
            entry.Name()
            if entry.TensorIndex() >= count:
                raise ValueError("signature %d refers to a missing tensor" % i)
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        if not buffer.DataIsNone():
            buffer.DataAsNumpy()  # numpy refuses a view past the end of the file
        if buffer.Offset() > 1 and buffer.Offset() + buffer.Size() > size:
            raise ValueError("buffer %d lies past the end of the file (truncated?)" % i)
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        count = graph.TensorsLength()
        for t in range(count):
            tensor = graph.Tensors(t)
            tensor.Name()
            tensor.ShapeAsNumpy()
            tensor.ShapeSignatureAsNumpy()
            if tensor.Sparsity() is not None:
                raise ValueError("tensor %d is sparse, which donkey pilots never are" % t)
            quantization = tensor.Quantization()
            if quantization is not None:
                for vector in (quantization.ScaleAsNumpy, quantization.ZeroPointAsNumpy, quantization.MinAsNumpy,
                               quantization.MaxAsNumpy):
                    vector()
            if tensor.Buffer() >= model.BuffersLength():
                raise ValueError("tensor %d refers to a missing buffer" % t)
        vectors = [graph.InputsAsNumpy(), graph.OutputsAsNumpy()]
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            if op.OpcodeIndex() >= model.OperatorCodesLength():
                raise ValueError("operator %d has an unknown opcode" % o)
            vectors.extend([op.InputsAsNumpy(), op.OutputsAsNumpy()])
            op.CustomOptionsAsNumpy()
            op.IntermediatesAsNumpy()
        for vector in vectors:  # an absent vector reads as the int 0
            if not isinstance(vector, int) and len(vector) and (vector.max() >= count or vector.min() < -1):
                raise ValueError("an operator or the graph refers to a tensor that does not exist")


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
                             "'rnn' or '3d'); %s" % (tensor.name, tensor.shape[1:], _SEQUENCE_HINT))
        if len(tensor.shape) == 4 and tensor.shape[3] in (1, 3) and tensor.shape[1] > 0 and tensor.shape[2] > 0:
            candidates.append(index)
    if not candidates:
        raise ModelError("the pilot has no image input (expected one of shape (H, W, 1 or 3); it has %s)"
                         % ", ".join(str(graph.tensors[i].shape[1:]) for i in graph.inputs))
    named = [i for i in candidates if "img" in graph.tensors[i].name]
    index = (named or candidates)[0]
    if graph.tensors[index].type_code != _FLOAT32:
        raise ModelError("this .tflite pilot takes %s frames (integer-quantized, e.g. for a Coral Edge TPU); %s"
                         % (_NUMPY_TYPES.get(graph.tensors[index].type_code, "non-float"), _QUANTIZED_HINT))
    return index


def _model_type(graph, first_map):
    """donkey's model type, guessed like ``model._model_type`` from the Keras input and output names
    that the converter keeps in the signature."""
    input_names, output_names = graph.signature_names
    guess = model_type_from_names(input_names + [graph.tensors[i].name for i in graph.inputs], output_names)
    if guess:
        return guess
    # Tensor names start with the Keras model's name: 'linear/conv2d_1/...'.
    prefix = graph.tensors[first_map].name.split("/")[0]
    return prefix if prefix and prefix != graph.tensors[first_map].name else "tflite"


def _conv_or_pool(graph, op, hw, out_shape):
    """(kind, kernel, stride, padding) read from the op, checked against the output size."""
    options = op.options
    name = graph.tensors[op.outputs[0]].name
    missing = [f for f in ("StrideH", "StrideW") + (() if op.kind in _CONVS else ("FilterHeight", "FilterWidth"))
               if f not in options]
    if missing or (op.kind in _CONVS and len(graph.tensors[op.inputs[1]].shape) != 4):
        raise ModelError("op %s (%s) lacks its geometry in the file (damaged?)" % (name, op.kind))
    if op.kind in _CONVS:
        filter_shape = graph.tensors[op.inputs[1]].shape  # (O, kh, kw, I); depthwise (1, kh, kw, C*M)
        dilation = (options.get("DilationHFactor", 1), options.get("DilationWFactor", 1))
        kernel = tuple((int(k) - 1) * d + 1 for k, d in zip(filter_shape[1:3], dilation))
    else:
        kernel = (options["FilterHeight"], options["FilterWidth"])
    stride = (options["StrideH"], options["StrideW"])
    padding = _PADDING.get(options.get("Padding"))
    if padding is None:
        raise ModelError("op %s has an unknown padding (%r)" % (name, options.get("Padding")))
    out_hw = tuple(out_shape[1:3])
    expected = tuple(conv_output_size(i, k, s, padding) for i, k, s in zip(hw, kernel, stride))
    if expected != out_hw:
        raise ModelError("op %s: output %s does not follow from its geometry (expected %s)" % (name, out_hw, expected))
    return ("conv" if op.kind in _CONVS else "pool"), kernel, stride, padding, out_hw


def _pad_border(graph, op, in_shape, out_shape):
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
    if in_shape[0] != out_shape[0] or in_shape[3] != out_shape[3]:
        return None
    begin = graph.constant(op.inputs[1])
    if begin is None or begin.size != 4:
        return None
    begin = [int(v) for v in begin.reshape(4)]
    if op.kind == "STRIDED_SLICE":
        options = op.options
        strides = graph.constant(op.inputs[3]) if len(op.inputs) > 3 else None
        if strides is None or any(int(s) != 1 for s in strides.reshape(-1)):
            return None
        if options.get("EllipsisMask") or options.get("NewAxisMask") or options.get("ShrinkAxisMask") \
                or options.get("Offset"):
            return None
        begin = [0 if options.get("BeginMask", 0) & (1 << axis) else b for axis, b in enumerate(begin)]
    border = []
    for axis in (1, 2):
        start = begin[axis] + (in_shape[axis] if begin[axis] < 0 else 0)
        end_gap = in_shape[axis] - start - out_shape[axis]
        if start < 0 or end_gap < 0:
            return None
        border.append((start, end_gap))
    return tuple(border)


def tflite_trunk(path):
    """Walk the chain of spatial ops from the image input, like ``model.keras_trunk`` does for Keras."""
    graph = _read_graph(path)  # before the interpreter, which crashes on some damaged files
    image = _image_input(graph)
    height, width, channels = graph.tensors[image].shape[1:]
    steps, handles = [], []
    hw = (height, width)
    tensor = image
    conv_map = None  # [index into handles, saw_activation] of the conv whose pointwise tail we are in
    while True:
        consumers = graph.consumers(tensor)
        if len(consumers) != 1:
            if len(consumers) > 1:
                logger.info("conv trunk ends where it branches into %d ops", len(consumers))
            break
        op = consumers[0]
        if len(op.outputs) != 1:
            break
        out = op.outputs[0]
        in_shape, out_shape = graph.tensors[tensor].shape, graph.tensors[out].shape
        if op.kind in _CONVS or op.kind in _POOLS:
            if len(out_shape) != 4 or op.inputs[0] != tensor:
                break
            if graph.tensors[out].type_code != _FLOAT32:
                raise ModelError("this .tflite pilot computes its convolutions in 8-bit integers (quantized); %s"
                                 % _QUANTIZED_HINT)
            kind, kernel, stride, padding, out_hw = _conv_or_pool(graph, op, hw, out_shape)
            # A conv's filter tensor carries the layer's plain name; its fused output a list of names.
            label = graph.tensors[op.inputs[1] if kind == "conv" else out].name
            steps.append(Step(kind, label, kernel, stride, padding, None, hw, out_hw, int(out_shape[3])))
            if kind == "conv":
                handles.append(out)
                conv_map = [len(handles) - 1, op.options.get("FusedActivationFunction", 0) != 0]
            else:
                conv_map = None
            hw = out_hw
        elif op.kind in _PADS or op.kind in _CROPS:
            if len(out_shape) != 4 or op.inputs[0] != tensor:
                break
            border = (_pad_border if op.kind in _PADS else _crop_border)(graph, op, in_shape, out_shape)
            if border is None:
                break  # slices or pads over batch/channels: not a Cropping2D/ZeroPadding2D
            out_hw = tuple(out_shape[1:3])
            steps.append(Step("pad" if op.kind in _PADS else "crop", graph.tensors[out].name, (1, 1), (1, 1), None,
                              border, hw, out_hw, int(out_shape[3])))
            conv_map = None
            hw = out_hw
        elif op.kind in _ACTIVATIONS:
            if conv_map is not None:
                handles[conv_map[0]], conv_map[1] = out, True
        elif op.kind in _ARITHMETIC:
            others = [i for i in op.inputs if i != tensor]
            if len(others) != 1 or graph.constant(others[0]) is None or tuple(out_shape[1:3]) != hw:
                break  # a merge of two branches (residual) ends the chain
            fused = op.options.get("FusedActivationFunction", 0) != 0
            # Before any activation (conv -> BN -> ReLU) the map moves along; after it, it stays put.
            if conv_map is not None and (fused or not conv_map[1]):
                handles[conv_map[0]] = out
                conv_map[1] = conv_map[1] or fused
        elif op.kind == "SPACE_TO_BATCH_ND":
            raise ModelError("this .tflite pilot has a dilated convolution (SPACE_TO_BATCH_ND), which tf2onnx "
                             "cannot convert correctly; use the .h5/.savedmodel pilot")
        elif op.kind == "QUANTIZE":
            raise ModelError("this .tflite pilot quantizes its frames to 8-bit integers; %s" % _QUANTIZED_HINT)
        else:
            break  # RESHAPE (Flatten), FULLY_CONNECTED, MEAN, CONCATENATION ...: the trunk ends here
        tensor = out
    while steps and steps[-1].kind != "conv":
        steps.pop()
    if not steps:
        raise ModelError("the pilot has no convolution on its image path, so there is nothing to explain")
    _interpreter(path)  # last: it catches what the checks above cannot (weights, unknown ops)
    names = _unique([_layer_name(s.name) for s in steps])
    steps = [s._replace(name=n) for s, n in zip(steps, names)]
    return TfliteTrunk((height, width, channels), steps, handles, _model_type(graph, handles[0]), image,
                       graph.tensors[image].name, [graph.tensors[h].name for h in handles])


# --------------------------------------------------------------------------------------------
# Maps and the ONNX trunk

def feature_maps(path, trunk, x):
    """Post-activation maps (N, h, w, C) of each conv step for float frames ``x`` (N, H, W, C) in [0, 1],
    computed by the TFLite interpreter (one frame per invoke: converted pilots have batch 1)."""
    import numpy as np

    interpreter = _interpreter(path, preserve_all_tensors=True)
    inputs = interpreter.get_input_details()
    maps = [[] for _ in trunk.map_handles]
    for frame in np.asarray(x, dtype=np.float32):
        for detail in inputs:  # other inputs (memory, behaviour, IMU) do not reach the conv trunk
            value = frame[None] if detail["index"] == trunk.input_index else np.zeros(detail["shape"], detail["dtype"])
            interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        for store, handle in zip(maps, trunk.map_handles):
            store.append(np.array(interpreter.get_tensor(handle), dtype=np.float32))
    return [np.concatenate(store, axis=0) for store in maps]


def trunk_onnx(path, trunk, opset):
    """ONNX ModelProto: float input 'image' (N, H, W, C) -> map_0..map_{L-1} (N, C, h, w)."""
    _tensorflow()
    import onnx
    import tf2onnx
    from onnx import TensorProto, helper
    from onnx import utils as onnx_utils

    names = trunk.map_names
    try:
        # outputs_as_nchw is not used: with intermediate outputs its transpose pass breaks the graph.
        proto, _ = tf2onnx.convert.from_tflite(path, input_names=[trunk.input_name], output_names=names,
                                               opset=opset)
    except Exception as error:
        raise ModelError("tf2onnx cannot convert %s: %s" % (path, first_line(error)))
    # from_tflite carries on past ops it cannot convert, leaving them as 'TFL_*' nodes.
    unknown = sorted({n.op_type for n in proto.graph.node
                      if n.domain not in ("", "ai.onnx") or not onnx.defs.has(n.op_type)})
    if unknown:
        raise ModelError("tf2onnx cannot convert the ops %s of %s to ONNX" % (", ".join(unknown), path))
    graph = proto.graph
    if trunk.input_name not in [i.name for i in graph.input] or \
            set(names) - set(o.name for o in graph.output):
        raise ModelError("tf2onnx lost the image input or a conv output of %s" % path)
    _rename_tensor(graph, trunk.input_name, "image")
    del graph.output[:]
    for i, (name, conv) in enumerate(zip(names, trunk.convs)):
        # NHWC -> NCHW; the converter's own NCHW convs leave transpose pairs that runtimes cancel.
        graph.node.append(helper.make_node("Transpose", [name], ["map_%d" % i], name="map_%d/nchw" % i,
                                           perm=[0, 3, 1, 2]))
        graph.output.append(helper.make_tensor_value_info("map_%d" % i, TensorProto.FLOAT,
                                                          ["N", conv.channels] + list(conv.out_hw)))
    _cancel_transpose_pairs(graph)
    # Keep only what lies between the image and the maps (other inputs, the dense head, dead transposes).
    return onnx_utils.Extractor(proto).extract_model(["image"], ["map_%d" % i for i in range(len(names))])


def _cancel_transpose_pairs(graph):
    """Drop NCHW -> NHWC -> NCHW round trips. tf2onnx leaves one around every conv whose NHWC output
    is a graph output; a TensorRT engine would otherwise run them all."""
    from onnx import helper

    producers = {out: node for node in graph.node for out in node.output}
    graph_outputs = {value.name for value in graph.output}
    replaced = {}  # output of a cancelled second transpose -> input of the first
    for node in graph.node:
        first = producers.get(node.input[0]) if node.op_type == "Transpose" else None
        if first is None or first.op_type != "Transpose":
            continue
        outer, inner = (list(helper.get_attribute_value(a)) for a in (
            next(a for a in first.attribute if a.name == "perm"), next(a for a in node.attribute if a.name == "perm")))
        if [outer[axis] for axis in inner] == list(range(len(inner))):
            replaced[node.output[0]] = first.input[0]

    def resolve(name):
        while name in replaced:
            name = replaced[name]
        return name

    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = resolve(name)
    for node in list(graph.node):
        if node.op_type == "Transpose" and node.output[0] in replaced:
            if node.output[0] in graph_outputs:  # keep the output's name
                node.op_type = "Identity"
                del node.attribute[:]
                node.input[0] = resolve(node.output[0])
            else:
                graph.node.remove(node)


def _rename_tensor(graph, old, new):
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
