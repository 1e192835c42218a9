"""TensorRT backend: the fused saliency graph as a TensorRT engine on a (Jetson) CUDA GPU, via pycuda.

Lifecycle, all in the thread that runs inference (pycuda contexts are per thread, which is why
``pycuda.autoinit`` is not used): ``activate`` makes a CUDA context on the device, loads the engine
from the cache or builds it from the ONNX graph, allocates page-locked host and device buffers for
batch 1, and one stream; ``infer`` copies a uint8 frame up, runs the engine and copies ``mask`` and
the per-layer maps back; ``close`` frees all that and pops the context.

Two generations of the TensorRT Python API are supported, told apart by the attributes they have
(never by version strings):

- binding API (TensorRT 8.0-8.4, JetPack 4.6.x / 5.0): ``engine.num_bindings``, ``get_binding_shape``,
  ``binding_is_input``, ``context.set_binding_shape``, ``context.execute_async_v2(bindings, stream)``;
- tensor API (TensorRT 8.5+, required from 10, JetPack 5.1 / 6): ``engine.num_io_tensors``,
  ``get_tensor_name``/``get_tensor_mode``, ``context.set_input_shape``, ``set_tensor_address``,
  ``context.execute_async_v3(stream)``.

TensorRT before 8.5 has no uint8 network inputs, so there the graph's input is rewritten to float32
(:func:`with_float_input`); the uint8 frame is widened on the host (a 230 KB copy instead of 58 KB).

Options: ``precision`` ("fp16" default, "fp32"), ``cache_dir`` (the base cache dir; engines go to
``<cache_dir>/engines``; ``False``: no cache), ``workspace_mb`` (256), ``device`` (0), ``rebuild``.
"""
import logging
import os
import threading
import time

import numpy as np

from .base import Backend
from .. import trt_cache
from ..errors import BackendUnavailable, first_line

logger = logging.getLogger(__name__)

INSTALL_HINT = ("On a Jetson, TensorRT comes with JetPack (apt package python3-libnvinfer; make the venv with "
                "--system-site-packages so it is visible) and pycuda comes from pip "
                "(export PATH=/usr/local/cuda/bin:$PATH; pip install pycuda); see docs/jetson.md")
PRECISIONS = ("fp16", "fp32")
HEAD_PREFIX = "vbp/"  # every node of the VisualBackProp head (and the uint8 -> /255 prologue)
DEFAULT_WORKSPACE_MB = 256  # plenty for this graph; a Nano has 4 GB shared with the CPU


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

    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as error:
        return "tensorrt and pycuda import, but the CUDA driver does not start (%s)" % first_line(error, None)
    if count < 1:
        return "tensorrt and pycuda import, but there is no CUDA device"
    return None


# --- the graph TensorRT gets ----------------------------------------------------------------------

def supports_uint8_input(trt):
    """TensorRT 8.5 added UINT8 network inputs; before it the ONNX parser rejects them."""
    return hasattr(trt.DataType, "UINT8")


def with_float_input(onnx_bytes, input_name="frame"):
    """The same graph with a float32 input instead of uint8 (for TensorRT < 8.5). Its first node
    casts the input to float anyway, and a float->float Cast is a no-op, so outputs are unchanged
    for the same pixel values."""
    import onnx
    from onnx import TensorProto

    proto = onnx.load_from_string(onnx_bytes)
    inputs = [i for i in proto.graph.input if i.name == input_name]
    if len(inputs) != 1:
        raise ValueError("the graph has no input named %r" % input_name)
    inputs[0].type.tensor_type.elem_type = TensorProto.FLOAT
    return proto.SerializeToString()


def is_head_layer(layer_name, output_names=(), head_outputs=()):
    """Whether a TensorRT layer belongs to the VisualBackProp head: the ONNX parser names layers (and
    tensors) after the ONNX nodes, which graph.py prefixes with 'vbp/'; helper layers the parser adds
    without such a name are recognised by their output tensors."""
    if layer_name.startswith(HEAD_PREFIX):
        return True
    return any(name.startswith(HEAD_PREFIX) or name in head_outputs for name in output_names)


