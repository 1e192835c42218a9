"""Issue 23, the web side: the car's review never works on the IOLoop, a tub being recorded is never
marked deleted beside its writer, a manifest read mid-rewrite is read again, the page's poll survives
a failure, every route of both servers checks the Host, slow connections are cut off, a tub opened
through a symlink shows its images. Real parts: donkeycar's Vehicle, LocalWebController, TubWriter
and Tub; Tornado on 127.0.0.1 (free ports); raw sockets for slow clients; headless Chromium."""
import json
import os
import socket
import subprocess
import threading

import pytest

from browser import DevTools, chromium_or_skip
from helpers import CLI, wait_for
from tub_helpers import INPUTS as PAGE_INPUTS
from tub_helpers import TYPES as PAGE_TYPES
from tub_helpers import camera, COUNT, DELETED, donkey_deleted, write_tub
from web_helpers import get, Served
from donkey_saliency.web import guard as requests_guard
from donkey_saliency.tubs import read as tub, index as tub_index
from donkey_saliency.errors import InputError
from donkey_saliency.web.review import application, limited_server
from donkey_saliency.web.review_model import Review
from donkey_saliency.testing import ServerThread, write_catalog_tub

BIG = 200000
INPUTS = ["cam/image_array", "user/angle", "user/throttle", "user/mode"]
TYPES = ["image_array", "float", "float", "str"]


# --- 1: the car's review works off the IOLoop, and reads only what a growing tub added ----------------
class LoopCounter(object):
    """A vehicle part: counts the drive loop's iterations."""

    def __init__(self):
        self.loops = 0

    def run(self):
        self.loops += 1
        return camera(self.loops % 7), 0.1, 0.3, "user"


@pytest.mark.slow
def test_car_review_of_a_200000_record_tub_never_works_on_the_ioloop(tmp_path, monkeypatch):
    from donkeycar.parts.tub_v2 import TubWriter
    from donkeycar.parts.web_controller.web import LocalWebController
    from donkeycar.vehicle import Vehicle

    from donkey_saliency.car.part import SaliencyPart
    from donkey_saliency.car.vehicle import tub_being_written
    from donkey_saliency.web.live import attach_web

    path = write_catalog_tub(str(tmp_path / "tub"), BIG, INPUTS, TYPES, [camera(k) for k in range(4)])
    parsed_on, started, release = [], threading.Event(), threading.Event()
    real_parse = tub_index.parse_v2_line

    def held_parse(line):  # a hook, not a fake: the real parser, paused on its first line
        parsed_on.append(threading.get_ident())
        if len(parsed_on) == 1:
            started.set()
            release.wait(60)
        return real_parse(line)

    monkeypatch.setattr(tub_index, "parse_v2_line", held_parse)
    vehicle = Vehicle()
    counter = LoopCounter()
    vehicle.add(counter, outputs=INPUTS)
    vehicle.add(TubWriter(path, inputs=INPUTS, types=TYPES), inputs=INPUTS, outputs=["tub/num_records"])
    ctr = LocalWebController(port=0)
    attach_web(ctr, SaliencyPart(str(tmp_path / "no-pilot.h5")), review_tub=lambda: tub_being_written(vehicle))
    server = ServerThread(ctr).start()
    drive = threading.Thread(target=vehicle.start, kwargs=dict(rate_hz=50), daemon=True)
    drive.start()
    replies = []
    try:
        ioloop_thread = server.call(threading.get_ident)
        opening = threading.Thread(target=lambda: replies.append(get(server.port, "/saliency/review/meta")))
        opening.start()
        assert started.wait(30), "the review never started indexing"
        # The index is being built (held on its first line): the IOLoop answers, the car drives.
        status, body = get(server.port, "/saliency/stats", timeout=10)
        assert status == 200 and "fps" in json.loads(body.decode("utf-8"))
        assert get(server.port, "/saliency/review", timeout=10)[0] == 200
        loops = counter.loops
        assert wait_for(lambda: counter.loops >= loops + 10, timeout=30), "the drive loop stopped"
        release.set()
        opening.join(120)
        status, body = replies[0]
        meta = json.loads(body.decode("utf-8"))
        assert status == 200 and meta["count"] >= BIG and meta["live"], meta
        assert len(parsed_on) >= BIG and ioloop_thread not in parsed_on  # all of it off the IOLoop
        # A tub that grows: the next request reads only the records written since.
        assert wait_for(lambda: counter.loops >= loops + 30, timeout=30)
        before = len(parsed_on)
        meta = json.loads(get(server.port, "/saliency/review/meta")[1].decode("utf-8"))
        assert meta["count"] > BIG and len(parsed_on) - before <= meta["count"] - BIG
        assert ioloop_thread not in parsed_on[before:]
        status, data = get(server.port, "/saliency/review/frame/%d/camera.jpg" % (BIG - 1))
        assert status == 200 and data[:3] == b"\xff\xd8\xff"
    finally:
        release.set()
        vehicle.on = False
        drive.join(30)
        server.stop()
    assert not drive.is_alive()


