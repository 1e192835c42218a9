"""``donkey-saliency bench``: how fast the saliency pipeline is, next to the alternatives, in one run.

On the same frames it times
- our pipeline per stage: preprocess (``api.prepare_frame``), infer (the fused graph: conv trunk +
  VisualBackProp head, one frame), overlay (drawn at the frame's size);
- (a) donkeycar's ``makemovie --salient`` gradient saliency (its own ``MakeMovie`` code when it
  imports, else the identical GradientTape computation, and the report says which);
- (b) VisualBackProp in eager TensorFlow (Keras sub-model for the conv maps, the head in tf ops);
- a real donkeycar ``Vehicle`` with a camera part, with and without ``SaliencyPart``: what the part
  adds to one loop iteration, from the Vehicle's own ``PartProfiler``.
Every figure is a median (and p90) over per-frame ``time.perf_counter`` timings after a warm-up.
"""
import logging
import os
import sys
import time

import numpy as np

from ..api import Saliency
from ..config import DEFAULT_ALPHA, DEFAULT_COLORMAP, DRIVE_LOOP_HZ
from .demo import ReplayCamera
from ..util.console import quiet_stdout, table_lines
from ..errors import InputError, ModelError, first_line
from ..compute.frames import prepare_frame
from ..util.images import read_rgb
from ..keys import CAMERA_KEY, OUTPUTS
from ..compute.methods import DEFAULT_METHOD, DEFAULT_OUTPUT, METHODS, VBP
from ..compute.overlay import overlay
from ..car.part import SaliencyPart
from ..pilots import load_pilot, reference
from ..tubs.read import camera_image_paths, open_tub

logger = logging.getLogger(__name__)

# The targets.
TARGET_MASK_MS = 1.5
TARGET_SPEEDUP_VS_GRADIENT = 20.0
TARGET_PART_MS = 0.3

WARMUP_OURS = 10  # ONNX Runtime's first runs allocate and pick kernels
WARMUP_TF = 3  # eager TF traces and builds kernels on the first calls


def summarize(values_ms):
    """median, p90 and count of a list of milliseconds (None where there are none)."""
    if not values_ms:
        return dict(median_ms=None, p90_ms=None, n=0)
    values = np.asarray(values_ms, dtype=np.float64)
    return dict(median_ms=round(float(np.median(values)), 4), p90_ms=round(float(np.percentile(values, 90)), 4),
                n=int(values.size))


def _ms(seconds):
    return seconds * 1000.0


# --- frames ---------------------------------------------------------------------------------------
def tub_image_paths(tub):
    """Camera image files of a tub in record order, and its kind (v1 or v2 tub)."""
    return camera_image_paths(tub), "v%d tub" % open_tub(tub).version


def load_frames(count, input_shape, tub=None, seed=0):
    """``count`` RGB uint8 frames and where they came from. From a tub (cycled if it has fewer),
    else random frames at the model's input size."""
    if count < 1:
        raise InputError("--frames must be at least 1")
    if tub is None:
        height, width, _ = input_shape
        frames = np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)
        return list(frames), "random %dx%d frames (no --tub)" % (width, height)

    paths, kind = tub_image_paths(tub)
    chosen = [paths[i % len(paths)] for i in range(count)]
    decoded = {}
    for path in chosen:
        if path not in decoded:
            decoded[path] = read_rgb(path)
    frames = [decoded[path] for path in chosen]
    note = "" if len(paths) >= count else ", %d images cycled" % len(paths)
    return frames, "%d frames from %s %s%s" % (count, kind, tub, note)


# --- our pipeline ---------------------------------------------------------------------------------
def time_ours(saliency, frames, alpha=DEFAULT_ALPHA, colormap=DEFAULT_COLORMAP):
    """Per-frame ms of each stage on an active ``api.Saliency``, and the masks (to check (b) against)."""
    for index in range(WARMUP_OURS):
        frame = frames[index % len(frames)]
        overlay(frame, saliency.mask(frame),
                alpha, colormap)
    stages = dict(preprocess=[], infer=[], overlay=[], mask=[], total=[])
    masks = []
    for frame in frames:
        t0 = time.perf_counter()
        x = prepare_frame(frame, saliency.input_shape)
        t1 = time.perf_counter()
        mask = saliency.mask_of(saliency.infer_frame(x))  # the graph's own VisualBackProp, as (b) computes it
        t2 = time.perf_counter()
        overlay(frame, mask, alpha, colormap)
        t3 = time.perf_counter()
        stages["preprocess"].append(_ms(t1 - t0))
        stages["infer"].append(_ms(t2 - t1))
        stages["overlay"].append(_ms(t3 - t2))
        stages["mask"].append(_ms(t2 - t0))
        stages["total"].append(_ms(t3 - t0))
        masks.append(mask)
    return stages, masks


