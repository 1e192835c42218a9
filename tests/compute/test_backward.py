"""The backward pass inside the fused graph against TensorFlow's GradientTape on the same Keras model.

For every donkey 2-D type as .h5, .keras and a .tflite converted from the Keras model differentiated
here, every custom geometry, the activations, and the real pilot, for steering and throttle: the
gradient w.r.t. the input pixels and w.r.t. each conv level's map equals the tape's to 1e-4 of the
map's largest magnitude. TensorFlow is only the oracle: the graph is read and built without it.
"""
import numpy as np
import pytest

from helpers import random_frames, real_data_or_skip, real_frames
from donkey_saliency import backends
from donkey_saliency.compute import backward, graph
from donkey_saliency.errors import InputError
from donkey_saliency.pilots import load_pilot
from pilot_helpers import build, CUSTOM, donkey_models, saved
from pilot_helpers import activations_model, keras_to_tflite

RELATIVE = 1e-4
# Operators the backward pass may use: opset-13 ones that ONNX Runtime 1.10 and TensorRT 8.2's parser run.
TENSORRT_8_2_OPS = {"Abs", "Add", "And", "Cast", "Concat", "Conv", "ConvTranspose", "DepthToSpace", "Equal",
                    "Expand", "Gemm", "Greater", "Identity", "Less", "Mul", "Pad", "ReduceMean", "ReduceSum", "Relu",
                    "Reshape", "Shape", "Sigmoid", "Slice", "Sub", "Sum", "Transpose", "Where", "Div"}
OUTPUTS = ("steering", "throttle")
# What each type's other inputs get in both computations: values "held at the frame's".
EXTRA_SIZES = {"mem_in": 6, "behavior_in": 3, "imu_in": 6}


def tape_output(model, outputs, output):
    """The chosen scalar per frame from the Keras model's outputs, by donkeycar's names: categorical
    angle_out/throttle_out decoded as expected values (bins -1..1 by 14ths; throttle b * 0.5 / 20),
    otherwise the first output value (steering) and the second (throttle; an inferred pilot has
    steering only)."""
    import tensorflow as tf

    named = dict(zip(model.output_names, outputs))
    if "angle_out" in named:
        if output == "steering":
            return tf.reduce_sum(named["angle_out"] * np.linspace(-1, 1, 15).astype(np.float32), axis=-1)
        bins = named["throttle_out"].shape[-1]
        return tf.reduce_sum(named["throttle_out"] * (np.arange(bins) * 0.5 / bins).astype(np.float32), axis=-1)
    columns = tf.concat([tf.reshape(o, (len(o), -1)) for o in outputs], axis=1)  # n_outputs0, n_outputs1, ...
    return columns[:, 1 if output == "throttle" and columns.shape[1] > 1 else 0]


def extra_feeds(model, count, seed=1):
    rng = np.random.default_rng(seed)
    return {t.name.split(":")[0]: rng.uniform(-1, 1, (count,) + tuple(t.shape[1:])).astype(np.float32)
            for t in model.inputs[1:]}


def tape_gradients(model, trunk, frames, extras, output):
    """(d output / d pixels (N, H, W, C) in [0, 1] units, [d output / d map_i (N, h, w, C_i)])."""
    import tensorflow as tf

    maps = [model.get_layer(name).output for name in trunk.map_sources]
    probe = tf.keras.Model(model.inputs, maps + list(model.outputs))
    image = tf.constant(frames.astype(np.float32) / 255.0)
    feeds = [image] + [tf.constant(extras[t.name.split(":")[0]]) for t in model.inputs[1:]]
    with tf.GradientTape() as tape:
        tape.watch(image)
        results = probe(feeds if len(feeds) > 1 else image, training=False)
        total = tf.reduce_sum(tape_output(model, results[len(maps):], output))
    grads = tape.gradient(total, [image] + results[:len(maps)])
    return np.asarray(grads[0]), [np.asarray(g) for g in grads[1:]]


def graph_gradients(path, frames, extras, output):
    fused = graph.export(load_pilot(path, whole=True), features=True, output=output)
    assert fused.output == output
    with backends.create(fused, "onnxruntime") as backend:
        return backend.infer(frames, extras)


def assert_close(ours, theirs, what):
    theirs = np.asarray(theirs, np.float64)
    peak = np.abs(theirs).max()
    assert peak > 0, "%s: the oracle's gradient is all zeros" % what
    error = np.abs(np.asarray(ours, np.float64) - theirs).max() / peak
    assert error <= RELATIVE, "%s: %.2e of the largest magnitude" % (what, error)


