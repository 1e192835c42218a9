"""Installing donkey-saliency on the cars Donkey owners drive changes nothing the car has, and the
part works there (README "Platforms").

Each car-like env (tests/car_envs.py: cached, keyed by what it installs) is copied, the project is
``pip install``ed into the copy from a copy of this checkout (built with the env's own pip and
setuptools), and tests/car_checks.py runs in it with the env's interpreter:

- Nano-like: Python 3.6, donkeycar 4.5.1 editable from ../shared/vendor, numpy 1.19, an OpenCV and
  tornado 6.1 already there; ``pip install .[runtime]`` (README's Jetson Nano row).
- Pi-like: Python 3.11, donkeycar 5.3.0, tflite-runtime, opencv-contrib-python-headless 4.9,
  numpy<2, no TensorFlow; ``pip install .[runtime]`` (README's Raspberry Pi row).

Pilots come from the dev env (TensorFlow makes them); the car envs have no TensorFlow, so their
graphs are built by the TensorFlow-free readers (pilots/), with the onnx the car's Python gets.
"""
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import car_envs

CHECKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "car_checks.py")
NOT_PROJECT = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", "test-artifacts", "demo-tub*")
OPENCV = re.compile(r"^opencv-(contrib-)?python(-headless)?$")

Installed = collections.namedtuple("Installed", "venv before after pip_output check_before")


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory):
    """This checkout's files, as a clean clone has them (pip builds in-tree: keep ours clean)."""
    destination = str(tmp_path_factory.mktemp("project") / "donkey-saliency")
    shutil.copytree(car_envs.PROJECT, destination, ignore=NOT_PROJECT)
    return destination


def install_into_car(name, tmp_path_factory, project, extra="runtime", constrained=False, upgrade_pip=False):
    """``pip install PROJECT[extra]`` into a copy of the car env; ``constrained``: under a constraints
    file of the car's own ``pip freeze`` (README; the Nano's editable donkeycar line cannot be one);
    ``upgrade_pip``: ``pip install -U pip`` first."""
    env = car_envs.ENVS[name]
    why = car_envs.missing(env)
    if why:
        pytest.skip(why)
    try:
        directory, _ = car_envs.ready(env)
    except subprocess.CalledProcessError as error:  # an x86 stand-in that cannot be built here
        pytest.skip("the %s stand-in cannot be built here: %s" % (name, error.output.decode()[-300:]))
    venv = car_envs.clone(directory, str(tmp_path_factory.mktemp(name) / "venv"))
    if upgrade_pip:
        car_envs.pip(venv, "install", "-U", "pip")
    before, check_before = car_envs.freeze(venv), pip_check(venv)
    constraints = []
    if constrained:
        constraints = ["-c", os.path.join(os.path.dirname(venv), "car.txt")]
        with open(constraints[1], "w") as handle:
            handle.write(car_envs.pip(venv, "freeze"))
    try:
        output = car_envs.pip(venv, "install", *(constraints + ["%s[%s]" % (project, extra)]))
    except subprocess.CalledProcessError as error:
        pytest.fail("the install failed:\n%s" % error.output.decode("utf-8", "replace")[-3000:])
    return Installed(venv, before, car_envs.freeze(venv), output, check_before)


@pytest.fixture(scope="module")
def nano(tmp_path_factory, project_copy):
    installed = install_into_car("nano", tmp_path_factory, project_copy)
    yield installed
    subprocess.run(["rm", "-rf", installed.venv])  # much faster than shutil.rmtree on ~20k files


@pytest.fixture(scope="module")
def pi(tmp_path_factory, project_copy):
    installed = install_into_car("pi", tmp_path_factory, project_copy, constrained=True)
    yield installed
    subprocess.run(["rm", "-rf", installed.venv])  # much faster than shutil.rmtree on ~20k files


@pytest.fixture(scope="module")
def onnx_pilot(tiny_pilot_path, tmp_path_factory):
    """The tiny pilot's fused graph, exported in the dev env (TensorFlow is there)."""
    from donkey_saliency.cli import main

    path = str(tmp_path_factory.mktemp("exported") / "tiny.onnx")
    assert main(["export", tiny_pilot_path, "--out", path]) == 0
    return path


