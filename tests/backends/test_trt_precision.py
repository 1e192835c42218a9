"""TensorRT decisions that once broke on real versions, checked without a GPU: the DataType -> numpy
table (JetPack 5's ``trt.nptype`` trap), the fp16 route by what the bindings have (TensorRT 11 has only
strongly typed networks), the fp16 variant of the graph (run on ONNX Runtime), the fp32 prefixes
(head and backward pass), and objects TensorRT returns unusable.

The namespaces below stand for the bindings' classes; ``tests/backends/test_trt_bindings.py`` checks every
name they use against NVIDIA's real compiled bindings.
"""
import logging

import numpy as np
import pytest

from trt_helpers import RecordingConfig
from donkey_saliency.backends import trt_api, trt_engine, trt_fp16
from donkey_saliency.backends.tensorrt import GpuSession
from donkey_saliency.errors import BackendUnavailable


class _Member(object):
    """A pybind11 enum member as TensorRT's bindings show it: a ``name``."""

    def __init__(self, name):
        self.name = name


# --- finding 1: the DataType table ---------------------------------------------------------------------
@pytest.mark.parametrize("name, dtype", [("FLOAT", np.float32), ("HALF", np.float16), ("INT32", np.int32),
                                         ("INT8", np.int8), ("UINT8", np.uint8), ("BOOL", np.bool_),
                                         ("INT64", np.int64)])
def test_numpy_dtype_of_every_datatype_the_engine_can_have(name, dtype):
    assert trt_api.numpy_dtype(_Member(name)) == np.dtype(dtype)


def test_numpy_dtype_reads_the_str_form_too_and_refuses_unknown_types():
    assert trt_api.numpy_dtype("DataType.HALF") == np.dtype(np.float16)  # pybind11 without .name
    with pytest.raises(BackendUnavailable, match="FP8"):
        trt_api.numpy_dtype(_Member("FP8"))


class _JetPack5Trt(object):
    """TensorRT 8.4.1/8.5.2 on numpy >= 1.24: ``nptype`` raises (NVIDIA/TensorRT#2557)."""

    class TensorIOMode(object):
        INPUT, OUTPUT = _Member("INPUT"), _Member("OUTPUT")

    @staticmethod
    def nptype(dtype):
        raise AttributeError("module 'numpy' has no attribute 'bool'")


class _Engine(object):
    num_io_tensors = 2
    _io = [("frame", _JetPack5Trt.TensorIOMode.INPUT, "UINT8", (1, 120, 160, 3)),
           ("mask", _JetPack5Trt.TensorIOMode.OUTPUT, "FLOAT", (1, 120, 160))]

    def get_tensor_name(self, index):
        return self._io[index][0]

    def get_tensor_mode(self, name):
        return {n: mode for n, mode, _, _ in self._io}[name]

    def get_tensor_dtype(self, name):
        return _Member({n: dtype for n, _, dtype, _ in self._io}[name])


class _Context(object):
    def execute_async_v3(self, stream_handle):
        return True

    def get_tensor_shape(self, name):
        return {n: shape for n, _, _, shape in _Engine._io}[name]


def test_io_specs_never_call_trt_nptype():
    specs = trt_api.io_specs(_JetPack5Trt, _Engine(), _Context())
    assert [(s.name, s.dtype, s.is_input, s.shape) for s in specs] == [
        ("frame", np.dtype(np.uint8), True, (1, 120, 160, 3)), ("mask", np.dtype(np.float32), False, (1, 120, 160))]


# --- finding 2: the fp16 route, by what the bindings have ------------------------------------------------
def _namespace(name, *members):
    return type(name, (), {member: member for member in members})


WEAK_LAYER = _namespace("ILayer", "precision", "set_output_type", "reset_precision", "name")
STRONG_LAYER = _namespace("ILayer", "name", "type", "num_inputs")  # TensorRT 11: no per-layer precision
TRT_8_2 = _namespace("BuilderFlag", "FP16", "TF32", "STRICT_TYPES", "OBEY_PRECISION_CONSTRAINTS",
                     "PREFER_PRECISION_CONSTRAINTS")
