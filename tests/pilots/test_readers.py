"""Pilot files read without TensorFlow (h5py for .h5/.keras, the flatbuffer reader for .tflite).

The subprocess tests run where ``import tensorflow`` (and tf2onnx, keras, tflite_runtime) fail, as on
a Raspberry Pi; their masks are then held against the NumPy reference fed by the pilot's own framework
(Keras, the TFLite interpreter) in this process, where TensorFlow is the oracle.
"""
import json
import os

import numpy as np
import pytest

from helpers import random_frames
from donkey_saliency import backends
from donkey_saliency.compute import graph, vbp
from donkey_saliency.errors import ModelError
from donkey_saliency.compute.methods import degrid
from donkey_saliency.pilots import load_pilot
from donkey_saliency.pilots import reference as framework
from pilot_helpers import activations_model, keras_to_tflite, run_without_tensorflow
from tub_helpers import make_v2_tub

TOLERANCE = 1e-5
FORMATS = (".h5", ".keras", ".tflite")


def expected_mask(path, frames):
    """The NumPy reference on the maps of the pilot's own framework (Keras or the TFLite interpreter)."""
    pilot = load_pilot(path)
    return vbp.mask_from_feature_maps(pilot.trunk.steps, framework.feature_maps(pilot, frames))


@pytest.mark.slow
def test_every_type_and_format_gives_the_reference_mask_without_tensorflow(pilot_files, tmp_path):
    frames = random_frames(2, seed=5)
    np.save(str(tmp_path / "frames.npy"), frames)
    paths = [path for by_suffix in pilot_files.values() for path in by_suffix.values()]
    run_without_tensorflow("""
        import sys
        import numpy as np
        import donkey_saliency

        frames = np.load(%r)
        masks = {}
        for path in %r:
            with donkey_saliency.load(path, backend="onnxruntime", cache_dir=False, method="vbp") as saliency:
                masks[path] = np.stack([saliency.mask(frame) for frame in frames])
        assert "tensorflow" not in sys.modules and "tf2onnx" not in sys.modules
        np.savez(%r, **{str(i): masks[path] for i, path in enumerate(%r)})
    """ % (str(tmp_path / "frames.npy"), paths, str(tmp_path / "masks.npz"), paths))
    masks = np.load(str(tmp_path / "masks.npz"))
    for i, path in enumerate(paths):
        difference = np.abs(masks[str(i)] - degrid(expected_mask(path, frames))).max()  # as shown
        assert difference <= TOLERANCE, (path, difference)


@pytest.mark.slow
def test_cli_mask_summary_and_backfill_work_without_tensorflow(pilot_files, tmp_path):
    from donkeycar.parts.tub_v2 import Tub

    import cv2

    image = str(tmp_path / "frame.png")
    cv2.imwrite(image, random_frames(1, seed=2)[0])
    tub = make_v2_tub(tmp_path / "tub", count=6, deleted=(2,), max_len=4)
    commands = []
    for model_type, by_suffix in sorted(pilot_files.items()):
        for suffix, path in sorted(by_suffix.items()):
            out = str(tmp_path / (model_type + suffix.replace(".", "_")))
            commands += [["mask", path, image, "--out", out, "--backend", "onnxruntime"],
                         ["summary", path],
                         ["backfill", tub, "--model", path, "--out", out + "_tub", "--backend", "onnxruntime"]]
    output = run_without_tensorflow("""
        import contextlib, io, json, sys
        from donkey_saliency import cli

        results = []
        for command in %r:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                status = cli.main(command)
            results.append([status, printed.getvalue()])
        assert "tensorflow" not in sys.modules
        print(json.dumps(results))
    """ % (commands,))
    results = json.loads(output.strip().splitlines()[-1])
    for command, (status, printed) in zip(commands, results):
        assert status == 0, (command, printed)
        if command[0] == "summary":
            assert "conv2d_5" in printed and "model type:" in printed
    for model_type, by_suffix in pilot_files.items():
        for suffix in FORMATS:
            out = str(tmp_path / (model_type + suffix.replace(".", "_")))
            mask = np.load(os.path.join(out, "frame.npy"))
            assert mask.shape == (120, 160) and mask.dtype == np.float32 and 0 <= mask.min() <= mask.max() <= 1
            backfilled = Tub(out + "_tub", read_only=True)
            records = list(backfilled)
            backfilled.close()
            assert len(records) == 5 and all("saliency/mask" in r for r in records)


@pytest.mark.slow
def test_summary_names_the_model_type_read_from_each_format(pilot_files):
    for model_type, by_suffix in pilot_files.items():
        trunks = [load_pilot(path).trunk for path in by_suffix.values()]
        assert {t.model_type for t in trunks} == {model_type}
        assert len({tuple(s.geometry for s in t.steps) for t in trunks}) == 1