@pytest.fixture(scope="module")
def tflite_pilot(tiny_pilot_path, tmp_path_factory):
    """The tiny pilot converted the way donkeycar converts a car's pilot for a Raspberry Pi."""
    from donkeycar.parts.interpreter import keras_model_to_tflite

    path = str(tmp_path_factory.mktemp("tflite") / "tiny.tflite")
    keras_model_to_tflite(tiny_pilot_path, path)
    return path


def car_environment(installed):
    """The car's process environment: a graph cache of its own, so that no graph the dev env built
    for the same pilot file (same content hash) is found there - the car builds its own."""
    return dict(os.environ, XDG_CACHE_HOME=tempfile.mkdtemp(prefix="car-cache-", dir=os.path.dirname(installed.venv)))


def run_check(installed, *args, timeout=300):
    """car_checks.py in the car env: its JSON facts (the last line of its stdout)."""
    result = subprocess.run([car_envs.python(installed.venv), CHECKS] + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=timeout, cwd=os.path.dirname(installed.venv),
                            env=car_environment(installed))
    lines = result.stdout.decode("utf-8", "replace").strip().splitlines()
    assert result.returncode == 0 and lines, result.stderr.decode("utf-8", "replace")[-3000:]
    return json.loads(lines[-1])


def changed_versions(installed):
    return {name: (version, installed.after.get(name)) for name, version in installed.before.items()
            if installed.after.get(name) != version}


def opencv_distributions(packages):
    return sorted(name for name in packages if OPENCV.match(name))


