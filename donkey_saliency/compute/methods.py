"""Saliency methods, in plain NumPy, from what the fused graph outputs in one run.

``vbp`` is VisualBackProp as published: the graph's ``mask`` output, untouched. Every other method
reads the graph's backward pass (backward.py: the gradient of the chosen output, steering or
throttle, w.r.t. the pixels and every conv level), so it runs wherever the graph runs - the car,
ONNX Runtime or TensorRT, any pilot format - with no TensorFlow. The baselines (smooth random,
tub-mean) exist to be beaten: a per-frame mask that does no better than a fixed map adds nothing.

Maps are batched, (N, h, w), float32; every mask comes back min-max normalised to [0, 1].
On-car module: Python 3.6, NumPy only.
"""
import numpy as np

from .backward import DEFAULT_OUTPUT, OUTPUTS, check_output  # noqa: F401 - the output's one home is backward.py
from ..errors import InputError
from ..pilots import load_pilot
from ..pilots.trunk import pad_before
from .vbp import min_max, visual_backprop

VBP = "vbp"
INPUT_GRADIENT = "input-gradient"
INPUT_X_GRADIENT = "input-x-gradient"
GRAD_CAM = "grad-cam"
VBP_X_INPUT_GRADIENT = "vbp-x-input-gradient"
# The one home of the default (SALIENCY_METHOD, every command's --method), chosen with `evaluate`
# (docs/evaluate_study.md): it beats vbp and the tub-average mask on every pilot measured.
DEFAULT_METHOD = INPUT_GRADIENT

# name -> one line for --help and the README.
METHODS = {
    VBP: "VisualBackProp as published (the fused graph's mask; reads no gradient, so the same for every output)",
    INPUT_GRADIENT: "|d output / d pixel| summed over colours (makemovie's input gradient)",
    INPUT_X_GRADIENT: "|sum over colours of pixel x d output / d pixel|",
    GRAD_CAM: "Grad-CAM: relu(sum_c mean(d output / d A_c) A_c) at the deepest conv level (--level for another), "
              "interpolated to the input",
    "vbp-gxa-mid": "VisualBackProp with the middle conv level's map weighted by |sum_c A x d output / d A|",
    "gxa-mid": "|sum_c A x d output / d A| at the middle conv level, back-projected through the shallower "
               "levels like VisualBackProp (deeper levels dropped)",
    "vbp-gxa-deep": "as vbp-gxa-mid, at the level below the deepest",
    VBP_X_INPUT_GRADIENT: "VisualBackProp x box-blurred |input gradient|",
}


def describe(method, output):
    """What a picture explains, for its label: 'input-gradient of steering'; 'vbp' reads no output."""
    return method if method == VBP or not output else "%s of %s" % (method, output)


def check_method(name):
    """``name`` if it is a method, else InputError listing them."""
    if name not in METHODS:
        raise InputError("unknown saliency method %r; choose one of: %s" % (name, ", ".join(sorted(METHODS))))
    return name


def needs_gradients(method):
    """Whether ``method`` reads the graph's backward pass (every method but ``vbp``)."""
    return check_method(method) != VBP


def compute(method, outputs, steps=None, level=None):
    """(N, H, W) masks of ``method`` from the fused graph's ``outputs`` (``mask``, ``mean_i`` and, from
    a graph built with an output, ``input_gradient``, ``input_x_gradient``, ``gxa_i``, ``gradcam_i``),
    as a person sees them: without the stride grid (:func:`degrid`). ``steps``: the trunk's steps
    (back-projection, Grad-CAM's interpolation); ``level``: Grad-CAM's conv level (default the deepest)."""
    return degrid(raw_masks(method, outputs, steps, level))


