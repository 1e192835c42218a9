"""TensorRT backend: the fused saliency graph as a TensorRT engine on a (Jetson) CUDA GPU, via pycuda.

Lifecycle (``activate`` -> ``infer`` -> ``close``), in whichever thread calls it - the part does all
three in its worker thread:

- ``activate`` retains the device's *primary* CUDA context (the one the CUDA runtime, and so
  TensorFlow in the same process, uses - not a second context next to it), pushes it, loads the
  engine (``trt_engine.EngineLoader``: cache or build), allocates page-locked host and device buffers
  for batch 1, a stream and four events, and pops the context;
- ``infer`` pushes the context, copies a uint8 frame up, runs the engine, copies every output the
  graph declares back (``mask`` or a gradient method's maps, the per-layer means, a whole pilot's
  own outputs), waits on an event (sleeping, not spinning a core the car needs) and pops;
- ``close`` pushes the context, releases everything in reverse order of creation, then detaches
  the context while it is current (pycuda releases a current primary context from any thread, so a
  close from another thread frees everything too; it waits for an inference in flight).

If activation fails once TensorRT objects exist (a mismatched engine, out of memory), the
traceback's frames are cleared first - their locals would otherwise keep TensorRT objects alive past
the context - and everything is released while the context is still current, so the fallback to
ONNX Runtime starts from a clean slate.

The TensorRT API generations are bridged in ``trt_api``; building and caching is ``trt_engine``.
TensorRT before 8.5 has no uint8 network inputs: there the graph's input is float32 and the frame is
widened on the host. Valid Python 3.6 (JetPack 4.6's Python).

Options: ``precision`` ("fp16" default, "fp32"), ``cache_dir`` (``False``: no cache), ``workspace_mb``
(256), ``device`` (0), ``rebuild``.
"""
import contextlib
import gc
import logging
import threading
import traceback

import numpy as np

from . import trt_api
from .base import Backend
from .trt_engine import EngineLoader, made, trt_logger
from ..errors import BackendUnavailable, first_line

logger = logging.getLogger(__name__)

INSTALL_HINT = ("On a Jetson, TensorRT comes with JetPack (apt package python3-libnvinfer; make the venv with "
                "--system-site-packages so it is visible) and pycuda comes from pip "
                "(export PATH=/usr/local/cuda/bin:$PATH; pip install pycuda); see docs/jetson.md")


# --- what is installed ---------------------------------------------------------------------------

def missing_libraries():
    """Names (with the import error) of the libraries that do not import; [] when both do."""
    missing = []
    try:
        import tensorrt  # noqa: F401
    except Exception as error:  # ImportError, or OSError when libnvinfer.so is not found
        missing.append("tensorrt (%s)" % first_line(error, None))
    try:
        import pycuda.driver  # noqa: F401
    except Exception as error:
        missing.append("pycuda (%s)" % first_line(error, None))
    return missing


def unavailable_reason():
    """None if TensorRT, pycuda and a CUDA device are all here, else one line saying what is missing
    and how to get it. Cheap: imports and counts devices, builds nothing."""
    missing = missing_libraries()
    if missing:
        return "TensorRT backend unavailable - missing %s. %s" % ("; ".join(missing), INSTALL_HINT)
    import pycuda.driver as cuda

    if not hasattr(cuda.Device, "retain_primary_context"):
        return ("pycuda %s is too old: the TensorRT backend shares the GPU's primary context, which needs "
                "pycuda 2020.1 or newer (pip install -U pycuda)" % getattr(cuda, "VERSION_TEXT", "?"))
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as error:
        return "tensorrt and pycuda import, but the CUDA driver does not start (%s)" % first_line(error, None)
    if count < 1:
        return "tensorrt and pycuda import, but there is no CUDA device"
    return None


def refusal(graph):
    """Why this backend will not run ``graph`` (one line, and ONNX Runtime runs it instead), or None.
    It feeds the frame alone: a whole pilot that also reads other inputs (memory, behaviour, IMU) is
    refused; a plain pilot's graph is taken with whatever outputs it has (the backward pass's too)."""
    extra = (graph.pilot or {}).get("inputs")
    if extra:
        return "the TensorRT backend feeds the frame alone; this pilot also reads %s" % ", ".join(n for n, _ in extra)
    return None


# --- the CUDA context and what lives in it -------------------------------------------------------

def drop_frames(error):
    """Clear the locals of every finished frame in ``error``'s traceback, and in those of the
    errors it chains to, so that nothing there keeps a TensorRT object alive. (The frame still
    running - the one handling ``error`` - cannot be cleared and is left alone.)"""
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        pending.extend([current.__cause__, current.__context__])


class GpuSession(object):
    """A CUDA context and the objects made in it, with one rule: they are released in reverse order
    of creation while the context is current, and only then is the context let go.

    ``context``: pycuda's handle on the device's primary context (``Device.retain_primary_context()``,
    not current when given). Every use pushes it on the calling thread and pops it after, so any
    thread may use or close the session; a lock keeps a close from running under an inference."""

    def __init__(self, context):
        self._context = context
        self._made = []  # (attribute name, free function or None), oldest first
        self._lock = threading.RLock()

    @property
    def is_open(self):
        return self._context is not None

    def keep(self, name, value, free=None):
        """Hold ``value`` as ``self.<name>`` until release; ``free(value)`` runs first then, if given."""
        setattr(self, name, value)
        self._made.append((name, free))
        return value

    def open(self, load):
        """``load(self)`` with the context current. If it raises: the traceback's frames are
        cleared, everything made is released and the context let go, then the error goes on."""
        self._context.push()
        try:
            load(self)
        except BaseException as error:
            drop_frames(error)
            self._release_current()
            raise
        self._context.pop()
        return self

    @contextlib.contextmanager
    def current(self):
        """``with``: the context is current in this thread (and no close runs meanwhile)."""
        with self._lock:
            if self._context is None:
                raise RuntimeError("the TensorRT backend is closed")
            self._context.push()
            try:
                yield self
            finally:
                self._context.pop()

    def close(self):
        with self._lock:
            if self._context is not None:
                self._context.push()
                self._release_current()

    def _release_current(self):
        """With the context current: release newest first, collect cycles that may still reach a
        TensorRT object, then detach the context while it is current."""
        context, self._context = self._context, None
        try:
            while self._made:
                name, free = self._made.pop()
                value = self.__dict__.pop(name)
                try:
                    if free is not None:
                        free(value)
                except Exception as error:  # one stuck buffer must not keep the rest alive
                    logger.warning("TensorRT: releasing %s failed: %s", name, first_line(error))
                del value
            gc.collect()
        finally:
            context.detach()