def pip_check(venv):
    result = subprocess.run([car_envs.python(venv), "-m", "pip", "check"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    return result.returncode, result.stdout.decode("utf-8", "replace").strip()


# --- Jetson Nano: Python 3.6, donkeycar 4.5.1 --------------------------------------------------------
@pytest.mark.slow
def test_nano_like_install_changes_nothing_the_car_has(nano):
    assert changed_versions(nano) == {}
    added = sorted(set(nano.after) - set(nano.before))
    assert "donkey-saliency" in added and "onnxruntime" in added, added
    assert nano.after["onnxruntime"] == "1.10.0" and nano.after["onnx"] == "1.11.0"  # the last for 3.6
    assert opencv_distributions(nano.after) == ["opencv-python-headless"]
    assert pip_check(nano.venv) == (0, "No broken requirements found.")


def assert_drove(facts, loops=200):
    assert facts["python"].startswith("3.6.") and facts["donkeycar"] == "4.5.1"
    assert facts["loops"] == loops and facts["records"] == loops
    assert facts["stats"]["status"] == "running" and facts["stats"]["errors"] == 0
    seqs = facts["jpeg_seqs"]
    assert len(seqs) >= 10 and len(set(seqs)) == len(seqs) and seqs == sorted(seqs)  # new frames only
    assert facts["jpeg_shapes"] == ["(120, 160, 3)"]
    assert facts["records_missing_saliency"] == 0 and facts["saliency_images_missing"] == 0
    # SALIENCY_DRIVE_VIEW: donkeycar 4.5.1's own /video shows the overlay, not the camera
    assert facts["overlay_vs_camera"] > 30
    assert facts["video_vs_overlay"] < facts["video_vs_camera"] / 2


@pytest.mark.slow
def test_nano_like_vehicle_streams_and_records_on_an_exported_graph(nano, onnx_pilot, tmp_path):
    assert_drove(run_check(nano, "drive", onnx_pilot, str(tmp_path / "tub")))


@pytest.mark.slow
def test_nano_like_vehicle_on_an_h5_pilot_without_tensorflow(nano, tiny_pilot_path, tmp_path):
    assert "tensorflow" not in nano.after
    assert_drove(run_check(nano, "drive", tiny_pilot_path, str(tmp_path / "tub")))


@pytest.mark.slow
def test_nano_like_car_commands_run_and_laptop_tools_refuse_in_one_line(nano, onnx_pilot, tmp_path):
    from car_checks import road_frame
    from donkey_saliency.util.images import write_png

    image = str(tmp_path / "frame.png")
    write_png(image, road_frame())
    python = car_envs.python(nano.venv)

    def cli(*args):
        return subprocess.run([python, "-m", "donkey_saliency.cli"] + list(args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=str(tmp_path), timeout=300, env=car_environment(nano))

    masked = cli("mask", onnx_pilot, image, "--out", str(tmp_path / "out"), "--backend", "onnxruntime")
    assert masked.returncode == 0, masked.stderr.decode()
    mask = np.load(str(tmp_path / "out" / "frame.npy"))
    assert mask.shape == (120, 160) and mask.dtype == np.float32 and 0.0 <= mask.min() <= mask.max() <= 1.0
    assert (tmp_path / "out" / "frame.png").is_file()
    # commands whose work is in tools/ (tests/unit/test_cli_boundary.py checks every one on a faked version)
    for arguments in (("bench",), ("demo",), ("backfill", "tub", "--model", onnx_pilot),
                      ("evaluate", "tub", "--model", onnx_pilot)):
        refused = cli(*arguments)
        lines = refused.stderr.decode().strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1, refused.stderr.decode()
        assert "needs Python 3.8 or newer (this is 3.6)" in lines[0]


def test_on_car_modules_are_python36(tmp_path):
    """Every module outside tools/ (the laptop tools: Python 3.8+, may use TensorFlow) compiles with
    Python 3.6 (the drive test imports most). The boundary is the folder, nothing else."""
    python36 = car_envs.ENVS["nano"].python
    if not os.access(python36, os.X_OK):
        pytest.skip("%s is absent (pyenv's 3.6.15)" % python36)
    package = os.path.join(car_envs.PROJECT, "donkey_saliency")
    tools = os.path.join(package, "tools")
    modules = [os.path.join(root, name) for root, _, names in os.walk(package) for name in names
               if name.endswith(".py") and not root.startswith(tools)]
    script = "import py_compile, sys\nfor p in sys.argv[1:]: py_compile.compile(p, cfile=%r, doraise=True)" % (
        str(tmp_path / "x.pyc"),)
    result = subprocess.run([python36, "-c", script] + modules, stderr=subprocess.PIPE)
    assert result.returncode == 0, result.stderr.decode()


# --- Raspberry Pi: Python 3.11, donkeycar 5.3, tflite-runtime ----------------------------------------
@pytest.mark.slow
def test_pi_like_install_changes_nothing_and_adds_no_second_opencv(pi):
    assert changed_versions(pi) == {}
    assert pi.after["numpy"].startswith("1.")
    assert opencv_distributions(pi.after) == ["opencv-contrib-python-headless"]
    assert "tensorflow" not in pi.after
    assert pip_check(pi.venv) == (0, "No broken requirements found.")


@pytest.mark.slow
def test_pi_like_masks_and_the_cars_tflite_pilot_still_runs(pi, onnx_pilot, tflite_pilot):
    facts = run_check(pi, "masks", onnx_pilot, "--car-pilot", tflite_pilot)
    assert facts["tensorflow_importable"] is False and facts["numpy"].startswith("1.")
    assert facts["mask"] == dict(shape=[120, 160], dtype="float32", min=0.0, max=1.0, finite=True)
    assert facts["part"]["error"] is None and facts["part"]["processed"] == 1
    assert facts["part"]["mask_shape"] == [120, 160] and facts["part"]["mask_max"] == 255
    assert len(facts["car_pilot_outputs"]) == 1 and len(facts["car_pilot_outputs"][0][0]) == 2


@pytest.mark.slow
def test_pi_like_masks_on_a_tflite_pilot_without_tensorflow(pi, tflite_pilot):
    facts = run_check(pi, "masks", tflite_pilot)
    assert facts["tensorflow_importable"] is False
    assert facts["mask"]["shape"] == [120, 160] and facts["mask"]["max"] == 1.0


# --- donkeycar 4.4: /drive shows cam/image_array ------------------------------------------------------
def test_drive_view_where_the_web_controller_shows_the_camera_key(tiny_pilot_path):
    """donkeycar 4.4's complete.py gives LocalWebController ``cam/image_array`` (4.5 and 5.x give it
    ``ui/image_array``). The overlay must still reach /drive's video, and the pilot must still get the
    camera's frame: the controller is pointed at a key of the toggle's own."""
    import threading
    from types import SimpleNamespace

    from donkeycar.parts.web_controller.web import LocalWebController
    from donkeycar.vehicle import Vehicle

    from helpers import Camera, donkeycar_video_or_skip, ImageProbe, wait_for
    from donkey_saliency import add_saliency
    from donkey_saliency.keys import DRIVE_IMAGE_KEY
    from donkey_saliency.testing import ServerThread
    from web_helpers import STOCK_VIDEO_CLOSE, camera_frame, mean_abs_diff, open_stream, request, stock_video_shows

    donkeycar_video_or_skip()
    frame = camera_frame()
    probe = ImageProbe()

    vehicle = Vehicle()
    vehicle.add(Camera(frame), outputs=["cam/image_array"])
    ctr = LocalWebController(port=0)
    controller_inputs = ["cam/image_array", "tub/num_records", "user/mode", "recording"]  # as 4.4 wires it
    vehicle.add(ctr, inputs=controller_inputs, outputs=["user/angle", "user/throttle", "user/mode", "recording"])
    cfg = SimpleNamespace(SALIENCY_BACKEND="onnxruntime", SALIENCY_DRIVE_VIEW=True, SALIENCY_RECORD=False)
    part = add_saliency(vehicle, cfg, ctr=ctr, model_path=tiny_pilot_path)
    vehicle.add(probe, inputs=["cam/image_array"])
    assert controller_inputs[0] == DRIVE_IMAGE_KEY
    server = ServerThread(ctr).start()
    drive = threading.Thread(target=vehicle.start, kwargs=dict(rate_hz=20, max_loop_count=20 * 120), daemon=True)
    drive.start()
    connection = None
    try:
        assert wait_for(lambda: part.latest is not None, timeout=20)
        overlay = part.latest.overlay
        connection, response = open_stream(server.port, "/video")

        shown = stock_video_shows(response, overlay)
        assert mean_abs_diff(shown, overlay) < STOCK_VIDEO_CLOSE and mean_abs_diff(shown, frame) > 30
        assert json.loads(request(server.port, "/saliency/drive_view", b'{"on": false}')) == {"drive_view": False}
        shown = stock_video_shows(response, frame)
        assert mean_abs_diff(shown, frame) < STOCK_VIDEO_CLOSE and mean_abs_diff(shown, overlay) > 30
    finally:
        if connection is not None:
            connection.close()
        vehicle.on = False
        drive.join(10)
        server.stop()
    assert probe.images and all(np.array_equal(image, frame) for image in probe.images)


def test_missing_opencv_is_one_line_saying_how_to_get_it(onnx_pilot, tmp_path):
    """A machine with no cv2 (``import cv2`` raises ImportError, as a bare laptop's would)."""
    script = ("import sys; sys.modules['cv2'] = None\n"
              "from donkey_saliency.cli import main\n"
              "sys.exit(main(sys.argv[1:]))")
    image = tmp_path / "frame.png"
    image.write_bytes(b"not read: cv2 is needed first")
    result = subprocess.run([sys.executable, "-c", script, "mask", onnx_pilot, str(image), "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr.decode()
    assert "OpenCV (cv2) is not importable" in lines[0] and "pip install 'donkey-saliency[opencv]'" in lines[0]


# --- today's cars: installed under a constraints file of the car's own packages ----------------------
Row = collections.namedtuple("Row", "env python donkeycar numpy opencv tensorflow upgrade_pip tflite")
Row.__doc__ = """env: car_envs name; python/donkeycar/numpy: version prefixes the car has; opencv: the OpenCV
distributions pip lists ([]: JetPack's, invisible to pip); tensorflow: its version prefix or None;
upgrade_pip: the row is the env with a current pip (``pip install -U pip``) before the install;
tflite: whether the car runs .tflite pilots (a JetPack 6 stand-in has no TFLite runtime)."""
ROWS = {
    "pi54-312": Row("pi54-312", "3.12.", "5.4.0", "2.", ["opencv-contrib-python-headless"], None, False, True),
    "pi54-313": Row("pi54-313", "3.13.", "5.4.0", "2.", ["opencv-contrib-python-headless"], None, False, True),
    "bullseye": Row("bullseye", "3.9.", "5.0.0", "1.", ["opencv-contrib-python-headless"], "2.9.", False, True),
    "jetpack5": Row("jetpack5", "3.8.", "5.0.0", "1.21.1", [], "2.9.", False, True),
    "jetpack5-current-pip": Row("jetpack5", "3.8.", "5.0.0", "1.21.1", [], "2.9.", True, True),
    "jetpack6": Row("jetpack6", "3.10.", "5.0.0", "1.", [], None, False, False),
    "laptop54": Row("laptop54", "3.12.", "5.4.0", "2.", ["opencv-python-headless"], "2.19.", False, True),
}


@pytest.fixture(scope="module")
def installs(tmp_path_factory, project_copy):
    """Each row installed once per module run, as the README says: {row name: (Row, Installed)}."""
    done = {}

    def get(name):
        if name not in done:
            row = ROWS[name]
            done[name] = row, install_into_car(row.env, tmp_path_factory, project_copy, constrained=True,
                                               upgrade_pip=row.upgrade_pip)
        return done[name]

    yield get
    for _, installed in done.values():
        subprocess.run(["rm", "-rf", installed.venv])


@pytest.fixture(scope="module", params=sorted(ROWS))
def car(request, installs):
    return installs(request.param)


@pytest.mark.slow
def test_installing_changes_nothing_the_car_has(car):
    row, installed = car
    assert changed_versions(installed) == {}, installed.pip_output[-2000:]
    added = set(installed.after) - set(installed.before)
    assert {"donkey-saliency", "onnxruntime"} <= added and "onnx" not in added, added  # protobuf only where absent
    assert installed.after["donkeycar"] == row.donkeycar and installed.after["numpy"].startswith(row.numpy)
    assert opencv_distributions(installed.after) == row.opencv
    code, text = pip_check(installed.venv)
    assert code == 0 or set(text.splitlines()) <= set(installed.check_before[1].splitlines()), installed.check_before


@pytest.mark.slow
def test_masks_and_the_cars_own_pilot_and_runtime_still_work(car, onnx_pilot, tflite_pilot):
    row, installed = car
    facts = run_check(installed, "masks", onnx_pilot, *(["--car-pilot", tflite_pilot] if row.tflite else []))
    assert facts["python"].startswith(row.python) and facts["numpy"].startswith(row.numpy)
    assert facts["mask"] == dict(shape=[120, 160], dtype="float32", min=0.0, max=1.0, finite=True)
    assert facts["part"]["error"] is None and facts["part"]["mask_max"] == 255
    if row.tflite:
        assert len(facts["car_pilot_outputs"]) == 1 and len(facts["car_pilot_outputs"][0][0]) == 2
    if row.tensorflow:  # the car's TensorFlow still imports: its protobuf and numpy were kept
        assert facts["tensorflow"].startswith(row.tensorflow)
    if not row.opencv:  # JetPack's cv2 is the one imported, not a pip one
        assert "system-packages" in facts["cv2"]["where"]


@pytest.mark.slow
def test_a_vehicle_drives_100_loops_with_saliency_in_every_record(car, tflite_pilot, tmp_path):
    row, installed = car
    facts = run_check(installed, "drive", tflite_pilot, str(tmp_path / "tub"), "--loops", "100", timeout=400)
    assert facts["donkeycar"] == row.donkeycar and facts["loops"] == 100 and facts["records"] == 100
    assert facts["stats"]["errors"] == 0 and len(facts["jpeg_seqs"]) >= 10
    assert facts["records_missing_saliency"] == 0 and facts["saliency_images_missing"] == 0
    if row.donkeycar == "5.4.0":  # its wheel lacks web_controller/templates/static: /video answers 500 upstream
        assert "video_error" in facts or facts["video_vs_overlay"] < facts["video_vs_camera"] / 2
    else:
        assert facts["video_vs_overlay"] < facts["video_vs_camera"] / 2


@pytest.mark.slow
def test_donkeycar_54_files_made_by_donkeycar_54(installs, tmp_path):
    """On the laptop 5.4 row (TensorFlow 2.19, Keras 3): the .tflite donkeycar 5.4 writes has no signature;
    saliency reads it as 5.4's TfLite does, with Keras' layer and model names, and the shared pilot gives
    5.4's own outputs; Keras 3's model.export() SavedModel is refused in one line."""
    row, installed = installs("laptop54")
    facts = run_check(installed, "donkeycar54", str(tmp_path), timeout=400)
    assert facts["signatures"] == {}
    assert facts["model_type"] == "linear" == facts["keras_model"]
    assert facts["layers"] == [n for n in facts["keras_layers"] if n.startswith("conv2d")]
    assert facts["outputs"] == ["0", "1"] and facts["mask_shape"] == [120, 160]
    np.testing.assert_allclose(facts["ours"], facts["theirs"], atol=1e-5)
    np.testing.assert_allclose(facts["review"], facts["theirs"], atol=1e-5)
    assert "Keras 3's model.export()" in facts["exported_refusal"] and "\n" not in facts["exported_refusal"]
