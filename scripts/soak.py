#!/usr/bin/env python3
"""Soak test: a real donkeycar Vehicle - LocalWebController (served on 127.0.0.1), the SaliencyPart,
the DriveViewToggle and a TubWriter recording the saliency keys - for N loops, while 8 viewers read
/saliency/video and /saliency/camera and hang up mid-frame and reconnect, hostile requests arrive,
and a fault schedule runs (a backend failing every 3rd call, no camera, NaN masks, a failing
listener, large frames), and a review-page client scrubs the tub being written through the car's
/saliency/review (polls meta and timeline as the page does, reads records and frames at random).
With --share-pilot the pilot (donkeycar's KerasPilot on the SaliencyInterpreter) drives and its own
pass gives the masks (SALIENCY_SHARE_PILOT). Prints RSS at the start / middle / end, threads, open
fds, stream handlers left, the longest loop iteration (and the part's, pilot's and web controller's
share), missed deadlines, the review client's requests.

    .venv/bin/python scripts/soak.py                      # 10,000 loops at 50 Hz, 8 viewers
    .venv/bin/python scripts/soak.py --loops 2000 --hz 20
    .venv/bin/python scripts/soak.py --share-pilot
    .venv/bin/python scripts/soak.py --loops 2000 --review-records 200000   # the review of a long drive

Figures (this machine) are in README.md. Loopback only; the tub goes to a temp dir, removed after.
"""
import argparse
import http.client
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from donkey_saliency import backends  # noqa: E402
from donkey_saliency.keys import CAMERA_KEY, OUTPUTS  # noqa: E402
from donkey_saliency.car.part import SaliencyPart  # noqa: E402
from donkey_saliency.car.vehicle import tub_being_written  # noqa: E402
from donkey_saliency.pilots import DEMO_PILOT  # noqa: E402
from donkey_saliency.compute.track import track_frames  # noqa: E402
from donkey_saliency.tubs.read import recording_inputs  # noqa: E402
from donkey_saliency.testing import ServerThread, read_mjpeg_part, write_catalog_tub  # noqa: E402
from donkey_saliency.web.live import attach_web  # noqa: E402

# (first, last) as fractions of the run, and what goes wrong meanwhile.
FAULTS = [
    ((0.10, 0.12), "backend fails every 3rd call"),
    ((0.20, 0.21), "camera gives None"),
    ((0.30, 0.31), "NaN masks"),
    ((0.40, 0.42), "a stream listener raises"),
    ((0.50, 0.505), "1280x960 frames"),
]


def rss_mb():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def os_threads():
    """Every thread of the process, native ones (ONNX Runtime's, OpenCV's) included."""
    return len(os.listdir("/proc/self/task"))


def snapshot():
    return rss_mb(), threading.active_count(), os_threads(), open_fds()


class Schedule(object):
    """Which faults are on at loop ``i`` of ``loops``."""

    def __init__(self, loops):
        self.windows = [(int(a * loops), int(b * loops), name) for (a, b), name in FAULTS]
        self.loop = 0

    def on(self, name):
        return any(a <= self.loop < b and n == name for a, b, n in self.windows)


class FlakyBackend(object):
    """A real backend; the schedule injects its faults."""

    def __init__(self, backend, schedule):
        self.backend, self.schedule, self.calls = backend, schedule, 0

    def infer(self, frames):
        self.calls += 1
        if self.schedule.on("backend fails every 3rd call") and self.calls % 3 == 0:
            raise RuntimeError("injected backend fault")
        outputs = self.backend.infer(frames)
        if self.schedule.on("NaN masks"):
            outputs = dict(outputs, mask=np.full_like(outputs["mask"], np.nan))
        return outputs

    def describe(self):
        return self.backend.describe()

    def close(self):
        self.backend.close()


