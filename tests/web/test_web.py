"""The saliency routes on donkeycar's real LocalWebController, served on 127.0.0.1 (free port), fed by a
real SaliencyPart, read by real HTTP clients (http.client in threads) and by headless Chromium."""
import json
import os
import threading

import numpy as np
import pytest

from browser import ARTIFACTS, DevTools, chromium_or_skip, crop, resized
from helpers import Camera, donkeycar_video_or_skip, ImageProbe, wait_for
from donkey_saliency.car.drive_view import DriveViewToggle
from donkey_saliency.keys import OUTPUTS
from donkey_saliency.compute.overlay import layer_picture
from donkey_saliency.car.part import SaliencyPart
from donkey_saliency.testing import ServerThread, read_mjpeg_part
from donkey_saliency.web.live import STATS_FIELDS, attach_web
from web_helpers import (STOCK_VIDEO_CLOSE, camera_frame, decode_jpeg, LiveServer, mean_abs_diff, open_stream,
                         request, stock_video_shows)

CLIENTS = 8
FRAMES_PER_CLIENT = 20


class StreamClient(threading.Thread):
    """Reads /saliency/video: one frame, then waits for the test's go-ahead, reads until it has
    FRAMES_PER_CLIENT frames newer than ``baseline['seq']`` (set by the test), waits again, then hangs up."""

    def __init__(self, port, subscribed, measured, finished, may_close, baseline):
        super().__init__(daemon=True)
        self.port = port
        self.baseline = baseline
        self.barriers = (subscribed, measured, finished)
        self.may_close = may_close
        self.frames = []  # (seq, decoded picture shape)
        self.error = None

    def read_frame(self, response):
        headers, body = read_mjpeg_part(response)
        assert headers["content-type"] == "image/jpeg"
        self.frames.append((int(headers["x-saliency-seq"]), decode_jpeg(body).shape))

    def run(self):
        subscribed, measured, finished = self.barriers
        try:
            connection, response = open_stream(self.port)
            try:
                self.read_frame(response)
                subscribed.wait()
                measured.wait()  # the test has read the counters
                while sum(seq > self.baseline["seq"] for seq, _ in self.frames) < FRAMES_PER_CLIENT:
                    self.read_frame(response)
                finished.wait()
                self.may_close.wait(30)
            finally:
                connection.close()
        except Exception as error:  # reported by the test thread
            self.error = error
            for barrier in self.barriers:
                barrier.abort()


