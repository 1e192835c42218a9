"""Where a TensorRT engine comes from: the engine cache, or a build from the ONNX graph.

The builder half: parse the graph, keep the nodes ``trt_fp16.FP32_PREFIXES`` names in fp32, set
the builder flags the installed TensorRT has, build. fp16 takes one of two routes, chosen by what
the bindings have (:func:`fp16_route`): weakly typed networks (8.x, 10) get the FP16 flag and those
layers pinned to fp32 (OBEY_PRECISION_CONSTRAINTS from 8.2 and, if a pinned layer has no fp32
kernel, one retry with PREFER_PRECISION_CONSTRAINTS; STRICT_TYPES on 8.0 and 8.1); TensorRT with
only strongly typed networks (11) builds the graph's fp16 variant (``trt_fp16.fp16_variant``) as a
strongly typed network. TF32 is off in every build. The decisions are pure functions over what
they are given (a ``BuilderFlag`` namespace, a config, a parsed network), so they are tested
without TensorRT; ``tests/test_trt_bindings.py`` checks the names against the real bindings.

The loader half (:class:`EngineLoader`): cache first (``trt_cache``: keyed by graph, TensorRT
version, GPU, precision, shape), else build and store. TensorRT objects made here are dropped
last-first before a function returns or raises; the runner (``tensorrt.py``) owns the rest.
Valid Python 3.6 (JetPack 4.6's Python).
"""
import logging
import os
import time

from . import trt_cache
from ..errors import BackendUnavailable
from .trt_api import supports_uint8_input, trt_version
from .trt_fp16 import fp16_variant, is_fp32_name
from ..compute.onnx_proto import TensorProto, with_input_type

logger = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")


def default_precision(graph):
    """fp16 for a graph without a backward pass; fp32 for one with it. Measured on ONNX Runtime with the
    fp16 variant (tests/backends/test_trt_gradient.py): an fp16 trunk flips a few ReLU gates near 0 and the fp32
    backward pass follows them (input-gradient's worst pixel 0.04-0.10, over the selftest's 0.05), while
    the trunk is under half of that graph's work, so fp16 would buy little there."""
    return "fp32" if getattr(graph, "output", None) else "fp16"
DEFAULT_WORKSPACE_MB = 256  # plenty for this graph; a Nano has 4 GB shared with the CPU
# Precision-constraint flags, strictest first: TensorRT 8.2+ has the pair, 8.0/8.1 only STRICT_TYPES
# (which itself falls back to the fastest kernel when no constrained one exists).
OBEY, PREFER, STRICT = "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "STRICT_TYPES"


# fp16 routes (see fp16_route)
WEAK, STRONG = "pinned layers", "fp16 graph"


# --- pure decisions ------------------------------------------------------------------------------

def fp16_route(builder_flag, layer_class):
    """How this TensorRT builds fp16: ``WEAK`` where the bindings still have weakly typed networks
    (``BuilderFlag.FP16`` and a layer's ``precision``/``set_output_type``: 8.x, 10), else ``STRONG``
    (TensorRT 11: a strongly typed network of the graph's fp16 variant)."""
    weak = hasattr(builder_flag, "FP16") and all(hasattr(layer_class, n) for n in ("precision", "set_output_type"))
    return WEAK if weak else STRONG


def network_flags(creation_flag, builder, strongly_typed):
    """``create_network``'s flags: explicit batch where it is a flag (8.x; 10 made it the only mode,
    deprecated the flag and dropped the implicit-batch ``max_batch_size``), strongly typed when asked."""
    flags = 0
    if hasattr(builder, "max_batch_size") and hasattr(creation_flag, "EXPLICIT_BATCH"):
        flags |= 1 << int(creation_flag.EXPLICIT_BATCH)
    if strongly_typed:
        if not hasattr(creation_flag, "STRONGLY_TYPED"):
            raise BackendUnavailable("this TensorRT has neither a weakly typed fp16 build nor strongly typed networks")
        flags |= 1 << int(creation_flag.STRONGLY_TYPED)
    return flags


