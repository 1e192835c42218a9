"""Pilot files -> the format-free trunk description (:mod:`.trunk`), one reader per format.

``.h5``/``.keras`` via h5py (:mod:`.keras`), ``.tflite`` via a flatbuffer reader (:mod:`.tflite`):
neither needs TensorFlow. A SavedModel directory does (TensorFlow is the only thing that reads it).
"""
import os

from ..errors import ModelError

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
TFLITE_SUFFIXES = (".tflite",)


class Pilot(object):
    """A pilot file and its trunk."""

    def __init__(self, path, trunk, file_format):
        self.path = path
        self.trunk = trunk
        self.format = file_format  # 'keras' | 'tflite'


def load_pilot(path):
    """Read a pilot file (.h5 .hdf5 .keras .tflite, or a SavedModel directory) and find its trunk."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError("model file not found: %s" % path)
    lower = path.lower().rstrip("/")
    if lower.endswith(TFLITE_SUFFIXES):
        from .tflite import tflite_trunk

        return Pilot(path, tflite_trunk(path), "tflite")
    if not os.path.isdir(path) and not lower.endswith(KERAS_SUFFIXES):
        raise ModelError("%s: unknown pilot format (expected .h5, .keras, .tflite or a SavedModel directory)"
                         % path)
    from .keras import keras_trunk, read

    return Pilot(path, keras_trunk(read(path)), "keras")
