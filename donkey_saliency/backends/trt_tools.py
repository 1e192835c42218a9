"""What ``donkey-saliency build-engine`` and ``selftest`` do: build or load a TensorRT engine, and
check it against ONNX Runtime on the same frames, the way the car runs it.

The selftest activates, runs and closes each engine in one worker thread through an ``api.Saliency``,
as the part does (with its fallback to ONNX Runtime); compares ``mask`` and every ``mean_i`` with ONNX Runtime, fp16
with fp32; forces a failed activation (a mismatched engine in a valid cache file) to show the
fallback; and times it (median ms/frame, build time, the copies' share from CUDA events).

The comparison maths are ``trt_compare``'s; frames come from a donkeycar tub (``tubs.read.tub_frames``)
or are drawn procedurally. Valid Python 3.6 (JetPack 4.6's Python).
"""
import logging
import os
import tempfile
import threading
import time

import numpy as np

from ..version import __version__
from . import trt_cache
from .trt_compare import TOLERANCES, compare_masks, compare_outputs, verdict
from ..api import Saliency
from .tensorrt import TensorRTBackend, unavailable_reason
from .trt_engine import PRECISIONS
from ..errors import BackendUnavailable, InputError, first_line
from ..compute.frames import fit_to_model, prepare_batch
from ..compute.graph import graph_for, IR_VERSION, OPSET, SaliencyGraph
from ..compute.track import track_frames
from ..util.stats import median_ms
from ..pilots.keras import import_tensorflow

logger = logging.getLogger(__name__)

DEFAULT_FRAMES = 50  # the selftest's frames
WARMUP_RUNS = 3


def procedural_frames(count, shape=(120, 160, 3), seed=0):
    """uint8 (count, H, W, C) views along the demo's procedural road (track.py), fitted to the
    model's input: real structure for a conv net to respond to, the same on every run (the
    selftest's frames without a tub)."""
    return np.stack([fit_to_model(sample.frame, shape) for sample in track_frames(count, seed=seed, step=2.0)])


# --- the runs ------------------------------------------------------------------------------------

def require_tensorrt():
    """BackendUnavailable (one line: what is missing, how to get it on a Jetson) unless TensorRT,
    pycuda and a CUDA device are here. Checked before any model is loaded."""
    reason = unavailable_reason()
    if reason:
        raise BackendUnavailable(reason)


def check_precision(precision, choices=None):
    """``precision`` if it is one of ``choices`` (default: the engine precisions), else InputError."""
    choices = choices or PRECISIONS
    if precision not in choices:
        raise InputError("--precision must be one of %s, not %r" % (", ".join(choices), precision))
    return precision


def selftest_precisions(precision):
    """The engines the selftest builds: both by default (fp32 first: fp16 is compared with it)."""
    check_precision(precision, PRECISIONS + ("both",))
    return ("fp32", "fp16") if precision == "both" else (precision,)


def default_pilot_graph():
    """A stand-in pilot: donkey's default linear architecture with fixed random weights (needs
    donkeycar and TensorFlow; the tub frames or procedural scenes give it something to look at)."""
    try:
        import_tensorflow()  # the stand-in is a Keras model
        from donkeycar.parts.keras import default_n_linear
    except Exception as error:
        raise InputError("no MODEL given, and the stand-in pilot needs donkeycar and TensorFlow (%s); "
                         "give a pilot file" % first_line(error, None))

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


def timed_outputs(saliency, frames, warmup=WARMUP_RUNS):
    """(outputs name -> (N, ...), seconds per frame, CUDA stage times per frame or []): one frame per
    call on an active ``api.Saliency``, as the car runs it."""
    for frame in frames[:warmup]:
        saliency.infer_frame(frame)
    parts, seconds, stages = {}, [], []
    for frame in frames:
        started = time.perf_counter()
        outputs = saliency.infer_frame(frame)
        seconds.append(time.perf_counter() - started)
        if getattr(saliency.backend, "stage_ms", None):
            stages.append(saliency.backend.stage_ms)
        for name, value in outputs.items():
            parts.setdefault(name, []).append(value)
    return {name: np.stack(values) for name, values in parts.items()}, seconds, stages


def copy_share(stages):
    """Share of the GPU's time per frame spent copying (host->device plus device->host), median."""
    if not stages:
        return None
    upload, execute, download = (np.asarray(column, dtype=np.float64) for column in zip(*stages))
    return float(np.median((upload + download) / np.maximum(upload + execute + download, 1e-9)))


# --- the self-test: what the car does, checked ------------------------------------------------------

class Check(object):
    """One PASS/FAIL line."""

    def __init__(self, name, passed, detail):
        self.name, self.passed, self.detail = name, bool(passed), detail

    def line(self):
        return "%s  %s: %s" % ("PASS" if self.passed else "FAIL", self.name, self.detail)


