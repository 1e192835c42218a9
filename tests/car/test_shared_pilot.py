"""The whole pilot as one graph: donkeycar's own pilot classes on the SaliencyInterpreter give what they
give on donkeycar's interpreters (KerasInterpreter for .h5, TfLite for .tflite), and the mask of the
same pass is the standalone mask. Also the part's side: accept_mask and SALIENCY_SYNC_MS."""
import os
import sys
import time

import numpy as np
import pytest

from helpers import real_data_or_skip, real_frames, tflite_output_names, wait_for
from pilot_helpers import donkey_models

import donkey_saliency
from donkey_saliency.errors import ModelError
from donkey_saliency.compute.methods import degrid
from donkey_saliency.pilots import load_pilot

OUTPUT_TOLERANCE = 1e-5
MASK_TOLERANCE = 1e-6
# What each type's run() takes besides the frame (donkeycar's complete.py feeds these keys).
EXTRA_INPUTS = {"imu": lambda i: [np.linspace(-1, 1, 6) * (i + 1) / 8.0],
                "behavior": lambda i: [np.eye(3)[i % 3]]}


@pytest.fixture(scope="session")
def pilot_files(tmp_path_factory):
    """model type -> {'.h5': path, '.tflite': path}: donkey's 2-D types, seeded weights, converted the
    way donkeycar converts."""
    import tensorflow as tf
    from donkeycar.parts.interpreter import keras_to_tflite

    tf.keras.utils.set_random_seed(5)
    folder = tmp_path_factory.mktemp("shared")
    files = {}
    for model_type, make in sorted(donkey_models().items()):
        model = make()
        h5, tflite = str(folder / (model_type + ".h5")), str(folder / (model_type + ".tflite"))
        model.save(h5)
        keras_to_tflite(model, tflite)
        files[model_type] = {".h5": h5, ".tflite": tflite}
    return files


def donkey_config():
    import donkeycar as dk

    cfg = dk.load_config(config_path=os.path.join(os.path.dirname(dk.__file__), "templates", "cfg_complete.py"))
    cfg.BEHAVIOR_LIST = ["left", "center", "right"]
    cfg.NUM_LOCATIONS = 8
    return cfg


def same(a, b):
    """run() results are equal in kind (tuple of floats / NumPy scalars / ints) and within tolerance."""
    assert type(a) is type(b) and len(a) == len(b), (a, b)
    for x, y in zip(a, b):
        assert type(x) is type(y) and np.shape(x) == np.shape(y), (type(x), type(y), np.shape(x), np.shape(y))
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), atol=OUTPUT_TOLERANCE,
                                   rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".h5", ".tflite"])
@pytest.mark.parametrize("model_type", sorted(donkey_models()))
def test_donkeycar_pilot_on_the_saliency_interpreter_matches_its_own_interpreter(pilot_files, model_type, suffix):
    from donkeycar.utils import get_model_by_type

    frames = real_frames(8)
    path = pilot_files[model_type][suffix]
    donkey_type = model_type if suffix == ".h5" else "tflite_" + model_type
    cfg = donkey_config()
    stock = get_model_by_type(donkey_type, cfg)
    stock.load(path)
    shared = donkey_saliency.shared_pilot(path, donkey_type, cfg=cfg, backend="onnxruntime")
    assert type(shared) is type(stock) and type(shared.interpreter).__name__ == "SaliencyInterpreter"
    assert shared.interpreter.input_keys == stock.interpreter.input_keys
    assert shared.interpreter.output_keys == stock.interpreter.output_keys
    standalone = donkey_saliency.load(path, backend="onnxruntime", method="vbp")
    # One pilot object each over the whole sequence: a memory pilot feeds its outputs back in.
    for i, frame in enumerate(frames):
        extra = EXTRA_INPUTS.get(model_type, lambda i: [])(i)
        same(shared.run(frame, *extra), stock.run(frame, *extra))
        mask = shared.interpreter.latest_mask
        assert mask.dtype == np.float32 and mask.shape == (120, 160)
        np.testing.assert_allclose(degrid(mask[None])[0], standalone.mask(frame), atol=MASK_TOLERANCE, rtol=0)
    if model_type == "memory":
        np.testing.assert_allclose(np.array(shared.mem_seq), np.array(stock.mem_seq), atol=OUTPUT_TOLERANCE)
    standalone.close()