def degrid(masks):
    """min-max(masks smoothed by the 3x3 binomial [1 2 1]^T [1 2 1] / 16, edges replicated).

    Strided layers leave a 2-pixel checkerboard in every back-projected map (VisualBackProp's all-ones
    transposed convs: its four 2x2 pixel phases' means differ 2.25x on donkey's pilot; strided
    gradients too). The binomial's response is zero at the 2-pixel period in both directions, so the
    phases' means come out equal, and it is the smallest filter that does it (one pixel of blur)."""
    masks = np.asarray(masks, np.float32)
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)), mode="edge")
    rows = padded[:, :-2] + 2.0 * padded[:, 1:-1] + padded[:, 2:]
    smooth = (rows[:, :, :-2] + 2.0 * rows[:, :, 1:-1] + rows[:, :, 2:]) / 16.0
    return min_max(smooth).astype(np.float32)


def raw_masks(method, outputs, steps=None, level=None):
    """:func:`compute` before :func:`degrid`: the method's own (N, H, W) masks in [0, 1]."""
    levels = sum(1 for name in outputs if name.startswith("mean_"))
    missing = sorted(needed_outputs(method, levels, level) - set(outputs))
    if missing:
        raise InputError("method %s needs the graph output %s (the backward pass of a graph built with an "
                         "output)" % (method, missing[0]))
    if method == VBP:
        return outputs["mask"]
    if method == INPUT_GRADIENT:
        return min_max(outputs["input_gradient"]).astype(np.float32)
    if method == INPUT_X_GRADIENT:
        return min_max(outputs["input_x_gradient"]).astype(np.float32)
    if method == VBP_X_INPUT_GRADIENT:
        return vbp_times_input_gradient(outputs["mask"], outputs["input_gradient"])
    if method == GRAD_CAM:
        level = levels - 1 if level is None else check_level(level, levels)
        return min_max(to_input(steps, outputs["gradcam_%d" % level], level)).astype(np.float32)
    means = [outputs["mean_%d" % i] for i in range(levels)]
    relevance = outputs["gxa_%d" % gradient_level(method, levels)]
    return gradient_variant(method, steps, means, relevance)


def needed_outputs(method, levels, level=None, features=False):
    """The graph outputs ``method`` reads (graph.build's ``keep``): the per-level means always (the
    part and the review show them), plus the method's own. Nothing else is computed."""
    names = {"mean_%d" % i for i in range(levels)}
    if features:
        names.update("features_%d" % i for i in range(levels))
    if method in (VBP, VBP_X_INPUT_GRADIENT):  # the gxa variants rebuild the product from the means
        names.add("mask")
    if method in (INPUT_GRADIENT, VBP_X_INPUT_GRADIENT):
        names.add("input_gradient")
    elif method == INPUT_X_GRADIENT:
        names.add("input_x_gradient")
    elif method == GRAD_CAM:
        names.add("gradcam_%d" % (levels - 1 if level is None else check_level(level, levels)))
    elif method != VBP and method != VBP_X_INPUT_GRADIENT:
        names.add("gxa_%d" % gradient_level(method, levels))
    return names


def check_level(level, levels):
    if not -levels <= int(level) < levels:
        raise InputError("--level %s: the pilot has conv levels 0..%d" % (level, levels - 1))
    return int(level) % levels


def to_input(steps, level_map, level):
    """A conv level's (N, h, w) map at the input size: each unit sits at its receptive field's centre,
    linear interpolation between centres, edges held."""
    convs = [i for i, step in enumerate(steps) if step.kind == "conv"]
    start, jump = np.zeros(2), np.ones(2)
    for step in steps[:convs[level] + 1]:
        if step.kind in ("conv", "pool"):
            start = start + ((np.array(step.kernel) - 1) / 2.0 - np.array(pad_before(step))) * jump
            jump = jump * np.array(step.stride)
        else:
            (top, _), (left, _) = step.border
            start = start + np.array([top, left]) * jump * (1 if step.kind == "crop" else -1)
    level_map = np.asarray(level_map, np.float32)
    for axis in (0, 1):
        size_in, size = steps[0].in_hw[axis], level_map.shape[axis + 1]
        position = np.clip((np.arange(size_in) - start[axis]) / jump[axis], 0, size - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, size - 1)
        frac = (position - low).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis + 1] = size_in
        frac = frac.reshape(shape)
        level_map = np.take(level_map, low, axis=axis + 1) * (1 - frac) + np.take(level_map, high, axis=axis + 1) * frac
    return level_map