def comparison_checks(label, summaries, tolerance):
    """One Check per compared output: its numbers, the tolerance, and what failed."""
    checks = []
    for name, c in summaries.items():
        passed, failures = verdict(c, tolerance)
        detail = "max diff %.5f (median frame %.5f), top-%d%% IoU worst %.4f median %.4f (tolerance <= %g, >= %g)" % (
            c["max_abs"], c["median_abs"], round(100 * c["fraction"]), c["min_overlap"], c["median_overlap"],
            tolerance["max_abs"], tolerance["min_overlap"])
        checks.append(Check("%s %s" % (label, name), passed, detail + ("" if passed else " - " + "; ".join(failures))))
    return checks


class EngineRun(object):
    """What one engine did in the worker thread."""

    def __init__(self, precision):
        self.precision = precision
        self.thread = None  # the thread it ran in (not the main one, as in the part)
        self.backend_name = None
        self.description = None
        self.engine_line = None
        self.activation_seconds = None
        self.build_seconds = None
        self.outputs = None
        self.seconds = []
        self.stages = []


def run_engine(graph, batch, precision, cache_dir=None, rebuild=False):
    """In the calling (worker) thread, as the part does it: activate TensorRT with the fallback to
    ONNX Runtime, run every frame one at a time, close. Returns an EngineRun."""
    run = EngineRun(precision)
    run.thread = threading.current_thread().name
    started = time.monotonic()
    saliency = Saliency(graph, "tensorrt", dict(precision=precision, cache_dir=cache_dir, rebuild=rebuild)).activate()
    run.activation_seconds = time.monotonic() - started
    try:
        backend = saliency.backend
        if backend.name == "tensorrt":
            run.engine_line = engine_line(backend)
            run.build_seconds = backend.build_seconds if backend.engine_source == "built" else None
            run.precision = backend.precision
        run.outputs, run.seconds, run.stages = timed_outputs(saliency, batch)
        # After the frames: an engine that failed on one was replaced by ONNX Runtime, and must read so.
        run.backend_name, run.description = saliency.backend.name, saliency.describe()
    finally:
        saliency.close()
    return run


def decoy_graph(graph):
    """A tiny graph with the same input whose engine cannot serve ``graph``: its only output is a
    ``mask`` (the mean of the channels), no ``mean_i``. Its engine builds in seconds."""
    import onnx
    from onnx import TensorProto, helper

    height, width, channels = graph.input_shape
    nodes = [helper.make_node("Cast", [graph.input_name], ["decoy/float"], name="decoy/Cast", to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["decoy/float"], [graph.mask_name], name="decoy/Mean", axes=[3],
                              keepdims=0)]
    body = helper.make_graph(
        nodes, "donkey_saliency_decoy",
        [helper.make_tensor_value_info(graph.input_name, TensorProto.UINT8, ["N", height, width, channels])],
        [helper.make_tensor_value_info(graph.mask_name, TensorProto.FLOAT, ["N", height, width])])
    proto = helper.make_model(body, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto)
    return SaliencyGraph(proto.SerializeToString(), graph.input_shape, [], [], "decoy")


def plant_mismatched_engine(graph, cache_dir):
    """Put into ``cache_dir`` a valid engine file for ``graph`` (right header, right checksum) whose
    engine is the decoy's: TensorRT deserializes it, then activation must refuse it. Runs in the
    worker thread. Returns the planted file's path."""
    with TensorRTBackend(decoy_graph(graph), precision="fp32", cache_dir=cache_dir) as decoy:
        meta = dict(decoy.meta, graph_digest=graph.digest)
        with open(decoy.engine_path, "rb") as handle:
            _, engine = trt_cache.unpack(handle.read())
    return trt_cache.store(trt_cache.engine_path(trt_cache.engine_dir(cache_dir), meta), meta, engine)


FALLBACK_CHECK = "fallback after a failed activation"