@pytest.mark.slow
def test_input_shapes_are_given_as_each_interpreter_gives_them(pilot_files):
    cfg = donkey_config()
    keras = donkey_saliency.shared_pilot(pilot_files["memory"][".h5"], "memory", cfg=cfg, backend="onnxruntime")
    assert keras.get_input_shape("img_in") == (None, 120, 160, 3) and keras.get_input_shape("mem_in") == (None, 6)
    tflite = donkey_saliency.shared_pilot(pilot_files["memory"][".tflite"], "tflite_memory", cfg=cfg,
                                          backend="onnxruntime")
    assert tflite.get_input_shape("mem_in").tolist() == [1, 6] and tflite.mem_length == 3


@pytest.mark.slow
def test_model_type_defaults_to_what_the_file_says(pilot_files):
    pilot = donkey_saliency.shared_pilot(pilot_files["categorical"][".tflite"], backend="onnxruntime")
    assert type(pilot).__name__ == "KerasCategorical"


@pytest.mark.slow
def test_whole_pilot_runs_without_tensorflow(pilot_files):
    """The interpreter itself needs no TensorFlow: the whole-pilot graph is read and run in a process
    where TensorFlow cannot be imported (donkeycar's pilot classes import it, so they are left out)."""
    from pilot_helpers import run_without_tensorflow

    script = """
        import numpy as np
        from donkey_saliency.car import interpreter
        from donkey_saliency.compute.graph import graph_for
        from donkey_saliency import backends
        graph = graph_for(%r, whole=True, float_input=True)
        backend = backends.create(graph, "onnxruntime")
        out = backend.infer(np.zeros((1, 120, 160, 3), np.float32), {"mem_in": np.zeros((1, 6), np.float32)})
        print(sorted(graph.pilot["outputs"]), out[graph.pilot["outputs"][0]].shape, out["mask"].shape)
    """ % pilot_files["memory"][".tflite"]
    names = tflite_output_names(pilot_files["memory"][".tflite"], ["n_outputs0", "n_outputs1"])
    assert run_without_tensorflow(script).strip() == "%s (1, 1) (1, 120, 160)" % names


def test_layers_past_the_trunk_outside_donkey_pilots_are_refused_naming_the_layer(tmp_path):
    import tensorflow as tf

    layers = tf.keras.layers
    inp = layers.Input((60, 80, 3), name="img_in")
    x = layers.Conv2D(4, 3, strides=2, activation="relu", name="c1")(inp)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(8, name="d1")(x)
    x = layers.BatchNormalization(name="odd_bn")(x)
    out = layers.Dense(1, name="n_outputs0")(x)
    path = str(tmp_path / "odd.h5")
    tf.keras.Model(inp, out).save(path)
    with pytest.raises(ModelError) as error:
        load_pilot(path, whole=True)
    message = str(error.value)
    assert "\n" not in message and "odd_bn" in message and "BatchNormalization" in message
    load_pilot(path)  # the trunk alone (the part's own pass) still reads


@pytest.mark.slow
def test_trunk_graph_is_unchanged_by_the_whole_pilot_reader(pilot_files):
    """The part's own pass keeps its graph (and cache key): the whole pilot is a separate graph."""
    from donkey_saliency import backends
    from donkey_saliency.api import Saliency
    from donkey_saliency.compute.graph import graph_for

    trunk = graph_for(pilot_files["linear"][".h5"], cache_dir=False)
    whole = graph_for(pilot_files["linear"][".h5"], cache_dir=False, whole=True)
    assert trunk.pilot is None and whole.pilot["outputs"] == ["n_outputs0", "n_outputs1"]
    frames = real_frames(2)
    with Saliency(trunk, backends.create(trunk, "onnxruntime"), method="vbp") as a, \
            Saliency(whole, backends.create(whole, "onnxruntime"), method="vbp") as b:
        np.testing.assert_array_equal(a.masks(frames), b.masks(frames))