class Camera(object):
    def __init__(self, frames, schedule):
        self.frames, self.schedule = frames, schedule
        self.big = np.ascontiguousarray(np.repeat(np.repeat(frames[0], 8, axis=0), 8, axis=1))

    def run(self):
        """(image, ok): two outputs, because donkeycar keeps the old value of a part's only output when it
        returns None."""
        if self.schedule.on("camera gives None"):
            return None, False
        if self.schedule.on("1280x960 frames"):
            return self.big, True
        return self.frames[self.schedule.loop % len(self.frames)], True


class LoopStart(object):
    def __init__(self, clock):
        self.clock = clock

    def run(self):
        self.clock.started = time.perf_counter()


class LoopEnd(object):
    """Last part: the loop's work time (without the Vehicle's sleep), and the resource snapshots."""

    def __init__(self, clock, schedule, loops, hz, on_loop):
        self.clock, self.schedule, self.loops, self.period = clock, schedule, loops, 1.0 / hz
        self.on_loop = on_loop
        self.durations = np.zeros(loops)

    def run(self):
        if self.schedule.loop < self.loops:
            self.durations[self.schedule.loop] = time.perf_counter() - self.clock.started
        self.on_loop(self.schedule.loop)
        self.schedule.loop += 1


class NoProfiler(object):
    """donkeycar's PartProfiler keeps every part's every duration (memory that grows with the loop
    count and would be counted as ours); this harness keeps its own figures in fixed arrays instead."""

    def profile_part(self, part):
        pass

    def on_part_start(self, part):
        pass

    def on_part_finished(self, part):
        pass

    def report(self):
        pass


class Timed(object):
    """Times a part's call in the loop (run or run_threaded); everything else passes through. The
    longest call is kept with its loop number and the CPU time the loop thread spent in it: a long
    call with little CPU time waited (for the GIL, or for a core on a busy machine)."""

    def __init__(self, part, schedule, loops):
        self.part, self.schedule = part, schedule
        self.longest = (0.0, 0.0, -1)  # (wall s, thread CPU s, loop)
        self.calls = np.zeros(loops)  # preallocated: the harness must not grow RSS itself

    def _timed(self, method, *args):
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return method(*args)
        finally:
            wall = time.perf_counter() - started
            if self.schedule.loop < len(self.calls):
                self.calls[self.schedule.loop] = wall
            if wall > self.longest[0]:
                self.longest = (wall, time.thread_time() - cpu, self.schedule.loop)

    def describe(self, name):
        wall, cpu, loop = self.longest
        return "%s %.2f ms (loop %d, %.2f ms of it on the CPU; p99.9 %.2f ms)" % (
            name, wall * 1000, loop, cpu * 1000, np.percentile(self.calls, 99.9) * 1000)

    def run(self, *args):
        return self._timed(self.part.run, *args)

    def run_threaded(self, *args):
        return self._timed(self.part.run_threaded, *args)

    def update(self):
        return self.part.update()

    def __getattr__(self, name):  # what else the vehicle's helpers read (a TubWriter's tub, for the review)
        return getattr(self.part, name)

    def shutdown(self):
        return self.part.shutdown()


class Viewer(threading.Thread):
    """Reads a stream for a few frames, then hangs up - half the time in the middle of a frame."""

    def __init__(self, port, path, stop, seed):
        super().__init__(daemon=True)
        self.port, self.path, self.stop, self.rng = port, path, stop, random.Random(seed)
        self.frames = self.connects = self.refused = 0

    def run(self):
        while not self.stop.is_set():
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                connection.request("GET", self.path)
                response = connection.getresponse()
                self.connects += 1
                if response.status != 200:
                    self.refused += 1
                    time.sleep(0.2)
                    continue
                for _ in range(self.rng.randint(1, 12)):
                    read_mjpeg_part(response)
                    self.frames += 1
                if self.rng.random() < 0.5:
                    response.fp.read(self.rng.randint(10, 2000))  # mid-frame
            except (OSError, EOFError, http.client.HTTPException):
                time.sleep(0.05)
            finally:
                connection.close()


