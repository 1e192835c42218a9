"""The gradient graph (compute/backward.py, nodes 'grad/') on TensorRT, checked without a GPU.

What can be checked here, and is: the backend binds exactly the outputs a method's pruned graph has
(names and shapes read from the graph's own ONNX value infos) on the binding API (8.0-8.4) and the
tensor API (8.5+, 10, 11 strongly typed); which pilots' graphs it takes; the fp16 variant (what a
strongly typed build compiles) keeps 'grad/' in fp32 and gives masks within the selftest's fp16
tolerance on ONNX Runtime; every operator and attribute the graph uses is in TensorRT's ONNX
parser from 8.2 on. What cannot: nothing here builds or runs an engine (no GPU, no TensorRT core
library) - the engine-to-graph comparison on a GPU is ``donkey-saliency selftest``.
"""
import os

import numpy as np
import pytest

from helpers import REAL_PILOT, real_data_or_skip, real_frames
from donkey_saliency.backends import trt_api, trt_compare, trt_engine, trt_fp16
from donkey_saliency.backends.tensorrt import refusal
from donkey_saliency.backends.trt_api import TensorSpec
from donkey_saliency.compute import methods
from donkey_saliency.compute.graph import graph_for
from donkey_saliency.errors import BackendUnavailable

V2_MODELS = os.path.join(os.path.dirname(REAL_PILOT), "..", "tub_v2_pi_linear", "models")
REAL_PILOTS = [REAL_PILOT, os.path.join(V2_MODELS, "mypilot.tflite"),
               os.path.join(V2_MODELS, "OFFICIAL_DEMO_MODEL.tflite")]
LEVELS = 5  # conv levels of donkey's default linear pilot (all three real pilots)


def method_graph(path, method, features=False):
    """The graph a car builds for ``method``: the whole pilot, pruned to what the method reads."""
    output = None if method == methods.VBP else "steering"
    return graph_for(path, cache_dir=False, whole=True, output=output,
                     keep=methods.needed_outputs(method, LEVELS, features=features))


def run_onnxruntime(onnx_bytes, feed):
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


# --- the shapes the backend binds ------------------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_expected_shapes_are_exactly_what_the_methods_graph_outputs(method):
    real_data_or_skip()
    graph = method_graph(REAL_PILOT, method)
    shapes = trt_api.expected_shapes(graph)
    computed = run_onnxruntime(graph.onnx_bytes, {"frame": real_frames(1)})
    assert shapes.pop("frame") == (1, 120, 160, 3)
    assert shapes == {name: value.shape for name, value in computed.items()}
    needed = methods.needed_outputs(method, LEVELS)
    assert set(shapes) == needed | set(graph.pilot["outputs"])  # the pilot's own outputs stay
    assert ("mask" in shapes) == (method in (methods.VBP, methods.VBP_X_INPUT_GRADIENT))


def test_declared_outputs_read_every_value_info_onnx_reads():
    import onnx

    real_data_or_skip()
    for graph in [method_graph(REAL_PILOT, methods.GRAD_CAM, features=True), graph_for(REAL_PILOT, cache_dir=False)]:
        proto = onnx.load_from_string(graph.onnx_bytes)
        want = [(o.name, [d.dim_value if d.HasField("dim_value") else None for d in o.type.tensor_type.shape.dim])
                for o in proto.graph.output]
        assert trt_api.declared_outputs(graph.onnx_bytes) == want


class BindingApiEngine(object):
    """What TensorRT 8.0-8.4's engine and context answer (binding indices), for shapes given."""

    def __init__(self, specs):
        self.specs = specs
        self.num_bindings = len(specs)
        self.bound = None

    def get_binding_name(self, index):
        return self.specs[index][0]

    def binding_is_input(self, index):
        return self.specs[index][0] == "frame"

    def get_binding_dtype(self, index):
        return self.specs[index][2]

    def get_binding_index(self, name):
        return [s[0] for s in self.specs].index(name)

    def get_binding_shape(self, index):
        return self.specs[index][1]

    def set_binding_shape(self, index, shape):
        return tuple(shape) == self.specs[index][1]

    def execute_async_v2(self, bindings, stream_handle):
        self.bound = bindings


