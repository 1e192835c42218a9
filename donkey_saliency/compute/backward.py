"""The backward pass inside the fused graph: the gradient of one of the pilot's outputs (steering or
throttle) with respect to every conv level's map and to the input pixels, in the same run as the
forward pass.

Built from the builder's tape (graph.py records each forward op with its input and output tensors)
with ordinary opset-13 operators that ONNX Runtime 1.10+ and TensorRT 8.2+ run - no training ops:
Dense -> Gemm with the forward weights transposed; Conv -> its transpose with the conv's own
weights, stride, padding and dilation, run as one ordinary stride-1 Conv per stride phase with
that phase's taps, interleaved by DepthToSpace (``Backward.transposed``); max pooling routes the
gradient to the first maximum of each window (as TensorFlow does), average pooling spreads it;
crop <-> pad, Flatten -> Reshape, Concatenate -> Slice. Each activation's derivative comes from its
forward values. Every node is named 'grad/...' (TensorRT pins that prefix to fp32).

What the graph outputs from the gradients (the methods in methods.py read these):
  input_gradient    (N, H, W)   sum_c |dy/dx|                     (makemovie's input gradient)
  input_x_gradient  (N, H, W)   |sum_c x dy/dx|
  gxa_i             (N, h, w)   |sum_c A_i dy/dA_i|                (gradient x activation, level i)
  gradcam_i         (N, h, w)   relu(sum_c mean_hw(dy/dA_i) A_i)   (Grad-CAM, level i)
and, with ``features``, the raw gradients grad_frame (N, H, W, C) and grad_map_i (N, C_i, h_i, w_i).

On-car module: Python 3.6, NumPy (and onnx through graph.py's builder).
"""
import numpy as np

from ..errors import InputError, ModelError
from ..pilots.decode import ANGLE_BINS, CATEGORICAL_THROTTLE_RANGE
from ..pilots.network import Layer
from ..pilots.trunk import Activation, Affine, Step, pad_before, same_padding_totals

STEERING = "steering"
THROTTLE = "throttle"
OUTPUTS = (STEERING, THROTTLE)
DEFAULT_OUTPUT = STEERING
# donkeycar's KerasCategorical: angle = b * 2 / 14 - 1; throttle = b * throttle_range / 20. The range
# (its default 0.5) only scales the gradient, so the normalised masks do not depend on it.
PREFIX = "grad/"
LOWEST = -3.4e38  # what max pooling's padding holds: never the maximum


def check_output(name):
    """``name`` if it is an output saliency can explain, else InputError listing them."""
    if name not in OUTPUTS:
        raise InputError("unknown output %r; choose one of: %s" % (name, ", ".join(OUTPUTS)))
    return name


def output_weights(network, tensors, output):
    """(pilot tensor, weight vector) such that the chosen scalar is (tensor . weights) per frame:
    a one-hot pick of a linear output (steering the first value, throttle the second, across the
    outputs in donkeycar's order), or the bin values of a categorical (softmax) one, whose
    expected value is the output in donkeycar's own scale. An inferred pilot (one output) explains
    its steering whichever output is asked for: its throttle is computed from it."""
    check_output(output)
    outputs = [(name,) + tuple(tensors[tensor]) for name, tensor in network.outputs]
    binned = [o for o in outputs if o[2] and o[2] > 1]
    angle_binned = [o for o in binned if o[2] == ANGLE_BINS]
    if angle_binned:  # categorical: angle over 15 bins, throttle over the other softmax
        if output == STEERING:
            return angle_binned[0][1], np.linspace(-1.0, 1.0, ANGLE_BINS).astype(np.float32)
        others = [o for o in binned if o is not angle_binned[0]]
        if not others:
            raise ModelError("the pilot has no throttle output to explain")
        size = others[0][2]
        return others[0][1], (np.arange(size) * CATEGORICAL_THROTTLE_RANGE / size).astype(np.float32)
    columns = [(o[1], i, o[2]) for o in outputs for i in range(o[2] or 0)]  # linear: one value per column
    if not columns:
        raise ModelError("the pilot has no steering output saliency can read (outputs: %s)"
                         % ", ".join(o[0] for o in outputs))
    tensor, column, width = columns[1] if output == THROTTLE and len(columns) > 1 else columns[0]
    return tensor, np.eye(width, dtype=np.float32)[column]