class _Recorder(logging.Handler):
    def __init__(self):
        logging.Handler.__init__(self, logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def forced_fallback(graph, batch, expected_mask):
    """A forced-failure activation, in the calling (worker) thread: a mismatched engine file makes
    TensorRT's activation fail after the runtime, engine and execution context exist - the teardown
    the fallback depends on. Checks that ONNX Runtime then runs and matches. Returns a Check."""
    recorder = _Recorder()
    logging.getLogger("donkey_saliency.backends").addHandler(recorder)
    try:
        with tempfile.TemporaryDirectory(prefix="donkey-saliency-selftest-") as directory:
            plant_mismatched_engine(graph, directory)
            started = time.monotonic()
            saliency = Saliency(graph, "tensorrt", dict(precision="fp32", cache_dir=directory)).activate()
            seconds = time.monotonic() - started
            try:
                backend = saliency.backend
                mask = saliency.mask_of(saliency.infer(batch[:1]))
            finally:
                saliency.close()
    except Exception as error:  # the check fails; the self-test goes on to its summary
        return Check(FALLBACK_CHECK, False, "%s: %s" % (type(error).__name__, first_line(error)))
    finally:
        logging.getLogger("donkey_saliency.backends").removeHandler(recorder)
    # The fallback must be the refusal of the planted engine, not some other failure.
    warned = [m for m in recorder.messages if "does not match the graph" in m and "falling back to onnxruntime" in m]
    same = bool(np.allclose(mask, expected_mask[:1], atol=1e-5))
    passed = backend.name == "onnxruntime" and bool(warned) and same
    detail = "mismatched engine file -> %s in %.1f s, mask %s onnxruntime's; %s" % (
        backend.name, seconds, "equal to" if same else "DIFFERENT from",
        first_line(warned[0]) if warned else "no warning that the engine was refused")
    return Check(FALLBACK_CHECK, passed, detail)


def selftest(graph, frames, precisions=("fp32", "fp16"), cache_dir=None, rebuild=False):
    """The engines built or loaded in a worker thread as the part does, against ONNX Runtime on the
    same frames (mask and every mean_i), fp16 against fp32, a forced-failure activation; returns a
    report dict for :func:`report_lines`."""
    from concurrent.futures import ThreadPoolExecutor

    batch = prepare_batch(frames, graph.input_shape)
    with Saliency(graph, "onnxruntime") as reference:
        expected, ort_seconds, _ = timed_outputs(reference, batch)
    checks, runs = [], {}
    # One worker thread, as the part has: activation, inference and close all happen in it.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="selftest-worker")
    try:
        for precision in precisions:
            run = worker.submit(run_engine, graph, batch, precision, cache_dir, rebuild).result()
            runs[precision] = run
            label = "%s engine" % precision
            if run.backend_name != "tensorrt":
                checks.append(Check(label + " in a worker thread", False, "activation in %s failed, fell back to %s "
                                    "(the warning above says why)" % (run.thread, run.description)))
                continue
            checks.append(Check(label + " in a worker thread", True, "%s, activated in %.1f s in %s" % (
                run.engine_line, run.activation_seconds, run.thread)))
            checks.extend(comparison_checks(label + " vs onnxruntime:", compare_outputs(expected, run.outputs, graph),
                                            TOLERANCES[run.precision]))
        engines = [r for r in runs.values() if r.backend_name == "tensorrt"]
        if len(engines) == 2 and engines[0].precision != engines[1].precision:
            fp32, fp16 = sorted(engines, key=lambda r: r.precision != "fp32")
            comparison = compare_masks(reference.mask_of(fp32.outputs), reference.mask_of(fp16.outputs))
            checks.extend(comparison_checks("fp16 engine vs fp32 engine:", {"mask": comparison}, TOLERANCES["fp16"]))
        checks.append(worker.submit(forced_fallback, graph, batch, reference.mask_of(expected)).result())
    finally:
        worker.shutdown(wait=True)
    return dict(graph=graph, frames=len(batch), checks=checks, runs=runs, ort_ms=median_ms(ort_seconds),
                passed=all(c.passed for c in checks))


def _version_of(module_name):
    import importlib

    try:
        module = importlib.import_module(module_name)
    except Exception:  # absent, or a broken install: the summary says so rather than failing
        return "-"
    return str(getattr(module, "__version__", None) or getattr(module, "VERSION_TEXT", "?"))


def versions():
    """Installed versions worth quoting in an issue ('-' where absent)."""
    import platform

    found = ["donkey-saliency %s" % __version__, "Python %s" % platform.python_version()]
    found.extend("%s %s" % (name, _version_of(name)) for name in ("numpy", "tensorrt", "pycuda", "onnxruntime"))
    return " | ".join(found)


def timing_line(run, ort_ms):
    if run.backend_name != "tensorrt":
        return "%s: no engine (fell back to %s)" % (run.precision, run.description)
    ms = median_ms(run.seconds)
    share = copy_share(run.stages)
    return "%s: %.2f ms/frame (%.1fx onnxruntime), engine %s, host->device->host copies %s of GPU time" % (
        run.precision, ms, ort_ms / max(ms, 1e-9),
        "built in %.1f s" % run.build_seconds if run.build_seconds is not None else "from cache (--rebuild to time it)",
        "%.0f %%" % (100 * share) if share is not None else "?")


def report_lines(report):
    """One PASS/FAIL line per check, the timings, then a summary to paste into an issue."""
    graph, runs, checks = report["graph"], report["runs"], report["checks"]
    lines = [check.line() for check in checks]
    lines.append("median ms per frame: onnxruntime %.2f" % report["ort_ms"])
    lines.extend("  " + timing_line(run, report["ort_ms"]) for run in runs.values())
    failed = [c.name for c in checks if not c.passed]
    meta = next((r.engine_line for r in runs.values() if r.engine_line), "no engine ran")
    lines += [
        "--- paste into an issue ---",
        "donkey-saliency selftest: %s, %d of %d checks passed" % ("PASS" if report["passed"] else "FAIL",
                                                                  len(checks) - len(failed), len(checks)),
        versions(),
        meta,
        "pilot %s: input %s, %d conv layers; %d frames" % (
            os.path.basename(str(graph.source)) or "?", "x".join(map(str, graph.input_shape)), len(graph.layer_names),
            report["frames"]),
    ]
    lines.extend(timing_line(run, report["ort_ms"]) for run in runs.values())
    lines.extend("failed: " + c.line()[6:] for c in checks if not c.passed)
    lines += ["---", "PASS" if report["passed"] else "FAIL"]
    return lines