# --- the part's side --------------------------------------------------------------------------------

def started_part(model_path, **options):
    import threading

    part = donkey_saliency.SaliencyPart(model_path, backend="onnxruntime", **options)
    thread = threading.Thread(target=part.update, daemon=True)
    thread.start()
    return part, thread


@pytest.mark.slow
def test_accepted_mask_is_recorded_with_its_own_frame_and_streamed(pilot_files):
    """What SALIENCY_SHARE_PILOT wires: the interpreter's listener hands each mask to the part, and the
    loop's run_threaded returns that frame's mask with lag 0 without a pass of its own."""
    from donkey_saliency.compute.overlay import mask_to_uint8

    path = pilot_files["linear"][".h5"]
    pilot = donkey_saliency.shared_pilot(path, "linear", backend="onnxruntime")
    part, thread = started_part(path, method="vbp")  # the method the pilot's own pass computes
    streamed = []
    part.add_listener(streamed.append)
    pilot.interpreter.add_listener(part.accept_mask)
    try:
        for frame in real_frames(6):
            pilot.run(frame)
            overlay, mask_u8, _, lag_ms = part.run_threaded(frame)
            assert lag_ms == 0.0
            np.testing.assert_array_equal(mask_u8, mask_to_uint8(degrid(pilot.interpreter.latest_mask[None])[0]))
            assert overlay.shape == frame.shape and overlay.dtype == np.uint8
        assert wait_for(lambda: len(streamed) == 6 or not part.busy)
        assert streamed[-1].mask is not None and np.array_equal(streamed[-1].frame, frame)
        assert part.stats()["processed"] >= 1
    finally:
        part.shutdown()
        thread.join(10)


@pytest.mark.slow
@pytest.mark.parametrize("sync_ms", [0, 2000])
def test_sync_ms_records_the_current_frame_when_it_is_ready_in_time(pilot_files, sync_ms):
    """User mode: with SALIENCY_SYNC_MS the loop waits (bounded) for this frame's mask; with 0 it never
    waits, so the first frame has no mask yet."""
    part, thread = started_part(pilot_files["linear"][".h5"], sync_ms=sync_ms)
    try:
        frames = real_frames(3)
        started = time.monotonic()
        _, mask_u8, _, lag_ms = part.run_threaded(frames[0])
        if sync_ms:
            assert lag_ms == 0.0 and mask_u8.any()
            standalone = donkey_saliency.load(pilot_files["linear"][".h5"], backend="onnxruntime")
            from donkey_saliency.compute.overlay import mask_to_uint8

            np.testing.assert_array_equal(mask_u8, mask_to_uint8(standalone.mask(frames[0])))
        else:
            assert lag_ms == -1.0 and time.monotonic() - started < 1.0
    finally:
        part.shutdown()
        thread.join(10)


@pytest.mark.slow
def test_a_pilot_file_the_interpreter_cannot_read_leaves_the_stock_interpreter(tmp_path, pilot_files, caplog):
    """SALIENCY_SHARE_PILOT with a pilot it cannot share: one warning, the car keeps donkeycar's interpreter."""
    from donkeycar.parts.interpreter import KerasInterpreter
    from donkeycar.parts.keras import KerasLinear
    from donkeycar.vehicle import Vehicle

    from donkey_saliency.car.vehicle import share_pilot_pass

    pilot = KerasLinear(interpreter=KerasInterpreter())
    V = Vehicle()
    V.add(pilot, inputs=["cam/image_array"], outputs=["pilot/angle", "pilot/throttle"])
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not a pilot")
    part = donkey_saliency.SaliencyPart(pilot_files["linear"][".h5"], backend="onnxruntime")
    assert share_pilot_pass(V, part, str(broken), "onnxruntime", {}) is None
    assert type(pilot.interpreter).__name__ == "KerasInterpreter"
    assert any("keeps its own interpreter" in r.getMessage() for r in caplog.records)


