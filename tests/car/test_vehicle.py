"""``add_saliency``, the one call a manage.py makes, in real donkeycar Vehicles: each SALIENCY_* switch,
the image key with its fallback, a joystick as ``ctr``, the drive view at start, SALIENCY_MAX_FPS and
SALIENCY_JPEG_QUALITY - what each does to the vehicle, the web routes (served on 127.0.0.1) and the
TubWriter's lists."""
import contextlib
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import Camera, wait_for
from donkey_saliency import add_saliency
from donkey_saliency.car.drive_view import DriveViewToggle
from donkey_saliency.keys import OUTPUTS, RECORD_KEYS, RECORD_TYPES
from donkey_saliency.car.part import SaliencyPart
from donkey_saliency.testing import ServerThread, read_mjpeg_part
from web_helpers import camera_frame, decode_jpeg, mean_abs_diff, open_stream

TUB_INPUTS = ["cam/image_array", "user/angle", "user/throttle", "user/mode"]
TUB_TYPES = ["image_array", "float", "float", "str"]
CONTROLLER_INPUTS = ["ui/image_array", "tub/num_records", "user/mode", "recording"]


def config(**settings):
    """A donkeycar cfg as add_saliency reads it: attributes, SALIENCY_* defaults for the rest."""
    settings.setdefault("SALIENCY_BACKEND", "onnxruntime")
    return SimpleNamespace(**settings)


class Joystick(object):
    """What complete.py's ``ctr`` is when a joystick is configured: a controller part, not the web's."""

    def run(self, *args):
        return 0.0, 0.0, "user", False


def vehicle_with_web(frame):
    """A Vehicle wired like complete.py: camera, LocalWebController (port 0), UserPilotCondition."""
    from donkeycar.parts.web_controller.web import LocalWebController
    from donkeycar.templates.complete import UserPilotCondition
    from donkeycar.vehicle import Vehicle

    vehicle = Vehicle()
    vehicle.add(Camera(frame), outputs=["cam/image_array"])
    web_controller = LocalWebController(port=0)
    vehicle.add(web_controller, inputs=list(CONTROLLER_INPUTS),
                outputs=["user/angle", "user/throttle", "user/mode", "recording"])
    vehicle.add(UserPilotCondition(), inputs=["user/mode", "cam/image_array", "cam/image_array_trans"],
                outputs=["run_user", "run_pilot", "ui/image_array"])
    return vehicle, web_controller


def served_status(web_controller, path):
    """GET ``path`` from the controller, served on 127.0.0.1: the HTTP status."""
    import http.client

    server = ServerThread(web_controller).start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            connection.request("GET", path)
            return connection.getresponse().status
        finally:
            connection.close()
    finally:
        server.stop()


def parts_of(vehicle, kind):
    return [entry["part"] for entry in vehicle.parts if isinstance(entry["part"], kind)]


@contextlib.contextmanager
def driving(vehicle, limit_s=120):
    """The vehicle's loop at 20 Hz in a thread for the ``with`` block (at most ``limit_s``)."""
    driver = threading.Thread(target=vehicle.start, kwargs=dict(rate_hz=20, max_loop_count=20 * limit_s),
                              daemon=True)
    driver.start()
    try:
        yield
    finally:
        vehicle.on = False
        driver.join(10)
        assert not driver.is_alive()


# --- the switches that leave things out ------------------------------------------------------------
@pytest.mark.parametrize("settings, with_model", [
    (dict(SALIENCY_ENABLED=False), True),  # saliency off
    (dict(), False),  # no --model and no SALIENCY_MODEL_PATH
])
def test_saliency_off_or_no_model_leaves_the_car_as_it_was(tiny_pilot_path, settings, with_model):
    vehicle, web_controller = vehicle_with_web(camera_frame())
    parts_before = [entry["part"] for entry in vehicle.parts]
    inputs, types = list(TUB_INPUTS), list(TUB_TYPES)
    part = add_saliency(vehicle, config(**settings), ctr=web_controller, inputs=inputs, types=types,
                        model_path=tiny_pilot_path if with_model else None)
    assert part is None
    assert [entry["part"] for entry in vehicle.parts] == parts_before
    assert (inputs, types) == (TUB_INPUTS, TUB_TYPES)
    assert vehicle.parts[1]["inputs"] == CONTROLLER_INPUTS
    assert served_status(web_controller, "/saliency/stats") == 404


