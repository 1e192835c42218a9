"""The CLI contracts of DESIGN.md, run as a user runs them: the installed console script."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from helpers import find_python, random_frames, real_data_or_skip, run_cli
from donkey_saliency import config, load


def write_images(directory, count=2):
    paths = []
    for i, frame in enumerate(random_frames(count, (90, 120, 3), seed=7)):  # not the model's size
        path = str(directory / ("frame_%d.jpg" % i))
        cv2.imwrite(path, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def test_mask_writes_npy_and_png_matching_the_api(tiny_pilot_path, tmp_path):
    images = write_images(tmp_path)
    out = tmp_path / "out"
    result = run_cli("mask", tiny_pilot_path, *images, "--out", out, "--backend", "onnxruntime")
    assert result.returncode == 0, result.stderr
    with load(tiny_pilot_path, backend="onnxruntime") as saliency:
        for path in images:
            stem = os.path.splitext(os.path.basename(path))[0]
            mask = np.load(str(out / (stem + ".npy")))
            assert mask.dtype == np.float32 and mask.shape == (120, 160)
            assert mask.min() >= 0 and mask.max() <= 1
            rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
            np.testing.assert_allclose(mask, saliency.mask(rgb), atol=1e-6)
            png = cv2.imread(str(out / (stem + ".png")))
            assert png.shape == (90, 120, 3)  # the overlay is drawn on the image as given


def test_summary_prints_geometry_and_receptive_field():
    pilot, _ = real_data_or_skip()
    result = run_cli("summary", pilot)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "receptive field" in lines[1]
    conv5 = [l for l in lines if l.startswith("conv2d_5")][0].split()
    # k3 s1 valid; 8x13x64; receptive field of the linear trunk: 3+2+4*... computed by hand = 61x61 (jump 8)
    assert conv5[1:6] == ["conv", "3x3", "1x1", "valid", "8x13x64"]
    assert conv5[6:] == ["61x61", "8x8", "relu"]  # then: the activation read from the file


def test_export_writes_a_graph_the_api_loads(tiny_pilot_path, tmp_path):
    out = tmp_path / "tiny.saliency.onnx"
    result = run_cli("export", tiny_pilot_path, "--out", out)
    assert result.returncode == 0, result.stderr
    frame = random_frames(1)[0]
    with load(str(out), backend="onnxruntime") as from_onnx, load(tiny_pilot_path, backend="onnxruntime") as direct:
        np.testing.assert_array_equal(from_onnx.mask(frame), direct.mask(frame))


def bad_inputs(tmp_path, tiny_pilot_path):
    import tensorflow as tf

    image = write_images(tmp_path, 1)[0]
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n" + os.urandom(300))
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is text, not a JPEG")
    inp = tf.keras.layers.Input((120, 160, 3))
    dense_only = tmp_path / "dense_only.h5"
    tf.keras.Model(inp, tf.keras.layers.Dense(2)(tf.keras.layers.Flatten()(inp))).save(str(dense_only))
    return {
        "missing model": ["mask", tmp_path / "missing.h5", image],
        "corrupt model": ["mask", corrupt, image],
        "no conv layer": ["mask", dense_only, image],
        "missing image": ["mask", tiny_pilot_path, tmp_path / "missing.jpg"],
        "not an image": ["mask", tiny_pilot_path, image, not_image],
        "summary of corrupt": ["summary", corrupt],
        "export of no conv": ["export", dense_only],
    }


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tiny_pilot_path, tmp_path):
    for name, args in bad_inputs(tmp_path, tiny_pilot_path).items():
        out = tmp_path / ("out_" + name.replace(" ", "_"))
        target = ["--out", out / "g.onnx"] if args[0] == "export" else (["--out", out] if args[0] == "mask" else [])
        result = run_cli(*(args + target))
        assert result.returncode == 2, (name, result.stderr)
        lines = [l for l in result.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("donkey-saliency"), (name, result.stderr)
        assert not out.exists() or not any(out.iterdir()), name


def test_config_snippet_matches_defaults():
    snippet = os.path.join(os.path.dirname(__file__), "..", "myconfig_snippets", "saliency.py")
    values = {}
    exec(compile(open(snippet).read(), snippet, "exec"), {}, values)
    assert values == config.DEFAULTS


def test_import_needs_numpy_only():
    code = ("import sys, donkey_saliency, donkey_saliency.backends, donkey_saliency.config;"
            "heavy = {'tensorflow', 'onnxruntime', 'onnx', 'cv2', 'tornado', 'donkeycar', 'tensorrt', 'pycuda'};"
            "print(sorted(heavy & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.slow
def test_every_module_imports_on_python_3_8(tmp_path):
    """JetPack 5's Python: the package (numpy only at import time) must import there."""
    python38 = find_python("3.8", "3.8.18")
    if python38 is None:
        pytest.skip("no python3.8 interpreter on this machine (JetPack 5's Python)")
    venv = tmp_path / "py38"
    env = dict(os.environ, PYENV_VERSION="3.8.18")
    subprocess.run([python38, "-m", "venv", str(venv)], check=True, env=env, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "numpy"], capture_output=True, text=True,
                         timeout=300)
    if pip.returncode != 0:
        pytest.skip("could not install numpy for python3.8: " + (pip.stderr.strip().splitlines() or ["?"])[-1])
    root = os.path.join(os.path.dirname(__file__), "..")
    modules = sorted("donkey_saliency." + os.path.relpath(os.path.join(folder, name), os.path.join(root, "donkey_saliency"))
                     [:-3].replace(os.sep, ".") for folder, _, files in os.walk(os.path.join(root, "donkey_saliency"))
                     for name in files if name.endswith(".py") and name != "__init__.py")
    code = "import importlib\nfor name in %r:\n    importlib.import_module(name)\nprint(len(%r))" % (modules, modules)
    result = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                            cwd=root, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(len(modules))


def test_package_source_parses_as_python_3_8():
    import ast

    root = os.path.join(os.path.dirname(__file__), "..", "donkey_saliency")
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                ast.parse(open(path).read(), filename=path, feature_version=(3, 8))
