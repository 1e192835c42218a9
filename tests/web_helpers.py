"""Live and review servers on 127.0.0.1 (a free port chosen at run time) and a real HTTP client for them."""
import http.client
import json
import threading
import time

import numpy as np

from donkey_saliency.car.part import SaliencyPart
from donkey_saliency.testing import ServerThread
from donkey_saliency.web.live import attach_web
from donkey_saliency.web.review import application
from donkey_saliency.web.review_model import Review


def camera_frame(shift=0):
    """A gray road-like gradient (no colour, so colour in a picture can only come from the heat map)."""
    yy, xx = np.mgrid[0:120, 0:160]
    gray = ((xx * 1.2 + yy * 0.8 + shift * 7) % 200 + 30).astype(np.uint8)
    gray[70:90, (40 + shift) % 120:(40 + shift) % 120 + 30] = 240  # a bright "cone" that moves
    return np.repeat(gray[..., None], 3, axis=2)


def decode_jpeg(data):
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def mean_abs_diff(a, b):
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


# donkeycar's own /video re-encodes with PIL (quality 75, 4:2:0 chroma), which blurs the gradient mask's
# fine detail: a frame it serves is within this mean |difference| of the picture it shows, while the
# other picture (camera vs overlay) stays over 30 away.
STOCK_VIDEO_CLOSE = 20


def stock_video_shows(response, expected, timeout=10.0):
    """Reads donkeycar's /video (an open MJPEG ``response``) until a frame is within
    ``STOCK_VIDEO_CLOSE`` of ``expected`` or ``timeout`` passes; the last frame read."""
    from donkey_saliency.testing import read_mjpeg_part

    deadline = time.monotonic() + timeout
    while True:
        picture = decode_jpeg(read_mjpeg_part(response)[1])
        if mean_abs_diff(picture, expected) < STOCK_VIDEO_CLOSE or time.monotonic() > deadline:
            return picture


class LiveServer(object):
    """A real LocalWebController with the saliency routes on 127.0.0.1, a real SaliencyPart whose worker
    runs in a thread (as Vehicle runs it), and a feeder calling ``run_threaded`` at ~30 Hz while ``feeding``."""

    def __init__(self, model_path, moving=True, **web_options):
        from donkeycar.parts.web_controller.web import LocalWebController

        self.ctr = LocalWebController(port=0)
        self.part = SaliencyPart(model_path)
        self.web = attach_web(self.ctr, self.part, **web_options)
        self.server = ServerThread(self.ctr).start()
        self.port = self.server.port
        self.moving = moving
        self.feeding = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self.part.update, daemon=True),
                         threading.Thread(target=self._feed, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _feed(self):
        shift = 0
        while not self._stop.is_set():
            if self.feeding.is_set():
                shift += 1 if self.moving else 0
                self.part.run_threaded(camera_frame(shift))
            time.sleep(1.0 / 30)

    def request(self, path, method="GET", body=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=body)
            response = connection.getresponse()
            return response.status, response.getheader("Content-Type"), response.read()
        finally:
            connection.close()

    def stats(self):
        status, content_type, body = self.request("/saliency/stats")
        assert status == 200 and content_type == "application/json"
        return json.loads(body.decode("utf-8"))

    def close(self):
        self._stop.set()
        self.part.shutdown()
        self.server.call(self.web.close)
        for thread in self._threads:
            thread.join(5)
        self.server.stop()


def open_stream(port, path="/saliency/video"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path)
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("multipart/x-mixed-replace")
    return connection, response


def request(port, path, body):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body=body)
        response = connection.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        connection.close()


class Served(object):
    """A Review behind its own Tornado application on 127.0.0.1, a free port; ``hosts``: the names it
    answers beyond loopback (``application``'s allowed_hosts)."""

    def __init__(self, tub, hosts=(), **options):
        self.review = Review(tub, **options)
        self.server = ServerThread(application(self.review, hosts)).start()
        self.port = self.server.port
        self.base = "http://127.0.0.1:%d" % self.port

    def request(self, path, method="GET", body=None, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.getheader("Content-Type"), response.read()
        finally:
            connection.close()

    def json(self, path):
        status, content_type, body = self.request(path)
        assert content_type == "application/json", (status, body)
        return status, json.loads(body.decode("utf-8"))

    def post_deleted(self, body, origin="same"):
        headers = {"Content-Type": "application/json"}
        if origin == "same":
            headers["Origin"] = self.base
        elif origin:
            headers["Origin"] = origin
        status, _, reply = self.request("/saliency/review/deleted", "POST", body, headers)
        return status, json.loads(reply.decode("utf-8"))

    def close(self):
        self.server.stop()
        self.review.close()


def get(port, path, host=None, headers=None, method="GET", body=None, timeout=60):
    """(status, body) of one request to 127.0.0.1:port; ``host``: the Host header a client sends."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = dict(headers or {})
        if host is not None:
            headers["Host"] = host
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()
