#!/usr/bin/env python
"""What the saliency stream costs the car: CPU time per new frame (JPEG encode + fan-out to the clients)
and bytes/s per client, with 1 and 8 clients; donkeycar's own /video alongside for comparison.

    .venv/bin/python scripts/bench_stream.py                 # real pilot + real frames from ../shared/realdata
    .venv/bin/python scripts/bench_stream.py --model P.h5 --images DIR --seconds 3 --repeats 5

A real SaliencyPart gets frames at the drive loop's 20 Hz; the routes are served by a real
LocalWebController on 127.0.0.1; clients are http.client readers in threads of this process.
CPU is thread CPU time (time.thread_time), so the clients' own work is not counted:
  encode   - in the part's worker, per JPEG (SaliencyWeb's own measurement), once per new overlay
  fan-out  - the IOLoop thread's CPU over the window / new frames (HTTP writes to every client)
For donkeycar's /video everything happens on the IOLoop thread (it encodes per client, ~every 5 ms),
so its row is IOLoop CPU / new camera frames, and its encodes are the frames it sent. Each
configuration gets a fresh server (a stock /video handler never stops once started). Medians over
--repeats windows.
"""
import argparse
import http.client
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REALDATA = os.path.join(HERE, "..", "..", "shared", "realdata", "tub_v1_linear")


def load_frames(folder, count=100):
    import cv2

    names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".png")))[:count]
    if not names:
        raise SystemExit("no .jpg/.png frames in %s" % folder)
    return [cv2.cvtColor(cv2.imread(os.path.join(folder, n)), cv2.COLOR_BGR2RGB) for n in names]


class Reader(threading.Thread):
    """One viewer: reads multipart frames and counts their bytes until told to stop."""

    def __init__(self, port, path):
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.bytes = 0
        self.frames = 0
        self.started_reading = threading.Event()
        self.stop = threading.Event()
        self.error = None

    def run(self):
        from donkey_saliency.testing import read_mjpeg_part

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", self.path)
            response = connection.getresponse()
            while not self.stop.is_set():
                _, body = read_mjpeg_part(response)
                self.bytes += len(body)
                self.frames += 1
                self.started_reading.set()
        except Exception as error:
            self.error = error
            self.started_reading.set()
        finally:
            connection.close()


def measure(part, frames, path, clients, seconds, quality):
    """One window: returns dict of the figures for this configuration."""
    from donkeycar.parts.web_controller.web import LocalWebController

    from donkey_saliency.testing import ServerThread
    from donkey_saliency.web.live import attach_web

    ctr = LocalWebController(port=0)
    web = attach_web(ctr, part, jpeg_quality=quality)
    server = ServerThread(ctr).start()
    feeding = threading.Event()
    stop = threading.Event()

    def feed():  # the drive loop: camera frame to the part and to the stock web controller, 20 Hz
        index = 0
        next_tick = time.monotonic()
        while not stop.is_set():
            frame = frames[index % len(frames)]
            index += 1
            part.run_threaded(frame)
            ctr.run_threaded(frame)
            feeding.set()
            next_tick += 0.05
            time.sleep(max(0.0, next_tick - time.monotonic()))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    readers = [Reader(server.port, path) for _ in range(clients)]
    try:
        for reader in readers:
            reader.start()
        for reader in readers:
            if not reader.started_reading.wait(20) or reader.error:
                raise SystemExit("a client could not read %s: %s" % (path, reader.error))
        time.sleep(0.5)  # settle
        loop_cpu0 = server.call(time.thread_time)
        stats0, bytes0, wall0 = web.stats(), [r.bytes for r in readers], time.monotonic()
        sent0 = [r.frames for r in readers]
        processed0 = part.stats()["processed"]
        time.sleep(seconds)
        loop_cpu1 = server.call(time.thread_time)
        stats1, bytes1, wall1 = web.stats(), [r.bytes for r in readers], time.monotonic()
        sent1 = [r.frames for r in readers]
        processed1 = part.stats()["processed"]
    finally:
        for reader in readers:
            reader.stop.set()
        stop.set()
        feeder.join(5)
        server.call(web.close)
        server.stop()
        for reader in readers:
            reader.join(5)
    wall = wall1 - wall0
    new_frames = max(1, processed1 - processed0)  # the stock /video gets the same 20 Hz frames
    stock = path == "/video"
    # donkeycar's handler encodes every frame it sends; ours counts its encodes itself.
    encodes = sum(sent1) - sum(sent0) if stock else stats1["encodes"] - stats0["encodes"]
    encode_ms = (stats1["encode_ms"] or 0.0) * encodes / new_frames  # per new frame
    fan_out_ms = (loop_cpu1 - loop_cpu0) * 1000.0 / new_frames
    return dict(new_fps=new_frames / wall, encode_ms=encode_ms, fan_out_ms=fan_out_ms,
                cpu_ms=encode_ms + fan_out_ms, encodes_per_frame=encodes / float(new_frames),
                loop_cpu_pct=(loop_cpu1 - loop_cpu0) / wall * 100.0,
                client_fps=statistics.median((s1 - s0) / wall for s0, s1 in zip(sent0, sent1)),
                bytes_per_s=statistics.median((b1 - b0) / wall for b0, b1 in zip(bytes0, bytes1)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(REALDATA, "mypilot.h5"))
    parser.add_argument("--images", default=os.path.join(REALDATA, "tub"))
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one measured window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality of the saliency stream")
    parser.add_argument("--no-stock", action="store_true", help="skip donkeycar's /video rows")
    args = parser.parse_args(argv)
    for path in (args.model, args.images):
        if not os.path.exists(path):
            raise SystemExit("not found: %s (give --model and --images)" % path)

    from donkey_saliency.car.part import SaliencyPart

    frames = load_frames(args.images)
    part = SaliencyPart(args.model)
    if part.error:
        raise SystemExit(part.error)
    worker = threading.Thread(target=part.update, daemon=True)
    worker.start()
    configs = [("/saliency/video", 1), ("/saliency/video", 8)]
    if not args.no_stock:
        configs += [("/video", 1), ("/video", 8)]
    print("model %s, %d frames of %s, 20 Hz, JPEG quality %d, %d x %.0f s windows, medians"
          % (os.path.basename(args.model), len(frames), "x".join(map(str, frames[0].shape)), args.quality,
             args.repeats, args.seconds))
    header = ("stream", "clients", "new frames/s", "frames/s per client", "encodes/new frame",
              "encode ms/frame", "fan-out ms/frame", "CPU ms/new frame", "IOLoop CPU %", "KB/s per client")
    rows = []
    for path, clients in configs:
        runs = [measure(part, frames, path, clients, args.seconds, args.quality) for _ in range(args.repeats)]
        med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        label = path + (" (donkeycar)" if path == "/video" else "")
        stock = path == "/video"
        rows.append((label, str(clients), "%.1f" % med["new_fps"], "%.1f" % med["client_fps"],
                     "%.2f" % med["encodes_per_frame"], "(in fan-out)" if stock else "%.3f" % med["encode_ms"],
                     "%.3f" % med["fan_out_ms"], "%.3f" % med["cpu_ms"],
                     "%.1f" % med["loop_cpu_pct"], "%.1f" % (med["bytes_per_s"] / 1000.0)))
    part.shutdown()
    worker.join(5)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