def effective_precision(requested, has_fast_fp16):
    """(precision actually built, reason)."""
    if requested not in PRECISIONS:
        raise BackendUnavailable("unknown TensorRT precision %r (choose fp16 or fp32)" % (requested,))
    if requested == "fp16" and not has_fast_fp16:
        return "fp32", "this GPU has no fast fp16; building fp32"
    return requested, "asked for"


# --- pure checks on the engine's tensors ----------------------------------------------------------

class TensorSpec(object):
    """One engine input or output, in plain Python: what buffers are planned from."""

    def __init__(self, name, shape, dtype, is_input, index=None):
        self.name = name
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.is_input = bool(is_input)
        self.index = index  # binding index (binding API only)

    @property
    def nbytes(self):
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __repr__(self):
        return "TensorSpec(%r, %s, %s, %s)" % (self.name, self.shape, self.dtype, "in" if self.is_input else "out")


def expected_shapes(graph):
    """name -> (shape at batch 1) for the graph's input and outputs the backend returns."""
    height, width, channels = graph.input_shape
    shapes = {graph.input_name: (1, height, width, channels), graph.mask_name: (1, height, width)}
    for name, (h, w) in zip(graph.mean_names, graph.level_shapes):
        shapes[name] = (1, h, w)
    return shapes


def check_io(specs, graph):
    """Raise BackendUnavailable unless the engine's tensors are what the graph promises: one input
    'frame' (uint8, or float32 on TensorRT < 8.5) at batch 1, and ``mask`` and every ``mean_i``
    with the right shapes. Returns (input spec, output specs)."""
    inputs = [s for s in specs if s.is_input]
    outputs = [s for s in specs if not s.is_input]
    if [s.name for s in inputs] != [graph.input_name]:
        raise BackendUnavailable("engine inputs are %s, expected [%r]" % ([s.name for s in inputs], graph.input_name))
    want = expected_shapes(graph)
    frame = inputs[0]
    if frame.dtype not in (np.dtype(np.uint8), np.dtype(np.float32)):
        raise BackendUnavailable("engine input %r is %s, expected uint8 or float32" % (frame.name, frame.dtype))
    problems = []
    by_name = {s.name: s for s in specs}
    for name, shape in sorted(want.items()):
        spec = by_name.get(name)
        if spec is None:
            problems.append("%s missing" % name)
        elif spec.shape != tuple(shape):
            problems.append("%s has shape %s, expected %s" % (name, spec.shape, tuple(shape)))
    if problems:
        raise BackendUnavailable("engine does not match the graph: " + "; ".join(problems))
    return frame, outputs


# --- the two API generations, kept small -----------------------------------------------------------

def uses_tensor_api(engine, context=None):
    """TensorRT 8.5+ (and only it from 10 on): named I/O tensors and execute_async_v3."""
    return hasattr(engine, "num_io_tensors") and (context is None or hasattr(context, "execute_async_v3"))


def _io_names(engine):
    """[(name, is_input)] of the engine's I/O tensors, in engine order."""
    import tensorrt as trt

    if uses_tensor_api(engine):
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        return [(n, engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT) for n in names]
    return [(engine.get_binding_name(i), engine.binding_is_input(i)) for i in range(engine.num_bindings)]


def _set_input_shape(engine, context, name, shape):
    if uses_tensor_api(engine, context):
        ok = context.set_input_shape(name, tuple(shape))
    else:
        ok = context.set_binding_shape(engine.get_binding_index(name), tuple(shape))
    if ok is False:
        raise BackendUnavailable("TensorRT refused input shape %s for %r" % (tuple(shape), name))


def _io_specs(engine, context):
    """TensorSpec per I/O tensor, with the shapes the context resolved for batch 1."""
    import tensorrt as trt

    specs = []
    tensor_api = uses_tensor_api(engine, context)
    for index, (name, is_input) in enumerate(_io_names(engine)):
        if tensor_api:
            dtype, shape = engine.get_tensor_dtype(name), context.get_tensor_shape(name)
        else:
            dtype, shape = engine.get_binding_dtype(index), context.get_binding_shape(index)
        specs.append(TensorSpec(name, tuple(shape), trt.nptype(dtype), is_input, index=index))
    return specs