class Backward(object):
    """Accumulates gradients over the tape in reverse; one instance per graph."""

    def __init__(self, b, image):
        self.b = b
        self.grads = {}
        self.reachable = {image}  # tensors that depend on the image: only these get gradients

    def const(self, hint, array):
        return self.b.const(PREFIX + hint, np.asarray(array))

    def op(self, op_type, inputs, hint, **attrs):
        return self.b.op(op_type, inputs, PREFIX + hint, **attrs)

    def add(self, tensor, grad):
        if tensor not in self.reachable:
            return
        if tensor in self.grads:
            grad = self.op("Add", [self.grads[tensor], grad], "sum")
        self.grads[tensor] = grad

    def run(self, tape, seed_tensor, seed):
        for what, inputs, output, _ in tape:
            if any(name in self.reachable for name in inputs):
                self.reachable.add(output)
        self.grads[seed_tensor] = seed
        for what, inputs, output, weight in reversed(tape):
            grad = self.grads.get(output)
            if grad is None:
                continue
            if isinstance(what, Step):
                self.add(inputs[0], self.step(what, inputs[0], output, weight, grad))
            elif isinstance(what, Layer):
                self.layer(what, inputs, output, weight, grad)
            else:
                self.add(inputs[0], self.pointwise(what, inputs[0], output, grad))
        return self.grads

    # --- pointwise -----------------------------------------------------------------------------
    def pointwise(self, op, x, y, g):
        if isinstance(op, Affine):
            scale = np.asarray(op.scale, np.float32)
            if np.all(scale == 1.0):
                return g
            shaped = scale.reshape(1, -1, 1, 1) if scale.size > 1 else scale.reshape(())
            return self.op("Mul", [g, self.const("affine", shaped)], "affine")
        return self.activation(op, x, y, g)

    def mask(self, condition, hint):
        return self.op("Cast", [condition], hint, to=1)  # 1: FLOAT

    def activation(self, op, x, y, g):
        """g times the derivative, read from the output y wherever it tells (y > 0 iff x > 0 for relu,
        elu, leaky relu; low < y < high iff low < x < high for clips): then nothing but the activation
        reads x, and the runtimes keep conv and activation fused."""
        kind = op.kind if isinstance(op, Activation) else op
        zero = self.const("zero", np.array(0.0, np.float32))
        one = self.const("one", np.array(1.0, np.float32))
        if kind == "linear":
            return g
        if kind == "relu":
            return self.op("Mul", [g, self.mask(self.op("Greater", [y, zero], "relu"), "relu")], "relu")
        if kind in ("relu6", "relu_n1_to_1", "relu_0_to_1"):
            low, high = {"relu6": (0.0, 6.0), "relu_n1_to_1": (-1.0, 1.0), "relu_0_to_1": (0.0, 1.0)}[kind]
            inside = self.op("And", [self.op("Greater", [y, self.const("low", np.array(low, np.float32))], "clip"),
                                     self.op("Less", [y, self.const("high", np.array(high, np.float32))], "clip")],
                             "clip")
            return self.op("Mul", [g, self.mask(inside, "clip")], "clip")
        if kind in ("elu", "leaky_relu"):
            positive = self.op("Greater", [y, zero], kind)
            if kind == "elu":  # alpha exp(x) = y + alpha below 0
                slope = self.op("Add", [y, self.const("alpha", np.array(op.alpha, np.float32))], kind)
            else:
                slope = self.const("alpha", np.array(op.alpha, np.float32))
            return self.op("Where", [positive, g, self.op("Mul", [g, slope], kind)], kind)
        if kind == "tanh":
            return self.op("Mul", [g, self.op("Sub", [one, self.op("Mul", [y, y], "tanh")], "tanh")], "tanh")
        if kind == "sigmoid":
            return self.op("Mul", [g, self.op("Mul", [y, self.op("Sub", [one, y], "sigmoid")], "sigmoid")],
                           "sigmoid")
        if kind == "swish":  # s (1 + x (1 - s)), s = sigmoid(x)
            s = self.op("Sigmoid", [x], "swish")
            inner = self.op("Add", [one, self.op("Mul", [x, self.op("Sub", [one, s], "swish")], "swish")], "swish")
            return self.op("Mul", [g, self.op("Mul", [s, inner], "swish")], "swish")
        if kind == "softmax":  # y (g - sum(g y))
            axes = self.const("axes", np.array([1], np.int64))
            total = self.op("ReduceSum", [self.op("Mul", [g, y], "softmax"), axes], "softmax", keepdims=1)
            return self.op("Mul", [y, self.op("Sub", [g, total], "softmax")], "softmax")
        raise ValueError("no derivative for activation %r" % kind)

    # --- network layers ------------------------------------------------------------------------
    def layer(self, layer, inputs, y, detail, g):
        if layer.kind == "dense":  # x W + B -> g W^T (the forward's own weights)
            self.add(inputs[0], self.op("Gemm", [g, detail], "dense", transB=1))
        elif layer.kind == "activation":
            self.add(inputs[0], self.activation(layer.params, inputs[0], y, g))
        elif layer.kind == "concat":
            start = 0
            for name, width in zip(inputs, detail):
                if name in self.reachable:
                    self.add(name, self.op("Slice", [g, self.const("start", np.array([start], np.int64)),
                                                     self.const("end", np.array([start + width], np.int64)),
                                                     self.const("axis", np.array([1], np.int64))], "concat"))
                start += width
        elif layer.kind == "flatten":  # NHWC flatten of an NCHW map
            channels, height, width = detail
            shape = self.const("shape", np.array([-1, height, width, channels], np.int64))
            nhwc = self.op("Reshape", [g, shape], "flatten")
            self.add(inputs[0], self.op("Transpose", [nhwc], "flatten", perm=[0, 3, 1, 2]))
        else:
            raise ValueError("no gradient for layer kind %r" % layer.kind)

    # --- spatial steps -------------------------------------------------------------------------
    def step(self, step, x, y, weight, g):
        if step.kind == "crop":
            (top, bottom), (left, right) = step.border
            pads = self.const("pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))
            return self.op("Pad", [g, pads], "uncrop", mode="constant")
        if step.kind == "pad":
            (top, bottom), (left, right) = step.border
            height, width = step.out_hw
            return self.op("Slice", [g, self.const("starts", np.array([top, left], np.int64)),
                                     self.const("ends", np.array([height - bottom, width - right], np.int64)),
                                     self.const("axes", np.array([2, 3], np.int64))], "unpad")
        if step.kind == "conv":
            conv = step.compute
            return self.transposed(g, conv.weight, step, conv.dilation, conv.groups)
        if step.compute == "avg":
            return self.average_pool(step, g)
        return self.max_pool(step, x, y, g)

    def transposed(self, g, weight, step, dilation=(1, 1), groups=1):
        """The transpose of the step's conv with ``weight`` (numpy, ONNX conv layout (O, I/groups, kh, kw))
        applied to ``g``, back to the step's input size: per output phase of the stride an ordinary
        stride-1 Conv with that phase's taps of the kernel, flipped (the runtimes' fast conv path;
        ConvTranspose is several times slower on ONNX Runtime's CPU), the phases interleaved by
        DepthToSpace, then the forward padding cut off."""
        stride = step.stride[0]
        if step.stride[0] != step.stride[1]:  # DepthToSpace interleaves square blocks only
            return self.conv_transpose(g, weight, step, dilation, groups)
        out_c = weight.shape[1] * groups
        per_group = weight.reshape((groups, weight.shape[0] // groups) + weight.shape[1:])
        # (O, I/g, kh, kw) read backwards: a conv from O channels to I, kernel flipped.
        flipped = per_group.transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1].reshape(
            (out_c, weight.shape[0] // groups) + weight.shape[2:])
        kh, kw = weight.shape[2:]
        (n_h, n_w), (dh, dw) = step.out_hw, dilation
        full = [(n - 1) * stride + (k - 1) * d + 1 for n, k, d in zip((n_h, n_w), (kh, kw), dilation)]
        begin = pad_before(step)
        rows = -(-max(full[0], begin[0] + step.in_hw[0]) // stride)  # phase length, all phases alike
        cols = -(-max(full[1], begin[1] + step.in_hw[1]) // stride)
        phases = []
        for ra in range(stride):
            for rb in range(stride):
                taps = flipped[:, :, ::-1, ::-1][:, :, ra::stride, rb::stride][:, :, ::-1, ::-1]
                th, tw = taps.shape[2:]
                if th == 0 or tw == 0:
                    phases.append(None)
                    continue
                # out[s q + r] = sum_j g[q - j] W[r + s j]: a full correlation with the flipped taps.
                pad_h, pad_w = (th - 1) * dh, (tw - 1) * dw
                valid_h, valid_w = n_h + pad_h, n_w + pad_w
                conv = self.op("Conv", [g, self.const("taps", np.ascontiguousarray(taps, np.float32))], "up_" + step.name,
                               kernel_shape=[th, tw], pads=[pad_h, pad_w, pad_h, pad_w], dilations=[dh, dw],
                               group=groups)
                phases.append(self.pad_to(conv, rows - valid_h, cols - valid_w))
        if stride == 1:
            merged = phases[0]
        else:
            zeros = [p for p in phases if p is not None][0]
            filled = [p if p is not None else self.op("Mul", [zeros, self.const("zero", np.array(0.0, np.float32))],
                                                      "up_" + step.name) for p in phases]
            merged = self.op("DepthToSpace", [self.op("Concat", filled, "up_" + step.name, axis=1)], "up_" + step.name,
                             blocksize=stride, mode="DCR")
        return self.op("Slice", [merged, self.const("starts", np.array(begin, np.int64)),
                                 self.const("ends", np.array([begin[0] + step.in_hw[0], begin[1] + step.in_hw[1]],
                                                             np.int64)),
                                 self.const("axes", np.array([2, 3], np.int64))], "up_" + step.name)

    def pad_to(self, x, extra_h, extra_w):
        if extra_h <= 0 and extra_w <= 0:
            return x
        pads = self.const("pads", np.array([0, 0, 0, 0, 0, 0, max(extra_h, 0), max(extra_w, 0)], np.int64))
        return self.op("Pad", [x, pads], "pad", mode="constant")

    def conv_transpose(self, g, weight, step, dilation=(1, 1), groups=1):
        """ConvTranspose of ``g`` back to the step's input size, with the step's stride and padding."""
        total = same_padding_totals(step) if step.padding == "same" else (0, 0)
        begin = pad_before(step)
        extra = [(size + pad - k) % s for size, pad, k, s in zip(step.in_hw, total, step.kernel, step.stride)]
        attrs = dict(kernel_shape=list(weight.shape[2:]), strides=list(step.stride), dilations=list(dilation),
                     group=groups, pads=[begin[0], begin[1], total[0] - begin[0], total[1] - begin[1]])
        if any(extra):
            attrs["output_padding"] = extra
        return self.op("ConvTranspose", [g, self.const("weight", weight)], "up_" + step.name, **attrs)

    def average_pool(self, step, g):
        """Each output's gradient spread evenly over the input pixels its window covered (padding
        excluded from the count, as Keras and ONNX average)."""
        counts = np.ones((1, 1) + tuple(step.in_hw), np.float32)
        covered = _window_sums(counts[0, 0], step)
        divided = self.op("Div", [g, self.const("count", covered[None, None])], "avg_pool")
        ones = np.ones((step.channels, 1) + tuple(step.kernel), np.float32)
        return self.transposed(divided, ones, step, groups=step.channels)

    def max_pool(self, step, x, y, g):
        """Each window's gradient to the first input equal to its maximum (row-major, as TensorFlow):
        per kernel offset, the strided slice of the (lowest-padded) input compared with the output,
        minus windows an earlier offset already took; scattered back with a one-hot depthwise kernel."""
        total = same_padding_totals(step) if step.padding == "same" else (0, 0)
        begin = pad_before(step)
        if any(total):
            pads = [0, 0, begin[0], begin[1], 0, 0, total[0] - begin[0], total[1] - begin[1]]
            x = self.op("Pad", [x, self.const("pads", np.array(pads, np.int64)),
                                self.const("lowest", np.array(LOWEST, np.float32))], "max_pool", mode="constant")
        (kh, kw), (sh, sw), (oh, ow) = step.kernel, step.stride, step.out_hw
        axes = self.const("axes", np.array([2, 3], np.int64))
        steps = self.const("steps", np.array([sh, sw], np.int64))
        taken, parts = None, []
        for di in range(kh):
            for dj in range(kw):
                window = self.op("Slice", [x, self.const("starts", np.array([di, dj], np.int64)),
                                           self.const("ends", np.array([di + sh * (oh - 1) + 1,
                                                                        dj + sw * (ow - 1) + 1], np.int64)),
                                           axes, steps], "max_pool")
                hit = self.mask(self.op("Equal", [window, y], "max_pool"), "max_pool")
                if taken is None:
                    first, taken = hit, hit
                else:
                    free = self.op("Sub", [self.const("one", np.array(1.0, np.float32)), taken], "max_pool")
                    first = self.op("Mul", [hit, free], "max_pool")
                    taken = self.op("Add", [taken, first], "max_pool")
                one_hot = np.zeros((step.channels, 1, kh, kw), np.float32)
                one_hot[:, :, di, dj] = 1.0
                routed = self.op("Mul", [g, first], "max_pool")
                parts.append(self.transposed(routed, one_hot, step, groups=step.channels))
        return parts[0] if len(parts) == 1 else self.op("Sum", parts, "max_pool")


def _window_sums(plane, step):
    """(out_h, out_w): how many input pixels of ``plane`` each pooling window covers."""
    total = same_padding_totals(step) if step.padding == "same" else (0, 0)
    begin = pad_before(step)
    padded = np.pad(plane, ((begin[0], total[0] - begin[0]), (begin[1], total[1] - begin[1])))
    (kh, kw), (sh, sw), (oh, ow) = step.kernel, step.stride, step.out_hw
    out = np.zeros((oh, ow), np.float32)
    for i in range(oh):
        for j in range(ow):
            out[i, j] = padded[i * sh:i * sh + kh, j * sw:j * sw + kw].sum()
    return out


def add_backward(b, image, maps, network, tensors, output):
    """Append the backward pass of ``output`` (steering | throttle) to the builder ``b``, whose tape
    holds the forward pass from the NCHW ``image`` tensor (``tensors``: graph._pilot_layers'
    {layer name: (tensor, width)}); returns {name: tensor} of the gradient
    outputs (module docstring), raw gradients included (the caller picks which to expose)."""
    tensor, weights = output_weights(network, tensors, output)
    back = Backward(b, image)
    shape = back.op("Shape", [tensor], "seed")
    seed = back.op("Expand", [back.const("seed", weights.reshape(1, -1)), shape], "seed")
    grads = back.run(b.tape, tensor, seed)
    channels = back.const("axes", np.array([1], np.int64))
    result = {}
    g_image = grads[image]
    result["grad_frame"] = back.op("Transpose", [g_image], "frame", perm=[0, 2, 3, 1])
    result["input_gradient"] = back.op("ReduceSum", [back.op("Abs", [g_image], "input"), channels], "input",
                                       keepdims=0)
    result["input_x_gradient"] = back.op("Abs", [back.op("ReduceSum", [back.op("Mul", [image, g_image], "input"),
                                                                      channels], "input", keepdims=0)], "input")
    for i, name in enumerate(maps):
        g = grads.get(name)
        if g is None:  # a level the output does not depend on
            g = back.op("Mul", [name, back.const("zero", np.array(0.0, np.float32))], "level_%d" % i)
        result["grad_map_%d" % i] = g
        product = back.op("ReduceSum", [back.op("Mul", [name, g], "gxa"), channels], "gxa", keepdims=0)
        result["gxa_%d" % i] = back.op("Abs", [product], "gxa")
        weights_c = back.op("ReduceMean", [g], "gradcam", axes=[2, 3], keepdims=1)
        cam = back.op("ReduceSum", [back.op("Mul", [name, weights_c], "gradcam"), channels], "gradcam", keepdims=0)
        result["gradcam_%d" % i] = back.op("Relu", [cam], "gradcam")
    return result
