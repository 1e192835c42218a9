"""Backend registry and ``auto`` selection.

Backends register by name; the classes live in modules that import nothing heavy at import
time, so listing and choosing a backend is cheap everywhere (a Raspberry Pi included).
"""
import logging

from ..errors import BackendUnavailable, first_line

logger = logging.getLogger(__name__)

# name -> "module:Class", imported on first use
_REGISTRY = {
    "onnxruntime": "donkey_saliency.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "donkey_saliency.backends.tensorrt:TensorRTBackend",
}
# ``auto`` tries these in order and takes the first that is available here.
AUTO_ORDER = ("tensorrt", "onnxruntime")
FALLBACK = "onnxruntime"  # what replaces a backend that fails (api.Saliency, activate_with_fallback)


def names():
    return ["auto"] + sorted(_REGISTRY)


def backend_class(name):
    if name not in _REGISTRY:
        raise BackendUnavailable("unknown backend %r (choose from: %s)" % (name, ", ".join(names())))
    import importlib

    module_name, class_name = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def choose(name="auto"):
    """Return (backend class, reason). ``auto`` logs one line saying which and why."""
    if name != "auto":
        cls = backend_class(name)
        ok, reason = cls.availability()
        if not ok:
            raise BackendUnavailable("backend %r is not usable here: %s" % (name, reason))
        return cls, "asked for"
    skipped = []
    for candidate in AUTO_ORDER:
        try:
            cls = backend_class(candidate)
            ok, reason = cls.availability()
        except Exception as error:  # a broken install must not stop the others being tried
            cls, ok, reason = None, False, "cannot import (%s)" % error
        if ok:
            why = "first available" + (" (%s)" % "; ".join(skipped) if skipped else "")
            logger.info("saliency backend: %s - %s", candidate, why)
            return cls, why
        skipped.append("%s: %s" % (candidate, reason))
    raise BackendUnavailable("no saliency backend is usable here: " + "; ".join(skipped))


def create(graph, name="auto", **options):
    """An inactive backend instance for ``graph``; call ``activate()`` in the inference thread."""
    cls, _ = choose(name)
    return cls(graph, **options)


def activate_with_fallback(graph, name="auto", options=None):
    """Create and activate the chosen backend in this thread; if that fails and it was not
    ONNX Runtime, log one warning and return an activated ONNX Runtime backend instead."""
    options = dict(options or {})
    backend = None
    try:
        backend = create(graph, name, **options)
        backend.activate()
        return backend
    except Exception as error:
        # The backend that really failed ('auto' may have resolved to ONNX Runtime: no second try).
        failed = backend.name if backend is not None else name
        if failed == FALLBACK:
            raise
        logger.warning("saliency backend %s failed (%s); falling back to %s", failed, first_line(error, None),
                       FALLBACK)
    backend = backend_class(FALLBACK)(graph, **options)
    backend.activate()
    return backend