class TensorApiEngine(object):
    """What TensorRT 8.5+ (the only API of 10 and 11) answers: named I/O tensors."""

    class TensorIOMode(object):
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    def __init__(self, specs):
        self.specs = {s[0]: s for s in specs}
        self.order = [s[0] for s in specs]
        self.num_io_tensors = len(specs)
        self.addresses = {}

    def get_tensor_name(self, index):
        return self.order[index]

    def get_tensor_mode(self, name):
        return self.TensorIOMode.INPUT if name == "frame" else self.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.specs[name][2]

    def get_tensor_shape(self, name):
        return self.specs[name][1]

    def set_input_shape(self, name, shape):
        return tuple(shape) == self.specs[name][1]

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def execute_async_v3(self, stream_handle):
        return True


class DataType(object):
    def __init__(self, name):
        self.name = name


@pytest.mark.parametrize("engine_class", [BindingApiEngine, TensorApiEngine], ids=["binding API", "tensor API"])
@pytest.mark.parametrize("method", [methods.INPUT_GRADIENT, methods.GRAD_CAM, "gxa-mid", methods.VBP])
def test_every_api_path_binds_every_output_of_the_graph(engine_class, method):
    """An engine whose tensors are what ONNX Runtime computes from the graph (as TensorRT's parser
    makes them, in an order of its own) passes check_io and gets a buffer for every one of them."""
    real_data_or_skip()
    graph = method_graph(REAL_PILOT, method)
    computed = run_onnxruntime(graph.onnx_bytes, {"frame": real_frames(1)})
    tensors = [("frame", (1, 120, 160, 3), DataType("UINT8"))]
    tensors += [(name, value.shape, DataType("FLOAT")) for name, value in sorted(computed.items(), reverse=True)]
    engine = engine_class(tensors)
    trt = TensorApiEngine  # the module's TensorIOMode, for io_names
    trt_api.set_input_shape(engine, engine, "frame", (1, 120, 160, 3))
    specs = trt_api.io_specs(trt, engine, engine)
    frame, outputs = trt_api.check_io(specs, graph)
    assert frame.dtype == np.uint8 and sorted(o.name for o in outputs) == sorted(computed)
    buffers = {spec.name: 1000 + i for i, spec in enumerate(specs)}
    bindings = trt_api.bind(engine, engine, specs, buffers)
    if engine_class is BindingApiEngine:
        assert bindings == [buffers[name] for name, _, _ in tensors]
    else:
        assert bindings is None and engine.addresses == buffers
    # a missing gradient output, or one of another size, refuses the engine (ONNX Runtime runs it then)
    gradient = [name for name in computed if name not in graph.pilot["outputs"] and not name.startswith("mean_")][0]
    with pytest.raises(BackendUnavailable, match="%s missing" % gradient):
        trt_api.check_io([s for s in specs if s.name != gradient], graph)
    wrong = [TensorSpec(s.name, (1, 1, 1), s.dtype, False) if s.name == gradient else s for s in specs]
    with pytest.raises(BackendUnavailable, match=r"%s has shape \(1, 1, 1\)" % gradient):
        trt_api.check_io(wrong, graph)


def test_the_strongly_typed_builds_graph_declares_the_same_outputs():
    """TensorRT 11 compiles fp16_variant(graph) but the backend checks the engine against the graph:
    the variant keeps every output's name, fp32 type and shape."""
    real_data_or_skip()
    for method in (methods.INPUT_GRADIENT, methods.GRAD_CAM):
        graph = method_graph(REAL_PILOT, method)
        variant = trt_fp16.fp16_variant(graph.onnx_bytes)
        assert trt_api.declared_outputs(variant) == trt_api.declared_outputs(graph.onnx_bytes)


def test_the_float_input_rewrite_keeps_the_gradient_graphs_outputs():
    """TensorRT < 8.5 builds the graph with a float32 'frame' (onnx_proto's rewrite, no onnx package):
    the same outputs, bit for bit, for the same pixels."""
    real_data_or_skip()
    graph = method_graph(REAL_PILOT, methods.INPUT_GRADIENT)
    frames = real_frames(2)
    widened = trt_engine.with_float_input(graph.onnx_bytes)
    assert trt_api.declared_outputs(widened) == trt_api.declared_outputs(graph.onnx_bytes)
    original = run_onnxruntime(graph.onnx_bytes, {"frame": frames})
    floats = run_onnxruntime(widened, {"frame": frames.astype(np.float32)})
    for name in original:
        np.testing.assert_array_equal(floats[name], original[name])


# --- which graphs the backend takes ---------------------------------------------------------------------

def test_a_plain_pilots_gradient_graph_is_taken():
    real_data_or_skip()
    for path in REAL_PILOTS:
        assert refusal(method_graph(path, methods.INPUT_GRADIENT)) is None