def test_web_off_adds_the_part_and_records_but_mounts_no_routes(tiny_pilot_path):
    vehicle, web_controller = vehicle_with_web(camera_frame())
    inputs, types = list(TUB_INPUTS), list(TUB_TYPES)
    part = add_saliency(vehicle, config(SALIENCY_WEB=False), ctr=web_controller, inputs=inputs, types=types,
                        model_path=tiny_pilot_path)
    assert parts_of(vehicle, SaliencyPart) == [part] and not parts_of(vehicle, DriveViewToggle)
    assert (inputs, types) == (TUB_INPUTS + RECORD_KEYS, TUB_TYPES + RECORD_TYPES)
    assert vehicle.parts[1]["inputs"] == CONTROLLER_INPUTS  # /drive still shows what it showed
    assert served_status(web_controller, "/saliency/stats") == 404
    part.shutdown()


def test_recording_off_leaves_the_tub_lists_alone(tiny_pilot_path):
    vehicle, web_controller = vehicle_with_web(camera_frame())
    inputs, types = list(TUB_INPUTS), list(TUB_TYPES)
    part = add_saliency(vehicle, config(SALIENCY_RECORD=False), ctr=web_controller, inputs=inputs, types=types,
                        model_path=tiny_pilot_path)
    assert (inputs, types) == (TUB_INPUTS, TUB_TYPES)
    assert served_status(web_controller, "/saliency/stats") == 200  # the rest is on
    entry = next(e for e in vehicle.parts if e["part"] is part)
    assert entry["outputs"] == OUTPUTS and entry.get("thread") is not None  # threaded, as documented
    part.shutdown()


# --- the image the part reads ----------------------------------------------------------------------
class Transform(object):
    """The pilot's transformed image, present only while ``present`` (donkeycar runs the transform
    with the pilot: in user mode the key holds None)."""

    def __init__(self):
        self.present = False

    def run(self, image):
        return np.ascontiguousarray(image[:, ::-1]) if self.present else None


def test_transformed_image_key_with_the_camera_as_fallback(tiny_pilot_path):
    frame = camera_frame(3)
    vehicle, web_controller = vehicle_with_web(frame)
    transform = Transform()
    vehicle.add(transform, inputs=["cam/image_array"], outputs=["cam/image_array_trans"])
    part = add_saliency(vehicle, config(TRANSFORMATIONS=["CROP"], SALIENCY_WEB=False), ctr=web_controller,
                        model_path=tiny_pilot_path)
    entry = next(e for e in vehicle.parts if e["part"] is part)
    assert entry["inputs"] == ["cam/image_array_trans", "cam/image_array"]
    with driving(vehicle):
        # No transformed image (user mode): the camera's frame.
        assert wait_for(lambda: part.latest is not None, timeout=60)
        assert np.array_equal(part.latest.frame, frame)
        # With one: the transformed image, the one the pilot sees.
        transform.present = True
        assert wait_for(lambda: np.array_equal(part.latest.frame, frame[:, ::-1]), timeout=60)
    # SALIENCY_IMAGE_KEY names the key outright.
    other, _ = vehicle_with_web(frame)
    named = add_saliency(other, config(SALIENCY_IMAGE_KEY="cam/left", TRANSFORMATIONS=["CROP"], SALIENCY_WEB=False),
                         model_path=tiny_pilot_path)
    assert next(e for e in other.parts if e["part"] is named)["inputs"] == ["cam/left", "cam/image_array"]
    named.shutdown()


# --- where the web routes go -----------------------------------------------------------------------
def test_a_joystick_as_ctr_puts_the_routes_on_the_web_controller_among_the_parts(tiny_pilot_path):
    vehicle, web_controller = vehicle_with_web(camera_frame())
    joystick = Joystick()
    vehicle.add(joystick, outputs=["user/angle", "user/throttle", "user/mode", "recording"])
    part = add_saliency(vehicle, config(), ctr=joystick, model_path=tiny_pilot_path)
    assert served_status(web_controller, "/saliency/stats") == 200
    [toggle] = parts_of(vehicle, DriveViewToggle)
    assert toggle.inputs[0] == "ui/image_array" == vehicle.parts[1]["inputs"][0]
    part.shutdown()
    # A joystick and no web controller at all: saliency runs, nothing to mount, nothing raised.
    from donkeycar.vehicle import Vehicle

    bare = Vehicle()
    bare.add(Camera(camera_frame()), outputs=["cam/image_array"])
    bare.add(joystick, outputs=["user/angle", "user/throttle", "user/mode", "recording"])
    alone = add_saliency(bare, config(), ctr=joystick, model_path=tiny_pilot_path)
    assert parts_of(bare, SaliencyPart) == [alone] and not parts_of(bare, DriveViewToggle)
    alone.shutdown()


