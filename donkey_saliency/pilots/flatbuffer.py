"""A small, bounds-checked reader of FlatBuffers tables (enough for a TFLite model's schema).

Every read checks that it stays inside the file, so a truncated or damaged file raises
:class:`FlatbufferError` instead of reading garbage (TFLite's own C++ loader does not verify files).
Fields are addressed by their index in the schema (``table.scalar(3, "<i")`` is field 3).
"""
import struct

import numpy as np


class FlatbufferError(ValueError):
    """The bytes are not a valid flatbuffer of the expected shape."""


class Table(object):
    def __init__(self, data, position):
        self.data = data
        self.position = position
        vtable = position - _read(data, position, "<i")
        self._vtable_size = _read(data, vtable, "<H")
        if self._vtable_size < 4 or self._vtable_size % 2:
            raise FlatbufferError("bad vtable at %d" % vtable)
        _check(data, vtable, self._vtable_size)
        self._vtable = vtable

    @classmethod
    def root(cls, data):
        return cls(data, _read(data, 0, "<I"))

    def _field(self, index):
        """Absolute position of field ``index``, or None when the field is absent."""
        entry = 4 + 2 * index
        if entry >= self._vtable_size:
            return None
        offset = _read(self.data, self._vtable + entry, "<H")
        return self.position + offset if offset else None

    def scalar(self, index, fmt, default=0):
        position = self._field(index)
        return default if position is None else _read(self.data, position, fmt)

    def _target(self, index):
        position = self._field(index)
        if position is None:
            return None
        return position + _read(self.data, position, "<I")

    def table(self, index):
        target = self._target(index)
        return None if target is None else Table(self.data, target)

    def string(self, index):
        target = self._target(index)
        if target is None:
            return ""
        length = _read(self.data, target, "<I")
        _check(self.data, target + 4, length)
        return bytes(self.data[target + 4:target + 4 + length]).decode("utf-8", "replace")

    def _vector(self, index):
        target = self._target(index)
        if target is None:
            return None, 0
        return target + 4, _read(self.data, target, "<I")

    def tables(self, index):
        start, count = self._vector(index)
        if start is None:
            return []
        _check(self.data, start, 4 * count)
        return [Table(self.data, start + 4 * i + _read(self.data, start + 4 * i, "<I")) for i in range(count)]

    def array(self, index, dtype):
        """A vector of scalars as a NumPy array (a copy), or None when absent."""
        start, count = self._vector(index)
        if start is None:
            return None
        dtype = np.dtype(dtype).newbyteorder("<")
        _check(self.data, start, count * dtype.itemsize)
        return np.frombuffer(self.data, dtype=dtype, count=count, offset=start).copy()

    def has(self, index):
        return self._field(index) is not None


def _check(data, start, length):
    if start < 0 or length < 0 or start + length > len(data):
        raise FlatbufferError("reads past the end of the file (truncated?)")


def _read(data, position, fmt):
    _check(data, position, struct.calcsize(fmt))
    return struct.unpack_from(fmt, data, position)[0]
