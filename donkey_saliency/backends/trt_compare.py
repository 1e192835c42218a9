"""How close a TensorRT engine's outputs are to ONNX Runtime's (``selftest``, ``trt_tools``): the
largest difference, the overlap of the most salient pixels, and the verdict against a tolerance.
Pure functions of arrays. Valid Python 3.6 (JetPack 4.6's Python)."""
import numpy as np

from ..api import Saliency

TOP_FRACTION = 0.10  # "the salient pixels": the top 10 % of the mask
# Tolerances against ONNX Runtime (fp32 on the CPU). fp16: ONNX Runtime with the trunk's weights and
# activations rounded to fp16 (head fp32, as the engine has it) differed by at most 0.0017 with a
# top-10 % overlap >= 0.998 on 120 real frames of a real pilot; real fp16 kernels also accumulate in
# fp16, hence the wide margin. fp32: only summation order differs.
TOLERANCES = {
    "fp16": dict(max_abs=0.05, min_overlap=0.90),
    "fp32": dict(max_abs=1e-3, min_overlap=0.98),
}


def top_fraction(mask, fraction=TOP_FRACTION):
    """Boolean map of the ``fraction`` most salient pixels. Ties at the threshold are all in; when
    the threshold is the mask's minimum (a flat mask) only pixels strictly above it are."""
    mask = np.asarray(mask, dtype=np.float64)
    flat = mask.ravel()
    k = min(flat.size, max(1, int(round(fraction * flat.size))))
    threshold = np.partition(flat, flat.size - k)[flat.size - k]
    if threshold <= flat.min():
        return mask > threshold
    return mask >= threshold


def overlap(a, b):
    """Intersection over union of two boolean maps; two empty maps agree completely (1.0)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum()) / float(union)


def top_overlap(reference, candidate, fraction=TOP_FRACTION):
    return overlap(top_fraction(reference, fraction), top_fraction(candidate, fraction))


def compare_masks(reference, candidate, fraction=TOP_FRACTION):
    """Per-batch summary of two (N, H, W) mask stacks: the worst pixel difference, and the overlap
    of the top ``fraction`` pixels (worst frame and median). ``blank_frames``: reference masks with
    nothing salient (all equal), where the overlap says nothing."""
    reference = np.asarray(reference, dtype=np.float32)
    candidate = np.asarray(candidate, dtype=np.float32)
    if reference.shape != candidate.shape or reference.ndim != 3:
        raise ValueError("mask stacks differ in shape: %s vs %s" % (reference.shape, candidate.shape))
    per_frame_abs = np.abs(reference - candidate).reshape(len(reference), -1).max(axis=1)
    overlaps = np.array([top_overlap(r, c, fraction) for r, c in zip(reference, candidate)])
    blank = int(sum(1 for r in reference if np.ptp(r) == 0))
    return dict(frames=int(len(reference)), max_abs=float(per_frame_abs.max()),
                median_abs=float(np.median(per_frame_abs)), min_overlap=float(overlaps.min()),
                median_overlap=float(np.median(overlaps)), blank_frames=blank, fraction=fraction)


def verdict(comparison, tolerance):
    """(passed, [what failed]) for a :func:`compare_masks` summary against a tolerance dict."""
    failures = []
    if comparison["max_abs"] > tolerance["max_abs"]:
        failures.append("max mask difference %.4g > %.4g" % (comparison["max_abs"], tolerance["max_abs"]))
    if comparison["min_overlap"] < tolerance["min_overlap"]:
        failures.append("top-%d%% overlap %.3f < %.3f" % (round(100 * comparison["fraction"]),
                                                        comparison["min_overlap"], tolerance["min_overlap"]))
    if comparison["blank_frames"] == comparison["frames"]:
        failures.append("every reference mask is blank: the comparison shows nothing")
    return (not failures), failures


def compare_outputs(reference, candidate, graph):
    """name -> compare_masks summary for ``mask`` and every ``mean_i``. The mean maps are channel
    averages of ReLU outputs on their own scale, so both are divided by the reference's peak first:
    their differences read as a share of that peak, like the mask's."""
    outputs = Saliency(graph)  # reads the outputs (mask_of, means_of); never activated
    summaries = {"mask": compare_masks(outputs.mask_of(reference), outputs.mask_of(candidate))}
    for i, (expected, got) in enumerate(zip(outputs.means_of(reference), outputs.means_of(candidate))):
        peak = max(float(np.abs(expected).max()), 1e-12)
        summaries["mean_%d" % i] = compare_masks(expected / peak, got / peak)
    return summaries