def check_gradients(model, path, output, frames=None, keras_path=None):
    """The graph of ``path`` against the tape on ``model`` (read as ``keras_path`` for its map layers)."""
    trunk = load_pilot(keras_path or path).trunk
    if frames is None:
        frames = random_frames(2, trunk.input_shape, seed=4)
    extras = extra_feeds(model, len(frames))
    out = graph_gradients(path, frames, extras, output)
    image_grad, map_grads = tape_gradients(model, trunk, frames, extras, output)
    assert_close(out["grad_frame"], image_grad, "%s %s input" % (path, output))
    for i, grad in enumerate(map_grads):
        assert_close(out["grad_map_%d" % i], grad.transpose(0, 3, 1, 2), "%s %s level %d" % (path, output, i))
    # The reduced maps the methods read are those gradients' products with the forward values.
    x = frames.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    g = image_grad.transpose(0, 3, 1, 2)
    assert_close(out["input_gradient"], np.abs(g).sum(axis=1), "input_gradient")
    assert_close(out["input_x_gradient"], np.abs((x * g).sum(axis=1)), "input_x_gradient")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("suffix", (".h5", ".keras", ".tflite"))
@pytest.mark.parametrize("model_type", sorted(donkey_models()))
def test_every_type_and_format_matches_the_tape(pilot_files, model_type, suffix, output):  # noqa: F811
    import tensorflow as tf

    keras_path = pilot_files[model_type][".h5"]  # the .keras and .tflite files were made from this model
    model = tf.keras.models.load_model(keras_path, compile=False)
    check_gradients(model, pilot_files[model_type][suffix], output, keras_path=keras_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CUSTOM))
def test_custom_geometries_match_the_tape(name):
    shape, body = CUSTOM[name]
    model = build(shape, body)
    path = saved(model)
    for output in OUTPUTS:
        out = check_gradients(model, path, output)
        assert out["gradcam_0"].min() >= 0 and out["gxa_0"].min() >= 0


@pytest.mark.slow
def test_activations_match_the_tape_in_h5_and_tflite(tmp_path):
    model = activations_model()
    h5 = saved(model)
    check_gradients(model, h5, "steering")
    check_gradients(model, keras_to_tflite(model, tmp_path / "activations.tflite"), "steering", keras_path=h5)


@pytest.mark.slow
def test_max_pooling_routes_ties_and_overlaps_like_tensorflow():
    """Overlapping 3x3/2 max pools on an image with flat regions: each window's gradient goes to
    its first maximum only, as TensorFlow's MaxPoolGrad does."""
    L = __import__("tensorflow").keras.layers

    def body(x):
        x = L.Conv2D(4, 3, activation="relu")(x)
        x = L.MaxPooling2D(3, strides=2)(x)
        x = L.Conv2D(4, 3, activation="relu")(x)
        return L.MaxPooling2D(3, strides=2, padding="same")(L.Conv2D(4, 3, activation="relu")(x))

    model = build((40, 56, 3), body)
    frames = random_frames(2, (40, 56, 3), seed=5)
    frames[:, 10:30, 10:30] = 128  # flat patches: ties inside windows
    check_gradients(model, saved(model), "steering", frames=frames)


@pytest.mark.slow
def test_unequal_strides_take_the_conv_transpose_path():
    L = __import__("tensorflow").keras.layers

    def body(x):
        x = L.Conv2D(4, (5, 3), strides=(2, 1), activation="relu")(x)
        return L.Conv2D(4, 3, strides=(1, 2), padding="same", activation="elu")(x)

    model = build((40, 56, 3), body)
    check_gradients(model, saved(model), "steering")


@pytest.mark.slow
@pytest.mark.parametrize("output", OUTPUTS)
def test_real_pilot_matches_the_tape(output):
    import tensorflow as tf

    path = real_data_or_skip()[0]
    model = tf.keras.models.load_model(path, compile=False)
    check_gradients(model, path, output, frames=real_frames(8))


def test_steering_and_throttle_differ_and_unknown_outputs_are_refused(tiny_pilot_path):
    steering = graph_gradients(tiny_pilot_path, random_frames(1), {}, "steering")
    throttle = graph_gradients(tiny_pilot_path, random_frames(1), {}, "throttle")
    assert not np.allclose(steering["input_gradient"], throttle["input_gradient"])
    with pytest.raises(InputError, match="steering, throttle"):
        backward.check_output("brake")


