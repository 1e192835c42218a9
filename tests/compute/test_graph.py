"""The fused ONNX graph (on ONNX Runtime) against the NumPy reference fed by Keras' own feature maps.

Both the converted trunk and the VisualBackProp head are checked: the reference side never
touches ONNX. Tolerance 1e-5 on masks in [0, 1].
"""

import numpy as np
import pytest

from helpers import random_frames, real_data_or_skip, real_frames
from donkey_saliency import backends
from donkey_saliency.util import fileio
from donkey_saliency.compute import graph, vbp
from donkey_saliency.errors import ModelError
from donkey_saliency.pilots import load_pilot
from donkey_saliency.pilots import reference as framework
from pilot_helpers import build, cropping, CUSTOM, donkey_models, layers, one_conv, saved, separate_bn_relu

TOLERANCE = 1e-5


def keras_trunk(model):
    return load_pilot(saved(model)).trunk


def check_against_reference(model, frames=None, seed=0, path=None):
    """Save ``model``, read the file without TensorFlow, build its graph, run it, compare with vbp on
    Keras' own maps; returns (trunk, outputs)."""
    pilot = load_pilot(path or saved(model))
    trunk = pilot.trunk
    fused = graph.export(pilot)
    if frames is None:
        frames = random_frames(3, trunk.input_shape, seed=seed)
    with backends.create(fused, "onnxruntime") as backend:
        outputs = backend.infer(frames)
    feature_maps = framework.feature_maps(pilot, frames, model)
    reference = vbp.mask_from_feature_maps(trunk.steps, feature_maps)
    mask = outputs["mask"]
    assert mask.shape == (len(frames),) + trunk.input_hw
    assert mask.dtype == np.float32
    assert np.abs(mask - reference).max() <= TOLERANCE
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    for i, maps in enumerate(feature_maps):
        np.testing.assert_allclose(outputs["mean_%d" % i], maps.mean(axis=-1), atol=1e-5, rtol=1e-5)
    return trunk, outputs


# --- donkey's own architectures -------------------------------------------------------------------


@pytest.mark.parametrize("model_type", sorted(donkey_models()))
def test_donkey_model_types_match_reference(model_type):
    trunk, outputs = check_against_reference(donkey_models()[model_type]())
    assert trunk.layer_names == ["conv2d_%d" % i for i in range(1, 6)]
    assert trunk.model_type == model_type
    # Geometry read from the model: categorical's conv4 has stride 2, linear's stride 1.
    expected_last = {"categorical": (3, 6)}.get(model_type, (8, 13))
    assert trunk.convs[-1].out_hw == expected_last
    assert outputs["mean_4"].shape[1:] == expected_last


def test_valid_padding_sizes_come_from_the_model():
    from donkeycar.parts.keras import default_n_linear

    trunk = keras_trunk(default_n_linear(2))
    assert [c.out_hw for c in trunk.convs] == [(58, 78), (27, 37), (12, 17), (10, 15), (8, 13)]
    assert [c.stride for c in trunk.convs] == [(2, 2), (2, 2), (2, 2), (1, 1), (1, 1)]


# --- custom geometries ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CUSTOM))
def test_custom_geometry_matches_reference(name):
    shape, body = CUSTOM[name]
    check_against_reference(build(shape, body))


def test_separate_bn_relu_uses_the_post_activation_map():
    trunk, outputs = check_against_reference(build((120, 160, 3), separate_bn_relu))
    # ReLU outputs are non-negative; a pre-activation (BN) map would have negative means.
    assert all(outputs["mean_%d" % i].min() >= 0 for i in range(len(trunk.convs)))
    assert [s.kind for s in trunk.steps] == ["conv", "conv"]


def test_cropping_zeroes_the_cropped_rows():
    trunk, outputs = check_against_reference(build((120, 160, 3), cropping))
    assert np.all(outputs["mask"][:, :40, :] == 0)
    assert outputs["mask"][:, 40:, :].max() > 0


def test_constant_input_gives_zeros_not_nan():
    model = build((120, 160, 3), one_conv)
    fused = graph.export(load_pilot(saved(model)))
    with backends.create(fused, "onnxruntime") as backend:
        mask = backend.infer(np.zeros((1, 120, 160, 3), np.uint8))["mask"]
    assert np.isfinite(mask).all()
    assert (mask == 0).all()


# --- refusals -----------------------------------------------------------------------------------
def test_model_without_conv_is_refused_with_one_line():
    import tensorflow as tf

    inp = layers().Input((120, 160, 3))
    model = tf.keras.Model(inp, layers().Dense(2)(layers().Flatten()(inp)))
    with pytest.raises(ModelError) as caught:
        keras_trunk(model)
    assert "no Conv2D" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("kind", ["rnn", "3d"])