def _bind(engine, context, specs, device_buffers):
    """Tell the context where every tensor lives. Returns the bindings list for execute_async_v2
    (None with the tensor API, where addresses are set on the context)."""
    if uses_tensor_api(engine, context):
        for spec in specs:
            context.set_tensor_address(spec.name, int(device_buffers[spec.name]))
        return None
    return [int(device_buffers[spec.name]) for spec in sorted(specs, key=lambda s: s.index)]


def _execute(context, bindings, stream):
    """Enqueue one inference on ``stream``."""
    if bindings is None:
        ok = context.execute_async_v3(stream_handle=stream.handle)
    else:
        ok = context.execute_async_v2(bindings=bindings, stream_handle=stream.handle)
    if ok is False:
        raise RuntimeError("TensorRT failed to enqueue the inference")


# --- building ------------------------------------------------------------------------------------

_TRT_LOGGER = None


def trt_logger():
    """One TensorRT logger per process (TensorRT wants a single one); warnings and errors only."""
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        import tensorrt as trt

        _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGER


def _set_workspace(config, workspace_bytes):
    import tensorrt as trt

    if hasattr(config, "set_memory_pool_limit"):  # TensorRT 8.4+
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    elif hasattr(config, "max_workspace_size"):
        config.max_workspace_size = workspace_bytes


def constrain_head_to_fp32(network):
    """Run every layer of the VisualBackProp head in fp32, even in an fp16 engine.

    Why: each head level sums up to 9 (k x k) overlapping up-sampled values with a transposed
    convolution and multiplies by the next level's map, over 5 levels; fp16 tops out at 65504 and
    has 11 bits of mantissa, so without care those products overflow or lose the small values that
    decide the mask's shape. graph.py already divides each level by its maximum, which keeps values
    in [0, 9]; fp32 here keeps the rounding out too. The head is about 1 % of the graph's FLOPs, so
    this costs nothing measurable; the conv trunk (the other 99 %) stays fp16.

    Layers with non-float inputs (the uint8 -> float cast) get only their output type set. Returns
    the number of layers constrained."""
    import tensorrt as trt

    floats = (trt.float32, trt.float16)
    head_outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    count = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not is_head_layer(layer.name, [t.name for t in outputs], head_outputs):
            continue
        float_outputs = [j for j, t in enumerate(outputs) if t.dtype in floats]
        if not float_outputs:
            continue  # shape and index arithmetic: no float precision to pin
        inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
        if all(t is None or t.dtype in floats for t in inputs):
            layer.precision = trt.float32
        for j in float_outputs:
            layer.set_output_type(j, trt.float32)
        count += 1
    return count


def _obey_precision_flag(trt):
    if hasattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS"):  # TensorRT 8.2+
        return trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS
    return trt.BuilderFlag.STRICT_TYPES


def build_engine_bytes(onnx_bytes, input_name, input_shape, precision, workspace_mb=DEFAULT_WORKSPACE_MB):
    """Parse the ONNX graph and build a serialized engine for batch 1. Takes minutes on a Nano."""
    import tensorrt as trt

    log = trt_logger()
    started = time.monotonic()
    builder = trt.Builder(log)
    # Explicit batch: a flag in TensorRT 8, the only mode (and the flag deprecated) in 10, which
    # also dropped the implicit-batch ``max_batch_size``.
    flags = 0
    if hasattr(builder, "max_batch_size") and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BackendUnavailable("TensorRT's ONNX parser rejected the graph: %s"
                                 % " | ".join(" ".join(e.split()) for e in errors)[:500])
    config = builder.create_builder_config()
    _set_workspace(config, int(workspace_mb) << 20)
    # The ONNX batch dimension is symbolic ('N'): pin it to 1 with a one-shape profile.
    profile = builder.create_optimization_profile()
    shape = (1,) + tuple(input_shape)
    profile.set_shape(input_name, shape, shape, shape)
    config.add_optimization_profile(profile)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = constrain_head_to_fp32(network)
        config.set_flag(_obey_precision_flag(trt))
        logger.info("TensorRT: fp16 trunk, %d head layers pinned to fp32", pinned)
    elif hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: no TF32 convs on Ampere (Orin)
    logger.warning("TensorRT: parsed %d layers in %.1f s; building the %s engine (takes minutes on a Jetson Nano)",
                network.num_layers, time.monotonic() - started, precision)
    if hasattr(builder, "build_serialized_network"):  # TensorRT 8.0+
        plan = builder.build_serialized_network(network, config)
        data = bytes(plan) if plan is not None else b""
    else:
        engine = builder.build_engine(network, config)
        data = bytes(engine.serialize()) if engine is not None else b""
    if not data:
        raise BackendUnavailable("TensorRT could not build an engine for this graph (see its log above)")
    logger.info("TensorRT: engine built in %.1f s (%d KB)", time.monotonic() - started, len(data) >> 10)
    return data


