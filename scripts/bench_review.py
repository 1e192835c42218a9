"""Review page on a big tub: time to first paint and the server's memory, against reading the tub
the way ``open_tub`` does (every record in memory).

    .venv/bin/python scripts/bench_review.py [--records 200000] [--runs 3]

Writes a generated v2 tub (donkeycar's layout via tub_writer.TubV2Writer; every record's camera image is a
hard link to one of 50 JPEGs, so the disk holds 50 pictures), then per run:
- starts ``donkey-saliency review TUB --port 0`` and times until it prints its URL (the index scan);
- opens the page in headless Chromium and times until the timeline is drawn and frame 0 is shown
  (``body[data-state=ready]`` with the camera loaded): time to first paint, from the command's start;
- reads the server's VmRSS / VmHWM from /proc;
and once, in a fresh process, ``open_tub`` on the same tub (time and peak memory). Medians.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # the DevTools driver the browser tests use
CLI = os.path.join(os.path.dirname(sys.executable), "donkey-saliency")


def make_tub(path, records):
    import numpy as np

    from donkey_saliency.util.images import encode_jpeg
    from donkey_saliency.tubs.write import TubV2Writer, image_file_name

    inputs = ["cam/image_array", "user/angle", "user/throttle", "user/mode", "pilot/angle", "pilot/throttle"]
    types = ["image_array", "float", "float", "str", "float", "float"]
    writer = TubV2Writer(path, inputs, types)
    sources = []
    for k in range(50):
        yy, xx = np.mgrid[0:120, 0:160]
        gray = ((xx + yy + 9 * k) % 200 + 30).astype(np.uint8)
        source = os.path.join(path, "src_%d.jpg" % k)
        with open(source, "wb") as handle:
            handle.write(encode_jpeg(np.repeat(gray[..., None], 3, axis=2)))
        sources.append(source)
    start_ms = 1.7e12
    for i in range(records):
        name = image_file_name(i, "cam/image_array")
        os.link(sources[i % 50], os.path.join(writer.images_dir, name))
        angle = float(np.sin(i / 50.0))
        writer.write({"cam/image_array": name, "user/angle": angle, "user/throttle": 0.3,
                      "user/mode": "user" if (i // 5000) % 2 == 0 else "local_angle",
                      "pilot/angle": angle + (0.5 if i % 7919 == 0 else 0.0), "pilot/throttle": 0.3,
                      "_index": i, "_session_id": "bench_0", "_timestamp_ms": int(start_ms + 50 * i)})
    writer.close(deleted_indexes=range(0, records, 997))
    for source in sources:
        os.unlink(source)


def memory_kib(pid):
    figures = {}
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":")
                figures[name] = int(value.split()[0])
    return figures


def one_run(tub, scratch):
    from browser import DevTools  # the same driver as the tests

    browser = DevTools(tempfile.mkdtemp(dir=scratch), os.path.join(scratch, "chromium.log"), 1280, 900)
    browser.open("about:blank", 1280, 900, mobile=False)  # the browser's own start is not timed
    started = time.monotonic()
    server = subprocess.Popen([CLI, "review", tub, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        line = server.stdout.readline()
        listening = time.monotonic() - started
        browser.send("Page.navigate", url=line.split()[-1])
        while True:
            state = json.loads(browser.evaluate(
                'JSON.stringify({s: document.body.dataset.state, c: document.body.dataset.camera})') or "{}")
            if state.get("s") == "ready" and state.get("c") == "0":
                break
            if time.monotonic() - started > 300:
                raise RuntimeError("the page did not get ready within 300 s: %s" % state)
            time.sleep(0.01)
        painted = time.monotonic() - started
        page_s = painted - listening
        memory = memory_kib(server.pid)
    finally:
        browser.close()
        server.terminate()
        server.wait(20)
    return dict(listening_s=listening, first_paint_s=painted, page_s=page_s, rss_mib=memory["VmRSS"] / 1024.0,
                peak_mib=memory["VmHWM"] / 1024.0)


def open_tub_figures(tub):
    code = ("import time, sys\nfrom donkey_saliency.tubs.read import open_tub\nt = time.monotonic()\n"
            "tub = open_tub(sys.argv[1])\nelapsed = time.monotonic() - t\n"
            "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
            "print(elapsed, int(peak) / 1024.0, len(tub.entries))")
    out = subprocess.run([sys.executable, "-c", code, tub], capture_output=True, text=True, check=True).stdout.split()
    return dict(seconds=float(out[0]), peak_mib=float(out[1]), records=int(out[2]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="bench_review_")
    try:
        tub = os.path.join(scratch, "tub")
        t = time.monotonic()
        make_tub(tub, args.records)
        print("generated %d records in %.1f s" % (args.records, time.monotonic() - t))
        runs = [one_run(tub, scratch) for _ in range(args.runs)]
        median = dict((k, statistics.median(r[k] for r in runs)) for k in runs[0])
        full = open_tub_figures(tub)
        print("review server, %d records, median of %d runs:" % (args.records, args.runs))
        print("  listening after      %.2f s (index scan included)" % median["listening_s"])
        print("  first paint after    %.2f s (timeline drawn, frame 0 shown; from the command's start)"
              % median["first_paint_s"])
        print("  page alone           %.2f s (meta, %d-byte timeline, first JPEG, drawing)"
              % (median["page_s"], 6 * args.records))
        print("  server memory        %.0f MiB resident, %.0f MiB peak" % (median["rss_mib"], median["peak_mib"]))
        print("open_tub (every record in memory), same tub: %.2f s, %.0f MiB peak (%.1fx the review server's peak)"
              % (full["seconds"], full["peak_mib"], full["peak_mib"] / median["peak_mib"]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
