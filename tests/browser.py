"""Headless Chromium for the page tests (Debian's ``chromium``), driven over the DevTools protocol."""
import base64
import fcntl
import json
import os
import select
import subprocess
import time

import numpy as np
import pytest

ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test-artifacts")
CHROMIUM = "/usr/bin/chromium"


def chromium_or_skip():
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium package at /usr/bin/chromium (apt-get install chromium; "
                    ".ci/run installs it)")


class DevTools(object):
    """Chromium's DevTools protocol over --remote-debugging-pipe (fd 3 in, fd 4 out; NUL-separated JSON):
    no port of its own, and the screenshot is taken at the moment the page state is checked."""

    def __init__(self, user_data_dir, log_path, width, height):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # Move the child's ends above 10 so the shell can put them on fds 3 and 4 without clashes.
        child_read = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
        child_write = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
        os.close(to_browser_read)
        os.close(from_browser_write)
        arguments = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-extensions", "--disable-dev-shm-usage", "--user-data-dir=" + user_data_dir,
                     "--remote-debugging-pipe",
                     "--window-size=%d,%d" % (width, height), "about:blank"]
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            ["bash", "-c", 'exec "$0" "$@" 3<&%d 4>&%d' % (child_read, child_write)] + arguments,
            pass_fds=(child_read, child_write), stdout=self._log, stderr=subprocess.STDOUT)
        os.close(child_read)
        os.close(child_write)
        self._buffer = b""
        self._next_id = 0
        self.session = None

    def send(self, method, timeout=20.0, **params):
        self._next_id += 1
        message = dict(id=self._next_id, method=method, params=params)
        if self.session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw.decode("utf-8"))
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError("%s: %s" % (method, reply["error"]))
                    return reply["result"]
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._from_browser], [], [], remaining)[0]:
                raise TimeoutError("chromium did not answer %s within %.0f s" % (method, timeout))
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise EOFError("chromium exited (see %s)" % self._log.name)
            self._buffer += chunk

    def open(self, url, width, height, mobile):
        """A tab with a viewport of exactly width x height CSS pixels (a window has a minimum width)."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=mobile)
        self.send("Page.navigate", url=url)

    def evaluate(self, expression):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    KEYS = {"ArrowLeft": 37, "ArrowRight": 39, " ": 32, "d": 68}

    def press(self, key, shift=False):
        """A real key press (keydown + keyup) as the page receives it from a keyboard."""
        code = {"ArrowLeft": "ArrowLeft", "ArrowRight": "ArrowRight", " ": "Space", "d": "KeyD"}[key]
        common = dict(key=key, code=code, windowsVirtualKeyCode=self.KEYS[key], modifiers=8 if shift else 0)
        self.send("Input.dispatchKeyEvent", type="keyDown", text=key if len(key) == 1 else "", **common)
        self.send("Input.dispatchKeyEvent", type="keyUp", **common)

    def click(self, x, y):
        """A left mouse click at page coordinates (CSS pixels)."""
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def drag(self, x0, y, x1, steps=5):
        """Press at (x0, y), move to (x1, y) in ``steps`` with the button held, release there."""
        self.send("Input.dispatchMouseEvent", type="mousePressed", x=x0, y=y, button="left", clickCount=1)
        for k in range(1, steps + 1):
            self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x0 + (x1 - x0) * k / steps, y=y,
                      button="left", buttons=1)
        self.send("Input.dispatchMouseEvent", type="mouseReleased", x=x1, y=y, button="left", clickCount=1)

    def screenshot(self, path):
        data = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        with open(path, "wb") as handle:
            handle.write(data)
        return data

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        self._log.close()


def crop(png, box):
    import cv2

    image = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    left, top, width, height = box
    return image[top:top + height, left:left + width]


def resized(image, box):
    import cv2

    return cv2.resize(image, (box[2], box[3]), interpolation=cv2.INTER_LINEAR)
