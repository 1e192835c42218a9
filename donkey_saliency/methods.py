"""Saliency methods other than the fused graph's own mask, in plain NumPy.

``vbp`` is VisualBackProp as published: the graph's ``mask`` output, untouched. The variants here
are built from what the graph already outputs (the per-layer channel means ``mean_i``) and, for the
gradient variants, one extra map per frame at a single conv level (see ``gradient_relevance``),
which today comes from TensorFlow in ``donkey-saliency evaluate`` (``steering.GradientModel``) and
would come from a backward pass inside the ONNX head once ported. The baselines (smooth random,
tub-mean) exist to be beaten: a per-frame mask that does no better than a fixed map adds nothing.

Maps are batched, (N, h, w), float32; every mask comes back min-max normalised to [0, 1].
On-car module: Python 3.6, NumPy only.
"""
import numpy as np

from .errors import InputError
from .vbp import min_max, visual_backprop

VBP = "vbp"
DEFAULT_METHOD = VBP

# name -> one line for --help and the README. The gradient ones need a pilot that TensorFlow can
# differentiate (a Keras file); they are measured by `evaluate`, not available in the live graph yet.
METHODS = {
    VBP: "VisualBackProp as published (the fused graph's mask)",
    "vbp-gxa-mid": "VisualBackProp with the middle conv level's map weighted by |sum_c activation x "
                   "d steering/d activation| (a backward pass to that level only)",
    "gxa-mid": "|sum_c activation x d steering/d activation| at the middle conv level, back-projected "
               "through the shallower levels like VisualBackProp (deeper levels dropped)",
    "vbp-gxa-deep": "as vbp-gxa-mid, at the level below the deepest (a shorter backward pass)",
    "vbp-x-input-gradient": "VisualBackProp x box-blurred |input gradient| (the known strong but costly "
                            "combination: a backward pass through the whole trunk)",
    "input-gradient": "|d steering / d pixel| summed over colours (makemovie's input gradient, steering "
                      "output only)",
}
INPUT_GRADIENT = "input-gradient"
VBP_X_INPUT_GRADIENT = "vbp-x-input-gradient"


def check_method(name):
    """``name`` if it is a method, else InputError listing them."""
    if name not in METHODS:
        raise InputError("unknown saliency method %r; choose one of: %s" % (name, ", ".join(sorted(METHODS))))
    return name


def compute(method, frames, outputs, mask_name, mean_names, steps=None, gradients=None):
    """(N, H, W) masks of ``method`` for uint8 ``frames`` (N, H, W, C) from the fused graph's
    ``outputs`` (``mask`` and ``mean_i``, as ``api.Saliency.infer`` returns them).

    ``vbp`` is the graph's mask. The others also need the trunk's ``steps`` (for back-projection)
    and ``gradients``, an object with ``maps(frames, level=None)`` (``steering.GradientModel``:
    TensorFlow, off the car) until the ONNX head computes the backward pass itself."""
    if check_method(method) == VBP:
        return outputs[mask_name]
    if gradients is None:
        raise InputError("method %s needs the pilot's gradients: a Keras pilot (.h5/.keras) and TensorFlow"
                         % method)
    if method in (INPUT_GRADIENT, VBP_X_INPUT_GRADIENT):
        input_gradient = gradients.maps(frames)
        if method == INPUT_GRADIENT:
            return min_max(input_gradient).astype(np.float32)
        return vbp_times_input_gradient(outputs[mask_name], input_gradient)
    means = [outputs[name] for name in mean_names]
    relevance = gradients.maps(frames, gradient_level(method, len(means)))
    return gradient_variant(method, steps, means, relevance)


def back_project(steps, level_maps, start_level=None):
    """VisualBackProp's product, started at ``start_level`` (default: the deepest conv).

    ``level_maps``: one (N, h, w) map per conv level, shallow to deep (the graph's ``mean_i``, or
    some of them replaced by another map of the same size). With the means and the default start it
    is exactly ``vbp.visual_backprop``, which it is."""
    return visual_backprop(steps, level_maps, start_level)


def gradient_relevance(activations, gradients):
    """(N, h, w) |sum over channels of activation x d steering / d activation| at one conv level:
    the first-order share of each position in the steering (gradient x input, Shrikumar et al.),
    unsigned because steering left and right both matter. activations, gradients: (N, h, w, C)."""
    return np.abs(np.sum(np.asarray(activations, np.float32) * np.asarray(gradients, np.float32), axis=-1))


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
    """Masks of one method from the fused graph's outputs, for ``api.Saliency`` and the part.

    ``vbp`` passes the graph's mask through. Another method opens the pilot's gradients
    (``steering.GradientModel``: TensorFlow and a Keras pilot file) on first use."""

    def __init__(self, method=DEFAULT_METHOD, model_path=None):
        self.method = check_method(method)
        self.model_path = model_path
        self._gradients = None  # (GradientModel, trunk steps)

    def __call__(self, frames, outputs, mask_name, mean_names):
        """(N, H, W) masks for uint8 ``frames`` (N, H, W, C) and the graph's ``outputs`` for them."""
        if self.method == VBP:
            return outputs[mask_name]
        if self._gradients is None:
            if not self.model_path or str(self.model_path).lower().endswith(".onnx"):
                raise InputError("method %s needs the pilot file (.h5/.keras), not an exported graph" % self.method)
            from .steering import GradientModel

            self._gradients = GradientModel.open(self.model_path)
        gradients, steps = self._gradients
        return compute(self.method, frames, outputs, mask_name, mean_names, steps, gradients)


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
