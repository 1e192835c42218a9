"""The ONNX ModelProto subset graph.py writes, serialized in pure Python: no ``onnx``, no ``protobuf``.

A car then needs only onnxruntime (which takes the bytes) beside what it has: the ``onnx`` package
pins protobuf and, through ml_dtypes, numpy ranges that clash with the car's TensorFlow (protobuf<3.20
on Bullseye and JetPack 5) or have no wheel for the car's Python (3.13). The functions mirror the
``onnx.helper`` / ``numpy_helper`` calls graph.py makes and write the same bytes as onnx's own
serializer (fields in field-number order, proto2's unpacked repeated scalars); the tests hold the two
byte-equal and run onnx.checker on the result. Field numbers are onnx.proto's.
"""
import numbers
import struct

import numpy as np


class TensorProto(object):
    """onnx.TensorProto.DataType values."""
    FLOAT = 1
    UINT8 = 2
    INT8 = 3
    UINT16 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    BOOL = 9
    FLOAT16 = 10
    DOUBLE = 11
    UINT32 = 12
    UINT64 = 13


_DATA_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.uint8): TensorProto.UINT8,
               np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint16): TensorProto.UINT16,
               np.dtype(np.int16): TensorProto.INT16, np.dtype(np.int32): TensorProto.INT32,
               np.dtype(np.int64): TensorProto.INT64, np.dtype(np.bool_): TensorProto.BOOL,
               np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.float64): TensorProto.DOUBLE,
               np.dtype(np.uint32): TensorProto.UINT32, np.dtype(np.uint64): TensorProto.UINT64}

# AttributeProto.AttributeType
_FLOAT, _INT, _STRING, _TENSOR, _FLOATS, _INTS, _STRINGS = 1, 2, 3, 4, 6, 7, 8


# --- wire format ----------------------------------------------------------------------------------

def _varint(value):
    value &= (1 << 64) - 1  # negative int64: ten bytes of two's complement, as protobuf writes it
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(field, value):
    return _varint(field << 3) + _varint(int(value))


def _bytes(field, data):
    if not isinstance(data, bytes):
        data = data.encode("utf-8")
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _float(field, value):
    return _varint(field << 3 | 5) + struct.pack("<f", value)


def _message(field, message):
    return _bytes(field, message.SerializeToString())


# --- messages -------------------------------------------------------------------------------------

class Tensor(object):
    """TensorProto with raw_data (what numpy_helper.from_array writes for numeric arrays)."""

    def __init__(self, array, name):
        array = np.asarray(array)
        if array.dtype not in _DATA_TYPES:
            raise TypeError("no ONNX tensor type for numpy %s" % array.dtype)
        self.dims = list(array.shape)
        self.data_type = _DATA_TYPES[array.dtype]
        self.name = name
        self.raw_data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()

    def SerializeToString(self):
        return (b"".join(_int(1, d) for d in self.dims) + _int(2, self.data_type) + _bytes(8, self.name)
                + _bytes(9, self.raw_data))


class Attribute(object):
    """AttributeProto of the kinds onnx.helper.make_attribute infers from a Python value."""

    def __init__(self, name, value):
        self.name = name
        if isinstance(value, Tensor):
            self.type, self.value = _TENSOR, value
        elif isinstance(value, (str, bytes)):
            self.type, self.value = _STRING, value
        elif isinstance(value, numbers.Integral):
            self.type, self.value = _INT, int(value)
        elif isinstance(value, numbers.Real):
            self.type, self.value = _FLOAT, float(value)
        else:
            values = list(value)
            if not values:
                raise ValueError("attribute %s: an empty list has no ONNX type" % name)
            if all(isinstance(v, numbers.Integral) for v in values):
                self.type, self.value = _INTS, [int(v) for v in values]
            elif all(isinstance(v, numbers.Real) for v in values):
                self.type, self.value = _FLOATS, [float(v) for v in values]
            elif all(isinstance(v, (str, bytes)) for v in values):
                self.type, self.value = _STRINGS, values
            else:
                raise ValueError("attribute %s: cannot write %r" % (name, value))

    def SerializeToString(self):
        body = {_FLOAT: lambda v: _float(2, v), _INT: lambda v: _int(3, v), _STRING: lambda v: _bytes(4, v),
                _TENSOR: lambda v: _message(5, v),
                _FLOATS: lambda v: b"".join(_float(7, x) for x in v),
                _INTS: lambda v: b"".join(_int(8, x) for x in v),
                _STRINGS: lambda v: b"".join(_bytes(9, x) for x in v)}[self.type](self.value)
        return _bytes(1, self.name) + body + _int(20, self.type)


