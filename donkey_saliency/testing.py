"""For tests, benchmarks and the car checks, not for the car: a web server on one loopback address
(``ServerThread``) and a reader for the MJPEG streams it serves (``read_mjpeg_part``).

On-car Python 3.6 runs it too (the car checks), so it keeps to what 3.6 has.
"""
import json
import logging
import os
import threading

from .util.images import encode_jpeg
from .web.guard import SERVER_LIMITS
from .keys import MODE_KEY, USER_ANGLE_KEY, USER_THROTTLE_KEY


def read_mjpeg_part(stream):
    """One part of a multipart/x-mixed-replace stream (ours, or donkeycar's /video) from a file-like
    ``stream``: ``(headers with lower-case names, body bytes)``; EOFError when the stream ends."""
    headers = {}
    while True:
        line = stream.readline(4096)
        if not line:
            raise EOFError("the stream ended")
        line = line.strip()
        if not line:
            if "content-length" in headers:
                break
            continue  # the blank line after a body, before the next boundary
        if b":" in line:  # boundary lines have no colon
            name, value = line.split(b":", 1)
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    length = int(headers["content-length"])
    body = stream.read(length)
    if len(body) != length:
        raise EOFError("the stream ended inside a frame")
    return headers, body


class ServerThread(object):
    """Serves a ``LocalWebController`` from its own IOLoop thread on one address only - what
    ``ctr.update()`` does on all interfaces. For demos, tests and benchmarks on 127.0.0.1; port 0
    picks a free port (``.port`` once started). Sets ``ctr.loop`` as ``update()`` does. The server
    has the time limits ``attach_web`` gives the car's (``requests_guard.SERVER_LIMITS``) unless
    ``server_options`` says otherwise."""

    def __init__(self, ctr, address="127.0.0.1", port=0, server_options=None):
        self.server_options = dict(SERVER_LIMITS if server_options is None else server_options)
        self.ctr = ctr
        self.address = address
        self.port = port
        self.loop = None
        self._server = None
        self._ready = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="saliency-web-server", daemon=True)

    def start(self, timeout=10.0):
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the web server did not start within %.0f s" % timeout)
        if self._error is not None:
            raise self._error
        return self

    def _run(self):
        import asyncio

        from tornado.httpserver import HTTPServer
        from tornado.ioloop import IOLoop
        from tornado.netutil import bind_sockets

        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            sockets = bind_sockets(self.port, address=self.address)
            self.port = sockets[0].getsockname()[1]
            self._server = HTTPServer(self.ctr, **self.server_options)
            self._server.add_sockets(sockets)
            self.loop = self.ctr.loop = IOLoop.current()
        except Exception as error:
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        self.loop.start()
        self.loop.close(all_fds=True)

    def call(self, function, timeout=10.0):
        """``function()`` run on the IOLoop thread; its result here."""
        import concurrent.futures

        future = concurrent.futures.Future()

        def run():
            try:
                future.set_result(function())
            except Exception as error:
                future.set_exception(error)

        self.loop.add_callback(run)
        return future.result(timeout)

    def stop(self, timeout=10.0):
        """Stops listening, cancels what still runs (donkeycar's /video never returns), ends the thread."""
        if self.loop is None or not self._thread.is_alive():
            return

        async def wind_down():
            import asyncio

            self._server.stop()
            # asyncio.current_task / all_tasks are 3.7+; Python 3.6 has them on Task
            current = (getattr(asyncio, "current_task", None) or asyncio.Task.current_task)()
            every = getattr(asyncio, "all_tasks", None) or asyncio.Task.all_tasks
            tasks = [task for task in every() if task is not current and not task.done()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()

        quiet = _QuietCancelledHandlers()
        general_log = logging.getLogger("tornado.general")
        general_log.addFilter(quiet)
        try:
            self.loop.add_callback(wind_down)
            self._thread.join(timeout)
        finally:
            general_log.removeFilter(quiet)


class _QuietCancelledHandlers(logging.Filter):
    """A cancelled streaming handler (ServerThread.stop) makes Tornado log an ERROR that means nothing here."""

    def filter(self, record):
        return "Cannot send error response after headers written" not in record.getMessage()


def write_catalog_tub(path, count, inputs, types, frames, catalog_len=1000):
    """A v2 tub of ``count`` records laid out as donkeycar's writer leaves one (manifest.json,
    ``catalog_N.catalog`` and ``catalog_N.catalog_manifest``, images/), written cheaply from one line
    template: the first image input of record i names ``frames[i % len(frames)]`` (each saved once
    as a JPEG), ``user/angle`` is a saw-tooth, ``user/throttle`` 0.3, ``user/mode`` "user" (where
    they are inputs). For tests and benchmarks of long drives; a donkeycar TubWriter carries on from it."""
    image_key = next(k for k, t in zip(inputs, types) if t == "image_array")
    os.makedirs(os.path.join(path, "images"))
    for k, frame in enumerate(frames):
        with open(os.path.join(path, "images", "%d.jpg" % k), "wb") as handle:
            handle.write(encode_jpeg(frame))
    fixed = dict((key, value) for key, value in ((USER_THROTTLE_KEY, 0.3), (MODE_KEY, "user")) if key in inputs)
    head = json.dumps(dict(fixed, _session_id="26-01-01_0"))[:-1]
    line = (head + ', "_index": %d, "_timestamp_ms": %d, "' + image_key + '": "%d.jpg", "' + USER_ANGLE_KEY
            + '": %.3f}\n')
    paths = []
    for first in range(0, count, catalog_len):
        name = "catalog_%d.catalog" % (first // catalog_len)
        paths.append(name)
        lengths = []
        with open(os.path.join(path, name), "w") as handle:
            for i in range(first, min(count, first + catalog_len)):
                text = line % (i, 1700000000000 + 50 * i, i % len(frames), ((i % 200) - 100) / 100.0)
                lengths.append(len(text))
                handle.write(text)
        with open(os.path.join(path, name + "_manifest"), "w") as handle:
            handle.write(json.dumps(dict(path=name, created_at=0, line_lengths=lengths, start_index=first)) + "\n")
    catalogs = dict(paths=paths, current_index=count, max_len=catalog_len, deleted_indexes=[])
    with open(os.path.join(path, "manifest.json"), "w") as handle:
        handle.write("\n".join(json.dumps(part) for part in (inputs, types, {}, {"created_at": 0}, catalogs)) + "\n")
    return path
