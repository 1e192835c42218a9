"""backends: the registry, ``auto``, and the fall-back to ONNX Runtime when a backend cannot start."""
import logging
import sys

import numpy as np
import pytest

from donkey_saliency import backends
from donkey_saliency.backends.base import Backend
from donkey_saliency.backends.onnxruntime import OnnxRuntimeBackend
from donkey_saliency.errors import BackendUnavailable


class FailingBackend(Backend):
    """Fault injection: a backend whose start-up fails (as a TensorRT build can)."""
    name = "failing"

    def _activate(self):
        raise RuntimeError("no engine today\nsecond line")


@pytest.fixture
def failing(monkeypatch):
    monkeypatch.setitem(backends._REGISTRY, "failing", "%s:FailingBackend" % __name__)
    assert sys.modules[__name__].FailingBackend is FailingBackend


def test_the_registry_names_its_backends_and_refuses_others():
    assert backends.names() == ["auto", "onnxruntime", "tensorrt"]
    assert backends.choose("onnxruntime") == (OnnxRuntimeBackend, "asked for")
    with pytest.raises(BackendUnavailable, match="unknown backend 'cuda'"):
        backends.choose("cuda")


def test_auto_takes_the_first_available_backend():
    cls, why = backends.choose("auto")
    assert cls.availability()[0] and why.startswith("first available")


def test_a_backend_that_fails_to_start_falls_back_to_onnxruntime(failing, tiny_graph, caplog):
    frame = np.zeros((1, 4, 4, 1), np.uint8)
    frame[0, 0, 0] = frame[0, 3, 3] = 255
    with caplog.at_level(logging.WARNING, logger="donkey_saliency.backends"):
        backend = backends.activate_with_fallback(tiny_graph, "failing")
    try:
        assert isinstance(backend, OnnxRuntimeBackend)
        assert [r.getMessage() for r in caplog.records] == [
            "saliency backend failing failed (no engine today); falling back to onnxruntime"]
        with backends.create(tiny_graph, "onnxruntime") as direct:
            np.testing.assert_array_equal(backend.infer(frame)["mask"], direct.infer(frame)["mask"])
    finally:
        backend.close()


def test_onnxruntime_failing_is_not_retried(monkeypatch, tiny_graph):
    monkeypatch.setattr(OnnxRuntimeBackend, "_activate", FailingBackend._activate)
    with pytest.raises(RuntimeError, match="no engine today"):
        backends.activate_with_fallback(tiny_graph, "onnxruntime")
