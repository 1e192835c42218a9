"""VisualBackProp worked out by hand on tiny networks: the expected masks below were computed on paper
(integer weights, binary frames), not by the project's code. Both the fused ONNX graph (on ONNX
Runtime) and the NumPy reference (vbp.py) must give them.

Frames are 0/255 so the pilot's img/255 input is 0/1.
"""
import numpy as np
import pytest

from donkey_saliency import backends
from donkey_saliency.compute import graph, vbp
from donkey_saliency.pilots.trunk import Activation, TrunkBuilder

RELU = Activation("relu", None)


def ones(out_channels, in_channels, kh, kw):
    return np.ones((out_channels, in_channels, kh, kw), np.float32)


def run_graph(trunk, frame01):
    frame = (np.asarray(frame01, np.uint8) * 255)[None, :, :, None]
    fused = graph.build(trunk, features=True).SerializeToString()
    saliency_graph = graph.SaliencyGraph(fused, trunk.input_shape, trunk.layer_names,
                                         [c.out_hw for c in trunk.convs])
    with backends.create(saliency_graph, "onnxruntime") as backend:
        return backend.infer(frame)


def check(trunk, frame01, expected_means, expected_mask):
    outputs = run_graph(trunk, frame01)
    for i, mean in enumerate(expected_means):
        np.testing.assert_allclose(outputs["mean_%d" % i][0], mean, atol=1e-6)
    np.testing.assert_allclose(outputs["mask"][0], expected_mask, atol=1e-6)
    reference = vbp.visual_backprop(trunk.steps, [np.asarray(m, np.float32)[None] for m in expected_means])
    np.testing.assert_allclose(reference[0], expected_mask, atol=1e-6)


def test_one_conv_3x3_valid():
    """4x4 frame with two lit corners; ones 3x3 kernel: the map is [[1, 0], [0, 1]]. Back-projected,
    each map cell covers a 3x3 block; the centre is covered twice."""
    builder = TrunkBuilder((4, 4, 1))
    builder.conv("c1", ones(1, 1, 3, 3), None, (1, 1), "valid")
    builder.pointwise(RELU)
    trunk = builder.finish("hand")
    frame = [[1, 0, 0, 0],
             [0, 0, 0, 0],
             [0, 0, 0, 0],
             [0, 0, 0, 1]]
    mask = [[.5, .5, .5, 0],
            [.5, 1, 1, .5],
            [.5, 1, 1, .5],
            [0, .5, .5, .5]]
    check(trunk, frame, [[[1, 0], [0, 1]]], mask)


def test_two_convs_stride_2_on_a_non_square_frame_with_output_padding():
    """5x6 frame, conv1 ones 2x2 stride 2 (row 4 is never read: valid padding, so the transposed conv
    needs one row of output padding, which stays zero), conv2 2x2 with two channels whose mean is
    taken."""
    builder = TrunkBuilder((5, 6, 1))
    builder.conv("c1", ones(1, 1, 2, 2), None, (2, 2), "valid")
    builder.pointwise(RELU)
    second = np.zeros((2, 1, 2, 2), np.float32)
    second[0] = 1.0  # channel a: ones
    second[1, 0, 1, 1] = 1.0  # channel b: the bottom-right pixel only
    builder.conv("c2", second, None, (1, 1), "valid")
    builder.pointwise(RELU)
    trunk = builder.finish("hand")
    frame = [[1, 1, 0, 0, 1, 0],
             [1, 0, 0, 0, 0, 0],
             [0, 0, 1, 1, 0, 0],
             [0, 0, 1, 0, 0, 0],
             [1, 1, 1, 1, 1, 1]]
    # conv1: 2x2 block sums. conv2: a = [6, 4], b = [3, 0] -> mean [4.5, 2].
    means = [[[3, 0, 1], [0, 3, 0]], [[4.5, 2]]]
    # deepest /max: [1, 4/9]; up (k2 s1): [1, 13/9, 4/9] on both rows; x mean1 = [[3, 0, 4/9], [0, 13/3, 0]];
    # /max (13/3): [[9/13, 0, 4/39], [0, 1, 0]]; up (k2 s2): 2x2 blocks, row 4 zero; min 0, max 1.
    a, b = 9.0 / 13, 4.0 / 39
    mask = [[a, a, 0, 0, b, b],
            [a, a, 0, 0, b, b],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0]]
    check(trunk, frame, means, mask)


def test_same_padding_and_a_pooling_step():
    """conv1 ones 3x3 'same' (one zero row/column each side), max pool 2x2 stride 2 (geometry only, no
    map of its own), conv2 1x1. The pool spreads each cell over a 2x2 block; 'same' back-projects
    each pixel to the sum of its 3x3 neighbourhood."""
    builder = TrunkBuilder((4, 4, 1))
    builder.conv("c1", ones(1, 1, 3, 3), None, (1, 1), "same")
    builder.pointwise(RELU)
    builder.pool("p", "max", (2, 2), (2, 2), "valid")
    builder.conv("c2", ones(1, 1, 1, 1), None, (1, 1), "valid")
    builder.pointwise(RELU)
    trunk = builder.finish("hand")
    assert [s.kind for s in trunk.steps] == ["conv", "pool", "conv"]
    frame = [[1, 0, 0, 0],
             [0, 0, 0, 0],
             [0, 0, 0, 0],
             [0, 0, 0, 0]]
    mean1 = [[1, 1, 0, 0],
             [1, 1, 0, 0],
             [0, 0, 0, 0],
             [0, 0, 0, 0]]
    mean2 = [[1, 0], [0, 0]]
    # up through the pool: the top-left 2x2 block is 1; x mean1: the same; 3x3 neighbourhood sums
    # [[4,4,2,0],[4,4,2,0],[2,2,1,0],[0,0,0,0]], then /4:
    mask = [[1, 1, .5, 0],
            [1, 1, .5, 0],
            [.5, .5, .25, 0],
            [0, 0, 0, 0]]
    check(trunk, frame, [mean1, mean2], mask)


def test_a_constant_frame_gives_zeros_not_nan():
    builder = TrunkBuilder((4, 4, 1))
    builder.conv("c1", ones(1, 1, 3, 3), None, (1, 1), "valid")
    builder.pointwise(RELU)
    outputs = run_graph(builder.finish("hand"), np.zeros((4, 4)))
    assert np.array_equal(outputs["mask"], np.zeros((1, 4, 4), np.float32))


@pytest.mark.parametrize("kind", ["relu", "relu6", "tanh", "sigmoid", "elu", "leaky_relu", "swish"])
def test_activations_by_hand(kind):
    """One 1x1 conv with weight 2 and bias -1 on a frame of 0 and 1: pre-activations -1 and 1."""
    builder = TrunkBuilder((1, 2, 1))
    builder.conv("c", np.full((1, 1, 1, 1), 2.0, np.float32), np.array([-1.0], np.float32), (1, 1), "valid")
    builder.pointwise(Activation(kind, {"elu": 1.0, "leaky_relu": 0.1}.get(kind)))
    outputs = run_graph(builder.finish("hand"), [[0, 1]])
    e = np.e
    expected = {"relu": [0, 1], "relu6": [0, 1], "tanh": [-(e - 1 / e) / (e + 1 / e), (e - 1 / e) / (e + 1 / e)],
                "sigmoid": [1 / (1 + e), 1 / (1 + 1 / e)], "elu": [1 / e - 1, 1], "leaky_relu": [-0.1, 1],
                "swish": [-1 / (1 + e), 1 / (1 + 1 / e)]}[kind]
    np.testing.assert_allclose(outputs["features_0"][0, 0, 0], expected, atol=1e-6)
