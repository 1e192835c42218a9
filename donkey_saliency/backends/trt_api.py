"""The two generations of TensorRT's Python runtime API, behind a few small functions.

Told apart by the attributes the installed module has, never by version strings:

- binding API (TensorRT 8.0-8.4, JetPack 4.6.x / 5.0): ``engine.num_bindings``, ``get_binding_name``,
  ``binding_is_input``, ``get_binding_index``, ``context.set_binding_shape``,
  ``context.execute_async_v2(bindings, stream_handle)``;
- tensor API (TensorRT 8.5+, the only one from 10, JetPack 5.1 / 6): ``engine.num_io_tensors``,
  ``get_tensor_name``/``get_tensor_mode``, ``context.set_input_shape``, ``set_tensor_address``,
  ``context.execute_async_v3(stream_handle)``.

Also the pure checks on the engine's tensors (``TensorSpec``, ``check_io``), which need no TensorRT.
Valid Python 3.6 (JetPack 4.6's Python).
"""
import numpy as np

from ..errors import BackendUnavailable
from ..compute.onnx_proto import declared_outputs  # noqa: F401 - the graph's outputs, read from its bytes


def trt_version(trt):
    return getattr(trt, "__version__", "unknown")


# TensorRT DataType member name -> numpy dtype. The project's own table: TensorRT's ``trt.nptype``
# on 8.4.1/8.5.2 (JetPack 5.0.2/5.1) builds its table with ``np.bool``, which raises AttributeError on
# numpy >= 1.24 (NVIDIA/TensorRT#2557). Names a TensorRT lacks are simply never looked up.
NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
                "BOOL": np.bool_, "UINT8": np.uint8}


def numpy_dtype(trt_dtype):
    """numpy dtype of a TensorRT ``DataType`` member (matched by its name, e.g. ``DataType.HALF``)."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rpartition(".")[2]
    if name not in NUMPY_DTYPES:
        raise BackendUnavailable("the engine has a %s tensor, which this backend does not handle" % name)
    return np.dtype(NUMPY_DTYPES[name])


def supports_uint8_input(trt):
    """TensorRT 8.5 added UINT8 network inputs; before it the ONNX parser rejects them."""
    return hasattr(trt.DataType, "UINT8")


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
    """name -> (shape at batch 1) of the graph's input and of every output it declares - whatever the
    method kept (``mask``, ``mean_i``, ``input_gradient``, ``gxa_i``, ``gradcam_i``, the pilot's own
    outputs...): the engine TensorRT builds from the graph must have exactly these."""
    height, width, channels = graph.input_shape
    shapes = {graph.input_name: (1, height, width, channels)}
    for name, dims in declared_outputs(graph.onnx_bytes):
        if not dims or any(d is None for d in dims[1:]):
            raise BackendUnavailable("graph output %r has no fixed shape after the batch (%s)" % (name, dims))
        shapes[name] = (1,) + tuple(dims[1:])
    return shapes


def check_io(specs, graph):
    """Raise BackendUnavailable unless the engine's tensors are what the graph promises: one input
    'frame' (uint8, or float32 on TensorRT < 8.5) at batch 1, and every output the graph declares
    with its shape (:func:`expected_shapes`). Returns (input spec, output specs)."""
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


# --- the runtime calls, per generation ------------------------------------------------------------

def uses_tensor_api(engine, context=None):
    """TensorRT 8.5+ (and only it from 10 on): named I/O tensors and execute_async_v3."""
    return hasattr(engine, "num_io_tensors") and (context is None or hasattr(context, "execute_async_v3"))


def io_names(trt, engine):
    """[(name, is_input)] of the engine's I/O tensors, in engine order."""
    if uses_tensor_api(engine):
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        return [(n, engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT) for n in names]
    return [(engine.get_binding_name(i), engine.binding_is_input(i)) for i in range(engine.num_bindings)]


def set_input_shape(engine, context, name, shape):
    if uses_tensor_api(engine, context):
        ok = context.set_input_shape(name, tuple(shape))
    else:
        ok = context.set_binding_shape(engine.get_binding_index(name), tuple(shape))
    if ok is False:
        raise BackendUnavailable("TensorRT refused input shape %s for %r" % (tuple(shape), name))


def io_specs(trt, engine, context):
    """TensorSpec per I/O tensor, with the shapes the context resolved for batch 1."""
    specs = []
    tensor_api = uses_tensor_api(engine, context)
    for index, (name, is_input) in enumerate(io_names(trt, engine)):
        if tensor_api:
            dtype, shape = engine.get_tensor_dtype(name), context.get_tensor_shape(name)
        else:
            dtype, shape = engine.get_binding_dtype(index), context.get_binding_shape(index)
        specs.append(TensorSpec(name, tuple(shape), numpy_dtype(dtype), is_input, index=index))
    return specs


def bind(engine, context, specs, device_buffers):
    """Tell the context where every tensor lives. Returns the bindings list for execute_async_v2
    (None with the tensor API, where addresses are set on the context)."""
    if uses_tensor_api(engine, context):
        for spec in specs:
            context.set_tensor_address(spec.name, int(device_buffers[spec.name]))
        return None
    return [int(device_buffers[spec.name]) for spec in sorted(specs, key=lambda s: s.index)]


def execute(context, bindings, stream):
    """Enqueue one inference on ``stream``."""
    if bindings is None:
        ok = context.execute_async_v3(stream_handle=stream.handle)
    else:
        ok = context.execute_async_v2(bindings=bindings, stream_handle=stream.handle)
    if ok is False:
        raise RuntimeError("TensorRT failed to enqueue the inference")