TRT_10 = _namespace("BuilderFlag", "FP16", "TF32", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS")
TRT_11 = _namespace("BuilderFlag", "TF32", "DEBUG", "REFIT")


class _Creation(object):
    EXPLICIT_BATCH, STRONGLY_TYPED = 0, 1


@pytest.mark.parametrize("builder_flag, layer, route", [
    (TRT_8_2, WEAK_LAYER, trt_engine.WEAK), (TRT_10, WEAK_LAYER, trt_engine.WEAK),
    (TRT_11, STRONG_LAYER, trt_engine.STRONG),
    (TRT_10, STRONG_LAYER, trt_engine.STRONG),  # a flag without the per-layer calls cannot pin: strongly typed
])
def test_fp16_route_follows_what_the_bindings_have(builder_flag, layer, route):
    assert trt_engine.fp16_route(builder_flag, layer) == route


def test_strongly_typed_fp16_sets_no_fp16_flag_and_pins_nothing():
    """TensorRT 11 (the issue's crash): no STRICT_TYPES, no FP16 flag; one build, TF32 cleared."""
    assert trt_engine.constraint_attempts(TRT_11, "fp16", trt_engine.STRONG) == [None]
    assert trt_engine.constraint_attempts(TRT_11, "fp16", trt_engine.WEAK) == [None]  # never a name it lacks
    config, builds = RecordingConfig(), []
    data, used = trt_engine.build_with_constraints(lambda: builds.append(1) or b"plan", config, TRT_11, "fp16",
                                                   trt_engine.STRONG)
    assert (data, used, builds) == (b"plan", None, [1])
    assert config.calls == [("clear", "TF32")]


def test_weakly_typed_fp16_is_unchanged():
    config = RecordingConfig()
    trt_engine.set_precision_flags(config, TRT_10, "fp16", "OBEY_PRECISION_CONSTRAINTS", trt_engine.WEAK)
    assert ("set", "FP16") in config.calls and ("set", "OBEY_PRECISION_CONSTRAINTS") in config.calls


@pytest.mark.parametrize("builder, strongly_typed, flags", [
    (_namespace("Builder", "max_batch_size"), False, 1 << 0),  # 8.x: explicit batch is a flag
    (_namespace("Builder"), False, 0),  # 10/11: the only mode
    (_namespace("Builder"), True, 1 << 1),
])
def test_network_flags(builder, strongly_typed, flags):
    assert trt_engine.network_flags(_Creation, builder, strongly_typed) == flags


def test_network_flags_refuse_a_tensorrt_with_neither_way_to_build_fp16():
    with pytest.raises(BackendUnavailable, match="strongly typed"):
        trt_engine.network_flags(_namespace("Creation", "EXPLICIT_BATCH"), _namespace("Builder"), True)


# --- the fp32 prefixes: head and backward pass ---------------------------------------------------------------
def test_the_head_and_the_backward_pass_stay_fp32():
    assert trt_fp16.FP32_PREFIXES == ("vbp/", "grad/")
    assert trt_engine.is_head_layer("grad/MatMul_3") and trt_engine.is_head_layer("vbp/Div_9")
    assert trt_engine.is_head_layer("(Unnamed Layer* 7) [Shuffle]", ["grad/dx_2"])
    assert not trt_engine.is_head_layer("trunk/conv2d_1/Conv_2", ["map_0"])
    assert not trt_engine.is_head_layer("pilot/dense/Gemm_4", ["pilot/dense_5"])


# --- the fp16 variant of the graph, on ONNX Runtime ----------------------------------------------------------
def _run(onnx_bytes, feed):
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def _elem_types(onnx_bytes):
    """tensor name -> ONNX element type, inferred over the whole graph; and the nodes."""
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(onnx.load_from_string(onnx_bytes))
    types = {i.name: i.type.tensor_type.elem_type for i in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    types.update((t.name, t.data_type) for t in model.graph.initializer)
    return types, list(model.graph.node)


def test_fp16_variant_runs_the_trunk_in_fp16_and_keeps_the_head_fp32(tiny_graph):
    from onnx import TensorProto

    variant = trt_fp16.fp16_variant(tiny_graph.onnx_bytes)
    types, nodes = _elem_types(variant)
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    for node in nodes:
        if node.op_type == "Cast":
            continue  # the boundaries themselves
        seen = {types[name] for name in list(node.input) + list(node.output) if types.get(name) in floats}
        expected = TensorProto.FLOAT if trt_fp16.is_fp32_name(node.name) else TensorProto.FLOAT16
        assert seen <= {expected}, (node.name, seen)
    assert any(n.op_type == "Conv" and not trt_fp16.is_fp32_name(n.name) for n in nodes)
    original, _ = _elem_types(tiny_graph.onnx_bytes)
    assert all(types[name] == original[name] for name in ["frame", "mask"] + tiny_graph.mean_names)


@pytest.fixture(scope="module")
def tiny_graph(tiny_pilot_path):
    from donkey_saliency.compute.graph import export
    from donkey_saliency.pilots import load_pilot

    return export(load_pilot(tiny_pilot_path))


def _fp16_against_fp32(graph, frames):
    from donkey_saliency.backends import trt_compare

    feed = {graph.input_name: frames}
    reference, candidate = _run(graph.onnx_bytes, feed), _run(trt_fp16.fp16_variant(graph.onnx_bytes), feed)
    assert sorted(reference) == sorted(candidate)
    assert all(candidate[name].dtype == reference[name].dtype for name in reference)
    summaries = trt_compare.compare_outputs(reference, candidate, graph)
    for name, summary in summaries.items():
        passed, failures = trt_compare.verdict(summary, trt_compare.TOLERANCES["fp16"])
        assert passed, (name, failures)
    return reference, candidate


def test_fp16_variant_gives_masks_close_to_fp32(tiny_graph):
    from donkey_saliency.backends import trt_tools

    reference, candidate = _fp16_against_fp32(tiny_graph, trt_tools.procedural_frames(6))
    assert np.abs(reference["mask"] - candidate["mask"]).max() > 0  # it really computed in fp16


def test_fp16_variant_of_a_real_whole_pilot_keeps_its_outputs_close():
    """The real v1 pilot as the shared-pilot graph: float input, the pilot's dense layers (fp16) and
    outputs (cast back to fp32 under their own names) beside the mask."""
    from helpers import real_frames, REAL_PILOT
    from donkey_saliency.compute.graph import graph_for

    graph = graph_for(REAL_PILOT, cache_dir=False, whole=True, float_input=True)
    frames = (real_frames(6) / 255.0).astype(np.float32)
    reference, candidate = _fp16_against_fp32(graph, frames)
    for name in graph.pilot["outputs"]:
        np.testing.assert_allclose(candidate[name], reference[name], atol=5e-3)


def test_fp16_variant_keeps_a_backward_pass_in_fp32():
    """A 'grad/' node (the gradient graph's backward pass) reading a trunk map gets it cast to fp32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((2, 1, 1, 1), 0.5, np.float32), "trunk/W")
    nodes = [helper.make_node("Conv", ["x", "trunk/W"], ["map_0"], name="trunk/Conv_1"),
             helper.make_node("Relu", ["map_0"], ["map_0r"], name="trunk/Relu_2"),
             helper.make_node("Mul", ["map_0r", "map_0r"], ["grad/sq"], name="grad/Mul_3"),
             helper.make_node("ReduceSum", ["grad/sq"], ["y"], name="grad/ReduceSum_4", keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    variant = trt_fp16.fp16_variant(model.SerializeToString())
    types, nodes = _elem_types(variant)
    assert types["map_0r"] == TensorProto.FLOAT16 and types["fp16/trunk/W"] == TensorProto.FLOAT16
    assert "trunk/W" not in types  # the fp32 weight is gone, not carried twice
    grad_inputs = [types[name] for node in nodes if node.name.startswith("grad/") for name in node.input]
    assert set(grad_inputs) == {TensorProto.FLOAT}
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) / 16
    np.testing.assert_allclose(_run(variant, {"x": x})["y"], _run(model.SerializeToString(), {"x": x})["y"],
                               rtol=2e-3)


# --- finding 4: objects TensorRT returns unusable -------------------------------------------------------
class _Log(object):
    """What ``made`` reads of the forwarding logger: its error count and newest error."""

    def __init__(self):
        self.errors, self.last_error = 0, None

    def error(self, message):
        self.errors += 1
        self.last_error = message


def test_made_refuses_none_and_an_object_made_under_a_logged_error():
    log = _Log()
    assert trt_engine.made(log, "a runtime", lambda: "runtime") == "runtime"
    with pytest.raises(BackendUnavailable, match="could not create a runtime"):
        trt_engine.made(log, "a runtime", lambda: None)

    def broken_runtime():  # TensorRT 10.16's lean runtime after a CUDA initialisation failure
        log.error("[runtime.cpp::nvinfer1::Runtime::Runtime::31] Error Code 6: API Usage Error\n(CUDA init failed)")
        return object()

    with pytest.raises(BackendUnavailable) as caught:
        trt_engine.made(log, "a runtime", broken_runtime)
    message = str(caught.value)
    assert message.startswith("TensorRT logged an error creating a runtime: [runtime.cpp") and "\n" not in message
    assert trt_engine.made(log, "a runtime", lambda: "runtime") == "runtime"  # only errors made meanwhile count


class _PrimaryContext(object):
    def __init__(self):
        self.events = []

    def push(self):
        self.events.append("push")

    def pop(self):
        self.events.append("pop")

    def detach(self):
        self.events.append("detach")


def test_an_unusable_runtime_fails_the_activation_and_releases_what_was_made():
    """As TensorRTBackend._load does it: a runtime made under a logged error is never kept, used or
    leaked; the session lets the context go and the error (one line) goes to the fallback."""
    log, context = _Log(), _PrimaryContext()

    def load(session):
        session.keep("stream", "stream")
        session.keep("runtime", trt_engine.made(log, "a runtime", lambda: log.error("CUDA failed") or object()))

    with pytest.raises(BackendUnavailable, match="CUDA failed"):
        GpuSession(context).open(load)
    assert context.events == ["push", "detach"]


def test_the_forwarding_logger_counts_errors_and_logs_warnings(caplog):
    """trt_logger's class over a stand-in ILogger base (TensorRT's is a pybind11 class with the same
    Severity members, checked against the bindings in test_trt_bindings)."""
    severity = type("Severity", (), {n: n for n in ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")})
    base = type("ILogger", (object,), {"Severity": severity, "__init__": lambda self: None})
    trt = type("trt", (), {"ILogger": base})
    log = trt_engine._forwarding_logger_class(trt)()
    with caplog.at_level(logging.INFO, logger="donkey_saliency.backends"):
        log.log(severity.INFO, "chatter")
        log.log(severity.WARNING, "deprecated")
        log.log(severity.ERROR, "no CUDA device")
    assert (log.errors, log.last_error) == (1, "no CUDA device")
    assert [r.getMessage() for r in caplog.records] == ["TensorRT: deprecated", "TensorRT: no CUDA device"]