class Node(object):
    """NodeProto; ``input`` and ``output`` are plain lists (graph.py renames tensors in them)."""

    def __init__(self, op_type, inputs, outputs, name=None, domain=None, **attrs):
        self.op_type = op_type
        self.input = list(inputs)
        self.output = list(outputs)
        self.name = name
        self.domain = domain
        self.attribute = [Attribute(k, v) for k, v in sorted(attrs.items()) if v is not None]

    def SerializeToString(self):
        return (b"".join(_bytes(1, n) for n in self.input) + b"".join(_bytes(2, n) for n in self.output)
                + (_bytes(3, self.name) if self.name is not None else b"") + _bytes(4, self.op_type)
                + b"".join(_message(5, a) for a in self.attribute)
                + (_bytes(7, self.domain) if self.domain is not None else b""))


class ValueInfo(object):
    """ValueInfoProto of a tensor: element type and shape (ints are sizes, strings symbolic)."""

    def __init__(self, name, elem_type, shape):
        self.name, self.elem_type, self.shape = name, elem_type, shape

    def SerializeToString(self):
        tensor_type = _int(1, self.elem_type)
        if self.shape is not None:
            dims = b"".join(_bytes(1, b"" if d is None else _int(1, d) if isinstance(d, numbers.Integral)
                                   else _bytes(2, d)) for d in self.shape)
            tensor_type += _bytes(2, dims)
        return _bytes(1, self.name) + _bytes(2, _bytes(1, tensor_type))


class Graph(object):
    def __init__(self, nodes, name, inputs, outputs, initializer=None):
        self.node, self.name = list(nodes), name
        self.input, self.output, self.initializer = list(inputs), list(outputs), list(initializer or [])

    def SerializeToString(self):
        return (b"".join(_message(1, n) for n in self.node) + _bytes(2, self.name)
                + b"".join(_message(5, t) for t in self.initializer)
                + b"".join(_message(11, v) for v in self.input) + b"".join(_message(12, v) for v in self.output))


class OperatorSetId(object):
    def __init__(self, domain, version):
        self.domain, self.version = domain, version

    def SerializeToString(self):
        return _bytes(1, self.domain) + _int(2, self.version)


class StringStringEntry(object):
    def __init__(self, key, value):
        self.key, self.value = key, value

    def SerializeToString(self):
        return _bytes(1, self.key) + _bytes(2, self.value)


class Model(object):
    """ModelProto: ir_version, producer, graph, opset imports and metadata_props."""

    def __init__(self, graph, opset_imports, producer_name=None, producer_version=None, ir_version=7):
        self.graph, self.opset_import = graph, list(opset_imports)
        self.producer_name, self.producer_version, self.ir_version = producer_name, producer_version, ir_version
        self.metadata_props = []

    def SerializeToString(self):
        return (_int(1, self.ir_version)
                + (_bytes(2, self.producer_name) if self.producer_name is not None else b"")
                + (_bytes(3, self.producer_version) if self.producer_version is not None else b"")
                + _message(7, self.graph) + b"".join(_message(8, o) for o in self.opset_import)
                + b"".join(_message(14, e) for e in self.metadata_props))


# --- the onnx.helper / numpy_helper calls graph.py makes -------------------------------------------

def from_array(array, name):
    return Tensor(array, name)


def make_node(op_type, inputs, outputs, name=None, domain=None, **attrs):
    return Node(op_type, inputs, outputs, name=name, domain=domain, **attrs)


def make_tensor_value_info(name, elem_type, shape):
    return ValueInfo(name, elem_type, shape)


