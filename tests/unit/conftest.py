"""The unit tier (``make test-fast``): pure functions and small classes, on NumPy, OpenCV, onnx and
ONNX Runtime only - no TensorFlow, no donkeycar, no browser, no server. Run alone, it fails if one of
its tests pulled one of those in, so that it stays a tier that runs in seconds."""
import sys

import pytest

HEAVY = ("tensorflow", "keras", "donkeycar", "tornado")


@pytest.fixture
def tiny_trunk():
    """A 4x4 grayscale pilot trunk, one 3x3 conv of ones then relu: built without TensorFlow."""
    import numpy as np

    from donkey_saliency.pilots.trunk import Activation, TrunkBuilder

    builder = TrunkBuilder((4, 4, 1))
    builder.conv("c1", np.ones((1, 1, 3, 3), np.float32), None, (1, 1), "valid")
    builder.pointwise(Activation("relu", None))
    return builder.finish("hand")


@pytest.fixture
def tiny_graph(tiny_trunk):
    from donkey_saliency.compute import graph

    return graph.SaliencyGraph(graph.build(tiny_trunk).SerializeToString(), tiny_trunk.input_shape,
                               tiny_trunk.layer_names, [c.out_hw for c in tiny_trunk.convs])


def pytest_sessionfinish(session, exitstatus):
    items = getattr(session, "items", None) or []
    if not items or not all("/tests/unit/" in str(item.fspath) for item in items):
        return  # the whole suite: the integration tiers load these on purpose
    loaded = [name for name in HEAVY if name in sys.modules]
    if loaded and session.exitstatus == 0:
        sys.stderr.write("\nunit tier: imported %s; unit tests must not need them\n" % ", ".join(loaded))
        session.exitstatus = 1