# --- every method beside the pilot's own inference -------------------------------------------------
TARGET_DEFAULT_OVER_PILOT = 3.0  # the live default, ONNX Runtime 1 thread: at most 3x the pilot's inference


def time_methods(model_path, frames, backend="auto", output=DEFAULT_OUTPUT, cache_dir=None):
    """{'pilot': ms, method: ms}: medians per frame (ONNX Runtime on one thread, as the car runs it) of
    the pilot's own inference (its whole graph without the head: what the drive loop runs with
    SALIENCY_SHARE_PILOT and a gradient method) and of each method's mask (preprocess, the graph's run,
    the NumPy finish), all on the same frames in one run."""
    timings = {}
    with Saliency.open(model_path, backend, cache_dir=cache_dir, method=VBP, whole=True, head=False,
                       threads=1) as pilot:  # the pilot alone, as the drive loop runs it
        timings["pilot"] = _median_ms(pilot.infer_frame, [prepare_frame(f, pilot.input_shape) for f in frames])
    for method in sorted(METHODS):
        with Saliency.open(model_path, backend=backend, method=method, output=output, cache_dir=cache_dir,
                           threads=1) as saliency:
            timings[method] = _median_ms(saliency.mask, frames)
    return timings


def _timed(function, frames, warmup):
    """(per-frame ms, results) of ``function`` over ``frames``, after ``warmup`` untimed calls."""
    for frame in frames[:warmup]:
        function(frame)
    times, results = [], []
    for frame in frames:
        started = time.perf_counter()
        results.append(function(frame))
        times.append(_ms(time.perf_counter() - started))
    return times, results


def _median_ms(function, frames):
    return round(float(np.median(_timed(function, frames, WARMUP_OURS)[0])), 3)


# --- (a) donkeycar's makemovie --salient ----------------------------------------------------------
def makemovie_model_type(keras_model):
    """'categorical' when an output layer is a softmax (donkey's categorical pilot), else 'linear':
    the two kinds makemovie's saliency knows."""
    for layer in keras_model.layers:
        name = layer.name.lower()
        activation = getattr(getattr(layer, "activation", None), "__name__", "")
        if "out" in name and "dropout" not in name and activation == "softmax":
            return "categorical"
    return "linear"


class _GradientSaliency(object):
    """The computation of donkeycar 5.3's ``MakeMovie.init_salient`` / ``compute_visualisation_mask``,
    for when that module does not import. Same steps: output layers ('out' in the name) made linear,
    model rebuilt, then per frame the root of the summed squared input gradients of each output."""

    def __init__(self, keras_model, model_type):
        import tensorflow as tf

        self.model_type = model_type
        outputs = [i for i, l in enumerate(keras_model.layers)
                   if "dropout" not in l.name.lower() and "out" in l.name.lower()]
        if not outputs:
            raise ModelError("no layer named with 'out' (makemovie's saliency needs one)")
        for index in outputs:
            keras_model.layers[index].activation = tf.keras.activations.linear
        # makemovie saves and reloads so the new activations are part of the graph; clone does the same.
        self.sal_model = tf.keras.models.clone_model(keras_model)
        self.sal_model.set_weights(keras_model.get_weights())

    def compute_visualisation_mask(self, img):
        import tensorflow as tf

        images = tf.Variable(img.reshape((1,) + img.shape), dtype=float)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(images)
            pred = self.sal_model(images, training=False)
            pred = pred if isinstance(pred, (list, tuple)) else [pred]  # one output: a list of one
            if self.model_type == "categorical":
                pred = [p[0][tf.math.argmax(p[0])] for p in pred]
        grads = 0
        for p in pred:
            grads += tf.math.square(tape.gradient(p, images))
        grads = np.sum(tf.math.sqrt(grads), axis=-1)
        low, high = np.min(grads), np.max(grads)
        return ((grads - low) / (high - low + 1e-7))[0]