def _free_all(buffers):
    for buffer in buffers.values():
        buffer.free()


# --- the backend ---------------------------------------------------------------------------------

class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, graph, **options):
        super(TensorRTBackend, self).__init__(graph, **options)
        self.loader = EngineLoader(graph, options)
        self.stage_ms = None  # (upload, execute, download) of the last frame, from CUDA events
        self._session = None
        self._input = self._outputs = self._bindings = None

    # Where the engine came from (the loader's record).
    engine_path = property(lambda self: self.loader.engine_path)
    engine_source = property(lambda self: self.loader.engine_source)
    build_seconds = property(lambda self: self.loader.build_seconds)
    precision = property(lambda self: self.loader.precision)
    meta = property(lambda self: self.loader.meta)

    @classmethod
    def availability(cls):
        reason = unavailable_reason()
        return (reason is None), (reason or "")

    # --- activation ------------------------------------------------------------------------
    def _activate(self):
        reason = unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
        refused = refusal(self.graph)
        if refused:
            raise BackendUnavailable(refused)
        import pycuda.driver as cuda

        cuda.init()
        device = cuda.Device(int(self.options.get("device", 0) or 0))
        self._session = GpuSession(device.retain_primary_context()).open(lambda session: self._load(session, device))

    def _load(self, s, device):
        """Everything TensorRT and pycuda make is held by the session ``s`` (never in a local), in
        order of creation, so a failure anywhere here releases it in reverse order."""
        import pycuda.driver as cuda
        import tensorrt as trt

        log = trt_logger()
        # Each object checked before it is used: None, or an error logged while it was made, means
        # activation fails (and the caller falls back to ONNX Runtime) instead of a crash at first use.
        # (The engine is checked by the loader: a stale cached one is logged, then rebuilt.)
        s.keep("runtime", made(log, "a runtime", lambda: trt.Runtime(log)))
        s.keep("engine", self.loader.deserialize(trt, s.runtime, device.name(), device.compute_capability()))
        s.keep("context", made(log, "an execution context (out of GPU memory?)", s.engine.create_execution_context))
        height, width, channels = self.graph.input_shape
        trt_api.set_input_shape(s.engine, s.context, self.graph.input_name, (1, height, width, channels))
        specs = trt_api.io_specs(trt, s.engine, s.context)
        self._input, self._outputs = trt_api.check_io(specs, self.graph)
        s.keep("host", {spec.name: cuda.pagelocked_empty(spec.shape, spec.dtype) for spec in specs})
        s.keep("device", {spec.name: cuda.mem_alloc(max(spec.nbytes, 1)) for spec in specs}, free=_free_all)
        self._bindings = trt_api.bind(s.engine, s.context, specs, s.device)
        s.keep("stream", cuda.Stream())
        # BLOCKING_SYNC: waiting on the last event sleeps instead of spinning a CPU core the car
        # needs (the primary context's own scheduling flags are not ours to set).
        s.keep("events", [cuda.Event(cuda.event_flags.BLOCKING_SYNC) for _ in range(4)])
        logger.info("TensorRT backend ready: %s, %s, %s engine (%s)", device.name(),
                    "tensor API" if self._bindings is None else "binding API", self.precision, self.engine_source)

    # --- inference -----------------------------------------------------------------------------
    def _infer(self, frames):
        session = self._session
        if session is None:
            raise RuntimeError("the TensorRT backend is closed")
        frames = np.asarray(frames)
        results = {spec.name: [] for spec in self._outputs}
        with session.current() as s:
            for frame in frames:
                self._run_one(s, frame, results)
        return {name: np.concatenate(parts, axis=0) for name, parts in results.items()}

    def _run_one(self, s, frame, results):
        import pycuda.driver as cuda

        start, uploaded, executed, done = s.events
        name = self._input.name
        np.copyto(s.host[name], frame[None], casting="safe")  # uint8, or widened to float32
        start.record(s.stream)
        cuda.memcpy_htod_async(s.device[name], s.host[name], s.stream)
        uploaded.record(s.stream)
        trt_api.execute(s.context, self._bindings, s.stream)
        executed.record(s.stream)
        for spec in self._outputs:
            cuda.memcpy_dtoh_async(s.host[spec.name], s.device[spec.name], s.stream)
        done.record(s.stream)
        done.synchronize()
        self.stage_ms = (uploaded.time_since(start), executed.time_since(uploaded), done.time_since(executed))
        for spec in self._outputs:
            results[spec.name].append(s.host[spec.name].copy())

    # --- closing -------------------------------------------------------------------------------
    def _close(self):
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def describe(self):
        if self.precision:
            return "tensorrt (%s, %s)" % (self.precision, self.engine_source or "not loaded")
        return "tensorrt"
