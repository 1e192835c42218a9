"""The graph's backward pass and the methods' NumPy finish on networks small enough to check by hand
(no TensorFlow: the TensorFlow comparisons are in tests/compute/test_backward.py)."""
import numpy as np
import pytest

from donkey_saliency import backends
from donkey_saliency.compute import graph, methods
from donkey_saliency.errors import InputError
from donkey_saliency.pilots.network import Input, Layer, Network, TRUNK_END, dense
from donkey_saliency.pilots.trunk import Activation, TrunkBuilder


def gradient_graph(size, stride, weights):
    """A grayscale size x size pilot: one 3x3 conv of ones (stride ``stride``), relu, flatten, one dense
    unit with ``weights`` (one per conv output): steering = sum_ij w_ij relu(sum of window ij)."""
    builder = TrunkBuilder((size, size, 1))
    builder.conv("c1", np.ones((1, 1, 3, 3), np.float32), None, (stride, stride), "valid")
    builder.pointwise(Activation("relu", None))
    trunk = builder.finish("hand")
    layers = [Layer("flatten", "flat", [TRUNK_END], None),
              dense("n_outputs0", ["flat"], np.asarray(weights, np.float32).reshape(-1, 1), None)]
    network = Network([Input("img_in", (size, size, 1))], "img_in", layers, [("n_outputs0", "n_outputs0")])
    proto = graph.build(trunk, network=network, output="steering", features=True)
    return graph.SaliencyGraph(proto.SerializeToString(), trunk.input_shape, trunk.layer_names,
                               [c.out_hw for c in trunk.convs], pilot={"output": "steering", "inputs": []})


@pytest.mark.parametrize("size, stride", [(4, 1), (5, 2), (6, 2)])
def test_input_gradient_of_a_window_sum_pilot(size, stride):
    out = (size - 3) // stride + 1
    weights = np.arange(1, out * out + 1, dtype=np.float32)  # w_ij = 1, 2, 3, ... row-major
    with backends.create(gradient_graph(size, stride, weights), "onnxruntime") as backend:
        result = backend.infer(np.full((1, size, size, 1), 255, np.uint8))  # every window sum is 9 > 0
    expected = np.zeros((size, size), np.float32)  # each pixel: the weights of the windows holding it
    for i in range(out):
        for j in range(out):
            expected[i * stride:i * stride + 3, j * stride:j * stride + 3] += weights[i * out + j]
    np.testing.assert_allclose(result["grad_frame"][0, :, :, 0], expected, atol=1e-5)
    np.testing.assert_allclose(result["input_gradient"][0], expected, atol=1e-5)
    # d steering / d relu output is the dense weight itself, laid out as the conv's map
    np.testing.assert_allclose(result["grad_map_0"][0, 0], weights.reshape(out, out), atol=1e-6)


def test_a_dead_relu_passes_no_gradient():
    with backends.create(gradient_graph(4, 1, [1, 1, 1, 1]), "onnxruntime") as backend:
        result = backend.infer(np.zeros((1, 4, 4, 1), np.uint8))  # every window sum is 0: relu' = 0
    assert not result["grad_frame"].any()


def test_degrid_removes_a_two_pixel_checkerboard():
    rows, cols = np.mgrid[0:40, 0:60]
    masks = (0.5 + 0.4 * ((rows % 2) == (cols % 2)) + rows / 200.0)[None].astype(np.float32)
    phases = lambda m: [m[:, a::2, b::2].mean() for a in (0, 1) for b in (0, 1)]  # noqa: E731
    assert max(phases(masks)) / min(phases(masks)) > 1.5
    smooth = methods.degrid(masks)
    assert max(phases(smooth)) / min(phases(smooth)) < 1.1 and smooth.min() == 0 and smooth.max() == 1  # the bound


def test_what_each_method_reads_and_a_bad_level():
    assert methods.needed_outputs("input-gradient", 5) == {"mean_%d" % i for i in range(5)} | {"input_gradient"}
    assert "gradcam_2" in methods.needed_outputs("grad-cam", 5, level=2)
    assert "gradcam_4" in methods.needed_outputs("grad-cam", 5, level=-1)
    assert "mask" not in methods.needed_outputs("vbp-gxa-mid", 5) and "gxa_2" in methods.needed_outputs("gxa-mid", 5)
    with pytest.raises(InputError, match="levels 0..4"):
        methods.needed_outputs("grad-cam", 5, level=5)
    with pytest.raises(InputError, match="needs the graph output"):
        methods.compute("input-gradient", {"mask": np.zeros((1, 4, 4)), "mean_0": np.zeros((1, 2, 2))})
