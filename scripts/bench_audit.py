#!/usr/bin/env python
"""``donkey-saliency audit`` on a long drive with two pilots: wall time, CPU time and peak memory.

    .venv/bin/python scripts/bench_audit.py TUB PILOT_A PILOT_B [--records 10000] [--runs 1]

Writes a v2 tub of ``--records`` records (donkeycar's layout via tub_writer.TubV2Writer) whose camera
images are hard links to TUB's own JPEGs, cycled (the disk holds the source pictures once), then runs
the command in a fresh process per run and reads its wall time, CPU time and peak RSS (ru_maxrss of the
child). Prints one line per run and the medians.
"""
import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the checkout's package
ROOT = os.path.dirname(HERE)
CLI = [sys.executable, "-m", "donkey_saliency.cli"]  # run from the checkout: this tree's package


def make_tub(path, source, records):
    from donkey_saliency.keys import CAMERA_KEY
    from donkey_saliency.tubs.read import open_tub
    from donkey_saliency.tubs.write import TubV2Writer, image_file_name

    images = [e.images[CAMERA_KEY] for e in open_tub(source).live_entries if CAMERA_KEY in e.images]
    writer = TubV2Writer(path, [CAMERA_KEY, "user/angle"], ["image_array", "float"])
    for i in range(records):
        name = image_file_name(i, CAMERA_KEY)
        os.link(images[i % len(images)], os.path.join(writer.images_dir, name))
        writer.write({CAMERA_KEY: name, "user/angle": 0.0, "_index": i, "_session_id": "bench_0",
                      "_timestamp_ms": 1700000000000 + 50 * i})
    writer.close()
    return len(images)


def run_once(tub, pilots, out):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    command = CLI + ["audit", tub, "--out", out] + [arg for p in pilots for arg in ("--model", p)]
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, after.ru_maxrss / 1024.0, result.stdout.decode()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tub", help="a tub whose camera JPEGs are cycled into the long drive")
    parser.add_argument("pilots", nargs=2)
    parser.add_argument("--records", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-audit-")
    try:
        tub = os.path.join(work, "tub")
        distinct = make_tub(tub, args.tub, args.records)
        print("tub: %d records (%d distinct frames), pilots: %s" % (args.records, distinct, ", ".join(args.pilots)))
        figures = []
        for run in range(args.runs):
            wall, cpu, peak_mib, printed = run_once(tub, args.pilots, os.path.join(work, "out%d" % run))
            figures.append((wall, cpu, peak_mib))
            print("run %d: wall %.1f s, CPU %.1f s, peak RSS %.0f MiB" % (run, wall, cpu, peak_mib))
        print(printed.strip())
        print("median: wall %.1f s, CPU %.1f s, peak RSS %.0f MiB (ru_maxrss is the largest child so far)" % tuple(
            statistics.median(f[i] for f in figures) for i in range(3)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
