"""Shared fixtures: tiny in-test pilots, tubs, live servers, isolated caches. Plain helpers live in
helpers.py, pilot_helpers.py, tub_helpers.py and web_helpers.py (tests/ is on sys.path: this file's folder)."""
import importlib.util
import os

import pytest

from helpers import run_cli, tiny_keras_pilot
from pilot_helpers import donkey_models, keras_to_tflite
from tub_helpers import make_v2_tub, write_tub
from web_helpers import LiveServer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The tests' oracle is Keras 2: TensorFlow 2.15's own, or tf-keras beside TensorFlow 2.16+ (the 3.12/3.13
# dev envs; setup.cfg [dev]), where tf.keras would otherwise be Keras 3. Set before TensorFlow loads.
if importlib.util.find_spec("tf_keras") is not None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Graph/engine caches go to a per-session temp dir, never the user's home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


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
    path = str(tmp_path_factory.mktemp("pilots") / "tiny.h5")
    tiny_keras_pilot(lambda layers, x: layers.Dense(2, name="n_outputs0")(x)).save(path)
    return path


@pytest.fixture
def live(tiny_pilot_path):
    server = LiveServer(tiny_pilot_path)
    yield server
    server.close()


@pytest.fixture(scope="session")
def pilot_files(tmp_path_factory):
    """model type -> {suffix: path}: each donkey 2-D type saved as .h5 and .keras, and converted the
    way donkeycar does to .tflite (seeded weights)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(11)
    folder = tmp_path_factory.mktemp("all_types")
    files = {}
    for model_type, make in sorted(donkey_models().items()):
        model = make()
        files[model_type] = {}
        for suffix in (".h5", ".keras"):
            files[model_type][suffix] = str(folder / (model_type + suffix))
            model.save(files[model_type][suffix])
        files[model_type][".tflite"] = keras_to_tflite(model, folder / (model_type + ".tflite"))
    return files


@pytest.fixture(scope="module")
def tool_tubs(tmp_path_factory, tiny_pilot_path):
    """A small v2 tub (with pilot/angle, written by donkeycar's own Tub), and a run of the CLI that
    caches the exported graph for the subprocesses of this module."""
    base = tmp_path_factory.mktemp("tools")
    tub = make_v2_tub(base / "tub", count=12, deleted=(3,), max_len=5)
    warm = run_cli("render", tub, "--model", tiny_pilot_path, "--backend", "onnxruntime", "--out",
                   base / "warm.mp4", "--end", "2", "--scale", "1")
    assert warm.returncode == 0, warm.stderr
    return dict(base=base, tub=tub)


@pytest.fixture
def review_tub(tmp_path):
    """The review page's drive (tub_helpers.write_tub): a v2 tub with pilot values, overlays and deleted records."""
    return write_tub(tmp_path / "tub")