def _trt_version(trt):
    return getattr(trt, "__version__", "unknown")


# --- the backend ---------------------------------------------------------------------------------

class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, graph, **options):
        super(TensorRTBackend, self).__init__(graph, **options)
        self.engine_path = None     # the cache file used, if any
        self.engine_source = None   # "cache" or "built"
        self.build_seconds = None
        self.precision = None       # what the engine really runs
        self.meta = None
        self._cuda_context = None
        self._owner = None

    @classmethod
    def availability(cls):
        reason = unavailable_reason()
        return (reason is None), (reason or "")

    # --- activation ------------------------------------------------------------------------
    def _activate(self):
        reason = unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
        if self.graph.pilot and self.graph.pilot.get("inputs"):
            raise BackendUnavailable("the TensorRT backend feeds the frame alone; this pilot also reads %s"
                                     % ", ".join(name for name, _ in self.graph.pilot["inputs"]))
        import pycuda.driver as cuda

        cuda.init()
        device = cuda.Device(int(self.options.get("device", 0) or 0))
        # Blocking sync: waiting for the GPU sleeps instead of spinning a CPU core the car needs
        # (CUDA's default spins when there are fewer contexts than cores, as on a 4-core Jetson).
        flags = getattr(getattr(cuda, "ctx_flags", None), "SCHED_BLOCKING_SYNC", 0)
        self._cuda_context = device.make_context(flags=flags)  # pushed: current in this thread
        self._owner = threading.current_thread()
        try:
            self._load(device)
        except BaseException:
            self._release()
            raise

    def _load(self, device):
        import pycuda.driver as cuda
        import tensorrt as trt

        runtime = trt.Runtime(trt_logger())
        engine_bytes = self._engine_bytes(trt, device)
        engine = runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None and self.engine_source == "cache":
            logger.warning("TensorRT could not deserialize the cached engine %s; rebuilding it", self.engine_path)
            engine = runtime.deserialize_cuda_engine(self._build_and_store(trt))
        if engine is None:
            raise BackendUnavailable("TensorRT could not deserialize the engine it built")
        self._runtime, self._engine = runtime, engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendUnavailable("TensorRT could not create an execution context (out of GPU memory?)")
        height, width, channels = self.graph.input_shape
        _set_input_shape(engine, self._context, self.graph.input_name, (1, height, width, channels))
        specs = _io_specs(engine, self._context)
        self._input, self._outputs = check_io(specs, self.graph)
        self._host = {s.name: cuda.pagelocked_empty(s.shape, s.dtype) for s in specs}
        self._device = {s.name: cuda.mem_alloc(max(s.nbytes, 1)) for s in specs}
        self._bindings = _bind(engine, self._context, specs, self._device)
        self._stream = cuda.Stream()
        logger.info("TensorRT backend ready: %s, %s, %s engine (%s)", device.name(),
                    "tensor API" if self._bindings is None else "binding API", self.precision, self.engine_source)

    def _engine_bytes(self, trt, device):
        """Serialized engine from the cache when one matches exactly, else built (and cached). The
        cache is tried first: no TensorRT builder is made at all when it hits."""
        requested = self.options.get("precision") or "fp16"
        effective_precision(requested, True)  # refuses an unknown name before anything else
        data = self._cached(trt, device, requested)
        if data is not None:
            return data
        builder = trt.Builder(trt_logger())
        precision, why = effective_precision(requested, getattr(builder, "platform_has_fast_fp16", True))
        del builder
        if precision != requested:
            logger.warning("TensorRT: %s", why)
            data = self._cached(trt, device, precision)
            if data is not None:
                return data
        return self._build_and_store(trt)

    def _cached(self, trt, device, precision):
        """Engine bytes from the cache for ``precision``, or None (and say why when a file was refused)."""
        self.precision = precision
        self.meta = trt_cache.engine_meta(
            self.graph.digest, _trt_version(trt), device.name(), device.compute_capability(), precision,
            (1,) + tuple(self.graph.input_shape))
        cache_dir = self.options.get("cache_dir")
        self.engine_path = None if cache_dir is False else trt_cache.engine_path(trt_cache.engine_dir(cache_dir),
                                                                                   self.meta)
        if self.engine_path is None or self.options.get("rebuild"):
            return None
        action, reason, data = trt_cache.check(self.engine_path, self.meta)
        if action == "load":
            self.engine_source = "cache"
            logger.info("TensorRT: %s", reason)
            return data
        # A refused file (stale, foreign, corrupt, truncated) costs minutes of building: say so.
        if os.path.exists(self.engine_path):
            logger.warning("TensorRT: rebuilding - %s", reason)
        else:
            logger.info("TensorRT: building - %s", reason)
        return None

    def _build_and_store(self, trt):
        onnx_bytes = self.graph.onnx_bytes
        if not supports_uint8_input(trt):
            onnx_bytes = with_float_input(onnx_bytes, self.graph.input_name)
        started = time.monotonic()
        data = build_engine_bytes(onnx_bytes, self.graph.input_name, self.graph.input_shape, self.precision,
                                  self.options.get("workspace_mb") or DEFAULT_WORKSPACE_MB)
        self.build_seconds = time.monotonic() - started
        self.engine_source = "built"
        if self.engine_path:
            try:
                trt_cache.store(self.engine_path, self.meta, data)
                logger.info("TensorRT: engine cached at %s", self.engine_path)
            except OSError as error:  # a read-only cache must not stop the car
                logger.warning("TensorRT: could not cache the engine at %s: %s", self.engine_path, error)
        return data

    # --- inference -----------------------------------------------------------------------------
    def _in_context(self):
        """Push our CUDA context when called from a thread other than the one that made it."""
        return _ContextGuard(self._cuda_context, threading.current_thread() is not self._owner)

    def _infer(self, frames):
        frames = np.asarray(frames)
        results = {s.name: [] for s in self._outputs}
        with self._in_context():
            for frame in frames:
                self._run_one(frame, results)
        return {name: np.concatenate(parts, axis=0) for name, parts in results.items()}

    def _run_one(self, frame, results):
        import pycuda.driver as cuda

        name = self._input.name
        np.copyto(self._host[name], frame[None], casting="safe")  # uint8, or widened to float32
        cuda.memcpy_htod_async(self._device[name], self._host[name], self._stream)
        _execute(self._context, self._bindings, self._stream)
        for spec in self._outputs:
            cuda.memcpy_dtoh_async(self._host[spec.name], self._device[spec.name], self._stream)
        self._stream.synchronize()
        for spec in self._outputs:
            results[spec.name].append(self._host[spec.name].copy())

    # --- closing -------------------------------------------------------------------------------
    def _close(self):
        self._release()

    def _release(self):
        """Free what exists (also after a half-finished activation), then pop and detach the context."""
        context = self._cuda_context
        if context is None:
            return
        with _ContextGuard(context, threading.current_thread() is not self._owner):
            for buffer in getattr(self, "_device", {}).values():
                buffer.free()
            # TensorRT objects go while the CUDA context still exists: context, engine, runtime.
            for attribute in ("_device", "_host", "_stream", "_bindings", "_context", "_engine", "_runtime"):
                if hasattr(self, attribute):
                    delattr(self, attribute)
        if threading.current_thread() is self._owner:
            context.pop()
        context.detach()
        self._cuda_context = None

    def describe(self):
        if self.precision:
            return "tensorrt (%s, %s)" % (self.precision, self.engine_source or "not loaded")
        return "tensorrt"


class _ContextGuard(object):
    """``with``: push ``context`` on entry and pop it on exit, when ``needed``."""

    def __init__(self, context, needed):
        self.context, self.needed = context, needed

    def __enter__(self):
        if self.needed:
            self.context.push()
        return self

    def __exit__(self, *exc):
        if self.needed:
            import pycuda.driver as cuda

            cuda.Context.pop()
        return False
