"""Helpers every test folder uses: the CLI as a user runs it, real data (or a skip), bounded waits,
free ports, random frames and the tiny Keras pilot."""
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest


REALDATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "realdata", "tub_v1_linear")


REAL_PILOT = os.path.join(REALDATA, "mypilot.h5")


REAL_TUB = os.path.join(REALDATA, "tub")


PI_DATA = os.path.join(REALDATA, "..", "tub_v2_pi_linear")


PI_TUB = os.path.join(PI_DATA, "data")


PI_PILOTS = [os.path.join(PI_DATA, "models", name) for name in ("mypilot.tflite", "OFFICIAL_DEMO_MODEL.tflite")]


DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs")


CLI = [os.path.join(os.path.dirname(sys.executable), "donkey-saliency")]


def run_cli(*args, cwd=None):
    """``donkey-saliency ARGS`` as a user runs it (the installed console script); the finished process."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=300, env=env,
                          cwd=cwd)


def assert_one_line_exit_2(result, command):
    """The CLI contract for bad input: exit 2, exactly one line on stderr, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr)
    assert lines[0].startswith("donkey-saliency %s: " % command), lines[0]
    return lines[0]


def pi_data_or_skip():
    real_data_or_skip()
    if not os.path.isdir(PI_TUB):
        pytest.skip("../shared/realdata/tub_v2_pi_linear is absent")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


def tiny_keras_pilot(heads):
    """A small Keras pilot with donkey's input (img_in, 120x160x3): two strided convs (conv2d_1, conv2d_2),
    Flatten, then ``heads(layers, x)`` -> its outputs. Random weights."""
    import tensorflow as tf

    layers = tf.keras.layers
    inp = layers.Input((120, 160, 3), name="img_in")
    x = layers.Conv2D(8, 5, strides=2, activation="relu", name="conv2d_1")(inp)
    x = layers.Conv2D(8, 3, strides=2, activation="relu", name="conv2d_2")(x)
    return tf.keras.Model(inp, heads(layers, layers.Flatten()(x)))


class Camera(object):
    """A camera part for a real Vehicle: the same frame every loop."""

    def __init__(self, frame):
        self.frame = frame

    def run(self):
        return self.frame.copy()


class ImageProbe(object):
    """A part that keeps every image it is given: what a pilot added at its place would be given."""

    def __init__(self):
        self.images = []

    def run(self, image):
        self.images.append(image)


def find_python(version, pyenv_version):
    """A ``python<version>`` interpreter that runs (pyenv's ``pyenv_version`` build, else one on PATH), or
    None: the car Pythons (3.6 for a Jetson Nano, 3.8 for JetPack 5) that some tests check against."""
    import shutil

    for candidate in (os.path.expanduser("~/.pyenv/versions/%s/bin/python%s" % (pyenv_version, version)),
                      shutil.which("python%s" % version)):
        if candidate and os.path.exists(candidate):
            probe = subprocess.run([candidate, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   universal_newlines=True, env=dict(os.environ, PYENV_VERSION=pyenv_version))
            if probe.returncode == 0 and version in probe.stdout:
                return candidate
    return None