def make_graph(nodes, name, inputs, outputs, initializer=None):
    return Graph(nodes, name, inputs, outputs, initializer)


def make_opsetid(domain, version):
    return OperatorSetId(domain, version)


def make_model(graph, opset_imports, producer_name=None, producer_version=None):
    return Model(graph, opset_imports, producer_name, producer_version)


def set_model_props(model, props):
    model.metadata_props = [StringStringEntry(k, v) for k, v in props.items()]


# --- reading back what a saved graph says about itself ---------------------------------------------

def _read_varint(data, i):
    """(value, index after it) of the varint at data[i]."""
    shift = result = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated or malformed protobuf")
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, i


def _fields(data):
    """(field number, wire type, value) of one message's top-level fields; value is bytes for
    length-delimited and fixed-width fields, an int for varints."""
    data, i = memoryview(data), 0
    while i < len(data):
        tag, i = _read_varint(data, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire in (1, 2, 5):
            if wire == 2:
                size, i = _read_varint(data, i)
            else:
                size = 8 if wire == 1 else 4
            if i + size > len(data):
                raise ValueError("truncated protobuf")
            value, i = bytes(data[i:i + size]), i + size
        else:
            raise ValueError("unsupported protobuf wire type %d" % wire)
        yield field, wire, value


def metadata_props(data):
    """{key: value} of a serialized ModelProto's metadata_props (field 14)."""
    props = {}
    for field, wire, value in _fields(data):
        if field == 14 and wire == 2:
            entry = {f: v.decode("utf-8") for f, w, v in _fields(value) if w == 2}
            props[entry.get(1, "")] = entry.get(2, "")
    return props


def _rewrite(data, path, change):
    """``data`` with the submessage at ``path`` replaced by ``change(submessage)``. ``path`` is a list
    of (field number, select) where ``select(submessage bytes)`` picks which repeated entry to enter;
    the other fields keep their bytes and order."""
    (field, select), rest = path[0], path[1:]
    out, found = [], False
    for number, wire, value in _fields(data):
        if number == field and wire == 2 and not found and select(value):
            found = True
            value = _rewrite(value, rest, change) if rest else change(value)
        out.append(_bytes(number, value) if wire == 2 else _raw_field(number, wire, value))
    if not found:
        raise ValueError("no field %d to rewrite" % field)
    return b"".join(out)


def _raw_field(number, wire, value):
    return _varint(number << 3 | wire) + (_varint(value) if wire == 0 else value)


def with_input_type(data, input_name, elem_type):
    """A serialized model whose graph input ``input_name`` has element type ``elem_type`` (TensorRT
    before 8.5 takes no uint8 input: the graph's first node casts it anyway)."""
    def named(value):
        return any(f == 1 and v.decode("utf-8") == input_name for f, w, v in _fields(value) if w == 2)

    def anything(value):
        return True

    def retype(tensor_type):
        return b"".join(_int(1, elem_type) if f == 1 and w == 0 else
                        (_bytes(f, v) if w == 2 else _raw_field(f, w, v)) for f, w, v in _fields(tensor_type))

    return _rewrite(data, [(7, anything), (11, named), (2, anything), (1, anything)], retype)


def declared_outputs(onnx_bytes):
    """[(name, dims)] of a serialized ONNX model's graph outputs, in graph order; a dim is an int, or
    None where it is symbolic ('N') or not given. Read from the bytes: the car has no ``onnx``."""
    def message(data, number):
        return [value for field, wire, value in _fields(data) if field == number and wire == 2]

    outputs = []
    for graph in message(onnx_bytes, 7):  # ModelProto.graph
        for info in message(graph, 12):  # GraphProto.output: ValueInfoProto
            name = message(info, 1)[0].decode("utf-8")
            dims = []
            for tensor_type in [t for kind in message(info, 2) for t in message(kind, 1)]:  # TypeProto.tensor_type
                for shape in message(tensor_type, 2):
                    for dim in message(shape, 1):
                        sizes = [v for f, w, v in _fields(dim) if f == 1 and w == 0]  # dim_value, else dim_param
                        dims.append(sizes[0] if sizes else None)
            outputs.append((name, dims))
    return outputs