def test_eight_clients_share_one_encode_per_new_overlay(live):
    live.feeding.set()
    subscribed, measured, finished = (threading.Barrier(CLIENTS + 1, timeout=60) for _ in range(3))
    may_close = threading.Event()
    baseline = {}
    clients = [StreamClient(live.port, subscribed, measured, finished, may_close, baseline) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    try:
        subscribed.wait()
        before = live.stats()
        baseline["seq"] = before["seq"]  # frames newer than this were encoded after `before`
        measured.wait()
        finished.wait()
        after = live.stats()
    finally:
        may_close.set()
        for client in clients:
            client.join(10)
    errors = [c.error for c in clients if c.error is not None]
    assert not errors, errors

    new_overlays = after["overlays"] - before["overlays"]
    encodes = after["encodes"] - before["encodes"]
    delivered = sum(len(c.frames) for c in clients)
    print("8 clients: %d new overlays, %d encodes, %d frames delivered" % (new_overlays, encodes, delivered))
    assert before["overlay_clients"] == after["overlay_clients"] == CLIENTS
    assert new_overlays >= FRAMES_PER_CLIENT
    assert encodes == new_overlays  # once per new overlay, however many watch
    assert after["camera_encodes"] == before["camera_encodes"]  # nobody watched the camera stream
    # Every frame the clients got in the window is one of the window's encodes, however many frames
    # a slow client skipped: at least CLIENTS * FRAMES_PER_CLIENT deliveries from `encodes` encodings.
    window = [seq for c in clients for seq, _ in c.frames if seq > baseline["seq"]]
    assert len(window) >= CLIENTS * FRAMES_PER_CLIENT and len(set(window)) <= encodes
    for client in clients:
        seqs = [seq for seq, _ in client.frames]
        assert len(seqs) >= FRAMES_PER_CLIENT + 1
        assert seqs == sorted(set(seqs)), "a client got a frame twice or out of order"
        assert all(shape == (120, 160, 3) for _, shape in client.frames)
    all_seqs = set(seq for c in clients for seq, _ in c.frames)
    assert len(all_seqs) <= after["encodes"]

    # Hung up: every handler ends (bounded wait: the machine may be busy).
    assert wait_for(lambda: live.stats()["clients"] == 0, timeout=10.0), live.stats()


def test_handlers_return_when_clients_hang_up_on_an_idle_stream(live):
    """No new frames: nothing to write, so only on_connection_close can end the handlers."""
    live.feeding.set()
    assert wait_for(lambda: live.part.latest is not None)
    live.feeding.clear()
    assert wait_for(lambda: not live.part.busy)  # the last frame is through the worker
    connections = [open_stream(live.port, path)[0]
                   for path in ["/saliency/video"] * 3 + ["/saliency/camera"] * 2]
    assert wait_for(lambda: live.stats()["clients"] == 5)
    figures = live.stats()
    assert (figures["overlay_clients"], figures["camera_clients"]) == (3, 2)
    for connection in connections:
        connection.close()
    assert wait_for(lambda: live.stats()["clients"] == 0, timeout=10.0), live.stats()


def test_camera_stream_and_layer_maps(live):
    live.feeding.set()
    connection, response = open_stream(live.port, "/saliency/camera")
    try:
        headers, body = read_mjpeg_part(response)
        picture = decode_jpeg(body)
        assert picture.shape == (120, 160, 3)
        # The camera stream carries the frame the overlay was drawn on: gray, no heat-map colour.
        assert float(np.abs(picture[..., 0].astype(int) - picture[..., 2]).mean()) < 4
    finally:
        connection.close()
    figures = live.stats()
    assert figures["camera_encodes"] >= 1
    for index, shape in enumerate(figures["layer_shapes"]):
        status, content_type, body = live.request("/saliency/layer/%d.jpg" % index)
        assert (status, content_type) == (200, "image/jpeg")
        picture = decode_jpeg(body)
        assert picture.shape[1] >= shape[1] and picture.shape[1] % shape[1] == 0  # whole-factor upscale
    assert live.request("/saliency/layer/%d.jpg" % len(figures["layer_shapes"]))[0] == 404
    # Nothing from a request names a file: anything else under /saliency is simply not a route.
    for path in ("/saliency/../../etc/passwd", "/saliency/%2e%2e/setup.cfg", "/saliency/static/saliency.html",
                 "/saliency/layer/-1.jpg", "/saliency/layer/x.jpg"):
        assert live.request(path)[0] == 404, path


def test_stats_json_has_the_documented_fields(live, tiny_pilot_path):
    live.feeding.set()
    assert wait_for(lambda: live.stats()["seq"] > 0)
    figures = live.stats()
    assert set(figures) == set(STATS_FIELDS)
    assert figures["status"] == "running"
    assert figures["model"] == os.path.basename(tiny_pilot_path)
    assert "onnxruntime" in figures["backend"]
    assert figures["layers"] == list(live.part.layer_names) and len(figures["layers"]) == 2
    assert figures["layer_shapes"] == [[58, 78], [28, 38]]
    assert figures["fps"] >= 0 and figures["processed"] >= 1 and figures["latency_ms"] > 0
    assert figures["jpeg_quality"] == 80 and figures["drive_view"] is False and figures["toggle_button"] == "w5"


def test_page_and_drive_view_control(live):
    status, content_type, page = live.request("/saliency")
    assert status == 200 and content_type.startswith("text/html")
    for needle in (b'href="/drive"', b"/saliency/video", b"/saliency/camera", b"/saliency/stats",
                   b"/saliency/drive_view", b'name="viewport"'):
        assert needle in page
    assert live.request("/saliency/")[0] == 200

    def drive_view(method="POST", body=None):
        status, _, reply = live.request("/saliency/drive_view", method, body)
        return status, json.loads(reply.decode("utf-8"))

    assert drive_view(body=b'{"on": true}') == (200, {"drive_view": True})
    assert live.web.drive_view.on and live.stats()["drive_view"] is True
    assert drive_view("PUT", b'{"on": false}') == (200, {"drive_view": False})
    assert drive_view() == (200, {"drive_view": True})  # empty body flips
    assert drive_view()[1] == {"drive_view": False}
    for bad in (b"{", b'{"on": "yes"}', b"[1]", b"\xff"):
        status, reply = drive_view(body=bad)
        assert status == 400 and "error" in reply
    assert live.web.drive_view.on is False


def test_toggle_switches_what_the_stock_video_shows(tiny_pilot_path):
    """A real donkeycar Vehicle wired like complete.py: web controller, ExplodeDict, UserPilotCondition,
    the SaliencyPart and the DriveViewToggle; /video (donkeycar's own handler) is read over HTTP."""
    donkeycar_video_or_skip()
    from donkeycar.parts.explode import ExplodeDict
    from donkeycar.parts.web_controller.web import LocalWebController
    from donkeycar.templates.complete import UserPilotCondition
    from donkeycar.vehicle import Vehicle

    frame = camera_frame()
    probe = ImageProbe()  # given what a pilot added after the toggle would be given

    ctr = LocalWebController(port=0)
    part = SaliencyPart(tiny_pilot_path)
    web = attach_web(ctr, part, drive_view=False, toggle_button="w5")
    server = ServerThread(ctr).start()  # ctr.update() would listen on every interface
    vehicle = Vehicle()
    vehicle.add(Camera(frame), outputs=["cam/image_array"])
    vehicle.add(ctr, inputs=["ui/image_array", "tub/num_records", "user/mode", "recording"],
                outputs=["user/steering", "user/throttle", "user/mode", "recording", "web/buttons"])
    vehicle.add(ExplodeDict(vehicle.mem, "web/"), inputs=["web/buttons"])
    vehicle.add(UserPilotCondition(), inputs=["user/mode", "cam/image_array", "cam/image_array_trans"],
                outputs=["run_user", "run_pilot", "ui/image_array"])
    vehicle.add(part, inputs=["cam/image_array"], outputs=OUTPUTS, threaded=True)
    vehicle.add(web.drive_view, inputs=web.drive_view.inputs, outputs=web.drive_view.outputs)
    vehicle.add(probe, inputs=["cam/image_array"])
    assert web.drive_view.inputs == ["ui/image_array", "saliency/image_array", "web/w5"]
    drive = threading.Thread(target=vehicle.start, kwargs=dict(rate_hz=20, max_loop_count=20 * 120), daemon=True)
    drive.start()
    connection = None
    try:
        assert wait_for(lambda: part.latest is not None, timeout=20)
        overlay = part.latest.overlay  # constant camera frame -> constant overlay
        assert mean_abs_diff(overlay, frame) > 45

        connection, response = open_stream(server.port, "/video")

        shown = stock_video_shows(response, frame)
        assert mean_abs_diff(shown, frame) < STOCK_VIDEO_CLOSE and mean_abs_diff(shown, overlay) > 30

        assert json.loads(request(server.port, "/saliency/drive_view", b'{"on": true}')) == {"drive_view": True}
        shown = stock_video_shows(response, overlay)
        assert mean_abs_diff(shown, overlay) < STOCK_VIDEO_CLOSE and mean_abs_diff(shown, frame) > 30

        # The stock /drive page's button 5: POST /drive with the button down, as main.js does.
        request(server.port, "/drive", json.dumps({"buttons": {"w5": True}}).encode())
        shown = stock_video_shows(response, frame)
        assert mean_abs_diff(shown, frame) < STOCK_VIDEO_CLOSE and mean_abs_diff(shown, overlay) > 30
        assert web.drive_view.on is False
    finally:
        if connection is not None:
            connection.close()
        vehicle.on = False
        drive.join(10)
        server.stop()
    assert not drive.is_alive()
    assert probe.images and all(np.array_equal(image, frame) for image in probe.images)


# --- the part on its own (no server) -------------------------------------------------------------
def test_drive_view_toggle_flips_once_per_press_and_never_raises():
    toggle = DriveViewToggle(on=False, button="w2")
    assert toggle.inputs == ["ui/image_array", "saliency/image_array", "web/w2"]
    assert toggle.outputs == ["ui/image_array"]
    camera, overlay = np.zeros((2, 2, 3), np.uint8), np.ones((2, 2, 3), np.uint8)
    assert toggle.run(camera, overlay, None) is camera
    assert toggle.run(camera, overlay, True) is overlay  # pressed: on
    assert toggle.run(camera, overlay, True) is overlay  # held: still on
    assert toggle.run(camera, overlay, False) is overlay
    assert toggle.run(camera, None, False) is camera  # no overlay yet: the camera
    assert toggle.run(camera, overlay, True) is camera  # pressed again: off
    assert toggle.run(None, None, "weird") is None
    toggle.set(True)
    assert toggle.run(camera, overlay) is overlay
    without_button = DriveViewToggle(on=True, button=None)
    assert without_button.inputs == ["ui/image_array", "saliency/image_array"]
    assert without_button.run(camera, overlay) is overlay
    with pytest.raises(ValueError):
        DriveViewToggle(button="w9")
    with pytest.raises(TypeError):
        DriveViewToggle(object())  # the page's toggle is attach_web(...).drive_view, not a new one


def test_every_stats_field_is_documented():
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "web.md")) as handle:
        doc = handle.read()
    for name in STATS_FIELDS:
        assert "| `%s` |" % name in doc, name


