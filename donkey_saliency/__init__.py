"""donkey-saliency: live VisualBackProp saliency for Donkeycar pilots.

``import donkey_saliency`` needs numpy alone; ONNX Runtime, TensorRT, TensorFlow and donkeycar
are imported where they are used.
"""
from .version import __version__


def load(model_path, backend="auto", **options):
    """A ready :class:`~donkey_saliency.api.Saliency` for a pilot file; ``.mask(rgb)`` gives the mask."""
    from .api import Saliency

    return Saliency.open(model_path, backend=backend, **options)


def SaliencyPart(model_path, backend="auto", **options):  # noqa: N802 - reads like the class it makes
    from .car.part import SaliencyPart as _Part

    return _Part(model_path, backend=backend, **options)


def add_saliency(V, cfg, ctr=None, inputs=None, types=None, model_path=None):
    """The manage.py helper: adds the part (and web routes, and tub keys) as ``SALIENCY_*`` says.
    Never raises: whatever fails (a library, the pilot, a backend, the web routes) is one ERROR line
    saying how to fix it, the vehicle's parts are left as they were, and it returns None: the car
    drives without saliency."""
    try:
        from .car.vehicle import add_saliency as _add
    except Exception as error:  # noqa: BLE001 - the car must drive on (a library the wiring needs is missing)
        import logging

        from .errors import setup_failure

        logging.getLogger(__name__).error("saliency: off, the car drives without it: %s", setup_failure(error))
        return None
    return _add(V, cfg, ctr=ctr, inputs=inputs, types=types, model_path=model_path)


def shared_pilot(model_path, model_type=None, cfg=None, backend="auto", **options):
    """donkeycar's pilot object for ``model_type`` (its class, its ``run()``) running on the
    :func:`~donkey_saliency.car.interpreter.SaliencyInterpreter`: one pass gives the pilot's outputs and the
    mask, read as ``pilot.interpreter.latest_mask`` (float32 H x W)."""
    from .car.interpreter import pilot_on_saliency_interpreter

    return pilot_on_saliency_interpreter(model_path, model_type, cfg=cfg, backend=backend, **options)


__all__ = ["load", "SaliencyPart", "add_saliency", "shared_pilot", "__version__"]