def test_drive_view_on_at_start_shows_the_overlay_in_drive(tiny_pilot_path):
    frame = camera_frame()
    vehicle, web_controller = vehicle_with_web(frame)
    part = add_saliency(vehicle, config(SALIENCY_DRIVE_VIEW=True), ctr=web_controller, model_path=tiny_pilot_path)
    [toggle] = parts_of(vehicle, DriveViewToggle)
    assert toggle.on
    # What the web controller is given to show (its first input) becomes the overlay once there is one.
    with driving(vehicle):
        assert wait_for(lambda: part.latest is not None and vehicle.mem["ui/image_array"] is not None
                        and mean_abs_diff(vehicle.mem["ui/image_array"], frame) > 30, timeout=60)
    assert np.array_equal(vehicle.mem["ui/image_array"], vehicle.mem["saliency/image_array"])
    off, off_controller = vehicle_with_web(frame)
    other = add_saliency(off, config(), ctr=off_controller, model_path=tiny_pilot_path)
    assert parts_of(off, DriveViewToggle)[0].on is False  # the default: the camera in /drive
    other.shutdown()


# --- SALIENCY_MAX_FPS and SALIENCY_JPEG_QUALITY -------------------------------------------------------
def test_max_fps_caps_the_workers_rate(tiny_pilot_path):
    vehicle, _ = vehicle_with_web(camera_frame())
    assert add_saliency(vehicle, config(SALIENCY_MAX_FPS=4, SALIENCY_WEB=False),
                        model_path=tiny_pilot_path).min_period == 0.25
    part = SaliencyPart(tiny_pilot_path, backend="onnxruntime", max_fps=4)
    worker = threading.Thread(target=part.update, daemon=True)
    worker.start()
    frames = [camera_frame(i) for i in range(10)]
    try:
        assert wait_for(lambda: part.run_threaded(frames[0]) is not None and part.latest is not None, timeout=60)
        first = part.latest.done_time
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # frames at ~50 Hz: far more than 4 a second
            part.run_threaded(frames[int(time.monotonic() * 50) % 10])
            time.sleep(0.02)
        processed = part.stats()["processed"]
        elapsed = part.latest.done_time - first
    finally:
        part.shutdown()
        worker.join(10)
    # A bound a busy machine cannot break (it can only make the worker slower): one frame per 0.25 s.
    assert processed - 1 <= elapsed * 4 + 1, (processed, elapsed)  # (+1: the frame before `first`)
    assert part.stats()["dropped"] > 0  # the rest were dropped, not queued


def stream_frame(tiny_pilot_path, quality, frame):
    """Through add_saliency with SALIENCY_JPEG_QUALITY = quality: the first /saliency/video frame's
    JPEG bytes, the overlay it shows, and /saliency/stats' jpeg_quality."""
    import json
    import urllib.request

    vehicle, web_controller = vehicle_with_web(frame)
    part = add_saliency(vehicle, config(SALIENCY_JPEG_QUALITY=quality), ctr=web_controller,
                        model_path=tiny_pilot_path)
    server = ServerThread(web_controller).start()

    def stats():
        with urllib.request.urlopen("http://127.0.0.1:%d/saliency/stats" % server.port, timeout=10) as reply:
            return json.loads(reply.read().decode("utf-8"))

    try:
        connection, response = open_stream(server.port)
        try:
            assert wait_for(lambda: stats()["overlay_clients"] == 1)  # overlays are encoded only when watched
            part.run(frame)  # unthreaded: the overlay is made (and streamed) now
            body = read_mjpeg_part(response)[1]
        finally:
            connection.close()
        return body, part.latest.overlay, stats()["jpeg_quality"]
    finally:
        part.shutdown()
        server.stop()


def test_jpeg_quality_reaches_the_stream_encoder(tiny_pilot_path):
    frame = camera_frame(5)
    low, overlay, low_setting = stream_frame(tiny_pilot_path, 20, frame)
    high, same_overlay, high_setting = stream_frame(tiny_pilot_path, 95, frame)
    assert (low_setting, high_setting) == (20, 95)
    assert np.array_equal(overlay, same_overlay)  # the same picture, encoded at two qualities
    assert low != high and len(low) < len(high)
    assert mean_abs_diff(decode_jpeg(high), overlay) < mean_abs_diff(decode_jpeg(low), overlay)


