"""The format-free description of a pilot's conv trunk that every reader produces.

A :class:`Trunk` is the image input (shape, the pilot's preprocessing) and a chain of :class:`Step`
in forward order. Each step carries its geometry (what VisualBackProp needs) and what it computes
(what the ONNX graph needs): ``conv`` steps their weights, ``pool`` steps max or average; ``crop``
and ``pad`` steps are geometry only. Pointwise layers (BatchNormalization, activations, Rescaling)
ride in the ``tail`` of the step before them; a conv's averaged map is taken after its last
activation (``Conv.map_at``). Dropout and friends are identities and leave no trace.

Readers build a trunk through :class:`TrunkBuilder`, so the rules (where the map is tapped, folding
BatchNormalization into the conv) live here once.
"""
import math
from collections import namedtuple

import numpy as np

from ..errors import ModelError

# Activations donkey pilots use, as the graph builder spells them. Anything else is refused.
ACTIVATIONS = ("relu", "relu6", "elu", "leaky_relu", "tanh", "sigmoid", "swish", "linear",
               "relu_n1_to_1", "relu_0_to_1")
SUPPORTED_MODEL_TYPES = "linear, categorical, inferred, memory, behavior, localizer, imu"
SEQUENCE_HINT = "saliency supports single-frame 2-D pilots (%s)" % SUPPORTED_MODEL_TYPES

_GEOMETRY = "kind name kernel stride padding border in_hw out_hw channels"


class Step(namedtuple("Step", _GEOMETRY + " compute tail")):
    """One spatial layer of the trunk.

    kind     'conv' | 'pool' | 'crop' | 'pad'
    kernel   (kh, kw), dilation already folded in (effective extent); (1, 1) for crop/pad
    stride   (sh, sw); (1, 1) for crop/pad
    padding  'valid' | 'same' for conv/pool; None otherwise
    border   ((top, bottom), (left, right)) removed by crop / added by pad; None otherwise
    in_hw, out_hw  spatial sizes before and after the layer
    channels output channels
    compute  :class:`Conv` for conv, 'max' | 'avg' for pool, None otherwise
    tail     pointwise ops applied after the layer, in order (:class:`Affine`, :class:`Activation`)
    """
    __slots__ = ()

    @property
    def geometry(self):
        """The fields VisualBackProp reads: equal for one network read from any file format."""
        return tuple(self[:9])


class Conv(object):
    """What a conv step computes: ONNX-layout weights (O, I/groups, kh, kw), bias, dilation, groups,
    and ``map_at``: how many of the step's tail ops run before its averaged map is taken."""

    def __init__(self, weight, bias, dilation=(1, 1), groups=1):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias if bias is not None else np.zeros(self.weight.shape[0]),
                                         dtype=np.float32)
        self.dilation = tuple(int(d) for d in dilation)
        self.groups = int(groups)
        self.map_at = 0

    def __eq__(self, other):
        return isinstance(other, Conv) and self.dilation == other.dilation and self.groups == other.groups \
            and self.map_at == other.map_at and np.array_equal(self.weight, other.weight) \
            and np.array_equal(self.bias, other.bias)

    def __ne__(self, other):
        return not self == other

    __hash__ = None


class Affine(namedtuple("Affine", "scale shift")):
    """x * scale + shift, per channel (shape (C,)) or for all (shape ()): BatchNormalization,
    Rescaling, a constant MUL/ADD in a .tflite file."""
    __slots__ = ()

    def __eq__(self, other):
        return isinstance(other, Affine) and np.array_equal(self.scale, other.scale) \
            and np.array_equal(self.shift, other.shift)

    def __ne__(self, other):
        return not self == other

    __hash__ = None


Activation = namedtuple("Activation", "kind alpha")  # kind from ACTIVATIONS; alpha for elu/leaky_relu