# --- 2: --writable on a tub being recorded ----------------------------------------------------------
def test_writable_review_refuses_a_tub_being_recorded(tmp_path):
    from donkeycar.parts.tub_v2 import Tub, TubWriter

    path = write_tub(tmp_path / "tub")
    early = Served(path, writable=True)  # opened before the car started recording
    try:
        writer = TubWriter(path, inputs=PAGE_INPUTS, types=PAGE_TYPES)
        assert "process %d" % os.getpid() in tub_index.live_writer(path)
        with pytest.raises(InputError, match="being recorded"):
            Review(path, writable=True)
        here = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        result = subprocess.run(CLI + ["review", path, "--writable", "--port", "0"], capture_output=True,
                                text=True, timeout=120, env=here)  # this checkout's package, not the venv's
        assert result.returncode == 2 and result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1 and "being recorded" in result.stderr, result.stderr
        for i in range(30):
            writer.run(*[record_value(key, COUNT + i) for key in PAGE_INPUTS])
        status, reply = early.post_deleted(b'{"index": 3, "deleted": true}')
        assert status == 409 and "being recorded" in reply["error"], reply
        for i in range(30, 60):
            writer.run(*[record_value(key, COUNT + i) for key in PAGE_INPUTS])
        writer.close()
    finally:
        early.close()
    marked, yielded = donkey_deleted(path)
    assert marked == set(DELETED) and len(yielded) == COUNT + 60 - len(DELETED)  # every record read back
    tub = Tub(path, read_only=True)
    assert tub.manifest.current_index == COUNT + 60
    tub.close()
    assert tub_index.live_writer(path, watch_s=0.2) is None  # the writer is gone: --writable works again
    server = Served(path, writable=True)
    try:
        assert server.post_deleted(b'{"index": 3, "deleted": true}')[0] == 200
    finally:
        server.close()
    assert 3 in donkey_deleted(path)[0]


def record_value(key, i):
    from donkey_saliency.keys import OVERLAY_KEY

    if key in ("cam/image_array", OVERLAY_KEY):
        return camera(i)
    return "user" if key == "user/mode" else 0.1


# --- 3: a manifest read while it is rewritten ------------------------------------------------------------
def test_a_torn_manifest_read_is_read_again(tmp_path, monkeypatch):
    path = write_tub(tmp_path / "tub", count=5, deleted=())
    real_text = tub._manifest_text
    reads = []

    def torn_once(tub_path):  # injects the torn state donkeycar's truncate-then-write leaves for a moment
        text = real_text(tub_path)
        reads.append(1)
        return "\n".join(text.split("\n")[:4]) + "\n" if len(reads) == 1 else text

    monkeypatch.setattr(tub, "_manifest_text", torn_once)
    assert tub.read_v2_manifest(path)[4]["current_index"] == 5 and len(reads) == 2
    monkeypatch.setattr(tub, "_manifest_text", lambda tub_path: "[]\n[]\n")
    with pytest.raises(InputError, match="not a donkeycar tub manifest"):  # broken for good: refused, bounded
        tub.read_v2_manifest(path)


def test_meta_and_timeline_never_fail_while_donkeycars_writer_writes(tmp_path):
    from donkeycar.parts.tub_v2 import TubWriter

    path = str(tmp_path / "tub")
    writer = TubWriter(path, inputs=["cam/image_array", "user/angle"], types=["image_array", "float"])
    frame = camera(0)
    writer.run(frame, 0.0)
    server = Served(path, live=True)
    stop = threading.Event()

    def write():  # as fast as it goes: every record rewrites the manifest's last line
        i = 0
        while not stop.is_set() and i < 20000:
            writer.run(frame, i / 20000.0)
            i += 1

    thread = threading.Thread(target=write)
    thread.start()
    try:
        statuses = [server.request("/saliency/review/" + ("meta" if k % 2 else "timeline"))[0] for k in range(300)]
    finally:
        stop.set()
        thread.join(30)
        writer.close()
        server.close()
    assert statuses == [200] * 300