def gradient_saliency(keras_model):
    """An object with ``compute_visualisation_mask(img)`` and a sentence saying whose code it is."""
    model_type = makemovie_model_type(keras_model)
    if len(keras_model.inputs) != 1:
        raise ModelError("makemovie --salient handles single-input linear/categorical pilots; this one has %d "
                         "inputs" % len(keras_model.inputs))
    if len(keras_model.outputs) < 2:
        # makemovie iterates the model's output list; one output tensor would be iterated row by row.
        return _GradientSaliency(keras_model, model_type), (
            "the identical GradientTape computation, on the pilot's one output (donkeycar's makemovie "
            "expects a list of outputs)")
    try:
        from donkeycar.management.makemovie import MakeMovie
    except Exception as error:  # e.g. matplotlib missing: its module imports it at the top
        logger.info("donkeycar's makemovie does not import (%s); using the same GradientTape steps", error)
        return _GradientSaliency(keras_model, model_type), (
            "the identical GradientTape computation (donkeycar's makemovie does not import here: %s)"
            % first_line(error, 80))
    movie = MakeMovie()
    movie.model_type = model_type
    import warnings

    # init_salient prints a banner and Keras warns about its .h5 round trip; the bench prints a table.
    with quiet_stdout(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not movie.init_salient(keras_model):
            raise ModelError("no layer named with 'out' (makemovie's saliency needs one)")
    return movie, "donkeycar's own MakeMovie.compute_visualisation_mask (%s)" % model_type


def time_gradient(method, model_frames):
    """Per-frame ms of makemovie's mask: donkey's img/255 (``normalize_image``) + the gradient."""
    def one(x):
        return method.compute_visualisation_mask(x.astype(np.float64) * (1.0 / 255.0))

    return _timed(one, model_frames, WARMUP_TF)[0]


# --- (b) eager TensorFlow VisualBackProp ----------------------------------------------------------
class EagerVisualBackProp(object):
    """VisualBackProp run eagerly per frame: a Keras sub-model gives the post-activation conv maps,
    and the head is the graph's math in tf ops (tf.nn.conv2d_transpose with ones kernels)."""

    TINY = 1e-6

    def __init__(self, pilot, keras_model):
        import tensorflow as tf

        self.tf = tf
        self.steps = pilot.trunk.steps
        self.submodel = reference.keras_submodel(keras_model, pilot.trunk)
        self.kernels = {index: tf.ones(tuple(step.kernel) + (1, 1), tf.float32)
                        for index, step in enumerate(self.steps) if step.kind in ("conv", "pool")}

    def _scale_to_max(self, m):
        tf = self.tf
        return m / tf.maximum(tf.reduce_max(m, axis=[1, 2, 3], keepdims=True), self.TINY)

    def _to_step_input(self, m, index):
        tf = self.tf
        step = self.steps[index]
        if step.kind in ("conv", "pool"):
            shape = [tf.shape(m)[0], step.in_hw[0], step.in_hw[1], 1]
            return tf.nn.conv2d_transpose(m, self.kernels[index], shape, list(step.stride), step.padding.upper())
        (top, bottom), (left, right) = step.border
        if step.kind == "crop":
            return tf.pad(m, [[0, 0], [top, bottom], [left, right], [0, 0]])
        return m[:, top:m.shape[1] - bottom, left:m.shape[2] - right, :]

    def mask(self, uint8_frame):
        """float32 (H, W) in [0, 1] for one uint8 frame at the model's size."""
        tf = self.tf
        x = tf.convert_to_tensor(uint8_frame[None], tf.float32) / 255.0
        maps = self.submodel(x, training=False)
        maps = maps if isinstance(maps, (list, tuple)) else [maps]
        means = [tf.reduce_mean(m, axis=-1, keepdims=True) for m in maps]
        level = len(means) - 1
        m = self._scale_to_max(means[level])
        last_conv = max(i for i, s in enumerate(self.steps) if s.kind == "conv")
        for index in range(last_conv, -1, -1):
            m = self._to_step_input(m, index)
            if index > 0 and self.steps[index - 1].kind == "conv":
                level -= 1
                m = self._scale_to_max(m * self._scale_to_max(means[level]))
        low = tf.reduce_min(m, axis=[1, 2, 3], keepdims=True)
        high = tf.reduce_max(m, axis=[1, 2, 3], keepdims=True)
        return ((m - low) / tf.maximum(high - low, self.TINY))[0, :, :, 0].numpy()


def time_eager_vbp(method, model_frames):
    """(per-frame ms, masks) of the eager VisualBackProp."""
    return _timed(method.mask, model_frames, WARMUP_TF)


# --- a real Vehicle loop ----------------------------------------------------------------------------
def _profiled_ms(vehicle, part):
    # Like PartProfiler.report: drop the first and last entries (start-up, a possibly cut last run).
    return [_ms(t) for t in vehicle.profiler.records[part]["times"][1:-1]]


def run_vehicle(frames, model_path=None, backend="auto", loops=200, hz=DRIVE_LOOP_HZ, cache_dir=None):
    """Drive a real donkeycar Vehicle for ``loops`` iterations at ``hz`` with a replay camera and,
    when ``model_path`` is given, a threaded SaliencyPart. Returns per-loop ms of each part and of
    the loop's work (every part's profiled time; the rest of the period is the Vehicle's sleep)."""
    from donkeycar.vehicle import Vehicle

    vehicle = Vehicle()
    camera = ReplayCamera(frames)
    vehicle.add(camera, outputs=[CAMERA_KEY])
    part = None
    if model_path is not None:
        part = SaliencyPart(model_path, backend=backend, cache_dir=cache_dir)
        vehicle.add(part, inputs=[CAMERA_KEY], outputs=list(OUTPUTS), threaded=True)
    vehicle.start(rate_hz=hz, max_loop_count=loops)
    for entry in vehicle.parts:  # stop() has asked the worker to end; let it close its backend
        if entry.get("thread") is not None:
            entry["thread"].join(timeout=5.0)
    parts = [camera] + ([part] if part is not None else [])
    per_part = [_profiled_ms(vehicle, p) for p in parts]
    count = min(len(times) for times in per_part)
    result = dict(loops=loops, hz=hz, camera_ms=per_part[0],
                  loop_work_ms=[sum(times[i] for times in per_part) for i in range(count)])
    if part is not None:
        stats = part.stats()
        result.update(part_ms=per_part[1], processed=stats["processed"], dropped=stats["dropped"],
                      errors=stats["errors"], part_backend=stats["backend"], part_infer_ms=stats["infer_ms"],
                      part_latency_ms=stats["latency_ms"])
        if part.error:
            raise ModelError(part.error)
    return result


# --- the whole run -----------------------------------------------------------------------------------
def _peak_rss_mb():
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0, 1)