def activation(kind, layer, alpha=None):
    """An :class:`Activation`, or ModelError naming the layer when the pilot uses another one."""
    aliases = {"silu": "swish", "logistic": "sigmoid", "leakyrelu": "leaky_relu", "relu_6": "relu6"}
    kind = aliases.get(kind, kind)
    if kind not in ACTIVATIONS:
        raise ModelError("layer %s uses the activation %r, which saliency does not support (it supports %s)"
                         % (layer, kind, ", ".join(ACTIVATIONS[:8])))
    if kind == "elu" and alpha is None:
        alpha = 1.0
    if kind == "leaky_relu" and alpha is None:
        alpha = 0.2
    return Activation(kind, None if alpha is None else float(alpha))


def batch_norm(gamma, beta, mean, variance, epsilon):
    """BatchNormalization at inference as an :class:`Affine`."""
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(variance, np.float64) + epsilon)
    shift = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
    return Affine(scale.astype(np.float32), shift.astype(np.float32))


# --------------------------------------------------------------------------------------------
# Geometry

def pad_before(step):
    """(top, left) implicit zero padding of a conv/pool step (TF 'same' puts the odd pixel at the end)."""
    if step.padding != "same":
        return (0, 0)
    return tuple(total // 2 for total in same_padding_totals(step))


def same_padding_totals(step):
    """Rows and columns of zeros a 'same' step adds in all, (h, w)."""
    return tuple(max((size_out - 1) * s + k - size_in, 0)
                 for size_in, size_out, k, s in zip(step.in_hw, step.out_hw, step.kernel, step.stride))


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


class Trunk(object):
    """The image input and the spatial steps (see the module docstring)."""

    def __init__(self, input_shape, steps, model_type, input_tail=(), map_sources=(), input_source=None):
        self.input_shape = tuple(int(d) for d in input_shape)  # (H, W, C)
        self.steps = list(steps)
        self.model_type = model_type
        # Pointwise ops on the frame after the pilot's own img/255 (a Rescaling layer).
        self.input_tail = list(input_tail)
        # Per conv step, where its averaged map lives in the pilot file (a Keras layer name or a TFLite
        # tensor index): what the framework-side reference (pilots/reference.py) reads.
        self.map_sources = list(map_sources)
        self.input_source = input_source
        self.after_maps = ([], [])  # (pointwise ops, spatial steps) after the last map: see TrunkBuilder.finish
        self.end_hw, self.end_channels = (self.steps[-1].out_hw, self.steps[-1].channels) if self.steps else \
            (self.input_shape[:2], self.input_shape[2])

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
            if step.padding:
                padding = step.padding
            else:
                padding = "%s %s" % ("crop" if step.kind == "crop" else "pad", step.border)
            rows.append(dict(layer=step.name, kind=step.kind, kernel=step.kernel, stride=step.stride,
                             padding=padding, output="%dx%dx%d" % (step.out_hw + (step.channels,)),
                             receptive_field=field, jump=jump,
                             activation=", ".join(_describe(op) for op in step.tail) or "-"))
        return rows


def _describe(op):
    if isinstance(op, Activation):
        return op.kind if op.alpha is None else "%s(%g)" % (op.kind, op.alpha)
    return "affine"


class TrunkBuilder(object):
    """Collects a trunk layer by layer in forward order, as a reader walks its file."""

    def __init__(self, input_shape, input_source=None):
        self.input_shape = tuple(int(d) for d in input_shape)
        self.input_source = input_source
        self.hw = self.input_shape[:2]
        self.channels = self.input_shape[2]
        self.steps = []
        self.input_tail = []
        self.map_sources = []
        self._conv = None  # the Conv whose pointwise tail is being collected, else None

    def conv(self, name, weight, bias, stride, padding, dilation=(1, 1), groups=1, source=None):
        weight = np.asarray(weight, np.float32)
        if weight.shape[1] * groups != self.channels:
            raise ModelError("layer %s expects %d input channels, the layer before gives %d"
                             % (name, weight.shape[1] * groups, self.channels))
        kernel = tuple((int(k) - 1) * int(d) + 1 for k, d in zip(weight.shape[2:], dilation))
        compute = Conv(weight, bias, dilation, groups)
        self._add("conv", name, kernel, stride, padding, None, compute, int(weight.shape[0]))
        self.map_sources.append(source)
        self._conv = compute

    def pool(self, name, kind, kernel, stride, padding):
        self._add("pool", name, tuple(kernel), stride, padding, None, kind, self.channels)
        self._conv = None

    def crop(self, name, border):
        self._border_step("crop", name, border)

    def zero_pad(self, name, border):
        self._border_step("pad", name, border)

    def pointwise(self, op, source=None):
        """An Affine or Activation after the last step; ``source`` is where its output lives."""
        tail = self.steps[-1].tail if self.steps else self.input_tail
        tail.append(op)
        conv = self._conv
        if conv is None:
            return
        # The map is the conv's post-activation output: it follows the tail up to the last
        # activation (conv -> BN -> ReLU), and stays put after it (conv -> ReLU -> BN).
        is_activation = isinstance(op, Activation) and op.kind != "linear"
        seen_activation = any(isinstance(t, Activation) and t.kind != "linear" for t in tail[:-1])
        if is_activation or not seen_activation:
            conv.map_at = len(tail)
            self.map_sources[-1] = source if source is not None else self.map_sources[-1]

    def finish(self, model_type):
        steps = list(self.steps)
        trailing = []
        while steps and steps[-1].kind != "conv":  # geometry after the last conv does not reach the mask
            trailing.insert(0, steps.pop())
        if not steps:
            raise ModelError("the pilot has no convolution on its image path (no Conv2D layer), so there is nothing "
                             "to explain")
        steps = [_fold_batch_norm(s) for s in steps]
        # Pointwise ops after the last map cannot reach the mask either.
        last = steps[-1]
        steps[-1] = last._replace(tail=last.tail[:last.compute.map_at])
        trunk = Trunk(self.input_shape, steps, model_type, self.input_tail, self.map_sources, self.input_source)
        # What the whole pilot still computes on the image path after the last map (not the mask's business).
        trunk.after_maps = (list(last.tail[last.compute.map_at:]), trailing)
        trunk.end_hw, trunk.end_channels = tuple(self.hw), self.channels
        return trunk

    def _border_step(self, kind, name, border):
        border = tuple(tuple(int(v) for v in pair) for pair in border)
        self._add(kind, name, (1, 1), (1, 1), None, border, None, self.channels)
        self._conv = None

    def _add(self, kind, name, kernel, stride, padding, border, compute, channels):
        stride = tuple(int(s) for s in stride)
        if kind in ("conv", "pool"):
            if padding not in ("valid", "same"):
                raise ModelError("layer %s has padding %r; only 'valid' and 'same' are supported" % (name, padding))
            out_hw = tuple(conv_output_size(i, k, s, padding) for i, k, s in zip(self.hw, kernel, stride))
        elif kind == "crop":
            (top, bottom), (left, right) = border
            out_hw = (self.hw[0] - top - bottom, self.hw[1] - left - right)
        else:
            (top, bottom), (left, right) = border
            out_hw = (self.hw[0] + top + bottom, self.hw[1] + left + right)
        if min(out_hw) < 1:
            raise ModelError("layer %s leaves no pixels (input %dx%d)" % ((name,) + tuple(self.hw)))
        self.steps.append(Step(kind, name, tuple(kernel), stride, padding, border, self.hw, out_hw, channels,
                               compute, []))
        self.hw, self.channels = out_hw, channels


def _fold_batch_norm(step):
    """conv -> BatchNormalization becomes one conv (what every runtime does at inference)."""
    if step.kind != "conv" or not step.tail or not isinstance(step.tail[0], Affine):
        return step
    affine, conv = step.tail[0], step.compute
    scale = np.broadcast_to(np.asarray(affine.scale, np.float64), conv.bias.shape)
    shift = np.broadcast_to(np.asarray(affine.shift, np.float64), conv.bias.shape)
    folded = Conv(conv.weight.astype(np.float64) * scale[:, None, None, None],
                  conv.bias.astype(np.float64) * scale + shift, conv.dilation, conv.groups)
    folded.map_at = max(conv.map_at - 1, 0)
    return step._replace(compute=folded, tail=step.tail[1:])