def test_backward_nodes_are_named_grad_and_use_no_training_ops(tiny_pilot_path):
    import onnx

    fused = graph.graph_for(tiny_pilot_path, cache_dir=False, output="steering")
    proto = onnx.load_from_string(fused.onnx_bytes)
    assert proto.opset_import[0].version == graph.OPSET
    prefixes = {node.name.split("/")[0] for node in proto.graph.node}
    assert prefixes <= {"trunk", "vbp", "pilot", "grad"}
    backward_ops = {node.op_type for node in proto.graph.node if node.name.startswith("grad/")}
    assert {"Conv", "DepthToSpace", "Gemm"} <= backward_ops  # transposed convs as polyphase stride-1 convs
    assert not {op for op in backward_ops if "Grad" in op or op.startswith("Gradient")}
    assert backward_ops <= TENSORRT_8_2_OPS, backward_ops - TENSORRT_8_2_OPS


@pytest.mark.slow
def test_every_geometrys_backward_stays_within_tensorrt_8_2s_operators():
    """Pools (max: Equal/Slice/one-hot convs; average: divided convs), crops, pads, dilation, 'same'."""
    import onnx

    for name in ("pooling", "cropping", "zero_padding_dilation", "same_padding"):
        shape, body = CUSTOM[name]
        fused = graph.export(load_pilot(saved(build(shape, body)), whole=True), output="steering")
        ops = {n.op_type for n in onnx.load_from_string(fused.onnx_bytes).graph.node if n.name.startswith("grad/")}
        assert ops <= TENSORRT_8_2_OPS, (name, ops - TENSORRT_8_2_OPS)


@pytest.mark.slow
def test_every_method_runs_without_tensorflow_through_load_and_the_cli(pilot_files, tmp_path):  # noqa: F811
    """Every method, both outputs, .h5/.keras/.tflite, where TensorFlow cannot be imported (a car): the
    masks from load() equal those from the CLI's mask command and, for the input gradient, the tape's."""
    import tensorflow as tf
    from pilot_helpers import run_without_tensorflow

    from donkey_saliency.compute import methods

    import cv2

    frame = random_frames(1, seed=6)[0]
    image = str(tmp_path / "frame.png")
    cv2.imwrite(image, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    cases = [(model_type, suffix, method, output)
             for model_type in ("linear", "categorical", "memory") for suffix in (".h5", ".keras", ".tflite")
             for method in sorted(methods.METHODS) for output in OUTPUTS]
    run_without_tensorflow("""
        import sys
        import numpy as np
        import donkey_saliency
        from donkey_saliency import cli
        from donkey_saliency.util.images import read_rgb

        frame = read_rgb(%r)
        for model_type, suffix, method, output in %r:
            path = %r[model_type][suffix]
            out = "%s/%%s%%s-%%s-%%s" %% (model_type, suffix[1:], method, output)
            with donkey_saliency.load(path, backend="onnxruntime", method=method, output=output) as saliency:
                np.save(out + ".npy", saliency.mask(frame))
            assert cli.main(["mask", path, %r, "--out", out, "--method", method, "--output", output,
                             "--backend", "onnxruntime"]) == 0
        assert "tensorflow" not in sys.modules
    """ % (image, cases, pilot_files, tmp_path, image))
    for model_type, suffix, method, output in cases:
        out = str(tmp_path / ("%s%s-%s-%s" % (model_type, suffix[1:], method, output)))
        mask = np.load(out + ".npy")
        assert mask.shape == (120, 160) and mask.dtype == np.float32 and 0 <= mask.min() <= mask.max() <= 1
        # (Grad-CAM's relu may leave nothing on a random pilot: every channel weighed against the output)
        assert mask.max() == 1.0 or method == "grad-cam", (out, "an all-zero mask")
        np.testing.assert_allclose(np.load(out + "/frame.npy"), mask, atol=1e-6)
    # The input gradient is the tape's (memory: the other inputs held at zeros, as load() holds them).
    keras_path = pilot_files["categorical"][".h5"]
    model = tf.keras.models.load_model(keras_path, compile=False)
    tape, _ = tape_gradients(model, load_pilot(keras_path).trunk, frame[None], {}, "throttle")
    expected = methods.degrid(np.abs(tape[0]).sum(axis=-1)[None])[0]  # as shown
    for suffix in (".h5", ".tflite"):
        mask = np.load(str(tmp_path / ("categorical%s-input-gradient-throttle.npy" % suffix[1:])))
        np.testing.assert_allclose(mask, expected, atol=1e-4)