def _ratio(slow, fast):
    if slow is None or not fast:
        return None
    return round(slow / fast, 1)


def run_bench(model_path, frames=100, tub=None, backend="auto", loops=200, hz=DRIVE_LOOP_HZ, cache_dir=None,
              progress=None):
    """Everything the table shows, as a dict (what ``--json`` writes)."""
    say = progress or (lambda message: None)
    with quiet_stdout():  # donkeycar prints a banner on import; keep stdout for the table
        import donkeycar  # noqa: F401
    report = dict(model=os.fspath(model_path), cpus=os.cpu_count(), warmup=dict(ours=WARMUP_OURS, tf=WARMUP_TF))

    # VisualBackProp: the stages and the eager-TensorFlow comparison below are of the same math
    saliency = Saliency.open(model_path, backend, cache_dir=cache_dir, method=VBP)
    pictures, source = load_frames(frames, saliency.input_shape, tub)
    model_frames = [prepare_frame(f, saliency.input_shape) for f in pictures]
    report.update(frames=len(pictures), source=source, input_shape=list(saliency.input_shape),
                  frame_shape=list(pictures[0].shape), conv_layers=len(saliency.layer_names))

    say("timing our pipeline on %d frames" % len(pictures))
    with saliency:
        report["backend"] = saliency.describe()
        stages, our_masks = time_ours(saliency, pictures)
    report["ours"] = {name: summarize(values) for name, values in stages.items()}
    say("timing every method beside the pilot's own inference (1 thread)")
    method_ms = time_methods(model_path, pictures, backend, cache_dir=cache_dir)
    report["methods_ms"] = dict(method_ms, default=DEFAULT_METHOD,
                                over_pilot={m: round(v / method_ms["pilot"], 2) for m, v in method_ms.items()
                                            if m != "pilot"})
    report["memory"] = dict(peak_rss_mb_after_ours=_peak_rss_mb(),
                            tensorflow_loaded_then="tensorflow" in sys.modules)
    ours_mask_ms = report["ours"]["mask"]["median_ms"]

    alternatives = {}
    pilot = None
    try:
        pilot = load_pilot(model_path)
        if pilot.format != "keras":
            raise ModelError("needs a Keras pilot (.h5, .keras or SavedModel), not %s"
                             % os.path.basename(os.fspath(model_path)))
        keras_model = reference.keras_model(model_path)
    except ModelError as error:
        pilot = None
        reason = str(error)
        alternatives["a"] = dict(method="not run: %s" % reason, **summarize([]))
        alternatives["b"] = dict(method="not run: %s" % reason, **summarize([]))

    if pilot is not None:
        say("timing (b) eager TensorFlow VisualBackProp on %d frames" % len(model_frames))
        times, eager_masks = time_eager_vbp(EagerVisualBackProp(pilot, keras_model), model_frames)
        difference = float(max(np.max(np.abs(a - b)) for a, b in zip(eager_masks, our_masks)))
        alternatives["b"] = dict(method="eager TensorFlow: Keras sub-model + tf.nn.conv2d_transpose head",
                                 max_abs_difference_from_ours=difference, **summarize(times))
        say("timing (a) makemovie --salient gradient saliency on %d frames" % len(model_frames))
        try:
            # Done after (b): makemovie switches the output layers to linear in place (the trunk is untouched).
            method, description = gradient_saliency(keras_model)
            alternatives["a"] = dict(method=description, **summarize(time_gradient(method, model_frames)))
        except ModelError as error:
            alternatives["a"] = dict(method="not run: %s" % error, **summarize([]))
    report["alternatives"] = alternatives
    report["ratios"] = dict(gradient_over_ours=_ratio(alternatives["a"]["median_ms"], ours_mask_ms),
                            eager_vbp_over_ours=_ratio(alternatives["b"]["median_ms"], ours_mask_ms))
    report["memory"]["peak_rss_mb_after_tensorflow"] = _peak_rss_mb()

    say("driving a Vehicle at %d Hz for %d loops without, then with, the part" % (hz, loops))
    without = run_vehicle(pictures, None, loops=loops, hz=hz)
    with_part = run_vehicle(pictures, model_path, backend, loops=loops, hz=hz, cache_dir=cache_dir)
    work_without = summarize(without["loop_work_ms"])
    work_with = summarize(with_part["loop_work_ms"])
    report["vehicle"] = dict(
        loops=loops, hz=hz,
        part_run_threaded=summarize(with_part["part_ms"]),
        camera_without=summarize(without["camera_ms"]), camera_with=summarize(with_part["camera_ms"]),
        loop_work_without=work_without, loop_work_with=work_with,
        loop_added_ms=round(work_with["median_ms"] - work_without["median_ms"], 4),
        part_frames_processed=with_part["processed"], part_frames_dropped=with_part["dropped"],
        part_errors=with_part["errors"], part_backend=with_part["part_backend"],
        part_infer_ms=with_part["part_infer_ms"], part_latency_ms=with_part["part_latency_ms"])

    gradient_ratio = report["ratios"]["gradient_over_ours"]
    part_ms = report["vehicle"]["part_run_threaded"]["median_ms"]
    added_ms = report["vehicle"]["loop_added_ms"]
    default_ratio = report["methods_ms"]["over_pilot"][DEFAULT_METHOD]
    report["targets"] = [
        _target("live default (%s) / pilot inference, 1 thread" % DEFAULT_METHOD,
                "<= %.0fx" % TARGET_DEFAULT_OVER_PILOT, default_ratio, "%.2fx",
                default_ratio <= TARGET_DEFAULT_OVER_PILOT),
        _target("mask median (preprocess + infer)", "<= %.1f ms" % TARGET_MASK_MS, ours_mask_ms, "%.3f ms",
                ours_mask_ms <= TARGET_MASK_MS),
        _target("(a) gradient / ours, mask", ">= %.0fx" % TARGET_SPEEDUP_VS_GRADIENT, gradient_ratio, "%.1fx",
                None if gradient_ratio is None else gradient_ratio >= TARGET_SPEEDUP_VS_GRADIENT),
        _target("part's run_threaded in the Vehicle loop", "<= %.1f ms" % TARGET_PART_MS, part_ms, "%.3f ms",
                part_ms <= TARGET_PART_MS),
        _target("Vehicle loop work added by the part", "<= %.1f ms" % TARGET_PART_MS, added_ms, "%.3f ms",
                added_ms <= TARGET_PART_MS),
    ]
    report["memory"]["peak_rss_mb_end"] = _peak_rss_mb()
    return report


