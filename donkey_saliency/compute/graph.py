"""One fused ONNX graph per pilot: uint8 frame -> /255 -> conv trunk -> VisualBackProp head.

Outputs: ``mask`` (N, H, W) in [0, 1] and ``mean_<i>`` (N, h_i, w_i), the channel-averaged map of
conv layer i (shallow to deep). With ``features=True`` also ``features_<i>`` (N, C_i, h_i, w_i).
Built with an ``output`` (steering | throttle), also the backward pass's maps (backward.py), from
the forward pass the builder records on its tape.
The head mirrors ``vbp.py`` operation for operation; the tests hold the two together.

The graph is built from the pilot's trunk description (``pilots/``) and serialized by onnx_proto.py:
no TensorFlow, no ``onnx`` package (a car needs only onnxruntime). Built graphs are cached by the
pilot file's content hash, so a car builds once and starts from the cached ``.onnx`` afterwards.
"""
import hashlib
import json
import logging
import os

from ..version import __version__
from . import onnx_proto as helper
from .backward import add_backward
from .onnx_proto import TensorProto
from ..errors import ModelError, first_line
from ..util.fileio import atomic_write, default_cache_dir, file_digest
from ..pilots import load_pilot, require_model_file
from ..pilots.network import TRUNK_END
from ..pilots.trunk import Affine, pad_before, same_padding_totals
from .vbp import TINY

logger = logging.getLogger(__name__)

OPSET = 13  # what TensorRT 8.2 (JetPack 4.6) parses
IR_VERSION = 7  # the IR that goes with opset 13; older ONNX parsers refuse newer IRs
INPUT_NAME = "frame"
MASK_NAME = "mask"
META_KEY = "donkey_saliency"
GRAPH_FORMAT = 3  # bump when the graph's layout or math changes: invalidates caches


class SaliencyGraph(object):
    """The serialized fused graph plus what a backend and the part need to know about it."""

    input_name = INPUT_NAME
    mask_name = MASK_NAME

    def __init__(self, onnx_bytes, input_shape, layer_names, level_shapes, source="", pilot=None):
        self.onnx_bytes = onnx_bytes
        self.input_shape = tuple(input_shape)  # (H, W, C)
        self.layer_names = list(layer_names)
        self.level_shapes = [tuple(s) for s in level_shapes]  # (h, w) per conv layer
        self.source = source
        # A whole-pilot graph (build(network=...)) also gives the pilot's outputs: its metadata, else None.
        # keys: image (the pilot's name for the frame input), inputs ([name, shape] of its other inputs,
        # fed under those names), outputs (names, in donkeycar's interpreter order), float_input.
        self.pilot = pilot

    @property
    def output(self):
        """The pilot output whose backward pass the graph computes (steering | throttle), else None."""
        return self.pilot.get("output") if self.pilot else None

    def default_feeds(self, count):
        """Zeros for a whole-pilot graph's other inputs (donkeycar's start memory, no behaviour, a still
        IMU): what a mask of the image alone holds them at; {} for a trunk graph."""
        import numpy as np

        return {name: np.zeros([count] + list(shape), np.float32) for name, shape in (self.pilot or {}).get("inputs", [])}

    @property
    def float_input(self):
        """Whether 'frame' takes the pilot's normalized float32 image instead of uint8 pixels."""
        return bool(self.pilot and self.pilot.get("float_input"))

    @property
    def input_hw(self):
        return self.input_shape[:2]

    @property
    def mean_names(self):
        return ["mean_%d" % i for i in range(len(self.layer_names))]

    @property
    def digest(self):
        """sha256 of the serialized graph: the identity TensorRT engines are cached under."""
        return hashlib.sha256(self.onnx_bytes).hexdigest()

    def save(self, path):
        atomic_write(path, self.onnx_bytes)

    @classmethod
    def from_bytes(cls, data, source=""):
        meta = helper.metadata_props(data)
        if META_KEY not in meta:
            raise ModelError("%s is an ONNX file but not a donkey-saliency graph (export one with "
                             "'donkey-saliency export')" % (source or "the graph"))
        info = json.loads(meta[META_KEY])
        if info.get("format") != GRAPH_FORMAT:
            raise ModelError("%s was exported by an incompatible donkey-saliency (graph format %s, this "
                             "version reads %s); export it again" % (source, info.get("format"), GRAPH_FORMAT))
        return cls(data, info["input_shape"], info["layers"], info["level_shapes"], source or info.get("source", ""),
                   info.get("pilot"))

    @classmethod
    def load(cls, path):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            return cls.from_bytes(data, source=path)
        except ModelError:
            raise
        except Exception as error:
            raise ModelError("cannot read %s as an ONNX graph: %s" % (path, first_line(error)))


