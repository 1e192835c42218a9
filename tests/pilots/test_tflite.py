""".tflite pilots, converted the way donkeycar does (``keras_model_to_tflite``).

Three independent sides are held together: the TFLite interpreter's own maps (the reference fed to
vbp.py), the fused ONNX graph on ONNX Runtime, and Keras on the .h5 the .tflite came from.
"""
import os

import numpy as np
import pytest

from helpers import random_frames, real_data_or_skip, real_frames, REAL_TUB, tflite_output_names
from donkey_saliency import backends, cli
from donkey_saliency.compute import graph, vbp
from donkey_saliency.errors import ModelError
from donkey_saliency.pilots import load_pilot
from donkey_saliency.pilots.tflite import read_graph
from donkey_saliency.pilots import reference as framework
from pilot_helpers import to_tflite

GRAPH_TOLERANCE = 1e-5  # graph vs NumPy reference on the same maps
FRAMEWORK_TOLERANCE = 1e-4  # .tflite vs .h5: two runtimes, float32 each


def keras_to_tflite(model, path, data_gen=None):
    from donkeycar.parts.interpreter import keras_to_tflite as convert

    convert(model, str(path), data_gen)
    return str(path)


def layers_model():
    """Every geometry step a TFLite trunk can hold: crop, pool, pad, same padding, an unfused-looking
    conv -> BN -> ReLU (the converter fuses it), depthwise, and a separate LeakyReLU op."""
    import tensorflow as tf

    layers = tf.keras.layers
    inp = layers.Input((120, 160, 3), name="img_in")
    x = layers.Cropping2D(((40, 0), (0, 0)), name="crop")(inp)
    x = layers.Conv2D(8, 5, strides=2, activation="relu", name="c1")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.ZeroPadding2D(((1, 2), (0, 1)), name="pad")(x)
    x = layers.Conv2D(8, 3, padding="same", name="c2")(x)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.DepthwiseConv2D(3, strides=2, activation="relu", name="dw")(x)
    x = layers.Conv2D(8, 3, name="c3")(x)
    x = layers.LeakyReLU(0.1, name="leaky")(x)
    x = layers.Flatten()(x)
    return tf.keras.Model(inp, layers.Dense(2, name="n_outputs0")(x), name="layers")


@pytest.fixture(scope="session")
def pilots(tmp_path_factory, linear_pilot_path):
    """name -> (h5 path, tflite path): donkey's linear and categorical with random weights, and the
    layers model. Weights are seeded so a failure reproduces."""
    import tensorflow as tf
    from donkeycar.parts.keras import default_categorical

    tf.keras.utils.set_random_seed(7)
    folder = tmp_path_factory.mktemp("tflite")
    paths = {"linear": linear_pilot_path}
    for name, build in (("categorical", default_categorical), ("layers", layers_model)):
        paths[name] = str(folder / (name + ".h5"))
        build().save(paths[name])
    return {name: (h5, to_tflite(h5)) for name, h5 in paths.items()}


@pytest.fixture(scope="session")
def frames():
    """Real camera frames where the project's data is present, else noise."""
    if os.path.isdir(REAL_TUB):
        return real_frames(4)
    return random_frames(4)


_exported = {}


def run_graph(tflite_path, frames):
    """The fused graph of a .tflite pilot on ONNX Runtime (exported once per file)."""
    if tflite_path not in _exported:
        pilot = load_pilot(tflite_path)
        _exported[tflite_path] = (pilot, graph.export(pilot))
    pilot, fused = _exported[tflite_path]
    with backends.create(fused, "onnxruntime") as backend:
        return pilot, fused, backend.infer(frames)