def test_layer_picture_normalises_each_map():
    constant = layer_picture(np.full((3, 6), 7.0, np.float32))
    assert constant.shape == (3 * 26, 6 * 26, 3)
    assert len(np.unique(constant.reshape(-1, 3), axis=0)) == 1  # a constant map: one colour, no NaN
    ramp = layer_picture(np.arange(12, dtype=np.float32).reshape(3, 4) * 1e-6)  # tiny values still span the map
    assert ramp[0, 0].tolist() != ramp[-1, -1].tolist()


def test_disabled_part_still_serves_figures(tmp_path):
    from donkeycar.parts.web_controller.web import LocalWebController

    part = SaliencyPart(str(tmp_path / "missing.h5"))
    web = attach_web(LocalWebController(port=0), part)
    figures = web.stats()
    assert figures["status"].startswith("disabled:") and figures["seq"] == 0 and figures["layers"] == []
    assert set(figures) == set(STATS_FIELDS)
    with pytest.raises(ValueError):
        attach_web(LocalWebController(port=0), part, jpeg_quality=0)


# --- headless Chromium ---------------------------------------------------------------------------
PAGE_STATE = """JSON.stringify((function () {
  function box(id) { var r = document.getElementById(id).getBoundingClientRect();
                     return [Math.round(r.left), Math.round(r.top), Math.round(r.width), Math.round(r.height)]; }
  function text(id) { return document.getElementById(id).textContent; }
  return { overlay: document.body.dataset.overlay, camera: document.body.dataset.camera,
           stats: document.body.dataset.stats, overlayBox: box("overlay"), cameraBox: box("camera"),
           overlayWidth: document.getElementById("overlay").naturalWidth,
           fps: text("fps"), latency: text("latency"), dropped: text("dropped"), backend: text("backend"),
           model: text("model"), status: text("status"),
           watch: text("watch"), watchLabel: text("watch-label"), driveView: text("drive-view"), viewers: text("viewers"),
           layersLoaded: Array.prototype.filter.call(document.querySelectorAll(".layers img"),
                                                     function (i) { return i.naturalWidth > 0; }).length,
           pageWidth: document.documentElement.scrollWidth, viewportWidth: window.innerWidth };
})())"""


