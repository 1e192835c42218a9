"""The README's installation, done as a user does it: a car from `donkey createcar --template
complete`, the README's manage.py lines pasted in, `python manage.py drive --model ...` with a mock
camera and drivetrain, recording switched on through the web UI, the tub read back with donkeycar."""
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from helpers import free_port

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
BIN = os.path.dirname(sys.executable)


def readme_manage_py_lines():
    """The lines the README tells users to add (marked '# <- add'), without the marker."""
    text = open(os.path.join(ROOT, "README.md")).read()
    lines = [l.split("#")[0].rstrip() for l in text.splitlines() if l.rstrip().endswith("# <- add")]
    assert len(lines) == 2, lines
    return lines


def get_json(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode())


def switch_recording_on(port):
    """What the record button in donkey's web UI sends: a message on its /wsDrive websocket."""
    import asyncio

    import tornado.websocket

    async def send():
        connection = await asyncio.wait_for(
            tornado.websocket.websocket_connect("ws://127.0.0.1:%d/wsDrive" % port), timeout=10)
        await connection.write_message(json.dumps({"recording": True}))
        connection.close()

    asyncio.run(send())


@pytest.fixture
def car(tmp_path, linear_pilot_path):
    return make_car(tmp_path, linear_pilot_path, ['CAMERA_TYPE = "MOCK"'])


def make_car(tmp_path, pilot, config_lines):
    """`donkey createcar --template complete` with the README's lines, mock drivetrain, web on a free port."""
    path = tmp_path / "mycar"
    subprocess.run([os.path.join(BIN, "donkey"), "createcar", "--path", str(path), "--template", "complete"],
                   check=True, capture_output=True, timeout=120)
    manage = (path / "manage.py").read_text()
    anchor = "    tub_path = TubHandler(path=cfg.DATA_PATH).create_tub_path() if \\"
    assert manage.count(anchor) == 1, "donkeycar's complete.py template changed: update the README"
    manage = manage.replace(anchor, "\n".join(readme_manage_py_lines()) + "\n" + anchor)
    (path / "manage.py").write_text(manage)
    port = free_port()
    with open(str(path / "myconfig.py"), "a") as config:
        config.write("\n".join(list(config_lines) + [
            'DRIVE_TRAIN_TYPE = "mock"', "USE_JOYSTICK_AS_DEFAULT = False",
            "MAX_LOOPS = 240", "WEB_CONTROL_PORT = %d" % port, 'WEB_INIT_MODE = "local"',
            "AUTO_RECORD_ON_THROTTLE = False", "RECORD_DURING_AI = True",
            'SALIENCY_BACKEND = "onnxruntime"', ""]))
    return dict(path=path, port=port, pilot=pilot)


def read_video_frame(port):
    """One frame of /saliency/video as served by the car's own web server (donkeycar's ctr.update()):
    (its headers, the decoded RGB picture)."""
    import http.client

    import cv2

    from donkey_saliency.testing import read_mjpeg_part

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/saliency/video")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type").startswith("multipart/x-mixed-replace")
        headers, body = read_mjpeg_part(response)
    finally:
        connection.close()
    picture = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None, "not a JPEG"
    return headers, cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)