# --------------------------------------------------------------------------------------------
# Building the graph

class _Builder(object):
    """Collects nodes and constants of one ONNX graph under unique names."""

    def __init__(self):
        self.nodes = []
        self.initializers = []
        self.count = 0
        # The forward computation, step by step, for the backward pass (backward.py): entries
        # [what (an Affine/Activation, a Step or a network Layer), input tensors, output tensor, detail]
        # with detail: a conv's or dense layer's weight tensor, a concat's input widths, a flatten's (C, h, w).
        self.tape = []

    def record(self, what, inputs, output, detail=None):
        self.tape.append([what, list(inputs), output, detail])
        return output

    def name(self, hint):
        self.count += 1
        return "%s_%d" % (hint, self.count)

    def const(self, hint, array):
        name = self.name(hint)
        self.initializers.append(helper.from_array(array, name))
        return name

    def op(self, op_type, inputs, hint=None, output=None, **attrs):
        """Append a node; it is named '<prefix>/<op_type>_<n>' after its hint's prefix ('trunk/', 'vbp/'),
        which TensorRT's precision pinning reads."""
        output = output or self.name(hint or op_type.lower())
        prefix = (hint or output).rpartition("/")[0]
        name = self.name((prefix + "/" if prefix else "") + op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    def prune(self, outputs):
        """Drop the nodes and constants that none of ``outputs`` needs."""
        needed, kept = set(outputs), []
        for node in reversed(self.nodes):
            if needed.intersection(node.output):
                kept.append(node)
                needed.update(node.input)
        self.nodes = kept[::-1]
        self.initializers = [t for t in self.initializers if t.name in needed]

    def rename(self, old, new):
        """Give a tensor a stable name (the conv maps become map_0, map_1, ...)."""
        for node in self.nodes:
            for names in (node.input, node.output):
                for i, name in enumerate(names):
                    if name == old:
                        names[i] = new
        for entry in self.tape:
            entry[1] = [new if name == old else name for name in entry[1]]
            entry[2] = new if entry[2] == old else entry[2]


# --- the trunk ------------------------------------------------------------------------------------

def _pointwise(b, x, op):
    """One Affine or Activation (see pilots/trunk.py) on an NCHW tensor, recorded on the tape."""
    y = _pointwise_op(b, x, op)
    return b.record(op, [x], y) if y != x else y


def _pointwise_op(b, x, op):
    import numpy as np

    if isinstance(op, Affine):
        for value, op_type, neutral in ((op.scale, "Mul", 1.0), (op.shift, "Add", 0.0)):
            value = np.asarray(value, np.float32)
            if not np.all(value == neutral):
                shaped = value.reshape(1, -1, 1, 1) if value.size > 1 else value.reshape(())
                x = b.op(op_type, [x, b.const("trunk/affine", shaped)], "trunk/affine")
        return x
    kind = op.kind
    if kind == "linear":
        return x
    if kind == "relu":
        return b.op("Relu", [x], "trunk/relu")
    if kind in ("relu6", "relu_n1_to_1", "relu_0_to_1"):
        low, high = {"relu6": (0.0, 6.0), "relu_n1_to_1": (-1.0, 1.0), "relu_0_to_1": (0.0, 1.0)}[kind]
        return b.op("Clip", [x, b.const("trunk/low", np.array(low, np.float32)),
                             b.const("trunk/high", np.array(high, np.float32))], "trunk/clip")
    if kind == "elu":
        return b.op("Elu", [x], "trunk/elu", alpha=op.alpha)
    if kind == "leaky_relu":
        return b.op("LeakyRelu", [x], "trunk/leaky_relu", alpha=op.alpha)
    if kind == "tanh":
        return b.op("Tanh", [x], "trunk/tanh")
    if kind == "sigmoid":
        return b.op("Sigmoid", [x], "trunk/sigmoid")
    if kind == "swish":
        return b.op("Mul", [x, b.op("Sigmoid", [x], "trunk/sigmoid")], "trunk/swish")
    raise ValueError("unknown activation %r" % kind)


def _step_pads(step):
    """ONNX pads [top, left, bottom, right] of a conv/pool step."""
    if step.padding != "same":
        return [0, 0, 0, 0]
    total_h, total_w = same_padding_totals(step)
    return [total_h // 2, total_w // 2, total_h - total_h // 2, total_w - total_w // 2]


def _spatial_step(b, x, step):
    """One conv/pool/crop/pad step, recorded on the tape with its weight tensor (convs)."""
    y = _spatial_op(b, x, step)
    return b.record(step, [x], y, b.nodes[-1].input[1] if step.kind == "conv" else None)


def _spatial_op(b, x, step):
    import numpy as np

    name = "trunk/" + step.name
    if step.kind == "conv":
        conv = step.compute
        return b.op("Conv", [x, b.const(name + "/W", conv.weight), b.const(name + "/B", conv.bias)], name,
                    kernel_shape=list(conv.weight.shape[2:]), strides=list(step.stride), pads=_step_pads(step),
                    dilations=list(conv.dilation), group=conv.groups)
    if step.kind == "pool":
        op_type = "MaxPool" if step.compute == "max" else "AveragePool"
        return b.op(op_type, [x], name, kernel_shape=list(step.kernel), strides=list(step.stride),
                    pads=_step_pads(step))
    (top, bottom), (left, right) = step.border
    if step.kind == "crop":
        height, width = step.in_hw
        return b.op("Slice", [x, b.const(name + "/starts", np.array([top, left], np.int64)),
                              b.const(name + "/ends", np.array([height - bottom, width - right], np.int64)),
                              b.const(name + "/axes", np.array([2, 3], np.int64))], name)
    pads = np.array([0, 0, top, left, 0, 0, bottom, right], np.int64)
    return b.op("Pad", [x, b.const(name + "/pads", pads)], name, mode="constant")


def _trunk(b, trunk, image):
    """The pilot's conv trunk on an NCHW float image; returns each conv's post-activation map."""
    x = image
    for op in trunk.input_tail:
        x = _pointwise(b, x, op)
    maps = []
    for step in trunk.steps:
        x = _spatial_step(b, x, step)
        for index, op in enumerate(step.tail):
            if step.kind == "conv" and index == step.compute.map_at:
                maps.append(x)
            x = _pointwise(b, x, op)
        if step.kind == "conv" and step.compute.map_at == len(step.tail):
            maps.append(x)
    for i, tensor in enumerate(maps):
        b.rename(tensor, "map_%d" % i)
    return ["map_%d" % i for i in range(len(maps))]


# --- the head -------------------------------------------------------------------------------------

def _scale_to_max(b, m, tiny):
    peak = b.op("ReduceMax", [m], "vbp/peak", axes=[2, 3], keepdims=1)
    return b.op("Div", [m, b.op("Max", [peak, tiny], "vbp/peak_or_tiny")], "vbp/scaled")


def _to_step_input(b, m, step):
    """ONNX twin of ``vbp.to_step_input`` on (N, 1, h, w) maps."""
    import numpy as np

    if step.kind in ("conv", "pool"):
        begin = pad_before(step)
        pads_end, output_padding = [], []
        for axis in (0, 1):
            full = (step.out_hw[axis] - 1) * step.stride[axis] + step.kernel[axis]
            extra = full - begin[axis] - step.in_hw[axis]  # > 0: cut at the end; < 0: zero rows to add
            pads_end.append(max(extra, 0))
            output_padding.append(max(-extra, 0))
        ones = b.const("vbp/ones", np.ones((1, 1) + tuple(step.kernel), dtype=np.float32))
        attrs = dict(kernel_shape=list(step.kernel), strides=list(step.stride), pads=list(begin) + pads_end)
        if any(output_padding):
            attrs["output_padding"] = output_padding
        return b.op("ConvTranspose", [m, ones], "vbp/up_" + step.name, **attrs)
    (top, bottom), (left, right) = step.border
    if step.kind == "crop":
        pads = b.const("vbp/pads", np.array([0, 0, top, left, 0, 0, bottom, right], dtype=np.int64))
        return b.op("Pad", [m, pads], "vbp/uncrop_" + step.name, mode="constant")
    if step.kind == "pad":
        height, width = step.out_hw
        starts = b.const("vbp/starts", np.array([top, left], dtype=np.int64))
        ends = b.const("vbp/ends", np.array([height - bottom, width - right], dtype=np.int64))
        axes = b.const("vbp/axes", np.array([2, 3], dtype=np.int64))
        return b.op("Slice", [m, starts, ends, axes], "vbp/unpad_" + step.name)
    raise ValueError("unknown step kind %r" % step.kind)


def _head(b, trunk, maps):
    """VisualBackProp on the maps; returns (mask (N, 1, H, W), [mean_i (N, 1, h, w)])."""
    import numpy as np

    tiny = b.const("vbp/tiny", np.array(TINY, dtype=np.float32))
    means = []
    for i, conv in enumerate(trunk.convs):
        # The channel mean as a 1x1 conv with weights 1/C: it stays in the runtimes' blocked conv
        # layout (ONNX Runtime would otherwise reorder each 64-channel map just to average it).
        weights = b.const("vbp/channel_mean", np.full((1, conv.channels, 1, 1), 1.0 / conv.channels, np.float32))
        means.append(b.op("Conv", [maps[i], weights], "vbp/mean4d_%d" % i, kernel_shape=[1, 1]))
    steps = trunk.steps
    level = len(means) - 1
    m = _scale_to_max(b, means[level], tiny)
    for index in range(len(steps) - 1, -1, -1):
        m = _to_step_input(b, m, steps[index])
        if index > 0 and steps[index - 1].kind == "conv":
            level -= 1
            m = _scale_to_max(b, b.op("Mul", [m, means[level]], "vbp/product"), tiny)
    low = b.op("ReduceMin", [m], "vbp/low", axes=[2, 3], keepdims=1)
    high = b.op("ReduceMax", [m], "vbp/high", axes=[2, 3], keepdims=1)
    spread = b.op("Max", [b.op("Sub", [high, low], "vbp/range"), tiny], "vbp/spread")
    return b.op("Div", [b.op("Sub", [m, low], "vbp/shifted"), spread], "vbp/normalised"), means


# --- the whole pilot past its trunk ------------------------------------------------------------------

def _pilot_layers(b, trunk, network, end):
    """The layers past the trunk (pilots/network.py) from the trunk's last map ``end``; returns
    {tensor name: (onnx tensor, width)} for every layer and input."""
    ops, trailing = trunk.after_maps
    for op in ops:
        end = _pointwise(b, end, op)
    for step in trailing:
        end = _spatial_step(b, end, step)
        for op in step.tail:
            end = _pointwise(b, end, op)
    height, width = trunk.end_hw
    tensors = {TRUNK_END: (end, None)}
    tensors.update((i.name, (i.name, i.shape[0] if len(i.shape) == 1 else None)) for i in network.extra_inputs)
    for layer in network.layers:
        hint = "pilot/" + layer.name
        sources = [tensors[name] for name in layer.inputs]
        x, size = sources[0]
        if layer.kind == "flatten":  # Keras and TFLite flatten NHWC: channels last
            x = b.op("Flatten", [b.op("Transpose", [x], hint, perm=[0, 2, 3, 1])], hint, axis=1)
            size = height * width * trunk.end_channels
        elif layer.kind == "dense":
            weight, bias = layer.params
            x = b.op("Gemm", [x, b.const(hint + "/W", weight), b.const(hint + "/B", bias)], hint)
            size = weight.shape[1]
        elif layer.kind == "concat":
            x = b.op("Concat", [t for t, _ in sources], hint, axis=1)
            size = sum(w for _, w in sources)
        elif layer.params == "softmax":
            x = b.op("Softmax", [x], hint, axis=1)
        else:
            x = _pointwise(b, x, layer.params)
        if layer.kind != "activation" or layer.params == "softmax":  # _pointwise recorded the others
            detail = {"dense": lambda: b.nodes[-1].input[1], "concat": lambda: [w for _, w in sources],
                      "flatten": lambda: (trunk.end_channels, height, width)}.get(layer.kind, lambda: None)()
            b.record(layer, [t for t, _ in sources], x, detail)
        tensors[layer.name] = (x, size)
    return tensors


def _gradient_outputs(b, trunk, image, maps, network, tensors, output, raw):
    """The backward pass's outputs (backward.py) as graph outputs; value infos."""
    made = add_backward(b, image, maps, network, tensors, output)
    height, width, channels = trunk.input_shape
    shapes = dict(input_gradient=[height, width], input_x_gradient=[height, width],
                  grad_frame=[height, width, channels])
    for i, conv in enumerate(trunk.convs):
        shapes["gxa_%d" % i] = shapes["gradcam_%d" % i] = list(conv.out_hw)
        shapes["grad_map_%d" % i] = [conv.channels] + list(conv.out_hw)
    infos = []
    for name in sorted(shapes):
        if name.startswith("grad_") and not raw:
            continue
        b.op("Identity", [made[name]], "grad/output", output=name)
        infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N"] + shapes[name]))
    return infos


def build(trunk, features=False, source="", network=None, float_input=False, output=None, head=True, keep=None):
    """The fused graph (an onnx_proto.Model) of a trunk: uint8 frame -> /255 -> trunk -> VisualBackProp.

    With ``network`` (pilots/network.py) it is the whole pilot: its other inputs go in under their own
    names and its outputs come out under theirs, beside the mask. ``float_input``: the frame arrives
    already normalized to [0, 1] as float32 (what donkeycar's KerasPilot hands its interpreter).
    ``output`` (steering | throttle; needs ``network``): the backward pass of that output too, and the
    gradient maps backward.py describes (the raw gradients too with ``features``). ``head=False`` (with
    ``network``): the pilot alone, no mask - what the drive loop runs when the saliency worker computes
    the mask on its own graph (SALIENCY_SHARE_PILOT with a gradient method). ``keep``: the names of the
    outputs to keep (None: all); what no kept output needs is left out (methods.needed_outputs)."""
    import numpy as np
    height, width, channels = trunk.input_shape
    b = _Builder()
    if float_input:
        scaled = INPUT_NAME
    else:
        # uint8 frame in: a 4x smaller host->device copy, and the /255 that KerasPilot applies. Named
        # 'vbp/' like the head: TensorRT keeps this cheap prologue in fp32 with it.
        scaled = b.op("Div", [b.op("Cast", [INPUT_NAME], "vbp/frame_float", to=TensorProto.FLOAT),
                              b.const("vbp/255", np.array(255.0, np.float32))], "vbp/frame_scaled")
    image = b.op("Transpose", [scaled], "vbp/frame_nchw", perm=[0, 3, 1, 2])
    maps = _trunk(b, trunk, image)
    outputs = []
    if head:
        mask, means = _head(b, trunk, maps)
        axis1 = b.const("vbp/axis1", np.array([1], dtype=np.int64))
        b.op("Squeeze", [mask, axis1], "vbp/output", output=MASK_NAME)
        outputs.append(helper.make_tensor_value_info(MASK_NAME, TensorProto.FLOAT, ["N", height, width]))
        for i, (conv, mean) in enumerate(zip(trunk.convs, means)):
            b.op("Squeeze", [mean, axis1], "vbp/output", output="mean_%d" % i)
            outputs.append(helper.make_tensor_value_info("mean_%d" % i, TensorProto.FLOAT,
                                                         ["N"] + list(conv.out_hw)))
    if features:
        for i, (conv, tensor) in enumerate(zip(trunk.convs, maps)):
            b.op("Identity", [tensor], "vbp/output", output="features_%d" % i)
            outputs.append(helper.make_tensor_value_info("features_%d" % i, TensorProto.FLOAT,
                                                         ["N", conv.channels] + list(conv.out_hw)))
    frame = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT if float_input else TensorProto.UINT8,
                                          ["N", height, width, channels])
    inputs, pilot = [frame], None
    if network is not None:
        taken = set(o.name for o in outputs) | {INPUT_NAME}
        clash = [n for n in network.output_names + [i.name for i in network.extra_inputs] if n in taken]
        if clash:
            raise ModelError("the pilot names an input or output %s, which saliency's graph uses itself" % clash[0])
        tensors = _pilot_layers(b, trunk, network, maps[-1])
        for extra in network.extra_inputs:
            inputs.append(helper.make_tensor_value_info(extra.name, TensorProto.FLOAT, ["N"] + list(extra.shape)))
        for name, tensor in network.outputs:
            b.op("Identity", [tensors[tensor][0]], "pilot/output", output=name)
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", tensors[tensor][1]]))
        if output:
            outputs.extend(_gradient_outputs(b, trunk, image, maps, network, tensors, output, features))
        pilot = dict(image=network.image, inputs=[[i.name, list(i.shape)] for i in network.extra_inputs],
                     input_order=[i.name for i in network.inputs], outputs=network.output_names,
                     float_input=bool(float_input), output=output)
    if keep is not None:  # the pilot's own outputs stay: the backward pass computes them anyway
        kept = set(keep) | set(network.output_names if network is not None else ())
        outputs = [o for o in outputs if o.name in kept]
        b.prune([o.name for o in outputs])
    graph = helper.make_graph(b.nodes, "donkey_saliency", inputs, outputs, initializer=b.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="donkey-saliency",
                              producer_version=__version__)
    proto.ir_version = IR_VERSION
    info = dict(format=GRAPH_FORMAT, input_shape=list(trunk.input_shape), layers=trunk.layer_names,
                level_shapes=[list(c.out_hw) for c in trunk.convs], model_type=trunk.model_type,
                source=source, version=__version__, features=features)
    if pilot is not None:
        info["pilot"] = pilot
    helper.set_model_props(proto, {META_KEY: json.dumps(info)})
    return proto


def export(pilot, features=False, float_input=False, output=None, head=True, keep=None):
    """The fused :class:`SaliencyGraph` of a loaded :class:`~donkey_saliency.pilots.Pilot`; the whole
    pilot's graph when it was read with its network (``load_pilot(path, whole=True)``), with the
    backward pass of ``output`` (steering | throttle) when given."""
    trunk = pilot.trunk
    if output and pilot.network is None:
        raise ValueError("gradients need the whole pilot: load_pilot(path, whole=True)")
    proto = build(trunk, features=features, source=os.path.basename(pilot.path.rstrip("/")), network=pilot.network,
                  float_input=float_input, output=output, head=head, keep=keep)
    info = json.loads({p.key: p.value for p in proto.metadata_props}[META_KEY])
    return SaliencyGraph(proto.SerializeToString(), trunk.input_shape, trunk.layer_names,
                         [list(c.out_hw) for c in trunk.convs], pilot.path, info.get("pilot"))


# --------------------------------------------------------------------------------------------
# Cache

def graph_for(model_path, cache_dir=None, features=False, whole=False, float_input=False, output=None, head=True,
              keep=None):
    """The fused graph for a pilot file: a ready ``.onnx`` graph is read as it is; anything else is
    exported once and cached under its content hash (``cache_dir=False`` disables the cache).
    ``whole``: the whole pilot's graph (its outputs too); ``float_input``: see :func:`build`;
    ``output`` (steering | throttle): the whole pilot with that output's backward pass; ``head``, ``keep``:
    see :func:`build`."""
    whole = whole or bool(output)
    model_path = require_model_file(model_path)
    if model_path.lower().endswith(".onnx"):
        return SaliencyGraph.load(model_path)
    cached = None
    if cache_dir is not False:
        key = "%s-g%d-o%d%s%s%s%s" % (file_digest(model_path)[:24], GRAPH_FORMAT, OPSET, "-f" if features else "",
                                      "-p" if whole else "", "-x" if float_input else "",
                                      ("-" + output if output else "") + ("" if head else "-n")
                                      + ("-k" + hashlib.sha1(",".join(sorted(keep)).encode()).hexdigest()[:8]
                                         if keep is not None else ""))
        stem = os.path.splitext(os.path.basename(model_path.rstrip("/")))[0]
        cached = os.path.join(cache_dir or default_cache_dir(), "%s-%s.onnx" % (stem, key))
        if os.path.exists(cached):
            try:
                graph = SaliencyGraph.load(cached)
                graph.source = model_path  # name the pilot, not its cache entry
                return graph
            except ModelError as error:
                logger.warning("ignoring cached graph %s (%s); exporting again", cached, error)
    graph = export(load_pilot(model_path, whole=whole), features=features, float_input=float_input, output=output,
                   head=head, keep=keep)
    if cached:
        try:
            graph.save(cached)
        except OSError as error:  # a read-only home must not stop anything
            logger.warning("could not cache the graph at %s: %s", cached, error)
    return graph