def effective_precision(requested, has_fast_fp16):
    """(precision actually built, reason)."""
    if requested not in PRECISIONS:
        raise BackendUnavailable("unknown TensorRT precision %r (choose fp16 or fp32)" % (requested,))
    if requested == "fp16" and not has_fast_fp16:
        return "fp32", "this GPU has no fast fp16; building fp32"
    return requested, "asked for"


def is_head_layer(layer_name, output_names=(), head_outputs=()):
    """Whether a TensorRT layer must stay fp32 (the VisualBackProp head, the backward pass): the ONNX
    parser names layers (and tensors) after the ONNX nodes, whose prefixes ``trt_fp16.FP32_PREFIXES``
    lists; helper layers the parser adds without such a name (the Slice for a ConvTranspose's
    output_padding) are recognised by their output tensors."""
    if is_fp32_name(layer_name):
        return True
    return any(is_fp32_name(name) or name in head_outputs for name in output_names)


def pin_head_precision(network, fp32, float_types):
    """Run every layer of the VisualBackProp head in fp32, even in an fp16 engine; returns how many.

    Why: each head level sums up to 9 (k x k) overlapping up-sampled values with a transposed
    convolution and multiplies by the next level's map, over 5 levels; fp16 has 11 bits of
    mantissa, so it would lose the small values that decide the mask's shape. The head is ~1 % of
    the graph's FLOPs; the conv trunk (the other 99 %) stays fp16.

    A layer's precision is pinned when its first input is float (the data input: a Slice's start/
    end inputs are int and do not count) or when it has no inputs (a Constant); every float output
    is set to fp32 too. The uint8 -> float Cast (first input uint8) gets only its output type.
    ``fp32``/``float_types``: TensorRT's ``float32`` and (``float32``, ``float16``)."""
    head_outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    count = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not is_head_layer(layer.name, [t.name for t in outputs], head_outputs):
            continue
        float_outputs = [j for j, t in enumerate(outputs) if t.dtype in float_types]
        if not float_outputs:
            continue  # shape and index arithmetic: no float precision to pin
        first = layer.get_input(0) if layer.num_inputs else None
        if first is None or first.dtype in float_types:
            layer.precision = fp32
        for j in float_outputs:
            layer.set_output_type(j, fp32)
        count += 1
    return count


def constraint_attempts(builder_flag, precision, route=WEAK):
    """The precision-constraint flag names to build with, in order (one build each until one
    succeeds); [None] where nothing is pinned: fp32, and the strongly typed route (the graph itself
    carries the precision)."""
    if precision != "fp16" or route != WEAK:
        return [None]
    if hasattr(builder_flag, OBEY):
        return [OBEY, PREFER]
    if hasattr(builder_flag, STRICT):
        return [STRICT]
    return [None]


def set_precision_flags(config, builder_flag, precision, constraint, route=WEAK):
    """Set ``config``'s precision flags for one build. TF32 is cleared for every build: on Ampere
    (Orin) it is on by default and would run the fp32 (and fp32-pinned) layers in TF32."""
    if hasattr(builder_flag, "TF32"):
        config.clear_flag(builder_flag.TF32)
    if precision == "fp16" and route == WEAK:
        config.set_flag(builder_flag.FP16)
    for name in (OBEY, PREFER, STRICT):
        if name != constraint and hasattr(builder_flag, name):
            config.clear_flag(getattr(builder_flag, name))
    if constraint is not None:
        config.set_flag(getattr(builder_flag, constraint))


def build_with_constraints(build, config, builder_flag, precision, route=WEAK):
    """``build()`` (-> serialized engine bytes, or empty/None on failure) under each flag set of
    :func:`constraint_attempts` until one succeeds. An OBEY build fails when a pinned layer has no
    fp32 kernel (some Shuffle/Constant); then PREFER is tried, and said once. Returns
    (bytes or b"", constraint used)."""
    attempts = constraint_attempts(builder_flag, precision, route)
    data = b""
    for index, constraint in enumerate(attempts):
        set_precision_flags(config, builder_flag, precision, constraint, route)
        data = build() or b""
        if data:
            return data, constraint
        if index + 1 < len(attempts):
            logger.warning("TensorRT: the build with %s failed (a layer pinned to fp32 has no fp32 kernel); "
                           "retrying with %s, which lets such layers run in fp16", constraint, attempts[index + 1])
    return data, attempts[-1]


