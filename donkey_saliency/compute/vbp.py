"""VisualBackProp (Bojarski et al. 2016, arXiv 1611.05418) in plain NumPy.

The executable specification: the fused ONNX head in ``graph.py`` must agree with this to 1e-5.
Maps are batched, (N, h, w). Steps come from ``pilots.trunk.Trunk`` (forward order).
"""
import numpy as np

from ..pilots.trunk import pad_before

# Guards every division: an all-zero map stays all zeros instead of becoming NaN.
TINY = 1e-6


def channel_means(feature_maps):
    """(N, h, w, C) post-activation maps -> (N, h, w) averaged maps."""
    return [np.asarray(m, dtype=np.float32).mean(axis=-1) for m in feature_maps]


def scale_to_max(m):
    """Divide each sample by its maximum. Min-max at the end cancels it; it keeps fp16 in range:
    after it the running product's peak is 1, so the next level's ones-kernel sums (at most
    ceil(k/s)^2 terms) times an activation stay far below fp16's 65504."""
    peak = m.max(axis=(1, 2), keepdims=True)
    return m / np.maximum(peak, TINY)


def min_max(m):
    low = m.min(axis=(1, 2), keepdims=True)
    high = m.max(axis=(1, 2), keepdims=True)
    return (m - low) / np.maximum(high - low, TINY)


def ones_transposed_conv(m, kernel, stride, top_left, out_hw):
    """Transposed conv with an all-ones kernel, cut to the layer's input size.

    ``top_left`` is the forward layer's implicit padding before the data ('same'); rows and columns
    the forward layer never reached (valid padding, 120 -> 58 with k5 s2) come out as zeros.
    """
    n, h, w = m.shape
    (kh, kw), (sh, sw) = kernel, stride
    full = np.zeros((n, (h - 1) * sh + kh, (w - 1) * sw + kw), dtype=m.dtype)
    for i in range(kh):
        for j in range(kw):
            full[:, i:i + (h - 1) * sh + 1:sh, j:j + (w - 1) * sw + 1:sw] += m
    top, left = top_left
    out = np.zeros((n,) + tuple(out_hw), dtype=m.dtype)
    rows = min(out_hw[0], full.shape[1] - top)
    cols = min(out_hw[1], full.shape[2] - left)
    out[:, :rows, :cols] = full[:, top:top + rows, left:left + cols]
    return out


def to_step_input(m, step):
    """Carry a map at ``step``'s output size back to its input size (a pure geometry step)."""
    if step.kind in ("conv", "pool"):
        return ones_transposed_conv(m, step.kernel, step.stride, pad_before(step), step.in_hw)
    (top, bottom), (left, right) = step.border
    if step.kind == "crop":  # cropped pixels had no influence: zero border
        return np.pad(m, ((0, 0), (top, bottom), (left, right)))
    if step.kind == "pad":  # padded pixels were not in the input: cut them off
        return m[:, top:m.shape[1] - bottom, left:m.shape[2] - right]
    raise ValueError("unknown step kind %r" % step.kind)


def visual_backprop(steps, averaged, start_level=None):
    """steps: the trunk's steps; averaged: one (N, h, w) map per conv step, shallow to deep.
    Returns the (N, H, W) mask in [0, 1] at the trunk's input size.

    ``start_level`` (default: the deepest conv) is where the product starts; deeper levels are not
    used (``methods.py`` starts at a middle level with a map of its own there)."""
    averaged = [np.asarray(a, dtype=np.float32) for a in averaged]
    convs = [i for i, s in enumerate(steps) if s.kind == "conv"]
    level = len(convs) - 1 if start_level is None else int(start_level)
    m = scale_to_max(averaged[level])
    # Start below that conv; steps after it do not reach the mask.
    for index in range(convs[level], -1, -1):
        m = to_step_input(m, steps[index])
        if index > 0 and steps[index - 1].kind == "conv":
            level -= 1
            m = scale_to_max(m * averaged[level])
    return min_max(m).astype(np.float32)


def mask_from_feature_maps(steps, feature_maps):
    return visual_backprop(steps, channel_means(feature_maps))