@pytest.mark.slow
def test_categorical_is_taken_and_pilots_with_other_inputs_go_to_onnxruntime(tmp_path):
    from pilot_helpers import donkey_models

    models = donkey_models()
    path = str(tmp_path / "categorical.h5")
    models["categorical"]().save(path)
    categorical = graph_for(path, cache_dir=False, output="steering",
                            keep=methods.needed_outputs(methods.INPUT_GRADIENT, LEVELS))
    assert refusal(categorical) is None
    shapes = trt_api.expected_shapes(categorical)
    computed = run_onnxruntime(categorical.onnx_bytes, {"frame": np.zeros((1, 120, 160, 3), np.uint8)})
    assert {n: s for n, s in shapes.items() if n != "frame"} == {n: v.shape for n, v in computed.items()}
    assert shapes["angle_out"] == (1, 15) and "input_gradient" in shapes  # the bins, bound as they are
    for kind in ("memory", "behavior", "imu"):
        path = str(tmp_path / (kind + ".h5"))
        models[kind]().save(path)
        reason = refusal(graph_for(path, cache_dir=False, output="steering"))
        assert reason and reason.startswith("the TensorRT backend feeds the frame alone; this pilot also reads")


# --- the fp16 variant on real pilots: masks against fp32 --------------------------------------------------
# Measured on 16 real v1 frames (worst pixel | top-10 % IoU worst): vbp and grad-cam <= 0.001 | >= 0.998 on
# all three pilots; input-gradient 0.102 | 0.971 (mypilot.h5), 0.040 | 0.972, 0.062 | 0.992 (the .tflite).
# The input gradient's outliers are single pixels (mean |difference| <= 0.0007) where a trunk activation
# near 0 computed in fp16 flips a ReLU gate the fp32 backward pass then follows: with the trunk in fp32
# too the difference is exactly 0. So the selftest's fp16 overlap bound holds for every method, its
# worst-pixel bound (0.05) only for vbp and grad-cam.
PIXEL_BOUND = {methods.VBP: trt_compare.TOLERANCES["fp16"]["max_abs"],
               methods.GRAD_CAM: trt_compare.TOLERANCES["fp16"]["max_abs"],
               methods.INPUT_GRADIENT: None}
MEAN_DIFFERENCE = 1e-3  # of the [0, 1] mask, over all pixels


@pytest.mark.parametrize("method", sorted(PIXEL_BOUND))
@pytest.mark.parametrize("path", REAL_PILOTS, ids=os.path.basename)
def test_fp16_variant_masks_against_fp32(path, method):
    """The fp16 variant (trunk and pilot layers fp16, 'vbp/' and 'grad/' fp32) on ONNX Runtime's CPU:
    the method's masks against the fp32 graph's, by the selftest's own comparison."""
    import onnx
    from onnx import TensorProto, shape_inference

    real_data_or_skip()
    graph = method_graph(path, method)
    variant = trt_fp16.fp16_variant(graph.onnx_bytes)
    model = shape_inference.infer_shapes(onnx.load_from_string(variant))
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.value_info}
    grad_nodes = [n for n in model.graph.node if n.name.startswith("grad/")]
    assert (len(grad_nodes) > 0) == (method != methods.VBP)
    for node in grad_nodes:  # every float tensor a backward node reads or writes is fp32
        assert TensorProto.FLOAT16 not in {types.get(t) for t in list(node.input) + list(node.output)}, node.name
    frames = real_frames(16)
    masks = methods.MethodMasks(method, path)  # what the part and api.Saliency turn outputs into
    reference = masks(run_onnxruntime(graph.onnx_bytes, {"frame": frames}))
    candidate = masks(run_onnxruntime(variant, {"frame": frames}))
    summary = trt_compare.compare_masks(reference, candidate)
    assert summary["min_overlap"] >= trt_compare.TOLERANCES["fp16"]["min_overlap"], summary
    assert np.abs(reference - candidate).mean() <= MEAN_DIFFERENCE, summary
    if PIXEL_BOUND[method] is not None:
        assert summary["max_abs"] <= PIXEL_BOUND[method], summary