def back_project(steps, level_maps, start_level=None):
    """VisualBackProp's product, started at ``start_level`` (default: the deepest conv).

    ``level_maps``: one (N, h, w) map per conv level, shallow to deep (the graph's ``mean_i``, or
    some of them replaced by another map of the same size). With the means and the default start it
    is exactly ``vbp.visual_backprop``, which it is."""
    return visual_backprop(steps, level_maps, start_level)


def middle_level(level_count):
    """The conv level the '-mid' variants use: the middle one (level 2 of donkey's five)."""
    return level_count // 2


def deep_level(level_count):
    """The level the '-deep' variant uses: one below the deepest (level 3 of five)."""
    return max(level_count - 2, 0)


def gradient_level(method, level_count):
    return deep_level(level_count) if method.endswith("-deep") else middle_level(level_count)


def vbp_gradient_weighted(steps, means, level, relevance):
    """VisualBackProp with level ``level``'s mean multiplied by ``relevance`` (same size): where the
    steering is sensitive and the layer is active. All levels stay in the product.

    ``vbp-gxa-mid``, exactly (what an ONNX head must compute to port it):
      A_l = post-ReLU maps of conv level l (N, h_l, w_l, C_l);  M_l = mean_c A_l (the graph's mean_l)
      y   = the steering: the angle output (linear, inferred, memory), or for a categorical pilot
            the expected value sum_b softmax_b * (-1 + 2 b / 14) over its 15 bins
      k   = L // 2 for L conv levels (level 2 of donkey's five)
      G_k = dy / dA_k, at inference (dropout is identity): the backward pass through the layers
            after conv k only - per conv a ConvTranspose with that conv's own kernel, stride and
            padding (output_padding to the exact size) times the ReLU mask (A > 0) of its input
            level; Flatten back as a Reshape; per dense layer a MatMul by W^T times its ReLU mask;
            for the categorical expected value dy/dlogits = softmax * (bins - y)
      R_k = |sum_c A_k * G_k|
      mask = VisualBackProp(M_0, ..., M_k * R_k, ..., M_{L-1})  (unchanged: ones-kernel transposed
            convs, product with each shallower mean, divide by the peak, min-max at the end)
    Cost: the backward convs k+1..L-1 and the dense layers, about 21 % of the trunk's MACs on
    donkey's linear pilot, 6 % on the categorical one (conv4 stride 2)."""
    maps = list(means)
    maps[level] = np.asarray(maps[level], np.float32) * np.asarray(relevance, np.float32)
    return back_project(steps, maps)


def gradient_back_projected(steps, means, level, relevance):
    """``relevance`` at ``level`` in place of the deeper VisualBackProp product, back-projected
    through (and multiplied with) the shallower levels' means."""
    maps = list(means)
    maps[level] = relevance
    return back_project(steps, maps, start_level=level)


def gradient_variant(method, steps, means, relevance):
    """One of the '-gxa-' methods from the graph's means and the relevance map at its level."""
    level = gradient_level(method, len(means))
    if method.startswith("vbp-"):
        return vbp_gradient_weighted(steps, means, level, relevance)
    return gradient_back_projected(steps, means, level, relevance)


