"""Pilot files -> the format-free trunk description (:mod:`.trunk`), one reader per format.

``.h5``/``.keras`` via h5py (:mod:`.keras`), ``.tflite`` via a flatbuffer reader (:mod:`.tflite`):
neither needs TensorFlow. A SavedModel directory does (TensorFlow is the only thing that reads it).
"""
import os

from ..errors import ModelError
from .keras import keras_network, keras_trunk, read as read_keras
from .tflite import read_graph, tflite_network, tflite_trunk

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
TFLITE_SUFFIXES = (".tflite",)
# The linear pilot shipped with the package (scripts/train_demo_pilot.py): demo and bench drive with it.
DEMO_PILOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "demo_pilot.h5")


class Pilot(object):
    """A pilot file and its trunk."""

    def __init__(self, path, trunk, file_format, network=None):
        self.path = path
        self.trunk = trunk
        self.format = file_format  # 'keras' | 'tflite'
        self.network = network  # the layers past the trunk (network.py), when read with whole=True


def check_pilot_file(path):
    """Read a .tflite or Keras pilot file with the project's own bounded readers, ModelError when it is
    damaged: before TensorFlow (Lite), whose loaders do not verify files (a truncated .tflite can crash
    the process), sees it. Other files are left to their loaders."""
    path = os.fspath(path)
    lower = path.lower().rstrip("/")
    if lower.endswith(TFLITE_SUFFIXES):
        read_graph(path)
    elif lower.endswith(KERAS_SUFFIXES) and not os.path.isdir(path):
        read_keras(path)


def require_model_file(path):
    """``path`` as a str, or ModelError when nothing is there: the one check (and message) for every
    command given a pilot file, a SavedModel directory or an exported .onnx."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError("model file not found: %s" % path)
    return path


def load_pilot(path, whole=False):
    """Read a pilot file (.h5 .hdf5 .keras .tflite, or a SavedModel directory) and find its trunk;
    ``whole=True`` reads the rest of the network too (its outputs are the pilot's)."""
    path = require_model_file(path)
    lower = path.lower().rstrip("/")
    if lower.endswith(TFLITE_SUFFIXES):
        trunk = tflite_trunk(path)
        return Pilot(path, trunk, "tflite", tflite_network(path, trunk) if whole else None)
    if not os.path.isdir(path) and not lower.endswith(KERAS_SUFFIXES):
        raise ModelError("%s: unknown pilot format (expected .h5, .keras, .tflite or a SavedModel directory)"
                         % path)
    keras_file = read_keras(path)
    trunk = keras_trunk(keras_file)
    return Pilot(path, trunk, "keras", keras_network(keras_file, trunk) if whole else None)