def drive(car, while_driving=None):
    """`python manage.py drive --model ...` until saliency runs, then ``while_driving()`` (if given),
    recording switched on; the car's output."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "manage.py", "drive", "--model", car["pilot"]],
                               cwd=str(car["path"]), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    base = "http://127.0.0.1:%d" % car["port"]
    try:
        stats = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                stats = get_json(base + "/saliency/stats")
                if stats.get("processed", 0) > 0:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert stats and stats["processed"] > 0, "no saliency from the running car"
        if while_driving is not None:
            while_driving()
        switch_recording_on(car["port"])
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output[-3000:]
    assert re.search(r"\|\s+SaliencyPart\s+\|", output), "the part did not run in the drive loop"
    assert "Traceback" not in output, output[-3000:]
    return output


def tub_records(car):
    from donkeycar.parts.tub_v2 import Tub

    tub = Tub(str(car["path"] / "data"), read_only=True)
    records = list(tub)
    tub.close()
    return records


@pytest.mark.slow
def test_complete_template_with_readme_lines_drives_streams_and_records(car):
    streamed = []
    drive(car, lambda: streamed.append(read_video_frame(car["port"])))
    [(headers, picture)] = streamed
    assert headers["content-type"] == "image/jpeg" and int(headers["x-saliency-seq"]) >= 1
    assert picture.shape == (120, 160, 3)
    records = tub_records(car)
    assert len(records) > 10
    for record in records:
        for key in ("saliency/image_array", "saliency/mask", "saliency/lag_ms"):
            assert record.get(key) is not None, key
    last = records[-1]
    images = os.path.join(str(car["path"] / "data"), "images")
    import cv2

    overlay = cv2.imread(os.path.join(images, last["saliency/image_array"]))
    mask = cv2.imread(os.path.join(images, last["saliency/mask"]), cv2.IMREAD_UNCHANGED)
    assert overlay.shape == (120, 160, 3) and mask.shape == (120, 160)
    assert last["saliency/lag_ms"] >= 0


def replay_frames(folder, count=24):
    """Real camera frames, far apart in the real drive (so each is told from the others after the tub's
    JPEG round trip), written losslessly for donkeycar's IMAGE_LIST camera."""
    import cv2

    from helpers import real_data_or_skip, REAL_TUB

    real_data_or_skip()
    names = sorted((n for n in os.listdir(REAL_TUB) if n.endswith(".jpg")), key=lambda n: int(n.split("_")[0]))
    step = max(len(names) // count, 1)
    frames = []
    os.makedirs(str(folder))
    for i, name in enumerate(names[::step][:count]):
        bgr = cv2.imread(os.path.join(REAL_TUB, name))
        cv2.imwrite(os.path.join(str(folder), "%d_cam.png" % i), bgr)
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


@pytest.mark.slow
def test_shared_pilot_drives_as_the_stock_pilot_and_records_each_frames_own_mask(tmp_path):
    """SALIENCY_SHARE_PILOT = True in a real car driving itself (local mode) on replayed real frames: the
    pilot steers exactly as donkeycar's own KerasInterpreter does on the frame it saw, and every record
    holds the mask of its own frame (lag 0)."""
    from helpers import REAL_PILOT
    from donkeycar.parts.interpreter import KerasInterpreter
    from donkeycar.parts.keras import KerasLinear

    frames = replay_frames(tmp_path / "replay")
    car = make_car(tmp_path, REAL_PILOT, [
        'CAMERA_TYPE = "IMAGE_LIST"', 'PATH_MASK = %r' % str(tmp_path / "replay" / "*.png"),
        "SALIENCY_SHARE_PILOT = True", 'SALIENCY_METHOD = "vbp"'])  # vbp: the mask comes from the pilot's pass
    output = drive(car)
    assert "runs on the SaliencyInterpreter" in output, output[-3000:]
    records = tub_records(car)
    assert len(records) > 10

    import cv2

    stock = KerasLinear(interpreter=KerasInterpreter())
    stock.load(REAL_PILOT)
    images = os.path.join(str(car["path"] / "data"), "images")
    seen = set()
    for record in records:
        assert record["saliency/lag_ms"] == 0.0, record["saliency/lag_ms"]
        recorded = cv2.cvtColor(cv2.imread(os.path.join(images, record["cam/image_array"])), cv2.COLOR_BGR2RGB)
        distances = np.abs(frames.astype(np.int16) - recorded.astype(np.int16)).mean(axis=(1, 2, 3))
        nearest, runner_up = np.argsort(distances)[:2]
        assert distances[nearest] * 3 < distances[runner_up], "the recorded frame is not told apart"
        seen.add(int(nearest))
        angle, throttle = stock.run(frames[nearest])
        assert abs(record["pilot/angle"] - float(angle)) <= 1e-5
        assert abs(record["pilot/throttle"] - float(throttle)) <= 1e-5
    assert len(seen) > 5
