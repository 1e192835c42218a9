"""Shared fixtures: tiny in-test pilots, real frames, isolated caches."""
import importlib.util
import os
import time

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The tests' oracle is Keras 2: TensorFlow 2.15's own, or tf-keras beside TensorFlow 2.16+ (the 3.12/3.13
# dev envs; setup.cfg [dev]), where tf.keras would otherwise be Keras 3. Set before TensorFlow loads.
if importlib.util.find_spec("tf_keras") is not None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

REALDATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "realdata", "tub_v1_linear")
REAL_PILOT = os.path.join(REALDATA, "mypilot.h5")
REAL_TUB = os.path.join(REALDATA, "tub")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Graph/engine caches go to a per-session temp dir, never the user's home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def donkeycar_video_or_skip():
    """donkeycar 5.4.0's wheel lacks web_controller/templates/static/, so its own /video answers 500
    (it reads a placeholder image from there): an upstream packaging bug the tests cannot work around."""
    import donkeycar
    from donkeycar.parts.web_controller import web

    static = os.path.join(os.path.dirname(web.__file__), "templates", "static")
    if not os.path.isdir(static):
        pytest.skip("donkeycar %s lacks %s, so its own /video answers 500 (upstream packaging bug)"
                    % (donkeycar.__version__, static))


def tflite_output_names(path, keras_names):
    """The output names donkeycar's TfLite gives a .tflite: the Keras names its signature keeps, or, in
    a file without one (donkeycar 5.4's converter), '0', '1', ... by tensor index."""
    import tensorflow as tf

    if tf.lite.Interpreter(model_path=str(path)).get_signature_list():
        return list(keras_names)
    return [str(i) for i in range(len(keras_names))]


def wait_for(condition, timeout=10.0):
    """Bounded wait for another thread's work; returns whether ``condition`` came true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def real_data_or_skip():
    if not os.path.exists(REAL_PILOT):
        pytest.skip("../shared/realdata is absent (it exists only in the project's CI and dev machines)")
    return REAL_PILOT, REAL_TUB


def real_frames(count=8):
    """RGB uint8 frames from the real v1 tub."""
    import cv2

    real_data_or_skip()
    names = sorted(n for n in os.listdir(REAL_TUB) if n.endswith(".jpg"))[:count]
    return np.stack([cv2.cvtColor(cv2.imread(os.path.join(REAL_TUB, n)), cv2.COLOR_BGR2RGB) for n in names])


def random_frames(count, shape=(120, 160, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count,) + tuple(shape), dtype=np.uint8)


@pytest.fixture(scope="session")
def linear_pilot_path(tmp_path_factory):
    """donkey's default linear architecture, random weights, saved as .h5."""
    from donkeycar.parts.keras import default_n_linear

    path = str(tmp_path_factory.mktemp("pilots") / "linear.h5")
    default_n_linear(2).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_pilot_path(tmp_path_factory):
    """A small conv net (fast to export) with donkey's shape of input."""
    import tensorflow as tf

    layers = tf.keras.layers
    inp = layers.Input((120, 160, 3), name="img_in")
    x = layers.Conv2D(8, 5, strides=2, activation="relu", name="conv2d_1")(inp)
    x = layers.Conv2D(8, 3, strides=2, activation="relu", name="conv2d_2")(x)
    x = layers.Flatten()(x)
    out = layers.Dense(2, name="n_outputs0")(x)
    path = str(tmp_path_factory.mktemp("pilots") / "tiny.h5")
    tf.keras.Model(inp, out).save(path)
    return path