class PilotOnCameraFrames(object):
    """The pilot, given only frames of the camera's usual size: the schedule's "no camera" and
    "1280x960 frames" faults would stop a stock pilot too (it has no such guard); they test the part."""

    def __init__(self, pilot, shape):
        self.pilot, self.shape = pilot, shape

    def run(self, image):
        if image is None or image.shape != self.shape:
            return None, None
        return self.pilot.run(image)


class ReviewClient(threading.Thread):
    """The review page on the car, scrubbing the tub being written: meta and timeline every
    ``poll_s`` (the page: every 5 s), and between polls a record and its camera and overlay frames
    at a random index ``hz`` times a second (playing or dragging: the page shows the newest index)."""

    def __init__(self, port, stop, hz, poll_s=1.0, seed=0):
        super().__init__(daemon=True)
        self.port, self.stop, self.poll_s, self.rng = port, stop, poll_s, random.Random(seed)
        self.period = 1.0 / hz
        self.requests = self.failed = 0
        self.statuses = set()
        self.count = 0

    def get(self, path):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", "/saliency/review" + path)
            response = connection.getresponse()
            body = response.read()
            self.requests += 1
            self.statuses.add(response.status)
            if response.status != 200:
                self.failed += 1
            return response.status, body
        except (OSError, http.client.HTTPException):
            self.failed += 1
            return 0, b""
        finally:
            connection.close()

    def run(self):
        import json

        polled = 0.0
        while not self.stop.is_set():
            if time.monotonic() - polled >= self.poll_s:
                polled = time.monotonic()
                status, body = self.get("/meta")
                if status == 200:
                    self.count = json.loads(body.decode("utf-8"))["count"]
                    self.get("/timeline")
                elif status == 404:  # no tub yet: the writer makes it on its first record
                    time.sleep(0.2)
                continue
            if not self.count:
                time.sleep(0.05)
                continue
            started = time.monotonic()
            index = self.rng.randrange(self.count)
            self.get("/record/%d" % index)
            self.get("/frame/%d/camera.jpg" % index)
            self.get("/frame/%d/overlay.jpg" % index)  # 404 where the part had no overlay yet
            self.stop.wait(max(0.0, self.period - (time.monotonic() - started)))