def _target(name, target, value, fmt, met):
    return dict(name=name, target=target, measured=value,
                measured_text="n/a" if value is None else fmt % value,
                status="n/a" if met is None else ("met" if met else "NOT MET"))


# --- the table ------------------------------------------------------------------------------------
def _num(value, fmt="%.3f"):
    return "-" if value is None else fmt % value


def format_report(report):
    """The printed table: one row per measured thing, medians first."""
    shape = "x".join(str(d) for d in report["input_shape"])
    frame = "x".join(str(d) for d in report["frame_shape"])
    lines = [
        "donkey-saliency bench: %s" % report["model"],
        "  input %s, %d conv layers; backend %s; %s (frame %s); %s CPUs; "
        "warm-up %d calls (ours), %d (TensorFlow)" % (
            shape, report["conv_layers"], report["backend"], report["source"], frame, report["cpus"],
            report["warmup"]["ours"], report["warmup"]["tf"]),
        "",
    ]
    rows = [("what", "median ms", "p90 ms", "frames")]

    def add(label, stats):
        rows.append((label, _num(stats["median_ms"]), _num(stats["p90_ms"]), str(stats["n"])))

    ours = report["ours"]
    add("ours: preprocess (api.prepare_frame)", ours["preprocess"])
    add("ours: infer (fused trunk + VisualBackProp graph)", ours["infer"])
    add("ours: overlay (to the %s frame)" % frame, ours["overlay"])
    add("ours: total", ours["total"])
    add("ours: mask = preprocess + infer", ours["mask"])
    a, b = report["alternatives"]["a"], report["alternatives"]["b"]
    add("(a) makemovie --salient gradient saliency, mask", a)
    add("(b) eager TensorFlow VisualBackProp, mask", b)
    ratios = report["ratios"]
    rows.append(("ratio (a) / ours mask", _num(ratios["gradient_over_ours"], "%.1fx"), "", ""))
    rows.append(("ratio (b) / ours mask", _num(ratios["eager_vbp_over_ours"], "%.1fx"), "", ""))
    timed = report["methods_ms"]
    rows.append(("pilot's own inference (its graph, no head; 1 thread)", _num(timed["pilot"]), "", ""))
    for method in sorted(timed["over_pilot"]):
        rows.append(("method %s%s, mask (%.2fx the pilot)" % (
            method, " (default)" if method == timed["default"] else "", timed["over_pilot"][method]),
            _num(timed[method]), "", ""))
    vehicle = report["vehicle"]
    loop_label = "Vehicle @%d Hz, %d loops: " % (vehicle["hz"], vehicle["loops"])
    add(loop_label + "part run_threaded (PartProfiler)", vehicle["part_run_threaded"])
    add(loop_label + "loop work without the part", vehicle["loop_work_without"])
    add(loop_label + "loop work with the part", vehicle["loop_work_with"])
    rows.append((loop_label + "loop work added by the part", _num(vehicle["loop_added_ms"]), "", ""))
    table = table_lines(rows, right_from=1)
    lines += [table[0], "-" * len(table[0])] + table[1:]
    lines += [
        "",
        "(a) is %s" % a["method"],
        "(b) is %s%s" % (b["method"], "" if b.get("max_abs_difference_from_ours") is None else
                         "; max |mask - ours| = %.2g" % b["max_abs_difference_from_ours"]),
        "the part in the Vehicle: %s, %d frames processed, %d dropped (stale), %d errors; its infer %s ms, "
        "frame-to-overlay latency %s ms (medians)" % (
            vehicle["part_backend"], vehicle["part_frames_processed"], vehicle["part_frames_dropped"],
            vehicle["part_errors"], _num(vehicle["part_infer_ms"], "%.2f"), _num(vehicle["part_latency_ms"], "%.2f")),
        "",
        "targets (issue 2):",
    ]
    name_width = max(len(t["name"]) for t in report["targets"])
    for t in report["targets"]:
        lines.append("  %s  %-9s  measured %-10s  %s" % (t["name"].ljust(name_width), t["target"],
                                                        t["measured_text"], t["status"]))
    memory = report["memory"]
    lines += ["", "peak RSS: %s MB after our pipeline (TensorFlow %s), %s MB after the TensorFlow methods, "
                  "%s MB at the end" % (memory["peak_rss_mb_after_ours"],
                                       "loaded" if memory["tensorflow_loaded_then"] else "not loaded",
                                       memory["peak_rss_mb_after_tensorflow"], memory["peak_rss_mb_end"])]
    return "\n".join(lines)