@pytest.mark.browser
def test_review_page_recovers_from_a_failed_poll(tmp_path, monkeypatch):
    from donkeycar.parts.tub_v2 import Tub

    chromium_or_skip()
    path = str(tmp_path / "tub")
    writer = Tub(path, inputs=["cam/image_array", "user/angle"], types=["image_array", "float"])
    for i in range(5):
        writer.write_record({"cam/image_array": camera(i), "user/angle": 0.1})
    calls = []
    real_timeline = Review.timeline

    def fails_once(review):
        calls.append(1)
        if len(calls) == 2:  # the first poll after the page loaded
            raise InputError("injected failure")
        return real_timeline(review)

    monkeypatch.setattr(Review, "timeline", fails_once)
    server = Served(path, live=True)
    server.review.poll_ms = 200
    browser = None
    try:
        browser = DevTools(str(tmp_path / "profile"), str(tmp_path / "chromium.log"), 1280, 900)
        browser.open(server.base + "/saliency/review", 1280, 900, mobile=False)
        state = 'JSON.stringify([+document.body.dataset.pollFailed || 0, +document.body.dataset.polled || 0, ' \
                'document.getElementById("f-index").textContent, document.getElementById("message").textContent])'
        assert wait_for(lambda: json.loads(browser.evaluate(state) or "[0]")[0] == 1, timeout=30)
        for i in range(5, 9):
            writer.write_record({"cam/image_array": camera(i), "user/angle": 0.1})
        # Recovered: polled again after the failure, sees the new records, the message cleared.
        assert wait_for(lambda: browser.evaluate("tl.n") == 9, timeout=30), browser.evaluate(state)
        failed, polled, _, message = json.loads(browser.evaluate(state))
        assert failed == 1 and polled >= 1 and message == ""
    finally:
        if browser is not None:
            browser.close()
        server.close()
        writer.close()


# --- 6: the Host header, on every route of both servers ----------------------------------------------------
CAR_ROUTES = ["/saliency", "/saliency/stats", "/saliency/layer/0.jpg", "/saliency/video", "/saliency/camera",
              "/saliency/review", "/saliency/review/meta", "/saliency/review/timeline", "/saliency/review/record/0",
              "/saliency/review/frame/0/camera.jpg"]


def test_every_car_route_refuses_a_foreign_host(tmp_path):
    from donkeycar.parts.web_controller.web import LocalWebController

    from donkey_saliency.car.part import SaliencyPart
    from donkey_saliency.web.live import attach_web

    path = write_tub(tmp_path / "tub", count=3, deleted=())
    ctr = LocalWebController(port=0)
    web = attach_web(ctr, SaliencyPart(str(tmp_path / "no-pilot.h5")), review_tub=path,
                     allowed_hosts=["mycar.lan"])
    server = ServerThread(ctr).start()
    port = server.port
    try:
        for route in CAR_ROUTES + ["/saliency/drive_view", "/saliency/review/deleted"]:
            method = "POST" if route.endswith(("drive_view", "deleted")) else "GET"
            for host in ("evil.example:%d" % port, "evil.example", "10.9.8.7:%d" % port, "", "[::1"):
                status, _ = get(port, route, host=host, method=method, body=b"" if method == "POST" else None,
                                headers={"Origin": "http://%s" % host})
                assert status in (400, 403), (route, host, status)
        assert not web.drive_view.on  # the refused POSTs changed nothing
        for host in ("127.0.0.1:%d" % port, "localhost:%d" % port, "mycar.lan:%d" % port,
                     socket.gethostname() + ":%d" % port):
            assert get(port, "/saliency/stats", host=host)[0] == 200, host
            assert get(port, "/saliency/review/meta", host=host)[0] == 200, host
        status, body = get(port, "/saliency/drive_view", host="mycar.lan:%d" % port, method="POST",
                           body=b'{"on": true}', headers={"Origin": "http://mycar.lan:%d" % port})
        assert status == 200 and web.drive_view.on
    finally:
        server.stop()


def test_review_server_refuses_a_rebound_host(review_tub):
    server = Served(review_tub, ["laptop.lan"], writable=True)
    port = server.port
    try:
        evil = "evil.example:%d" % port
        for route in ["/", "/saliency/review", "/saliency/review/meta", "/saliency/review/timeline",
                      "/saliency/review/record/0", "/saliency/review/frame/0/camera.jpg"]:
            assert get(port, route, host=evil)[0] == 403, route
            assert get(port, route, host="laptop.lan:%d" % port)[0] in (200, 301, 302), route
        # The attack of the issue: a page of evil.example rebound to 127.0.0.1 posts with its own Origin.
        status, _ = get(port, "/saliency/review/deleted", host=evil, method="POST",
                        body=b'{"index": 3, "deleted": true}', headers={"Origin": "http://" + evil})
        assert status == 403
        assert donkey_deleted(review_tub)[0] == set(DELETED)
        assert server.post_deleted(b'{"index": 3, "deleted": true}')[0] == 200  # the page itself still may
    finally:
        server.close()


