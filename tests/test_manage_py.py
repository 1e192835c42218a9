"""The README's installation, done as a user does it: a car from `donkey createcar --template
complete`, the README's manage.py lines pasted in, `python manage.py drive --model ...` with a mock
camera and drivetrain, recording switched on through the web UI, the tub read back with donkeycar."""
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
BIN = os.path.dirname(sys.executable)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        config.write("\n".join([
            'CAMERA_TYPE = "MOCK"', 'DRIVE_TRAIN_TYPE = "mock"', "USE_JOYSTICK_AS_DEFAULT = False",
            "MAX_LOOPS = 240", "WEB_CONTROL_PORT = %d" % port, 'WEB_INIT_MODE = "local"',
            "AUTO_RECORD_ON_THROTTLE = False", "RECORD_DURING_AI = True",
            'SALIENCY_BACKEND = "onnxruntime"', ""]))
    return dict(path=path, port=port, pilot=linear_pilot_path)


def test_complete_template_with_readme_lines_drives_streams_and_records(car):
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
        switch_recording_on(car["port"])
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output[-3000:]
    assert re.search(r"\|\s+SaliencyPart\s+\|", output), "the part did not run in the drive loop"
    assert "Traceback" not in output, output[-3000:]

    from donkeycar.parts.tub_v2 import Tub

    tub = Tub(str(car["path"] / "data"), read_only=True)
    records = list(tub)
    tub.close()
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