# --- building ------------------------------------------------------------------------------------

_TRT_LOGGER = None


def trt_logger():
    """One TensorRT logger per process (TensorRT wants a single one): its warnings and errors go to
    Python's logging, and it counts errors (see :func:`made`)."""
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        import tensorrt as trt

        _TRT_LOGGER = _forwarding_logger_class(trt)()
    return _TRT_LOGGER


def _forwarding_logger_class(trt):
    severity = trt.ILogger.Severity
    errors = (severity.INTERNAL_ERROR, severity.ERROR)

    class ForwardingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors = 0
            self.last_error = None

        def log(self, level, message):
            if level in errors:
                self.errors += 1
                self.last_error = message
                logger.error("TensorRT: %s", message)
            elif level == severity.WARNING:
                logger.warning("TensorRT: %s", message)

    return ForwardingLogger


def made(log, what, make):
    """``make()``'s result, or BackendUnavailable when it is None or TensorRT logged an error while
    making it: some failures are only logged and an unusable object returned (a runtime made after
    CUDA failed to start: its next call ends the process). ``log``: :func:`trt_logger`'s logger."""
    before = log.errors
    value = make()
    if value is None:
        raise BackendUnavailable("TensorRT could not create %s" % what)
    if log.errors != before:
        del value
        raise BackendUnavailable("TensorRT logged an error creating %s: %s" % (what, " ".join(
            str(log.last_error).split())[:300]))
    return value


def with_float_input(onnx_bytes, input_name="frame"):
    """The same graph with a float32 input instead of uint8 (for TensorRT < 8.5). Its first node
    casts the input to float anyway, and a float->float Cast is a no-op, so outputs are unchanged
    for the same pixel values. Rewritten in the serialized bytes: no ``onnx`` on the car."""
    try:
        return with_input_type(onnx_bytes, input_name, TensorProto.FLOAT)
    except ValueError:
        raise ValueError("the graph has no input named %r" % input_name)


def _set_workspace(trt, config, workspace_bytes):
    if hasattr(config, "set_memory_pool_limit"):  # TensorRT 8.4+
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    elif hasattr(config, "max_workspace_size"):
        config.max_workspace_size = workspace_bytes


def platform_has_fast_fp16(trt):
    builder = trt.Builder(trt_logger())
    try:
        return bool(getattr(builder, "platform_has_fast_fp16", True))
    finally:
        del builder