@pytest.mark.browser
@pytest.mark.parametrize("width,height,name", [(360, 1300, "phone"), (1000, 860, "desktop")])
def test_saliency_page_in_headless_chromium(tiny_pilot_path, tmp_path, width, height, name):
    chromium_or_skip()
    live = LiveServer(tiny_pilot_path, moving=False)  # a constant frame: the overlay to look for is known
    browser = None
    try:
        live.feeding.set()
        assert wait_for(lambda: live.part.latest is not None, timeout=20)
        overlay, frame = live.part.latest.overlay, live.part.latest.frame
        browser = DevTools(str(tmp_path / "profile"), str(tmp_path / "chromium.log"), width, height)
        browser.open("http://127.0.0.1:%d/saliency" % live.port, width, height, mobile=name == "phone")
        state = {}

        def page_ready():
            state.update(json.loads(browser.evaluate(PAGE_STATE) or "{}"))
            return (state.get("overlay") == "loaded" and state.get("camera") == "loaded"
                    and state.get("stats") == "filled" and state.get("layersLoaded") == 2
                    and state.get("viewers", "").startswith("2 / ") and "KiB" in state["viewers"])

        ready = wait_for(page_ready, timeout=30)
        os.makedirs(ARTIFACTS, exist_ok=True)
        png = browser.screenshot(os.path.join(ARTIFACTS, "saliency_page_%s.png" % name))
        assert ready, state
    finally:
        if browser is not None:
            browser.close()
        live.close()

    print(name, state)
    assert state["overlayWidth"] == 160  # the overlay JPEG itself, not the placeholder
    assert state["status"] == "running" and state["model"] == "tiny.h5" and "onnxruntime" in state["backend"]
    assert state["fps"] != "\u2013" and float(state["fps"]) > 0
    assert state["latency"].endswith(" ms") and state["dropped"].split(" of ")[1].isdigit()
    assert state["driveView"] == "Overlay in /drive: OFF"
    # The rolling share of attention above the upper third (the default watch line) of the 120-row image.
    assert state["watchLabel"] == "Attention above row 40 (last 20)"
    assert state["watch"].endswith(" %") and 0 <= int(state["watch"][:-2]) <= 100
    assert state["viewportWidth"] == width
    assert state["pageWidth"] <= width  # usable at this width: nothing sticks out sideways
    # The pixels where the page shows the overlay are the overlay, and the camera is the camera.
    shown_overlay, shown_camera = crop(png, state["overlayBox"]), crop(png, state["cameraBox"])
    assert shown_overlay.shape[1] > 100
    # (15: JPEG and scaling of the input gradient's fine detail; the frame alone is > 30 away)
    assert mean_abs_diff(shown_overlay, resized(overlay, state["overlayBox"])) < 15
    assert mean_abs_diff(shown_overlay, resized(frame, state["overlayBox"])) > 30
    assert mean_abs_diff(shown_camera, resized(frame, state["cameraBox"])) < 10
    if name == "phone":
        assert state["overlayBox"][1] > state["cameraBox"][1]  # stacked
    else:
        assert state["overlayBox"][0] > state["cameraBox"][0]  # side by side