MODELS = ["linear", "categorical", "layers"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_trunk_geometry_equals_the_keras_trunk(pilots, name):
    h5, tflite = pilots[name]
    from_tflite, from_keras = load_pilot(tflite).trunk, load_pilot(h5).trunk
    assert from_tflite.input_shape == from_keras.input_shape == (120, 160, 3)
    # Same kinds, kernels, strides, padding, borders, sizes, channels - and the Keras layer names.
    assert [s.geometry for s in from_tflite.steps] == [s.geometry for s in from_keras.steps]
    # Without a signature (donkeycar 5.4's converter) the output names are gone and the type is the
    # Keras model's name: 'layers' for the test model whose one 'n_outputs0' Keras reads as 'inferred'
    signed = tflite_output_names(tflite, ["x"]) == ["x"]
    assert from_tflite.model_type == (from_keras.model_type if signed or name != "layers" else "layers")
    if name == "categorical":  # the geometry really is read from the file: conv4 stride 2 here, 1 in linear
        assert [s.out_hw for s in from_tflite.convs] == [(58, 78), (27, 37), (12, 17), (5, 8), (3, 6)]
    if name == "layers":
        assert [s.kind for s in from_tflite.steps] == ["crop", "conv", "pool", "pad", "conv", "conv", "conv"]
        assert from_tflite.steps[0].border == ((40, 0), (0, 0))
        assert from_tflite.steps[3].border == ((1, 2), (0, 1))
        assert from_tflite.steps[4].padding == "same"


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_graph_matches_reference_on_interpreter_maps(pilots, frames, name):
    pilot, fused, outputs = run_graph(pilots[name][1], frames)
    feature_maps = framework.feature_maps(pilot, frames)  # the TFLite interpreter's own tensors
    reference = vbp.mask_from_feature_maps(pilot.trunk.steps, feature_maps)
    mask = outputs["mask"]
    assert mask.shape == (len(frames), 120, 160) and mask.dtype == np.float32
    assert np.abs(mask - reference).max() <= GRAPH_TOLERANCE
    assert (mask.max(axis=(1, 2)) - mask.min(axis=(1, 2)) > 0.5).all()  # not a dead (all-zero) trunk
    for i, maps in enumerate(feature_maps):
        np.testing.assert_allclose(outputs["mean_%d" % i], maps.mean(axis=-1), atol=1e-5, rtol=1e-5)
    assert fused.layer_names == pilot.trunk.layer_names


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_tflite_and_h5_give_the_same_mask(pilots, frames, name):
    h5, tflite = pilots[name]
    keras_pilot = load_pilot(h5)
    keras_maps = framework.feature_maps(keras_pilot, frames)
    tflite_maps = framework.feature_maps(load_pilot(tflite), frames)
    for from_keras, from_tflite in zip(keras_maps, tflite_maps):
        assert np.abs(from_keras - from_tflite).max() <= FRAMEWORK_TOLERANCE * max(1.0, np.abs(from_keras).max())
    _, _, outputs = run_graph(tflite, frames)
    keras_mask = vbp.mask_from_feature_maps(keras_pilot.trunk.steps, keras_maps)
    assert np.abs(outputs["mask"] - keras_mask).max() <= FRAMEWORK_TOLERANCE


@pytest.mark.slow
def test_memory_pilot_ignores_its_second_input(tmp_path):
    """donkey's 'memory' pilot has a second input (past steering); the graph takes only the frame."""
    from donkeycar.parts.keras import default_memory

    tflite = keras_to_tflite(default_memory(), tmp_path / "memory.tflite")
    frames = random_frames(2)
    pilot, fused, outputs = run_graph(tflite, frames)
    assert pilot.trunk.model_type == "memory"
    assert [s.out_hw for s in pilot.trunk.convs][-1] == (8, 13)
    reference = vbp.mask_from_feature_maps(pilot.trunk.steps, framework.feature_maps(pilot, frames))
    assert np.abs(outputs["mask"] - reference).max() <= GRAPH_TOLERANCE


def one_line_model_error(path):
    with pytest.raises(ModelError) as caught:
        load_pilot(str(path))
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message and len(message) < 300
    return message


@pytest.mark.slow
def test_damaged_files_are_one_line_model_errors(pilots, tmp_path):
    """Truncated files must fail in Python: TFLite's C++ loader does not verify and would crash."""
    data = open(pilots["linear"][1], "rb").read()
    cases = {"truncated_header.tflite": data[:3000], "truncated_weights.tflite": data[:len(data) // 2],
             "garbage.tflite": data[:8] + bytes(range(256)) * 40, "empty.tflite": b"",
             "keras.tflite": open(pilots["linear"][0], "rb").read()[:4096]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        message = one_line_model_error(tmp_path / name)
        assert name in message
        assert "TensorFlow Lite" in message


@pytest.mark.slow
def test_cli_reports_a_damaged_file_in_one_line(pilots, tmp_path, capsys):
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(open(pilots["linear"][1], "rb").read()[:5000])
    assert cli.main(["summary", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and "broken.tflite" in captured.err


def test_unsupported_pilots_are_refused_with_a_reason(tmp_path):
    import tensorflow as tf

    layers = tf.keras.layers
    inp = layers.Input((32, 32, 3), name="img_in")

    def head(x):
        return tf.keras.Model(inp, layers.Dense(1)(layers.Flatten()(x)))

    small = head(layers.Conv2D(4, 3, strides=2, activation="relu")(inp))

    def calibration():
        for seed in range(4):
            yield [np.random.default_rng(seed).random((1, 32, 32, 3), dtype=np.float32)]

    quantized = keras_to_tflite(small, tmp_path / "int8.tflite", calibration)
    assert "quantized" in one_line_model_error(quantized)
    dilated = keras_to_tflite(head(layers.Conv2D(4, 3, dilation_rate=2, activation="relu")(inp)),
                              tmp_path / "dilated.tflite")
    if "SPACE_TO_BATCH_ND" in [op.kind for op in read_graph(dilated).ops]:  # TensorFlow <= 2.15's converter
        assert "dilated" in one_line_model_error(dilated)
    else:  # newer converters keep one dilated CONV_2D, which the reader reads as it is
        assert tuple(load_pilot(dilated).trunk.convs[0].out_hw) == (28, 28)
    no_conv = keras_to_tflite(head(inp), tmp_path / "dense.tflite")
    assert "no convolution" in one_line_model_error(no_conv)


@pytest.mark.slow
def test_summary_prints_the_trunk_table(pilots, capsys):
    assert cli.main(["summary", pilots["categorical"][1]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "model type: categorical" in lines[0] and "input 120x160x3" in lines[0]
    assert lines[1].split()[:3] == ["layer", "kind", "kernel"]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["conv2d_1", "conv2d_2", "conv2d_3", "conv2d_4", "conv2d_5"]
    assert rows[0][1:6] == ["conv", "5x5", "2x2", "valid", "58x78x24"]
    assert rows[3][1:6] == ["conv", "3x3", "2x2", "valid", "5x8x64"]


@pytest.mark.slow
def test_real_pilot_as_tflite(tmp_path):
    """The real trained linear pilot, converted to .tflite: same geometry and the same mask as the .h5
    on real frames."""
    import shutil

    real_pilot, _ = real_data_or_skip()
    h5 = str(tmp_path / "mypilot.h5")
    shutil.copyfile(real_pilot, h5)
    tflite = to_tflite(h5)
    frames = real_frames(8)
    keras_pilot = load_pilot(h5)
    pilot, _, outputs = run_graph(tflite, frames)
    assert [s.geometry for s in pilot.trunk.steps] == [s.geometry for s in keras_pilot.trunk.steps]
    assert [s.out_hw for s in pilot.trunk.convs] == [(58, 78), (27, 37), (12, 17), (10, 15), (8, 13)]
    keras_mask = vbp.mask_from_feature_maps(keras_pilot.trunk.steps, framework.feature_maps(keras_pilot, frames))
    assert np.abs(outputs["mask"] - keras_mask).max() <= FRAMEWORK_TOLERANCE
    reference = vbp.mask_from_feature_maps(pilot.trunk.steps, framework.feature_maps(pilot, frames))
    assert np.abs(outputs["mask"] - reference).max() <= GRAPH_TOLERANCE


def signatureless_tflite(h5_path, path):
    """The pilot converted as donkeycar 5.4 converts (a traced tf.function through
    from_concrete_functions), which leaves the file without a signature."""
    import tensorflow as tf

    model = tf.keras.models.load_model(h5_path, compile=False)
    spec = [tf.TensorSpec((1,) + tuple(model.inputs[0].shape[1:]), tf.float32, name="img_in")]
    function = tf.function(model, input_signature=spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function)
    with open(path, "wb") as handle:
        handle.write(converter.convert())
    return str(path)


@pytest.mark.slow
def test_a_file_without_signature_runs_as_donkeycar_54_runs_it(pilots, frames, tmp_path):
    """Inputs by tensor name, outputs in tensor index order named '0', '1': the whole-pilot graph, the
    review's pilot values and the trunk's layer names all as from the file with a signature."""
    import tensorflow as tf

    from donkey_saliency.api import PilotPass

    h5, with_signature = pilots["linear"]
    path = signatureless_tflite(h5, tmp_path / "pilot54.tflite")
    interpreter = tf.lite.Interpreter(model_path=path)
    assert interpreter.get_signature_list() == {}
    interpreter.allocate_tensors()
    x = (frames[:1] / 255.0).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    expected = [interpreter.get_tensor(i) for i in sorted(d["index"] for d in interpreter.get_output_details())]

    pilot = load_pilot(path, whole=True)
    assert pilot.network.output_names == ["0", "1"] and [i.name for i in pilot.network.inputs] == ["img_in"]
    assert pilot.trunk.layer_names == load_pilot(with_signature).trunk.layer_names
    whole = graph.graph_for(path, cache_dir=False, whole=True, float_input=True)
    with backends.create(whole, "onnxruntime") as backend:
        outputs = backend.infer(x, {})
    for name, value in zip(whole.pilot["outputs"], expected):
        np.testing.assert_allclose(outputs[name], value, atol=GRAPH_TOLERANCE)
    with PilotPass(path, "onnxruntime", batch=1) as review:
        values = review.outputs(frames[:1])
    np.testing.assert_allclose(np.concatenate([np.ravel(v) for v in values]),
                               np.concatenate([np.ravel(v[0]) for v in expected]), atol=GRAPH_TOLERANCE)