# --- 7: slow connections -----------------------------------------------------------------------------------
def wait_closed(sock, timeout=15.0):
    """Whether the server hangs up on ``sock`` within ``timeout`` (reading what it sends meanwhile)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
        return True
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def test_slow_clients_are_cut_off_and_refusals_logged_rate_limited(tmp_path, caplog):
    from donkeycar.parts.web_controller.web import LocalWebController

    from donkey_saliency.car.part import SaliencyPart
    from donkey_saliency.web.live import attach_web

    ctr = LocalWebController(port=0)
    attach_web(ctr, SaliencyPart(str(tmp_path / "no-pilot.h5")))
    limits = dict(idle_connection_timeout=0.5, body_timeout=0.5)
    server = ServerThread(ctr, server_options=limits).start()
    sockets = []
    try:
        trickle = socket.create_connection(("127.0.0.1", server.port))
        trickle.sendall(b"GET /saliency/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
        body = socket.create_connection(("127.0.0.1", server.port))
        body.sendall(b"POST /saliency/drive_view HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 12\r\n\r\n{\"on\"")
        idle = socket.create_connection(("127.0.0.1", server.port))  # sends nothing at all
        sockets = [trickle, body, idle]
        assert all(wait_closed(s) for s in sockets)
        assert get(server.port, "/saliency/stats")[0] == 200  # the server answers the next client
        with caplog.at_level("WARNING"):
            requests_guard.REFUSALS._last.clear()
            for _ in range(50):
                assert get(server.port, "/saliency/stats", host="evil.example")[0] == 403
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 2 and "evil.example" in warnings[0], warnings  # the Host, its 403: once each
    finally:
        for s in sockets:
            s.close()
        server.stop()
    # The car's own server (created by donkeycar's update() with listen()) gets the project's limits.
    import asyncio

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        listening = ctr.listen(0, "127.0.0.1")
        assert listening.conn_params.header_timeout == requests_guard.IDLE_S
        assert listening.conn_params.body_timeout == requests_guard.BODY_S
        listening.stop()
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_review_server_closes_connections_beyond_its_limit(review_tub):
    review = Review(review_tub)
    held = []

    class Limited(ServerThread):
        def _run(self):
            import asyncio

            from tornado.ioloop import IOLoop
            from tornado.netutil import bind_sockets

            asyncio.set_event_loop(asyncio.new_event_loop())
            sockets = bind_sockets(0, address="127.0.0.1")
            self.port = sockets[0].getsockname()[1]
            self._server = limited_server(application(review), 2)
            self._server.add_sockets(sockets)
            self.loop = IOLoop.current()
            self._ready.set()
            self.loop.start()
            self.loop.close(all_fds=True)

    server = Limited(None).start()
    assert server._server.conn_params.header_timeout == requests_guard.IDLE_S  # the slow-client limits too
    assert server._server.conn_params.body_timeout == requests_guard.BODY_S
    try:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        extra = socket.create_connection(("127.0.0.1", server.port))
        held.append(extra)
        assert wait_closed(extra, 10)  # the third is hung up on at once
        held[0].close()
        def answered():
            try:
                return get(server.port, "/saliency/review/meta", timeout=5)[0] == 200
            except OSError:  # hung up on: the server has not seen the first one go yet
                return False

        assert wait_for(answered, timeout=15)  # a place came free
    finally:
        for s in held:
            s.close()
        server.stop()
        review.close()


def test_review_server_logs_refusals_rate_limited(review_tub, caplog):
    server = Served(review_tub)
    requests_guard.REFUSALS._last.clear()
    # Tornado logs a request after its reply has gone out: the server's thread is ended (server.close)
    # before the levels are put back, or the last line could come after and be filtered out.
    with caplog.at_level("INFO"), caplog.at_level("INFO", logger="tornado.access"):
        try:
            for i in range(40):
                assert get(server.port, "/saliency/review/record/%d" % (COUNT + i))[0] == 404
                assert get(server.port, "/saliency/review/meta", host="evil.example")[0] == 403
            assert get(server.port, "/saliency/review/meta")[0] == 200
        finally:
            server.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3, warnings  # one line each: 404, the foreign Host, its 403
    assert sum("200 GET /saliency/review/meta" in r.getMessage() for r in caplog.records) == 1


# --- 8: a tub opened through a symlink -------------------------------------------------------------------
def test_a_tub_opened_through_a_symlink_shows_its_images(tmp_path):
    path = write_tub(tmp_path / "real", count=3, deleted=())
    link = str(tmp_path / "link")
    os.symlink(path, link)
    index = tub_index.TubIndex(link)
    assert index.images(1)["cam/image_array"] == os.path.join(link, "images", "1_cam_image_array_.jpg")
    server = Served(link)
    try:
        status, _, data = server.request("/saliency/review/frame/1/camera.jpg")
        with open(os.path.join(path, "images", "1_cam_image_array_.jpg"), "rb") as handle:
            assert status == 200 and data == handle.read()
    finally:
        server.close()