def test_sequence_models_are_refused_naming_the_type(kind):
    from donkeycar.parts import keras as dk

    model = dk.rnn_lstm(seq_length=3, num_outputs=2) if kind == "rnn" else dk.build_3d_cnn((120, 160, 3), 3, 2)
    with pytest.raises(ModelError) as caught:
        keras_trunk(model)
    assert "'%s'" % kind in str(caught.value) and "\n" not in str(caught.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_pilot(str(tmp_path / "nope.h5"))
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"this is not hdf5" * 10)
    with pytest.raises(ModelError, match="cannot read"):
        load_pilot(str(corrupt))


# --- the real pilot -------------------------------------------------------------------------------
def test_real_pilot_matches_reference():
    real_data_or_skip()
    path = real_data_or_skip()[0]
    pilot = load_pilot(path)
    assert [c.stride for c in pilot.trunk.convs] == [(2, 2), (2, 2), (2, 2), (1, 1), (1, 1)]
    check_against_reference(framework.keras_model(path), frames=real_frames(8), path=path)


# --- cache and saved graphs -----------------------------------------------------------------------
def test_graph_cache_and_saved_graph_round_trip(tiny_pilot_path, tmp_path):
    first = graph.graph_for(tiny_pilot_path, cache_dir=str(tmp_path))
    cached = [p for p in tmp_path.iterdir() if p.suffix == ".onnx"]
    assert len(cached) == 1
    again = graph.graph_for(tiny_pilot_path, cache_dir=str(tmp_path))
    assert again.digest == first.digest and again.layer_names == first.layer_names
    assert again.source == first.source == tiny_pilot_path
    # A saved graph is a pilot in its own right (for cars without TensorFlow).
    saved = tmp_path / "pilot.saliency.onnx"
    first.save(str(saved))
    loaded = graph.graph_for(str(saved))
    assert loaded.input_shape == (120, 160, 3) and loaded.digest == first.digest


def test_atomic_write_gives_a_new_file_the_usual_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = tmp_path / "sub" / "out.bin"
        fileio.atomic_write(str(path), b"data")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"data"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["out.bin"]  # no temp file left


def test_corrupt_cache_entry_is_exported_again(tiny_pilot_path, tmp_path):
    first = graph.graph_for(tiny_pilot_path, cache_dir=str(tmp_path))
    (entry,) = [p for p in tmp_path.iterdir() if p.suffix == ".onnx"]
    entry.write_bytes(b"garbage")
    again = graph.graph_for(tiny_pilot_path, cache_dir=str(tmp_path))
    assert again.layer_names == first.layer_names


# --- file formats ---------------------------------------------------------------------------------
def test_h5_keras_and_savedmodel_of_one_network_give_one_mask(linear_pilot_path, tmp_path):
    import tensorflow as tf

    model = tf.keras.models.load_model(linear_pilot_path, compile=False)
    keras_file = str(tmp_path / "pilot.keras")
    saved_dir = str(tmp_path / "pilot_savedmodel")
    model.save(keras_file)
    tf.keras.models.save_model(model, saved_dir, save_format="tf")
    frames = random_frames(2, seed=3)
    masks = []
    for path in (linear_pilot_path, keras_file, saved_dir):
        fused = graph.graph_for(path, cache_dir=False)
        with backends.create(fused, "onnxruntime") as backend:
            masks.append(backend.infer(frames)["mask"])
    assert np.abs(masks[1] - masks[0]).max() <= 1e-6
    assert np.abs(masks[2] - masks[0]).max() <= 1e-6


def test_unknown_suffix_and_plain_directory_are_refused(tmp_path):
    (tmp_path / "pilot.pt").write_bytes(b"x")
    with pytest.raises(ModelError, match="unknown pilot format"):
        load_pilot(str(tmp_path / "pilot.pt"))
    with pytest.raises(ModelError, match="not a SavedModel"):
        load_pilot(str(tmp_path))


@pytest.mark.parametrize("options", [dict(output="steering", features=True), dict(head=False)])
def test_whole_pilot_and_gradient_graphs_are_byte_identical_to_onnx_s(tiny_pilot_path, monkeypatch, options):
    """onnx_proto.py writes the backward pass's graph as the onnx package would, and onnx.checker takes it."""
    import onnx

    from donkey_saliency.compute import onnx_proto
    from donkey_saliency.pilots import load_pilot
    from unit.test_onnx_proto import ONNX_BACKED

    pilot = load_pilot(tiny_pilot_path, whole=True)
    serialized = []
    for helper in (onnx_proto, ONNX_BACKED):
        monkeypatch.setattr(graph, "helper", helper)
        serialized.append(graph.build(pilot.trunk, network=pilot.network, **options).SerializeToString())
    assert serialized[0] == serialized[1]
    onnx.checker.check_model(onnx.load_from_string(serialized[0]))