# --- every operator the graph uses, against TensorRT's ONNX parser ----------------------------------------
# Source: github.com/onnx/onnx-tensorrt, docs/operators.md at release/8.2-GA (85e79f6, "supports operators
# up to Opset 13"), release/8.5-GA (3b008c4), release/10.0-GA (eb43908) and release/10.1-GA (96e7811): each
# operator below is marked supported ("Y") in all four. The conditions are those files' notes and the
# importers' checks (builtin_op_importers.cpp at 8.2-GA, onnxOpImporters.cpp at 10.x): Conv/ConvTranspose
# 2-D with the weights an initializer (8.2's note), DepthToSpace mode DCR or CRD (both importers branch on
# exactly these), ConvTranspose sized by output_padding (no output_shape), Gemm's B an initializer with
# transB read (transA unused), the axes of Slice/Squeeze/ReduceSum (opset 13: an input) initializers
# (8.2's Slice/Squeeze notes; 10.0's ReduceSum note), Pad constant, Cast to float only (8.2 lists no UINT8
# Cast: TensorRT < 8.5 gets the float-input graph, where this Cast is float -> float).
FLOAT = 1


def _initializer(*indices):
    return lambda node, initializers, attrs: all(node.input[i] in initializers for i in indices
                                                  if i < len(node.input) and node.input[i])


def _two_d_weights(node, initializers, attrs):
    return node.input[1] in initializers and len(attrs.get("kernel_shape", [0, 0])) == 2


TENSORRT_8_2_OPERATORS = {
    "Abs": None, "Add": None, "And": None, "Concat": None, "Div": None, "Equal": None, "Expand": None,
    "Flatten": None, "Greater": None, "Identity": None, "Less": None, "Max": None, "Mul": None, "Relu": None,
    "Shape": None, "Sigmoid": None, "Sub": None, "Sum": None, "Transpose": None, "Where": None,
    "ReduceMax": lambda n, i, a: "axes" in a, "ReduceMin": lambda n, i, a: "axes" in a,
    "ReduceMean": lambda n, i, a: "axes" in a,
    "ReduceSum": _initializer(1), "Slice": _initializer(1, 2, 3, 4), "Squeeze": _initializer(1),
    "Reshape": _initializer(1), "Pad": lambda n, i, a: a.get("mode", b"constant") == b"constant" and n.input[1] in i,
    "Cast": lambda n, i, a: a["to"] == FLOAT,
    "Conv": _two_d_weights,
    "ConvTranspose": lambda n, i, a: _two_d_weights(n, i, a) and "output_shape" not in a,
    "DepthToSpace": lambda n, i, a: a.get("mode", b"DCR") in (b"DCR", b"CRD"),
    "Gemm": lambda n, i, a: not a.get("transA", 0) and n.input[1] in i and a.get("transB", 0) in (0, 1),
}


def test_every_operator_of_every_methods_graph_is_in_tensorrt_8_2s_parser():
    import onnx
    from onnx import helper

    real_data_or_skip()
    used = set()
    for path in REAL_PILOTS:
        for method in methods.METHODS:
            proto = onnx.load_from_string(method_graph(path, method).onnx_bytes)
            assert [(o.domain, o.version) for o in proto.opset_import] == [("", 13)]
            initializers = {t.name for t in proto.graph.initializer}
            for node in proto.graph.node:
                assert node.domain == "" and node.op_type in TENSORRT_8_2_OPERATORS, (node.name, node.op_type)
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                condition = TENSORRT_8_2_OPERATORS[node.op_type]
                assert condition is None or condition(node, initializers, attrs), (node.name, attrs)
                used.add(node.op_type)
    # the backward pass's own: polyphase transposed convs, relu masks, the dense layers' transposes
    assert {"DepthToSpace", "Greater", "Gemm", "Pad", "Slice", "Expand", "ReduceSum"} <= used


def test_the_fp16_variant_without_onnx_is_one_line_with_the_install_hint(monkeypatch):
    """Only TensorRT 11's fp16 build needs onnx; where it is missing (a car's runtime extra installs
    none) the build is refused with the hint, and the part falls back, instead of an ImportError."""
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # the injected fault: onnx not installed
    with pytest.raises(BackendUnavailable, match=r"needs the onnx package: pip install onnx"):
        trt_fp16.fp16_variant(b"")


@pytest.mark.parametrize("method, precision", [("vbp", "fp16"), ("grad-cam", "fp32"), ("input-gradient", "fp32")])
def test_the_engine_precision_follows_the_graph_unless_set(method, precision):
    """Unset, a gradient method's graph is built in fp32 (its fp16 trunk flips ReLU gates the fp32
    backward pass follows: the table above), VisualBackProp's in fp16; a setting wins."""
    from donkey_saliency.backends.trt_engine import EngineLoader, default_precision

    graph = method_graph(REAL_PILOT, method)
    assert default_precision(graph) == precision
    assert EngineLoader(graph, dict(precision="fp16")).options["precision"] == "fp16"
