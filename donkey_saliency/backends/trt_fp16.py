"""Which part of the graph runs in fp16 on TensorRT, and the graph's fp16 variant for TensorRT that
has only strongly typed networks.

The conv trunk (and the pilot's own layers) may run in fp16; the nodes named with a prefix in
``FP32_PREFIXES`` may not: graph.py names the VisualBackProp head and the uint8 -> /255 prologue
'vbp/', and the backward pass of the gradient methods 'grad/'. Each head level sums up to k x k
overlapping up-sampled values and multiplies by the next level's map, over five levels; a backward
pass multiplies long chains of small numbers: fp16's 11-bit mantissa loses the small values that
decide the mask's shape. Both are ~1 % of the graph's work.

Two ways TensorRT is told so, chosen in ``trt_engine`` by what the installed bindings have:
- weakly typed networks (TensorRT 8.x, 10): the fp16 builder flag, and every such layer pinned to
  fp32 by name (``trt_engine.pin_head_precision``);
- strongly typed networks only (TensorRT 11; 10 deprecates the other kind): the graph itself carries
  the precision: :func:`fp16_variant` gives the same graph with the trunk's weights and maps in fp16
  and explicit Casts where data crosses between fp16 and fp32 nodes. It runs on ONNX Runtime too,
  which is how it is checked without a GPU.

Valid Python 3.6 (JetPack 4.6's Python); onnx is imported where used, and only this variant needs it:
without it an fp16 build on such a TensorRT is refused with the install hint (and the car falls back).
"""
from ..errors import BackendUnavailable

FP32_PREFIXES = ("vbp/", "grad/")  # the one home of these prefixes for every precision decision
ONNX_HINT = ("an fp16 engine on a TensorRT with only strongly typed networks (11) is built from the graph's "
             "fp16 variant, which needs the onnx package: pip install onnx (or build with --precision fp32)")


def is_fp32_name(name):
    """Whether a node (or a TensorRT layer or tensor named after one) must compute in fp32."""
    return str(name).startswith(FP32_PREFIXES)


def _same_type_inputs(node, schema):
    """Indices of ``node``'s inputs that share the type variable of its first input (the data type
    'T'): those follow the data into fp16. Others keep their own type (Resize's scales stay fp32)."""
    formal = list(schema.inputs)
    if not formal:
        return []

    def type_str(index):
        return formal[min(index, len(formal) - 1)].type_str

    data = type_str(0)
    return [i for i in range(len(node.input)) if node.input[i] and type_str(i) == data]


def fp16_variant(onnx_bytes):
    """The graph ``onnx_bytes`` with every node not named with an ``FP32_PREFIXES`` prefix computing
    in fp16, and the rest, the graph's inputs and its outputs as they were (fp32 outputs stay fp32).
    Returns serialized ONNX bytes; raises ValueError for a graph this pass cannot rewrite."""
    import numpy as np
    try:
        import onnx
        from onnx import TensorProto, defs, helper, numpy_helper, shape_inference
    except ImportError as error:
        raise BackendUnavailable("%s (%s)" % (ONNX_HINT, error))

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    opset = max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] or [0])
    inferred = shape_inference.infer_shapes(model).graph
    types = {}
    for info in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
        types[info.name] = info.type.tensor_type.elem_type
    initializers = {t.name: t for t in graph.initializer}
    for tensor in graph.initializer:
        types[tensor.name] = tensor.data_type
    output_names = set(o.name for o in graph.output)

    half_tensors = set()  # tensors that are fp16 in the variant
    renamed = {}  # a graph output made by an fp16 node -> the name of its fp16 value
    casts = {}  # (tensor, to) -> the Cast's output
    half_copies = {}  # fp32 initializer -> its fp16 copy
    nodes, new_initializers = [], []

    def cast(tensor, to):
        key = (tensor, to)
        if key not in casts:
            suffix = "fp16" if to == HALF else "fp32"
            casts[key] = "fp16/%s/as_%s" % (tensor, suffix)
            nodes.append(helper.make_node("Cast", [tensor], [casts[key]], name="fp16/Cast_%s_%s" % (suffix, tensor),
                                          to=to))
        return casts[key]

    def half_initializer(name):
        if name not in half_copies:
            values = numpy_helper.to_array(initializers[name]).astype(np.float16)
            half_copies[name] = "fp16/" + name
            new_initializers.append(numpy_helper.from_array(values, half_copies[name]))
        return half_copies[name]

    for node in graph.node:
        node = _copy(node)
        if node.domain not in ("", "ai.onnx"):
            raise ValueError("fp16 variant: node %s is in domain %r" % (node.name, node.domain))
        if is_fp32_name(node.name):
            for i, name in enumerate(node.input):  # a renamed graph output is fp32 under its own name
                node.input[i] = cast(name, FLOAT) if name in half_tensors else name
            nodes.append(node)
            continue
        schema = defs.get_schema(node.op_type, opset, "")
        follow = set(_same_type_inputs(node, schema))
        for i, name in enumerate(node.input):
            name = renamed.get(name, name)
            if i in follow and name not in half_tensors and types.get(name) == FLOAT:
                name = half_initializer(name) if name in initializers else cast(name, HALF)
            node.input[i] = name
        if node.op_type == "Cast" and _attribute(node, "to") == FLOAT:
            _set_attribute(node, "to", HALF)
        if node.op_type == "Constant":
            _constant_to_half(node, numpy_helper)
        made_half = []
        for j, name in enumerate(node.output):
            if types.get(name) == FLOAT:
                if name in output_names:
                    renamed[name] = node.output[j] = "fp16/" + name
                half_tensors.add(node.output[j])
                made_half.append(name)
        nodes.append(node)
        for name in made_half:  # an fp32 graph output from an fp16 node: cast back under its own name
            if name in renamed:
                nodes.append(helper.make_node("Cast", [renamed[name]], [name], name="fp16/Cast_out_%s" % name,
                                              to=FLOAT))

    used = set(name for node in nodes for name in node.input)
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [t for t in graph.initializer if t.name in used] + new_initializers
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]  # the old types no longer hold; consumers infer them again
    onnx.checker.check_model(model)
    shape_inference.infer_shapes(model, strict_mode=True)
    return model.SerializeToString()


def _copy(node):
    from onnx import NodeProto

    copy = NodeProto()
    copy.CopyFrom(node)
    return copy


def _attribute(node, name):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return None


def _set_attribute(node, name, value):
    from onnx import helper

    for index, attribute in enumerate(node.attribute):
        if attribute.name == name:
            node.attribute[index].CopyFrom(helper.make_attribute(name, value))


def _constant_to_half(node, numpy_helper):
    import numpy as np
    from onnx import TensorProto

    for attribute in node.attribute:
        if attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT:
            values = numpy_helper.to_array(attribute.t).astype(np.float16)
            attribute.t.CopyFrom(numpy_helper.from_array(values, attribute.t.name))
