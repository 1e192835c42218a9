"""donkey-saliency: live VisualBackProp saliency for Donkeycar pilots.

``import donkey_saliency`` needs numpy alone; ONNX Runtime, TensorRT, TensorFlow and donkeycar
are imported where they are used.
"""
__version__ = "0.1.0"


def load(model_path, backend="auto", **options):
    """A ready :class:`~donkey_saliency.api.Saliency` for a pilot file; ``.mask(rgb)`` gives the mask."""
    from .api import Saliency

    return Saliency.open(model_path, backend=backend, **options)


def SaliencyPart(model_path, backend="auto", **options):  # noqa: N802 - reads like the class it makes
    from .part import SaliencyPart as _Part

    return _Part(model_path, backend=backend, **options)


def add_saliency(V, cfg, ctr=None, inputs=None, types=None, model_path=None):
    """The manage.py helper: adds the part (and web routes, and tub keys) as ``SALIENCY_*`` says."""
    from .vehicle import add_saliency as _add

    return _add(V, cfg, ctr=ctr, inputs=inputs, types=types, model_path=model_path)


__all__ = ["load", "SaliencyPart", "add_saliency", "__version__"]