VENDORED_DONKEYCAR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "vendor",
                                  "donkeycar-4.5.1.tar.gz")


@pytest.mark.slow
def test_donkeycar_4_5_interface_gives_the_same_outputs(pilot_files, tmp_path):
    """donkeycar 4.5.1 (Jetson Nano cars) calls ``predict(img, other)`` and ``get_input_shapes()``: its own
    KerasLinear / KerasMemory / KerasCategorical run the same on the SaliencyInterpreter as on its
    KerasInterpreter. The release's source is run from the vendored tarball."""
    import subprocess
    import tarfile

    if not os.path.exists(VENDORED_DONKEYCAR):
        pytest.skip("../shared/vendor/donkeycar-4.5.1.tar.gz is absent")
    with tarfile.open(VENDORED_DONKEYCAR) as archive:
        archive.extractall(str(tmp_path))
    source = [os.path.join(str(tmp_path), n) for n in os.listdir(str(tmp_path)) if n.startswith("donkeycar")][0]
    # donkeycar 4.5.1's __init__ reads its version through setuptools' pkg_resources, which newer
    # setuptools dropped; a two-line stand-in gives it a version string (nothing else uses it).
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "pkg_resources.py").write_text(
        "class _D(object):\n    version = '4.5.1'\n\ndef get_distribution(name):\n    return _D()\n")
    script = """
import sys
sys.path[:0] = [%r, %r, %r]
import numpy as np
import donkeycar
assert donkeycar.__file__.startswith(%r), donkeycar.__file__
from donkeycar.parts.interpreter import KerasInterpreter
from donkeycar.parts.keras import KerasCategorical, KerasLinear, KerasMemory
from donkey_saliency.car.interpreter import SaliencyInterpreter
frames = np.load(%r)
for cls, path in ((KerasLinear, %r), (KerasMemory, %r), (KerasCategorical, %r)):
    stock, shared = cls(interpreter=KerasInterpreter()), cls(interpreter=SaliencyInterpreter(backend="onnxruntime"))
    stock.load(path)
    shared.load(path)
    for frame in frames:
        a, b = stock.run(frame), shared.run(frame)
        assert np.allclose(np.array(a, float), np.array(b, float), atol=1e-5, rtol=0), (cls, a, b)
print("same")
""" % (str(shim), source, os.path.join(os.path.dirname(__file__), "..", ".."), source, str(tmp_path / "frames.npy"),
       pilot_files["linear"][".h5"], pilot_files["memory"][".h5"], pilot_files["categorical"][".h5"])
    np.save(str(tmp_path / "frames.npy"), real_frames(4))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0 and result.stdout.strip().endswith("same"), result.stderr[-3000:]


def custom_pilot():
    """Past its last map the image path still has a BatchNormalization and a pooling; a second input
    goes through its own Dense; outputs: a softmax and a sigmoid."""
    import tensorflow as tf

    layers = tf.keras.layers
    img = layers.Input((60, 80, 3), name="img_in")
    extra = layers.Input((4,), name="mem_in")
    x = layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="c1")(img)
    x = layers.Conv2D(8, 3, strides=2, activation="relu", name="c2")(x)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flat")(x)
    y = layers.Dense(5, activation="tanh", name="extra_dense")(extra)
    z = layers.Concatenate(name="join")([x, y])
    z = layers.Dense(16, activation="elu", name="d1")(z)
    z = layers.Dropout(0.1)(z)
    outputs = [layers.Dense(7, activation="softmax", name="angle_out")(z),
               layers.Dense(1, activation="sigmoid", name="throttle_out")(z)]
    model = tf.keras.Model([img, extra], outputs, name="custom")
    # BatchNormalization with statistics that are not the identity.
    bn = model.get_layer("bn")
    rng = np.random.default_rng(3)
    bn.set_weights([rng.uniform(0.5, 2, 8), rng.normal(0, 0.3, 8), rng.normal(0, 0.2, 8), rng.uniform(0.5, 2, 8)])
    return model