# --- SALIENCY_WATCH_LINE: the live share of attention above the line ---------------------------------
def test_watch_line_share_reaches_the_stats_json(tiny_pilot_path):
    """A constant frame gives a constant mask, so the rolling share served as JSON is that mask's share
    above the configured row, computed here from the mask itself."""
    import http.client
    import json

    vehicle, web_controller = vehicle_with_web(camera_frame())
    part = add_saliency(vehicle, config(SALIENCY_WATCH_LINE=30), ctr=web_controller, model_path=tiny_pilot_path)
    server = ServerThread(web_controller).start()

    def served():
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            connection.request("GET", "/saliency/stats")
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    try:
        with driving(vehicle):
            assert wait_for(lambda: part.stats()["processed"] >= 3, timeout=60)
            figures = served()
            mask = part.latest.mask
    finally:
        server.stop()
    rows = mask.sum(axis=1)
    expected = rows[:30].sum() / rows.sum()
    assert figures["watch_line"] == 30 and figures["share_above_window"] == 20
    assert 0.0 < expected < 1.0
    assert figures["share_above"] == pytest.approx(expected, abs=1e-3)
    assert figures["share_above_latest"] == pytest.approx(expected, abs=1e-3)


# --- nothing on the set-up path raises into drive() -------------------------------------------------
class Counter(object):
    """A part that counts the loops the car drove."""

    def __init__(self):
        self.loops = 0

    def run(self):
        self.loops += 1


def add_and_drive(vehicle, cfg, caplog, loops=40, **kwargs):
    """A camera, add_saliency, then the vehicle's own loop until it drove ``loops`` loops and the part
    (if one was added) gave up: (returned part, the ERROR lines logged)."""
    counter = Counter()
    vehicle.add(Camera(camera_frame()), outputs=["cam/image_array"])
    vehicle.add(counter)
    with caplog.at_level("ERROR"):
        part = add_saliency(vehicle, cfg, **kwargs)
        with driving(vehicle):
            assert wait_for(lambda: counter.loops >= loops and (part is None or part.error is not None), timeout=60)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    return part, errors


def broken_web_controller():
    """donkeycar's web controller whose routes cannot be added (an injected fault)."""
    from donkeycar.parts.web_controller.web import LocalWebController

    class Broken(LocalWebController):
        def add_handlers(self, *args, **kwargs):
            raise RuntimeError("tornado said no")

    return Broken(port=0)


def test_a_library_that_cannot_be_imported_is_one_error_line_and_the_car_drives(tiny_pilot_path, caplog,
                                                                                monkeypatch):
    from donkeycar.vehicle import Vehicle

    monkeypatch.setitem(__import__("sys").modules, "donkey_saliency.car.vehicle", None)  # as onnx broke on JetPack 5
    vehicle = Vehicle()
    part, errors = add_and_drive(vehicle, config(), caplog, model_path=tiny_pilot_path)
    assert part is None and len(vehicle.parts) == 2
    assert len(errors) == 1 and "saliency: off, the car drives without it" in errors[0]
    assert "pip install -c car.txt 'donkey-saliency[runtime]'" in errors[0]


def test_a_bad_model_is_one_error_line_and_the_car_drives(tmp_path, caplog):
    from donkeycar.vehicle import Vehicle

    vehicle = Vehicle()
    part, errors = add_and_drive(vehicle, config(), caplog, model_path=str(tmp_path / "missing.h5"))
    assert part.latest is None
    assert len(errors) == 1 and "model file not found" in errors[0], errors


def test_web_routes_that_fail_leave_the_car_as_it_was(tiny_pilot_path, caplog):
    from donkeycar.vehicle import Vehicle

    vehicle = Vehicle()
    broken = broken_web_controller()
    vehicle.add(broken, inputs=list(CONTROLLER_INPUTS), outputs=["user/angle", "user/throttle", "user/mode", "recording"])
    tub_inputs, tub_types = list(TUB_INPUTS), list(TUB_TYPES)
    part, errors = add_and_drive(vehicle, config(), caplog, ctr=broken, inputs=tub_inputs, types=tub_types,
                                 model_path=tiny_pilot_path)
    assert part is None and vehicle.parts[0]["part"] is broken and len(vehicle.parts) == 3
    assert vehicle.parts[0]["inputs"] == CONTROLLER_INPUTS and (tub_inputs, tub_types) == (TUB_INPUTS, TUB_TYPES)
    assert len(errors) == 1 and "RuntimeError: tornado said no" in errors[0]