def test_savedmodel_needs_tensorflow_and_says_so_in_one_line(tmp_path):
    saved = tmp_path / "pilot_savedmodel"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"\x08\x01")
    output = run_without_tensorflow("""
        from donkey_saliency.errors import ModelError
        from donkey_saliency.pilots import load_pilot
        try:
            load_pilot(%r)
        except ModelError as error:
            print(error)
    """ % str(saved))
    assert "needs TensorFlow" in output and len(output.strip().splitlines()) == 1


# --- activations ----------------------------------------------------------------------------------


def test_activations_match_the_reference_in_h5_and_tflite(tmp_path):
    model = activations_model()
    h5 = str(tmp_path / "activations.h5")
    model.save(h5)
    tflite = keras_to_tflite(model, tmp_path / "activations.tflite")
    frames = random_frames(2, (60, 80, 3), seed=9)
    for path in (h5, tflite):
        pilot = load_pilot(path)
        assert len(pilot.trunk.convs) == 7
        with backends.create(graph.export(pilot), "onnxruntime") as backend:
            mask = backend.infer(frames)["mask"]
        assert np.abs(mask - expected_mask(path, frames)).max() <= TOLERANCE, path


@pytest.mark.parametrize("suffix, name", [(".h5", "selu"), (".tflite", "gelu")])
def test_an_unsupported_activation_is_refused_naming_layer_and_activation(tmp_path, suffix, name):
    # (The TFLite converter writes selu as ELU and MUL, which the reader follows; GELU stays one op.)
    model = activations_model(last=name)
    path = str(tmp_path / (name + suffix))
    if suffix == ".h5":
        model.save(path)
    else:
        keras_to_tflite(model, path)
    with pytest.raises(ModelError) as caught:
        load_pilot(path)
    message = str(caught.value)
    assert "\n" not in message and "activation" in message
    assert "'%s'" % name in message
    if suffix == ".h5":
        assert "conv2d" in message


# --- quantized .tflite ----------------------------------------------------------------------------
def convert_tflite(model, path, quantization):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    path.write_bytes(converter.convert())
    return str(path)


@pytest.mark.parametrize("quantization", ["float16", "dynamic_range"])
def test_quantized_weights_are_dequantized(linear_pilot_path, tmp_path, quantization):
    """float16 weights run in float32 in the interpreter too: the reference's mask. Weight-only int8
    (dynamic range) pilots quantize activations on the fly in the interpreter, which the float graph
    does not: their masks differ a little (the measured bound is asserted)."""
    from donkeycar.parts.keras import default_n_linear

    import tensorflow as tf

    model = tf.keras.models.load_model(linear_pilot_path, compile=False)
    path = convert_tflite(model, tmp_path / ("linear_%s.tflite" % quantization), quantization)
    frames = random_frames(3, seed=4)
    pilot = load_pilot(path)
    with backends.create(graph.export(pilot), "onnxruntime") as backend:
        mask = backend.infer(frames)["mask"]
    difference = np.abs(mask - expected_mask(path, frames)).max()
    print("%s: max |mask - interpreter reference| = %.2e" % (quantization, difference))
    assert difference <= (TOLERANCE if quantization == "float16" else 0.05)
    assert default_n_linear  # donkey's own architecture is the one quantized


# --- the graph's format ---------------------------------------------------------------------------
def test_graph_stays_within_onnxruntime_1_10(linear_pilot_path):
    """onnxruntime 1.10 (the newest for Python 3.6, JetPack 4.6) reads IR <= 8 and opsets <= 15."""
    import onnx

    proto = onnx.load_from_string(graph.graph_for(linear_pilot_path, cache_dir=False).onnx_bytes)
    assert proto.ir_version <= 8
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 13)]
    for node in proto.graph.node:
        assert node.domain in ("", "ai.onnx")
        assert onnx.defs.get_schema(node.op_type, 13).since_version <= 13


def test_keras_3_config_layout_reads_the_same_trunk(linear_pilot_path):
    """Keras 3 writes inbound nodes as dicts of keras tensors; the reader follows both layouts."""
    from donkey_saliency.pilots.keras import KerasFile, keras_trunk, read

    keras2 = read(linear_pilot_path)
    config = json.loads(json.dumps(keras2.config))
    for layer in config["config"]["layers"]:
        layer["inbound_nodes"] = [{"args": [{"class_name": "__keras_tensor__",
                                             "config": {"keras_history": entry[:3]}} for entry in node],
                                   "kwargs": {}} for node in layer["inbound_nodes"]]
        if layer["class_name"] == "InputLayer":
            layer["config"]["batch_shape"] = layer["config"].pop("batch_input_shape")
    keras3 = keras_trunk(KerasFile(config, keras2.weights))
    assert [s.geometry for s in keras3.steps] == [s.geometry for s in keras_trunk(keras2).steps]
    assert keras3.model_type == "linear"