def box_blur(maps, radius):
    """Mean over a (2 radius + 1)^2 window, edges replicated: (N, H, W) -> (N, H, W)."""
    maps = np.asarray(maps, np.float32)
    if radius <= 0:
        return maps
    size = 2 * radius + 1
    padded = np.pad(maps, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    sums = np.cumsum(np.cumsum(np.pad(padded, ((0, 0), (1, 0), (1, 0))), axis=1), axis=2)
    window = sums[:, size:, size:] - sums[:, :-size, size:] - sums[:, size:, :-size] + sums[:, :-size, :-size]
    return window / float(size * size)


INPUT_GRADIENT_BLUR = 4  # px radius: the gradient's pixel noise spread to the scale of VBP's blobs


def vbp_times_input_gradient(vbp_masks, input_gradient):
    """min-max(VisualBackProp mask x box-blurred |input gradient|), both (N, H, W)."""
    return min_max(np.asarray(vbp_masks, np.float32) * box_blur(input_gradient, INPUT_GRADIENT_BLUR))


class MethodMasks(object):
    """Masks of one method for ``api.Saliency`` and the part: the graph's outputs in, (N, H, W) out.

    ``vbp`` passes the graph's mask through; the others read the backward pass of a graph built with
    ``output`` (graph.graph_for(..., output=...)) and the trunk's steps, read once from the pilot file."""

    def __init__(self, method=DEFAULT_METHOD, model_path=None, level=None):
        self.method = check_method(method)
        self.model_path = model_path
        self.level = level
        self._steps = None

    @property
    def output_needed(self):
        return needs_gradients(self.method)

    def needed_outputs(self, features=False):
        """graph.build's ``keep`` for this method (None for an exported .onnx graph: it is read as it is)."""
        if not self.model_path or str(self.model_path).lower().endswith(".onnx"):
            return None
        levels = sum(1 for step in self.steps(always=True) if step.kind == "conv")
        return needed_outputs(self.method, levels, self.level, features)

    def steps(self, always=False):
        if self._steps is None and (always or self.method not in (VBP, INPUT_GRADIENT, INPUT_X_GRADIENT,
                                                                  VBP_X_INPUT_GRADIENT)):
            if not self.model_path or str(self.model_path).lower().endswith(".onnx"):
                raise InputError("method %s needs the pilot file (.h5/.keras/.tflite), not an exported graph"
                                 % self.method)
            self._steps = load_pilot(self.model_path).trunk.steps
        return self._steps

    def __call__(self, outputs):
        """(N, H, W) masks from the graph's ``outputs`` for a batch."""
        return compute(self.method, outputs, self.steps(), self.level)


# --- baselines -------------------------------------------------------------------------------------
def smooth_random_masks(count, hw, seed=0, cells=(6, 8)):
    """``count`` random masks, smooth like a saliency map: uniform noise on a coarse grid
    (``cells`` rows x cols), bilinearly enlarged to ``hw``. Seeded: the same on every run."""
    rng = np.random.RandomState(seed)
    coarse = rng.uniform(size=(count,) + tuple(cells)).astype(np.float32)
    height, width = hw
    rows = np.linspace(0, cells[0] - 1, height)
    cols = np.linspace(0, cells[1] - 1, width)
    r0 = np.minimum(rows.astype(int), cells[0] - 2)
    c0 = np.minimum(cols.astype(int), cells[1] - 2)
    fr = (rows - r0)[None, :, None]
    fc = (cols - c0)[None, None, :]
    top = coarse[:, r0][:, :, c0] * (1 - fc) + coarse[:, r0][:, :, c0 + 1] * fc
    bottom = coarse[:, r0 + 1][:, :, c0] * (1 - fc) + coarse[:, r0 + 1][:, :, c0 + 1] * fc
    return min_max(top * (1 - fr) + bottom * fr).astype(np.float32)


def mean_masks(masks):
    """The average of ``masks`` (N, H, W), repeated for every frame: a fixed map (a prior over where
    the road usually is) to tell whether the per-frame mask adds anything."""
    masks = np.asarray(masks, np.float32)
    average = min_max(masks.mean(axis=0, keepdims=True))
    return np.repeat(average, len(masks), axis=0)
