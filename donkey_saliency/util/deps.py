"""Optional libraries, imported where they are used, through one helper: ``require(module)`` gives the
module, or MissingLibrary whose one line says what is missing and how to get it - the same style of
hint for every library. ``HINTS`` is the one home of those hints.
"""
import importlib

from ..errors import MissingLibrary, first_line

# top-level module -> (what it is, how to get it)
HINTS = {
    "cv2": ("OpenCV (cv2)", "a car uses its own (donkeycar's install brings one, a Jetson has JetPack's), "
                            "elsewhere: pip install 'donkey-saliency[opencv]'"),
    "onnxruntime": ("ONNX Runtime (onnxruntime)", "pip install onnxruntime (or onnxruntime-gpu for the CUDA/TensorRT "
                                                  "providers)"),
    "h5py": ("h5py, which reads Keras pilots", "pip install 'donkey-saliency[runtime]'"),
    "tensorflow": ("TensorFlow", "pip install tensorflow; only SavedModel pilots and the laptop tools' references "
                                 "need it"),
    "tornado": ("Tornado, the web server", "donkeycar's install brings it, elsewhere: pip install tornado"),
    "onnx": ("the onnx package", "pip install onnx"),
    "tensorrt": ("TensorRT", "a Jetson has it with JetPack (python3-libnvinfer), elsewhere: pip install tensorrt"),
    "pycuda": ("PyCUDA", "pip install pycuda (with the CUDA toolkit's nvcc on PATH)"),
    "matplotlib": ("matplotlib, which draws evaluate's curves", "pip install 'donkey-saliency[dev]'"),
}


def require(module, hint=None):
    """``import module``, or MissingLibrary: '<what> is not importable (<the import error>); <how to get
    it>' (``hint`` overrides HINTS' how-to)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        what, how = HINTS.get(module.split(".")[0], (module, "pip install %s" % module.split(".")[0]))
        raise MissingLibrary("%s is not importable (%s); %s" % (what, first_line(error), hint or how))