@pytest.mark.parametrize("suffix", [".h5", ".tflite"])
def test_layers_after_the_last_map_run_in_the_whole_pilot_graph(tmp_path, suffix):
    """uint8 whole-pilot graph against the pilot's own framework (Keras, or the TFLite interpreter)."""
    import tensorflow as tf

    from donkey_saliency import backends
    from donkey_saliency.compute.graph import graph_for

    tf.keras.utils.set_random_seed(3)
    model = custom_pilot()
    path = str(tmp_path / ("custom" + suffix))
    if suffix == ".h5":
        model.save(path)
    else:
        from donkeycar.parts.interpreter import keras_to_tflite

        keras_to_tflite(model, path)
    graph = graph_for(path, cache_dir=False, whole=True)
    names = ["angle_out", "throttle_out"]
    assert graph.pilot["outputs"] == (names if suffix == ".h5" else tflite_output_names(path, names))
    assert not graph.float_input
    frames = np.stack([f[::2, ::2] for f in real_frames(3)])
    memory = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    expected = model([frames.astype(np.float32) / 255.0, memory], training=False)
    backend = backends.create(graph, "onnxruntime")
    for i in range(len(frames)):  # batch 1, as the car runs it
        got = backend.infer(frames[i:i + 1], {"mem_in": memory[i:i + 1]})
        for name, want in zip(graph.pilot["outputs"], expected):
            np.testing.assert_allclose(got[name][0], np.asarray(want)[i], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_bench_script_times_today_against_the_shared_pass(pilot_files, capsys):
    """scripts/bench_shared.py runs end to end on real frames and reports every figure (no timing is
    asserted: speed targets live in the bench, not in tests)."""
    _, tub = real_data_or_skip()
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
    try:
        import bench_shared
    finally:
        sys.path.pop(0)
    rows = bench_shared.main(["--model", pilot_files["linear"][".h5"], "--model", pilot_files["linear"][".tflite"],
                              "--tub", tub, "--frames", "12"])
    assert [row["interpreter"] for row in rows] == ["KerasInterpreter", "TfLite"]
    for row in rows:
        for key in ("pilot_stock_ms", "mask_separate_ms", "a_today_ms", "b_shared_ms", "graph_whole_ms",
                    "graph_pilot_only_ms"):
            assert row[key] > 0, key
        assert row["ratio_a_over_b"] == row["a_today_ms"] / row["b_shared_ms"]
    assert "saliency's added cost" in capsys.readouterr().out


@pytest.mark.slow
def test_with_a_gradient_method_the_loop_runs_the_pilot_alone(pilot_files):
    """SALIENCY_SHARE_PILOT with a gradient method: the interpreter's pass is the pilot without the
    saliency head (same outputs, no mask), so the backward pass stays in the part's worker."""
    import onnx

    from donkey_saliency.car.interpreter import SaliencyInterpreter

    path = pilot_files["linear"][".h5"]
    alone = SaliencyInterpreter(backend="onnxruntime", head=False)
    alone.load(path)
    with_head = SaliencyInterpreter(backend="onnxruntime")
    with_head.load(path)
    proto = onnx.load_from_string(alone.graph.onnx_bytes)
    assert [o.name for o in proto.graph.output] == ["n_outputs0", "n_outputs1"]
    assert not {"ConvTranspose", "ReduceMax", "ReduceMin"} & {node.op_type for node in proto.graph.node}  # no head
    image = real_frames(1)[0].astype(np.float32) / 255.0
    np.testing.assert_allclose(alone.predict(image), with_head.predict(image), atol=1e-6)
    assert alone.latest_mask is None and with_head.latest_mask is not None
