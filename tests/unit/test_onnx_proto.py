"""onnx_proto.py writes the bytes onnx's own serializer writes, and onnx.checker accepts them."""
import types

import numpy as np
import onnx
import pytest
from onnx import helper as onnx_helper
from onnx import numpy_helper

from donkey_saliency.compute import graph, onnx_proto

ONNX_BACKED = types.SimpleNamespace(
    make_node=onnx_helper.make_node, make_tensor_value_info=onnx_helper.make_tensor_value_info,
    make_graph=onnx_helper.make_graph, make_model=onnx_helper.make_model, make_opsetid=onnx_helper.make_opsetid,
    set_model_props=onnx_helper.set_model_props, from_array=numpy_helper.from_array, TensorProto=onnx.TensorProto)


def built_with(module, trunk, monkeypatch, **options):
    monkeypatch.setattr(graph, "helper", module)
    return graph.build(trunk, **options).SerializeToString()


@pytest.mark.parametrize("options", [dict(), dict(features=True), dict(float_input=True)])
def test_the_fused_graph_is_byte_identical_to_onnx_s_and_checks(tiny_trunk, monkeypatch, options):
    ours = built_with(onnx_proto, tiny_trunk, monkeypatch, **options)
    theirs = built_with(ONNX_BACKED, tiny_trunk, monkeypatch, **options)
    assert ours == theirs
    onnx.checker.check_model(onnx.load_from_string(ours), full_check=True)


def test_every_attribute_kind_and_dtype_matches_onnx():
    attrs = dict(alpha=0.2, axis=-1, keepdims=1, mode="constant", perm=[0, 3, 1, 2], pads=[-1, 0, 2 ** 40],
                 scales=[0.5, 2.0], names=["a", "b"], skipped=None)
    ours = onnx_proto.make_node("Op", ["x", "y"], ["z"], name="n", domain="d", **attrs).SerializeToString()
    theirs = onnx_helper.make_node("Op", ["x", "y"], ["z"], name="n", domain="d", **attrs).SerializeToString()
    assert ours == theirs
    for dtype in (np.float32, np.uint8, np.int64, np.int32, np.float16, np.float64, np.bool_):
        array = np.arange(6).reshape(2, 3).astype(dtype)
        assert (onnx_proto.from_array(array, "t").SerializeToString()
                == numpy_helper.from_array(array, "t").SerializeToString())
    scalar = np.array(255.0, np.float32)
    assert onnx_proto.from_array(scalar, "s").SerializeToString() == numpy_helper.from_array(scalar, "s").SerializeToString()
    for shape in (["N", 120, 160], [], [None, 3], None):
        assert (onnx_proto.make_tensor_value_info("v", 1, shape).SerializeToString()
                == onnx_helper.make_tensor_value_info("v", 1, shape).SerializeToString())


def test_metadata_reads_back_without_onnx(tiny_graph):
    props = onnx_proto.metadata_props(tiny_graph.onnx_bytes)
    assert props == {p.key: p.value for p in onnx.load_from_string(tiny_graph.onnx_bytes).metadata_props}
    assert graph.META_KEY in props


@pytest.mark.parametrize("data", [b"\x0a\x05ab", b"\xff" * 12, b"\x0f"])
def test_malformed_bytes_are_a_value_error(data):
    with pytest.raises(ValueError):
        onnx_proto.metadata_props(data)


def test_values_without_an_onnx_type_are_refused():
    with pytest.raises(ValueError):
        onnx_proto.make_node("Op", [], ["y"], empty=[])
    with pytest.raises(TypeError):
        onnx_proto.from_array(np.array(["text"]), "t")


def test_a_float_input_rewrite_equals_onnx_s(tiny_graph):
    """What TensorRT < 8.5 needs (backends/trt_engine.with_float_input), without the onnx package."""
    proto = onnx.load_from_string(tiny_graph.onnx_bytes)
    proto.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    rewritten = onnx_proto.with_input_type(tiny_graph.onnx_bytes, graph.INPUT_NAME, onnx_proto.TensorProto.FLOAT)
    assert rewritten == proto.SerializeToString()
    with pytest.raises(ValueError):
        onnx_proto.with_input_type(tiny_graph.onnx_bytes, "absent", onnx_proto.TensorProto.FLOAT)
