"""The review page (web/review.py, review_model.py): a v2 tub written by donkeycar's own ``Tub`` (with deleted records
and recorded saliency) and the real v1 tub, served by a real Tornado server on 127.0.0.1, read by
http.client and by headless Chromium; deletes read back with donkeycar's ``Tub``."""
import http.client
import json
import os
import subprocess

import cv2
import numpy as np
import pytest

from browser import ARTIFACTS, DevTools, chromium_or_skip, crop, resized
from helpers import CLI, real_data_or_skip, run_cli, wait_for
from donkey_saliency.web.review import MAX_POST_BYTES
from donkey_saliency.web.review_model import top_disagreements
from donkey_saliency.tubs.index import TubIndex
from donkey_saliency.testing import ServerThread
from tub_helpers import camera, COUNT, DELETED, donkey_deleted, recorded_overlay, write_tub
from web_helpers import Served


@pytest.fixture
def served(review_tub):
    server = Served(review_tub)
    yield server
    server.close()


# --- the index and the pure parts ------------------------------------------------------------------
def test_index_matches_what_donkeycar_reads(review_tub):
    from donkeycar.parts.tub_v2 import Tub

    index = TubIndex(review_tub)
    assert len(index) == COUNT and index.version == 2
    assert np.flatnonzero(index.deleted()).tolist() == list(DELETED)
    tub = Tub(review_tub, read_only=True)
    live = list(tub)
    tub.close()
    assert len(live) == COUNT - len(DELETED)
    angles = index.array("user/angle")
    for record in live:
        i = record["_index"]
        assert angles[i] == np.float32(record["user/angle"])
        assert index.record(i) == {k: v for k, v in record.items()}
        assert index.images(i)["cam/image_array"] == os.path.join(review_tub, "images", record["cam/image_array"])
    assert index.modes[0] == 0 and index.modes[COUNT // 2] == 1 and index.modes[-1] == 2


def test_index_reads_what_a_growing_tub_adds(tmp_path):
    from donkeycar.parts.tub_v2 import Tub

    path = str(tmp_path / "growing")
    tub = Tub(path, inputs=["cam/image_array", "user/angle"], types=["image_array", "float"], max_catalog_len=4)
    for i in range(6):
        tub.write_record({"cam/image_array": camera(i), "user/angle": i / 10.0})
    index = TubIndex(path)
    assert len(index) == 6
    with open(os.path.join(path, "catalog_1.catalog"), "ab") as handle:
        handle.write(b'{"user/angle": 0.9')  # a record half-written: not read until it is whole
    assert index.refresh() == 0
    with open(os.path.join(path, "catalog_1.catalog"), "ab") as handle:
        handle.write(b', "_index": 6}\n')
    assert index.refresh() == 1 and index.array("user/angle")[6] == np.float32(0.9)
    tub.close()


def test_top_disagreements_skip_deleted_and_neighbours():
    user = np.zeros(100, np.float32)
    pilot = user.copy()
    pilot[[40, 41, 42]] = [0.8, 0.9, 0.7]  # one moment, three records
    pilot[70], pilot[5] = 0.5, 2.0
    deleted = np.zeros(100, bool)
    deleted[5] = True
    top = top_disagreements(user, user + 0.3, pilot, np.full(100, np.nan), deleted, count=5)
    assert [i for i, _ in top][:2] == [41, 70]
    assert 5 not in [i for i, _ in top] and 40 not in [i for i, _ in top]


# --- HTTP -------------------------------------------------------------------------------------------
def test_routes_serve_the_tub_and_refuse_what_is_not_there(served, review_tub):
    status, meta = served.json("/saliency/review/meta")
    assert status == 200 and meta["count"] == COUNT and meta["overlay"] == "recorded" and not meta["writable"]
    assert 15 <= meta["rate_hz"] <= 200
    assert [d["index"] for d in meta["disagreements"][:2]] == [77, 30]
    status, content_type, timeline = served.request("/saliency/review/timeline")
    assert status == 200 and len(timeline) == 6 * COUNT
    deleted = np.frombuffer(timeline, np.uint8)[5 * COUNT:]
    assert np.flatnonzero(deleted).tolist() == list(DELETED)
    status, fields = served.json("/saliency/review/record/31")
    assert fields["index"] == 31 and fields["mode"] == "user" and fields["lag_ms"] == 4.0 and not fields["deleted"]
    status, content_type, data = served.request("/saliency/review/frame/31/camera.jpg")
    with open(os.path.join(review_tub, "images", "31_cam_image_array_.jpg"), "rb") as handle:
        assert (status, content_type, data) == (200, "image/jpeg", handle.read())  # the recorded file itself
    assert served.request("/saliency/review/frame/31/overlay.jpg")[0] == 200
    status, error = served.json("/saliency/review/frame/31/mask.jpg")
    assert status == 404 and "--model" in error["error"]
    assert served.json("/saliency/review/record/%d" % COUNT)[0] == 404
    for path in ("/saliency/review/frame/-1/camera.jpg", "/saliency/review/frame/1/../../etc/passwd",
                 "/saliency/review/frame/1/x.jpg", "/saliency/review/%2e%2e/manifest.json",
                 "/saliency/review/frame/9999999999/camera.jpg", "/saliency/review/images/1_cam_image_array_.jpg"):
        assert served.request(path)[0] == 404, path
    assert served.request("/")[0] in (301, 302)


def test_a_record_naming_a_file_outside_the_tub_gets_nothing(tmp_path):
    path = write_tub(tmp_path / "tub", count=3, deleted=())
    catalog = os.path.join(path, "catalog_0.catalog")
    with open(catalog) as handle:
        lines = handle.read().splitlines()
    record = json.loads(lines[1])
    record["cam/image_array"] = "../../../../../../etc/hostname"
    lines[1] = json.dumps(record)
    with open(catalog, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    server = Served(path)
    try:
        status, error = server.json("/saliency/review/frame/1/camera.jpg")
        assert status == 400 and "leads outside the tub" in error["error"]  # refused, never read
    finally:
        server.close()


def test_writable_delete_round_trips_through_donkeycars_tub(review_tub):
    read_only = Served(review_tub)
    try:
        assert read_only.post_deleted(b'{"index": 3, "deleted": true}')[0] == 403
    finally:
        read_only.close()
    server = Served(review_tub, writable=True)
    try:
        assert server.post_deleted(b'{"index": 3, "deleted": true}', origin="http://evil.example")[0] == 403
        assert server.post_deleted(b'{"index": 3, "deleted": true}', origin=None)[0] == 403
        assert server.post_deleted(b" " * (MAX_POST_BYTES + 1))[0] == 413
        for bad in (b"{", b'{"index": "3", "deleted": true}', b'{"index": 3, "deleted": 1}', b"[3]", b"\xff"):
            assert server.post_deleted(bad)[0] == 400, bad
        assert server.post_deleted(b'{"index": %d, "deleted": true}' % COUNT)[0] == 404
        assert donkey_deleted(review_tub)[0] == set(DELETED)  # nothing refused was written

        assert server.post_deleted(b'{"index": 3, "deleted": true}') == (200, {"index": 3, "deleted": True})
        marked, yielded = donkey_deleted(review_tub)
        assert marked == set(DELETED) | {3} and 3 not in yielded and len(yielded) == COUNT - len(DELETED) - 1
        assert server.post_deleted(b'{"index": 12, "deleted": false}') == (200, {"index": 12, "deleted": False})
        marked, yielded = donkey_deleted(review_tub)
        assert marked == set(DELETED) - {12} | {3} and 12 in yielded
        assert server.json("/saliency/review/record/12")[1]["deleted"] is False
    finally:
        server.close()
    assert not [n for n in os.listdir(review_tub) if n.startswith(".tmp-")]


def test_car_server_mounts_the_tub_being_written_read_only(tmp_path):
    """donkeycar's LocalWebController with attach_web(review_tub=...) as add_saliency wires it: the
    tub comes from the vehicle's TubWriter, found when a request arrives; it grows while served."""
    from donkeycar.parts.tub_v2 import TubWriter
    from donkeycar.parts.web_controller.web import LocalWebController
    from donkeycar.vehicle import Vehicle

    from donkey_saliency.car.part import SaliencyPart
    from donkey_saliency.car.vehicle import tub_being_written
    from donkey_saliency.web.live import attach_web

    vehicle = Vehicle()
    ctr = LocalWebController(port=0)
    attach_web(ctr, SaliencyPart(str(tmp_path / "no-pilot.h5")), review_tub=lambda: tub_being_written(vehicle))
    server = ServerThread(ctr).start()
    try:
        def get(path):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()

        status, body = get("/saliency/review/meta")
        assert status == 404 and b"no tub is being recorded" in body
        assert get("/saliency/review")[0] == 200
        writer = TubWriter(str(tmp_path / "tub"), inputs=["cam/image_array", "user/angle"],
                           types=["image_array", "float"])
        vehicle.add(writer, inputs=["cam/image_array", "user/angle"], outputs=["tub/num_records"])
        for i in range(5):
            writer.run(camera(i), 0.1 * i)
        status, body = get("/saliency/review/meta")
        meta = json.loads(body.decode("utf-8"))
        assert status == 200 and meta["count"] == 5 and meta["live"] and not meta["writable"]
        for i in range(5, 8):
            writer.run(camera(i), 0.1 * i)
        assert json.loads(get("/saliency/review/meta")[1].decode("utf-8"))["count"] == 8
        assert len(get("/saliency/review/timeline")[1]) == 6 * 8
        status, data = get("/saliency/review/frame/7/camera.jpg")
        assert status == 200 and data[:3] == b"\xff\xd8\xff"
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("POST", "/saliency/review/deleted", body=b'{"index": 1, "deleted": true}',
                           headers={"Origin": "http://127.0.0.1:%d" % server.port})
        assert connection.getresponse().status == 403  # read-only on the car
        writer.close()
    finally:
        server.stop()


# --- the command line ---------------------------------------------------------------------------------


def test_cli_bad_input_one_line_exit_2(tmp_path, review_tub):
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "meta.json").write_text(json.dumps({"inputs": ["cam/image_array", "user/angle"],
                                              "types": ["image_array", "float"]}))
    (v1 / "record_0.json").write_text(json.dumps({"cam/image_array": "0_cam-image_array_.jpg", "user/angle": 0}))
    cases = [([tmp_path / "empty"], "is not a tub"), ([tmp_path / "missing"], "tub not found"),
             ([v1, "--writable"], "needs a v2 tub"), ([review_tub, "--image-key", "cam/other"], "no cam/other field"),
             ([review_tub, "--colormap", "rainbow"], "unknown colormap"),
             ([review_tub, "--model", tmp_path / "missing.h5"], "model file not found")]
    (tmp_path / "empty").mkdir()
    for args, message in cases:
        result = run_cli("review", *args)
        assert result.returncode == 2 and result.stdout == "", (args, result.stdout, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, (args, result.stderr)


def test_cli_serves_the_page(review_tub):
    process = subprocess.Popen(CLI + ["review", review_tub, "--port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "%d records" % COUNT in line and "http://127.0.0.1:" in line, (line, process.stderr.read())
        url = line.split()[-1]
        port = int(url.split(":")[2].split("/")[0])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/saliency/review")
        response = connection.getresponse()
        assert response.status == 200 and b"timeline" in response.read()
    finally:
        process.terminate()
        process.wait(20)


# --- headless Chromium ---------------------------------------------------------------------------------
STATE = """JSON.stringify((function () {
  function box(id) { var r = document.getElementById(id).getBoundingClientRect();
                     return [Math.round(r.left), Math.round(r.top), Math.round(r.width), Math.round(r.height)]; }
  var b = document.body.dataset;
  return { state: b.state, index: +b.index, camera: +b.camera, overlay: b.overlay, record: +b.record,
           field: document.getElementById("f-index").textContent,
           mode: document.getElementById("f-mode").textContent,
           deleted: document.getElementById("f-deleted").textContent,
           cameraBox: box("camera"), overlayBox: box("overlay"), timelineBox: box("timeline"),
           firstDisagreement: (document.querySelector("#disagreements button") || {dataset: {}}).dataset.index,
           firstBox: document.querySelector("#disagreements button") ? box_el(document.querySelector("#disagreements button")) : null,
           message: document.getElementById("message").textContent,
           pageWidth: document.documentElement.scrollWidth, viewportWidth: window.innerWidth };
  function box_el(e) { var r = e.getBoundingClientRect(); return [Math.round(r.left), Math.round(r.top), Math.round(r.width), Math.round(r.height)]; }
})())"""


class Page(object):
    def __init__(self, browser):
        self.browser = browser
        self.state = {}

    def read(self):
        self.state = json.loads(self.browser.evaluate(STATE) or "{}")
        return self.state

    def shows(self, index, overlay=True):
        """Waits until the page shows record ``index``: its camera, its fields and, if asked, its overlay."""
        def done():
            s = self.read()
            return (s.get("index") == index and s.get("camera") == index and s.get("record") == index
                    and s.get("field", "").startswith("%d /" % index)
                    and (not overlay or s.get("overlay") == str(index)))
        return wait_for(done, timeout=30)


def open_page(tmp_path, url, width, height):
    browser = DevTools(str(tmp_path / ("profile%d" % width)), str(tmp_path / "chromium.log"), width, height)
    browser.open(url, width, height, mobile=width < 500)
    return browser, Page(browser)


@pytest.mark.browser
@pytest.mark.parametrize("width,height", [(1280, 900), (390, 1100)])
def test_review_page_in_headless_chromium(review_tub, tmp_path, width, height):
    chromium_or_skip()
    server = Served(review_tub)
    browser = None
    try:
        browser, page = open_page(tmp_path, server.base + "/saliency/review", width, height)
        assert page.shows(0), page.state
        browser.press("ArrowRight")
        assert page.shows(1), page.state
        browser.press("ArrowRight", shift=True)
        assert page.shows(21), page.state
        browser.press("ArrowLeft")
        assert page.shows(20), page.state
        assert page.state["firstDisagreement"] == "77"
        x, y, w, h = page.state["firstBox"]
        browser.click(x + w // 2, y + h // 2)
        assert page.shows(77), page.state
        assert page.state["mode"] == "local_angle"  # records 40..79
        # The timeline: a click at record 12's place jumps there (a deleted record, shown so).
        x, y, w, h = page.state["timelineBox"]
        browser.click(x + (12.5 / COUNT) * w, y + h // 2)
        assert page.shows(12), page.state
        assert page.state["deleted"] == "yes"
        browser.press("d")  # read-only: refused with a message, nothing written
        assert wait_for(lambda: "read-only" in page.read()["message"])
        os.makedirs(ARTIFACTS, exist_ok=True)
        png = browser.screenshot(os.path.join(ARTIFACTS, "review_page_%d.png" % width))
        state = page.read()
    finally:
        if browser is not None:
            browser.close()
        server.close()
    assert donkey_deleted(review_tub)[0] == set(DELETED)
    assert state["viewportWidth"] == width and state["pageWidth"] <= width
    shown_camera, shown_overlay = crop(png, state["cameraBox"]), crop(png, state["overlayBox"])
    assert shown_camera.shape[1] > 100
    assert np.mean(np.abs(shown_camera.astype(int) - resized(camera(12), state["cameraBox"]))) < 12
    assert np.mean(np.abs(shown_overlay.astype(int) - resized(recorded_overlay(12), state["overlayBox"]))) < 12
    timeline = crop(png, state["timelineBox"])
    user_green = (timeline[..., 1] > 150) & (timeline[..., 0] < 120)
    pilot_blue = (timeline[..., 2] > 200) & (timeline[..., 0] < 120)
    assert user_green.sum() > 100 and pilot_blue.sum() > 100  # both curves drawn


@pytest.mark.browser
def test_d_key_deletes_through_the_page_with_writable(review_tub, tmp_path):
    chromium_or_skip()
    server = Served(review_tub, writable=True)
    browser = None
    try:
        browser, page = open_page(tmp_path, server.base + "/saliency/review", 1280, 900)
        assert page.shows(0)
        browser.press("ArrowRight", shift=True)
        assert page.shows(20)
        browser.press("d")
        assert wait_for(lambda: page.read()["deleted"] == "yes" and "deleted" in page.state["message"]), page.state
        assert 20 in donkey_deleted(review_tub)[0]
        browser.press("d")
        assert wait_for(lambda: page.read()["deleted"] == "no"), page.state
    finally:
        if browser is not None:
            browser.close()
        server.close()
    marked, yielded = donkey_deleted(review_tub)
    assert marked == set(DELETED) and 20 in yielded


@pytest.mark.browser
def test_review_page_on_the_real_tub_with_the_real_pilot(tmp_path):
    """The real v1 tub has no saliency and no pilot values recorded: the overlay and layer maps are
    computed with the real pilot on demand, its steering and throttle in the background (as
    ``review --model`` does); the disagreement list then jumps to the record where the pilot's
    steering is furthest from the user's."""
    chromium_or_skip()
    pilot, tub = real_data_or_skip()
    import donkey_saliency
    from donkey_saliency.api import PilotPass

    server = Served(tub)
    server.review.saliency = donkey_saliency.load(pilot).activate()
    server.review.compute_pilot(PilotPass(pilot))
    browser = None
    try:
        browser, page = open_page(tmp_path, server.base + "/saliency/review", 1280, 900)
        assert page.shows(0), page.state
        note = 'document.getElementById("pilot-note").textContent'
        assert wait_for(lambda: browser.evaluate(note) == "(pilot values computed with --model)", timeout=120)
        assert wait_for(lambda: page.read().get("firstDisagreement") not in (None, ""), timeout=10), page.state
        top = int(page.state["firstDisagreement"])
        x, y, w, h = page.state["firstBox"]
        browser.click(x + w // 2, y + h // 2)
        assert page.shows(top), page.state
        user, pilot_angle = server.review.index.array("user/angle"), server.review.pilot.angle
        assert np.isfinite(pilot_angle).all()
        gaps = np.abs(pilot_angle - user) + np.abs(server.review.pilot.throttle - server.review.index.array("user/throttle"))
        assert gaps[top] == pytest.approx(gaps.max(), abs=1e-4)
        shown = browser.evaluate('document.getElementById("f-pilot-angle").textContent')
        assert float(shown) == pytest.approx(float(pilot_angle[top]), abs=0.006)
        browser.press("ArrowLeft")
        assert page.shows(top - 1), page.state
        # Dragging along the timeline scrubs: it ends on the record under the pointer.
        x, y, w, h = page.state["timelineBox"]
        browser.drag(x + w * 0.5, y + h // 2, x + w * (30.5 / 300))
        assert page.shows(30), page.state
        # Space plays (at the recorded 19.6 Hz) and pauses; paused, the index stays put.
        browser.press(" ")
        assert wait_for(lambda: page.read()["index"] >= 35, timeout=20), page.state
        browser.press(" ")
        paused = page.read()["index"]
        later = browser.send("Runtime.evaluate", awaitPromise=True, returnByValue=True, expression=(
            "new Promise(function (done) { setTimeout(function () { done(+document.body.dataset.index); }, 500); })"))
        assert later["result"]["value"] == paused
        browser.press("ArrowRight", shift=True)
        assert page.shows(paused + 20), page.state
        browser.evaluate('document.getElementById("layers-toggle").click()')
        layers = 'Array.prototype.filter.call(document.querySelectorAll("#layers img"), function (i) { return i.naturalWidth > 0; }).length'
        assert wait_for(lambda: browser.evaluate(layers) == 5, timeout=30)
        os.makedirs(ARTIFACTS, exist_ok=True)
        png = browser.screenshot(os.path.join(ARTIFACTS, "review_page_realdata.png"))
        state = page.read()
    finally:
        if browser is not None:
            browser.close()
        server.close()
    names = sorted(n for n in os.listdir(tub) if n.endswith(".jpg"))  # record_2000.. are in name order
    frame = cv2.cvtColor(cv2.imread(os.path.join(tub, names[paused + 20])), cv2.COLOR_BGR2RGB)
    shown_camera, shown_overlay = crop(png, state["cameraBox"]), crop(png, state["overlayBox"])
    assert np.mean(np.abs(shown_camera.astype(int) - resized(frame, state["cameraBox"]))) < 12
    assert np.mean(np.abs(shown_overlay.astype(int) - resized(frame, state["overlayBox"]))) > 20  # coloured


@pytest.mark.browser
def test_review_page_opens_at_the_record_a_link_names(review_tub, tmp_path):
    """audit.html links to PREFIX#record=N: the page opens there, and follows a changed hash."""
    chromium_or_skip()
    server = Served(review_tub)
    browser = None
    try:
        browser, page = open_page(tmp_path, server.base + "/saliency/review#record=77", 1280, 900)
        assert page.shows(77), page.state
        browser.evaluate("location.hash = '#record=30'")
        assert page.shows(30), page.state
    finally:
        if browser is not None:
            browser.close()
        server.close()