def hostile_requests(port):
    """What a hostile page or client sends: all refused without reaching the car."""
    statuses = []
    head = (b"POST /saliency/drive_view HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 50000000\r\n\r\n" % port)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + b"[" * 1024)
        statuses.append(int(sock.recv(64).split(b" ")[1]))
    for body, headers in ((b"[" * 100000, {}), (b'{"on": true}', {"Origin": "http://evil.example"}),
                          (b'{"on": true}', {"Host": "evil.example:%d" % port,  # DNS rebinding
                                             "Origin": "http://evil.example:%d" % port})):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("POST", "/saliency/drive_view", body=body, headers=headers)
            statuses.append(connection.getresponse().status)
        except OSError:
            statuses.append(0)  # Tornado may hang up on a refused body: also fine
        finally:
            connection.close()
    return statuses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", type=int, default=10000)
    parser.add_argument("--hz", type=int, default=50)
    parser.add_argument("--viewers", type=int, default=8)
    parser.add_argument("--model", default=DEMO_PILOT)
    parser.add_argument("--share-pilot", action="store_true",
                        help="the pilot drives and its pass gives the masks (SALIENCY_SHARE_PILOT)")
    parser.add_argument("--review-hz", type=float, default=20.0,
                        help="records the review client scrubs through per second (0: no review client)")
    parser.add_argument("--review-records", type=int, default=0,
                        help="records already in the tub when the car starts writing it (e.g. 200000: a "
                             "3-hour drive the car's review indexes while the car drives; written cheaply)")
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("tornado.access").setLevel(logging.ERROR)  # the refused hostile requests, by design

    from donkeycar.parts.tub_v2 import TubWriter
    from donkeycar.parts.web_controller.web import LocalWebController
    from donkeycar.vehicle import Vehicle

    schedule = Schedule(args.loops)
    frames = [sample.frame for sample in track_frames(50, seed=3)]
    workdir = tempfile.mkdtemp(prefix="saliency-soak-")
    ctr = LocalWebController(port=0)
    part = SaliencyPart(args.model, backend="onnxruntime")
    if part.error:
        sys.exit("soak: %s" % part.error)
    part.backend = FlakyBackend(backends.activate_with_fallback(part.graph, "onnxruntime", {"threads": 1}), schedule)

    def failing_listener(result):
        if schedule.on("a stream listener raises"):
            raise RuntimeError("injected listener fault")

    part.add_listener(failing_listener)
    pilot = None
    if args.share_pilot:
        from donkey_saliency import shared_pilot

        shared = shared_pilot(args.model, backend="onnxruntime", backend_options={"threads": 1})
        shared.interpreter.add_listener(part.accept_mask)  # as vehicle.share_pilot_pass wires it
        pilot = PilotOnCameraFrames(shared, frames[0].shape)
    vehicle = Vehicle()
    web = attach_web(ctr, part, review_tub=lambda: tub_being_written(vehicle))
    baseline = snapshot()
    server = ServerThread(ctr).start()

    stop = threading.Event()
    viewers = [Viewer(server.port, "/saliency/video" if i % 2 == 0 else "/saliency/camera", stop, i)
               for i in range(args.viewers)]
    review_client = ReviewClient(server.port, stop, args.review_hz) if args.review_hz > 0 else None
    snapshots = {}
    rss_series = []
    hostile = []

    def on_loop(i):
        if i == 100:
            snapshots["start"] = snapshot()
        elif i == args.loops // 2:
            snapshots["middle"] = snapshot()
        elif i == args.loops - 1:
            snapshots["end"] = snapshot()
        if i % max(1, args.loops // 10) == 0:
            rss_series.append(round(rss_mb(), 1))
        if i % 1000 == 500:
            threading.Thread(target=lambda: hostile.extend(hostile_requests(server.port)), daemon=True).start()

    clock = type("Clock", (), {"started": 0.0})()
    timed_part, timed_ctr, timed_toggle = (Timed(p, schedule, args.loops) for p in (part, ctr, web.drive_view))
    timed_pilot = Timed(pilot, schedule, args.loops) if pilot is not None else None
    base_inputs = [CAMERA_KEY, "user/angle", "user/throttle", "user/mode"]
    inputs, types, _ = recording_inputs(os.path.join(workdir, "tub"), base_inputs,
                                        ["image_array", "float", "float", "str"], False)
    if args.review_records:
        write_catalog_tub(os.path.join(workdir, "tub"), args.review_records, inputs, types, frames[:4])
    vehicle.profiler = NoProfiler()
    vehicle.add(LoopStart(clock))
    vehicle.add(Camera(frames, schedule), outputs=[CAMERA_KEY, "cam/ok"])
    vehicle.add(timed_ctr, inputs=[CAMERA_KEY, "tub/num_records", "user/mode", "recording"],
                outputs=["user/angle", "user/throttle", "user/mode", "recording", "web/buttons"])
    if timed_pilot is not None:  # before the part: its pass hands this loop's mask over (lag 0)
        vehicle.add(timed_pilot, inputs=[CAMERA_KEY], outputs=["pilot/angle", "pilot/throttle"])
    vehicle.add(timed_part, inputs=[CAMERA_KEY], outputs=list(OUTPUTS), threaded=True)
    vehicle.add(timed_toggle, inputs=web.drive_view.inputs, outputs=web.drive_view.outputs)
    timed_writer = Timed(TubWriter(os.path.join(workdir, "tub"), inputs=inputs, types=types), schedule, args.loops)
    vehicle.add(timed_writer, inputs=inputs, outputs=["tub/num_records"])
    end = LoopEnd(clock, schedule, args.loops, args.hz, on_loop)
    vehicle.add(end)

    for viewer in viewers:
        viewer.start()
    if review_client is not None:
        review_client.start()
    started = time.monotonic()
    try:
        vehicle.start(rate_hz=args.hz, max_loop_count=args.loops)
    finally:
        seconds = time.monotonic() - started
        stop.set()
        for viewer in viewers + ([review_client] if review_client is not None else []):
            viewer.join(15)
        deadline = time.monotonic() + 10
        while web.clients and time.monotonic() < deadline:
            time.sleep(0.05)
        handlers_left = web.clients
        figures = web.stats()
        server.call(web.close)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    time.sleep(0.5)
    after = snapshot()

    durations = np.array(end.durations) * 1000.0
    period_ms = 1000.0 / args.hz
    print("soak: %d loops at %d Hz in %.0f s, %d viewers (%d connections, %d frames read, %d refused)" % (
        len(durations), args.hz, seconds, len(viewers), sum(v.connects for v in viewers),
        sum(v.frames for v in viewers), sum(v.refused for v in viewers)))
    print("faults: %s" % "; ".join("%s (loops %d-%d)" % (n, a, b) for a, b, n in schedule.windows))
    snapshots.update(before=baseline, after=after)
    for name in ("before", "start", "middle", "end", "after"):
        rss, threads, tasks, fds = snapshots.get(name, (float("nan"), 0, 0, 0))
        print("%-6s RSS %6.1f MB  Python threads %3d  OS threads %3d  fds %4d" % (name, rss, threads, tasks, fds))
    print("(before: the part and web built, nothing started; start/middle/end: loops 100, %d, %d while "
          "running; after: vehicle stopped, viewers gone, server stopped)" % (args.loops // 2, args.loops - 1))
    print("RSS every %d loops (MB): %s" % (max(1, args.loops // 10), " ".join(map(str, rss_series))))
    print("RSS growth start -> end: %+.1f MB; stream handlers left: %d" % (
        snapshots["end"][0] - snapshots["start"][0], handlers_left))
    print("loop work time: median %.2f ms, p99 %.2f ms, longest %.1f ms (loop %d); missed %d-ms deadlines: %d"
          % (np.median(durations), np.percentile(durations, 99), durations.max(), int(durations.argmax()),
             period_ms, int((durations > period_ms).sum())))
    print("longest calls in the loop:")
    for timed, name in ((timed_part, "SaliencyPart.run_threaded"), (timed_ctr, "LocalWebController.run"),
                        (timed_toggle, "DriveViewToggle.run"), (timed_writer, "TubWriter.run"),
                        (timed_pilot, "KerasPilot.run (shared pass: pilot + mask)")):
        if timed is not None:
            print("  " + timed.describe(name))
    print("loops over 100 ms in all (any part, or waiting for the GIL or a core): %d" % int((durations > 100).sum()))
    ours = np.array(timed_part.calls) + np.array(timed_ctr.calls) + np.array(timed_toggle.calls)
    print("loops where the part, the toggle and the web controller together took over 100 ms: %d (over %.0f ms: %d)"
          % (int((ours > 0.1).sum()), period_ms, int((ours * 1000 > period_ms).sum())))
    print("part: received %d, processed %d, dropped %d, errors %d; stream: frames sent %d, stalled %d, refused %d"
          % (figures["received"], figures["processed"], figures["dropped"], figures["errors"],
             figures["frames_sent"], figures["stalled"], figures["refused"]))
    print("hostile requests: %d sent, statuses %s" % (len(hostile), sorted(set(hostile))))
    if review_client is not None:
        print("review client: %d requests (%d not 200: statuses %s), last count %d records" % (
            review_client.requests, review_client.failed, sorted(review_client.statuses), review_client.count))
    if pilot is not None:
        print("shared pilot: masks from the pilot's pass, %d received by the part" % figures["received"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
