"""What ``donkey-saliency build-engine`` and ``selftest`` do: build or load a TensorRT engine, and
check it against ONNX Runtime on the same frames.

The comparison maths (largest mask difference, overlap of the most salient pixels, verdict) are
pure functions of arrays; frames come from a donkeycar tub (v2 or v1) or are drawn procedurally.
"""
import logging
import os
import tempfile
import time

import numpy as np

from .errors import BackendUnavailable, InputError, first_line

logger = logging.getLogger(__name__)

TOP_FRACTION = 0.10  # "the salient pixels": the top 10 % of the mask
# Tolerances against ONNX Runtime (fp32 on the CPU). fp16: ONNX Runtime with the trunk's weights and
# activations rounded to fp16 (head fp32, as the engine has it) differed by at most 0.0017 with a
# top-10 % overlap >= 0.998 on 120 real frames of a real pilot; real fp16 kernels also accumulate in
# fp16, hence the wide margin. fp32: only summation order differs.
TOLERANCES = {
    "fp16": dict(max_abs=0.05, min_overlap=0.90),
    "fp32": dict(max_abs=1e-3, min_overlap=0.98),
}
DEFAULT_FRAMES = 50
WARMUP_RUNS = 3


# --- the comparison maths ------------------------------------------------------------------------

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


def median_ms(seconds):
    return float(np.median(np.asarray(seconds, dtype=np.float64))) * 1000.0


# --- frames --------------------------------------------------------------------------------------

def procedural_frames(count, shape=(120, 160, 3), seed=0):
    """uint8 (count, H, W, C) views along the demo's procedural road (track.py), fitted to the
    model's input: real structure for a conv net to respond to, the same on every run."""
    from .api import fit_to_model
    from .track import track_frames

    return np.stack([fit_to_model(sample.frame, shape) for sample in track_frames(count, seed=seed, step=2.0)])


def _evenly(items, count):
    if count is None or count >= len(items):
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count)]


def tub_image_paths(path):
    """Camera image files of a donkeycar tub (v1 or v2) in record order."""
    from .tub import camera_image_paths

    return camera_image_paths(path)


def tub_frames(path, count=DEFAULT_FRAMES):
    """RGB uint8 frames, ``count`` of them spread evenly over the tub."""
    from .tub import read_rgb

    return [read_rgb(p) for p in _evenly(tub_image_paths(path), count)]


# --- the runs ------------------------------------------------------------------------------------

def require_tensorrt():
    """BackendUnavailable (one line: what is missing, how to get it on a Jetson) unless TensorRT,
    pycuda and a CUDA device are here. Checked before any model is loaded."""
    from .backends.tensorrt import unavailable_reason

    reason = unavailable_reason()
    if reason:
        raise BackendUnavailable(reason)


def check_precision(precision):
    from .backends.tensorrt import PRECISIONS

    if precision not in PRECISIONS:
        raise InputError("--precision must be one of %s, not %r" % (", ".join(PRECISIONS), precision))
    return precision


def default_pilot_graph():
    """A stand-in pilot: donkey's default linear architecture with fixed random weights (needs
    donkeycar and TensorFlow; the tub frames or procedural scenes give it something to look at)."""
    try:
        import tensorflow  # noqa: F401 - the stand-in is a Keras model
        from donkeycar.parts.keras import default_n_linear
    except Exception as error:
        raise InputError("no MODEL given, and the stand-in pilot needs donkeycar and TensorFlow (%s); "
                         "give a pilot file" % first_line(error, None))
    from .graph import graph_for

    model = default_n_linear(2)
    # Weights from a seeded generator (He scale, zero biases): the same graph every time, so its
    # engine is built once and then found in the cache.
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0.0, np.sqrt(2.0 / max(int(np.prod(w.shape[:-1])), 1)), w.shape).astype(w.dtype)
                       if w.ndim > 1 else np.zeros_like(w) for w in model.get_weights()])
    with tempfile.TemporaryDirectory(prefix="donkey-saliency-") as directory:
        path = os.path.join(directory, "stand_in_linear.h5")
        model.save(path)
        return graph_for(path, cache_dir=False)


def open_engine(graph, precision, cache_dir=None, rebuild=False, workspace_mb=None):
    """An activated TensorRT backend (engine loaded from the cache or built)."""
    from .backends.tensorrt import TensorRTBackend

    options = dict(precision=precision, cache_dir=cache_dir, rebuild=rebuild)
    if workspace_mb:
        options["workspace_mb"] = workspace_mb
    return TensorRTBackend(graph, **options).activate()


def engine_line(backend):
    meta = backend.meta or {}
    how = ("loaded from cache" if backend.engine_source == "cache"
           else "built in %.1f s" % (backend.build_seconds or 0.0))
    return "engine: %s (%s) - TensorRT %s, %s (compute %s), %s" % (
        backend.engine_path or "not cached", how, meta.get("tensorrt_version"), meta.get("gpu_name"),
        meta.get("compute_capability"), backend.precision)


def timed_masks(backend, frames, mask_name, warmup=WARMUP_RUNS):
    """(masks (N, H, W), seconds per frame): one frame per call, as the car runs it."""
    for frame in frames[:warmup]:
        backend.infer(frame[None])
    masks, seconds = [], []
    for frame in frames:
        started = time.perf_counter()
        outputs = backend.infer(frame[None])
        seconds.append(time.perf_counter() - started)
        masks.append(outputs[mask_name][0])
    return np.stack(masks), seconds


def selftest(graph, frames, precision, cache_dir=None, rebuild=False):
    """Run TensorRT and ONNX Runtime on the same frames; returns a report dict."""
    from .api import prepare_batch
    from .backends.onnxruntime import OnnxRuntimeBackend

    batch = prepare_batch(frames, graph.input_shape)
    engine = open_engine(graph, precision, cache_dir=cache_dir, rebuild=rebuild)
    try:
        trt_masks, trt_seconds = timed_masks(engine, batch, graph.mask_name)
        engine_text = engine_line(engine)
        built = engine.precision
    finally:
        engine.close()
    with OnnxRuntimeBackend(graph) as reference:
        ort_masks, ort_seconds = timed_masks(reference, batch, graph.mask_name)
    comparison = compare_masks(ort_masks, trt_masks)
    tolerance = TOLERANCES[built]
    passed, failures = verdict(comparison, tolerance)
    return dict(engine=engine_text, precision=built, comparison=comparison, tolerance=tolerance,
                trt_ms=median_ms(trt_seconds), ort_ms=median_ms(ort_seconds), passed=passed, failures=failures)


def report_lines(report):
    c, t = report["comparison"], report["tolerance"]
    lines = [
        report["engine"],
        "frames compared           %d (%d with a blank reference mask)" % (c["frames"], c["blank_frames"]),
        "max mask difference       %.5f (median frame %.5f; tolerance <= %g)" % (c["max_abs"], c["median_abs"],
                                                                                t["max_abs"]),
        "top-%d%% overlap (IoU)     worst frame %.4f, median %.4f (tolerance >= %g)" % (
            round(100 * c["fraction"]), c["min_overlap"], c["median_overlap"], t["min_overlap"]),
        "median ms per frame       tensorrt %.2f, onnxruntime %.2f (%.1fx)" % (
            report["trt_ms"], report["ort_ms"], report["ort_ms"] / max(report["trt_ms"], 1e-9)),
    ]
    lines.append("PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"]))
    return lines