def build_engine_bytes(onnx_bytes, input_name, input_shape, precision, workspace_mb=DEFAULT_WORKSPACE_MB):
    """Parse the ONNX graph and build a serialized engine for batch 1. Takes minutes on a Nano.
    Call with the CUDA context current."""
    import tensorrt as trt

    log = trt_logger()
    started = time.monotonic()
    route = fp16_route(trt.BuilderFlag, trt.ILayer) if precision == "fp16" else None
    if route == STRONG:
        onnx_bytes = fp16_variant(onnx_bytes)
    builder = network = parser = config = profile = None
    try:
        builder = trt.Builder(log)
        network = builder.create_network(network_flags(trt.NetworkDefinitionCreationFlag, builder, route == STRONG))
        parser = trt.OnnxParser(network, log)
        if not parser.parse(onnx_bytes):
            errors = [" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors)]
            raise BackendUnavailable("TensorRT's ONNX parser rejected the graph: %s" % " | ".join(errors)[:500])
        config = builder.create_builder_config()
        _set_workspace(trt, config, int(workspace_mb) << 20)
        # The ONNX batch dimension is symbolic ('N'): pin it to 1 with a one-shape profile.
        profile = builder.create_optimization_profile()
        shape = (1,) + tuple(input_shape)
        profile.set_shape(input_name, shape, shape, shape)
        config.add_optimization_profile(profile)
        if route == WEAK:
            pinned = pin_head_precision(network, trt.float32, (trt.float32, trt.float16))
            logger.info("TensorRT: fp16 trunk, %d head layers pinned to fp32", pinned)
        elif route == STRONG:
            logger.info("TensorRT: strongly typed fp16 graph (trunk fp16, head fp32 through explicit Casts)")
        logger.warning("TensorRT: parsed %d layers in %.1f s; building the %s engine (takes minutes on a Jetson "
                       "Nano)", network.num_layers, time.monotonic() - started, precision)

        def build():
            plan = builder.build_serialized_network(network, config)
            try:
                return bytes(plan) if plan is not None else b""
            finally:
                del plan

        data, constraint = build_with_constraints(build, config, trt.BuilderFlag, precision, route or WEAK)
        if not data:
            raise BackendUnavailable("TensorRT could not build an engine for this graph (see its log above)")
        logger.info("TensorRT: engine built in %.1f s (%d KB%s)", time.monotonic() - started, len(data) >> 10,
                    ", %s" % constraint if constraint else "")
        return data
    finally:
        # Last-first, and before an exception carries them off in its traceback.
        del profile, config, parser, network, builder


# --- the loader ----------------------------------------------------------------------------------

class EngineLoader(object):
    """The engine for one graph: from the cache when a file there matches exactly, else built (and
    cached). Says where it came from: ``engine_source`` ("cache" | "built"), ``engine_path``,
    ``build_seconds``, ``precision`` (what the engine really runs), ``meta`` (its cache key fields).

    Options (the backend's): ``precision`` ("fp16", "fp32"; None: ``default_precision``), ``cache_dir`` (the base cache
    dir; engines go to ``<cache_dir>/engines``; ``False``: no cache), ``workspace_mb``, ``rebuild``."""

    def __init__(self, graph, options):
        self.graph = graph
        self.options = options
        self.engine_path = None
        self.engine_source = None
        self.build_seconds = None
        self.precision = None
        self.meta = None

    def deserialize(self, trt, runtime, gpu_name, compute_capability):
        """The deserialized engine (the CUDA context must be current); a cached file TensorRT
        cannot read is rebuilt once."""
        engine = runtime.deserialize_cuda_engine(self.engine_bytes(trt, gpu_name, compute_capability))
        if engine is None and self.engine_source == "cache":
            logger.warning("TensorRT could not deserialize the cached engine %s; rebuilding it", self.engine_path)
            engine = runtime.deserialize_cuda_engine(self.build_and_store(trt))
        if engine is None:
            raise BackendUnavailable("TensorRT could not deserialize the engine it built")
        return engine

    def engine_bytes(self, trt, gpu_name, compute_capability):
        """Serialized engine from the cache when one matches exactly, else built (and cached). The
        cache is tried first: no TensorRT builder is made at all when it hits."""
        requested = self.options.get("precision") or default_precision(self.graph)
        effective_precision(requested, True)  # refuses an unknown name before anything else
        data = self._cached(trt, gpu_name, compute_capability, requested)
        if data is not None:
            return data
        precision, why = effective_precision(requested, platform_has_fast_fp16(trt))
        if precision != requested:
            logger.warning("TensorRT: %s", why)
            data = self._cached(trt, gpu_name, compute_capability, precision)
            if data is not None:
                return data
        return self.build_and_store(trt)

    def _cached(self, trt, gpu_name, compute_capability, precision):
        """Engine bytes from the cache for ``precision``, or None (and say why when a file was refused)."""
        self.precision = precision
        self.meta = trt_cache.engine_meta(self.graph.digest, trt_version(trt), gpu_name, compute_capability,
                                          precision, (1,) + tuple(self.graph.input_shape))
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

    def build_and_store(self, trt):
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
