#!/usr/bin/env python
"""Backfill speed on this machine, and the same frames through donkeycar makemovie's saliency.

    .venv/bin/python scripts/bench_backfill.py [--model M] [--tub T] [--repeat K] [--runs R]

The frames: the real v1 tub of ../shared/realdata (160x120) copied K times into a v2 tub (JPEG bytes
copied, not re-encoded); random frames if it is absent. Backfill is timed end to end with the model
already loaded: JPEG decode, batched VisualBackProp, overlay, two JPEG encodes, catalog and image
writes. makemovie's saliency (``MakeMovie.init_salient`` + ``compute_visualisation_mask``: a
TensorFlow gradient per frame) is timed on the same frames, from ``donkeycar.management.makemovie``
when it imports (it needs matplotlib), else the identical computation inlined below.

Wall-clock figures depend on what else runs on the machine, so the script also prints the load
average and frames per CPU-second (process CPU time), which does not.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from donkey_saliency.tools.backfill import default_threads  # noqa: E402 - after the path above
REALDATA = os.path.join(HERE, "..", "..", "shared", "realdata", "tub_v1_linear")


def make_bench_tub(path, source, repeat, count=300):
    """A v2 tub of the source tub's frames, repeated; or of random frames when there is no source."""
    import cv2

    from donkey_saliency.tubs.read import open_tub
    from donkey_saliency.tubs.write import TubV2Writer, image_file_name

    inputs = ["cam/image_array", "user/angle", "user/throttle", "user/mode"]
    writer = TubV2Writer(path, inputs, ["image_array", "float", "float", "str"])
    if source and os.path.isdir(source):
        entries = open_tub(source).live_entries
        blobs = [open(e.images["cam/image_array"], "rb").read() for e in entries]
        values = [e.record for e in entries]
    else:
        rng = np.random.default_rng(0)
        blobs = [cv2.imencode(".jpg", rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))[1].tobytes()
                 for _ in range(count)]
        values = [{"user/angle": 0.0, "user/throttle": 0.3, "user/mode": "user"}] * count
    index = 0
    for _ in range(repeat):
        for blob, value in zip(blobs, values):
            name = image_file_name(index, "cam/image_array")
            with open(os.path.join(writer.images_dir, name), "wb") as handle:
                handle.write(blob)
            writer.write({"cam/image_array": name, "user/angle": value.get("user/angle"),
                          "user/throttle": value.get("user/throttle"), "user/mode": value.get("user/mode"),
                          "_index": index, "_session_id": "bench_0", "_timestamp_ms": index * 50})
            index += 1
    writer.close()
    return index


def file_creation_us(directory, count=300):
    """CPU microseconds to create and write one small file there (varies a lot between filesystems)."""
    probe = os.path.join(directory, "probe")
    os.makedirs(probe)
    data = b"x" * 4500
    cpu = time.process_time()
    for i in range(count):
        with open(os.path.join(probe, "%d.jpg" % i), "wb") as handle:
            handle.write(data)
    spent = time.process_time() - cpu
    shutil.rmtree(probe)
    return spent / count * 1e6


def time_backfill(tub, model, runs, batch, workers, threads, backend, scratch):
    from donkey_saliency import load
    from donkey_saliency.tools.backfill import backfill

    threads = threads or default_threads()
    walls, cpus, frames = [], [], 0
    with load(model, backend=backend, threads=threads) as saliency:
        saliency.masks(np.zeros((1,) + tuple(saliency.input_shape), np.uint8))  # warm up
        for run in range(runs):
            out = os.path.join(scratch, "out_%d_%d_%d_%d" % (batch, workers, threads, run))
            cpu = time.process_time()
            wall = time.perf_counter()
            result = backfill(tub, out_path=out, batch=batch, workers=workers, saliency=saliency, progress=False)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            frames = result.records
            shutil.rmtree(out)
    return frames, statistics.median(walls), statistics.median(cpus)


def makemovie_saliency(model_path):
    """(name, function frame -> mask) computing makemovie's salient mask."""
    import tensorflow as tf

    from donkey_saliency.pilots.reference import keras_model

    model = keras_model(model_path)
    try:
        from donkeycar.management.makemovie import MakeMovie

        movie = MakeMovie()
        movie.model_type = "linear"
        if not movie.init_salient(model):
            raise RuntimeError("makemovie found no output layer")
        return "donkeycar.management.makemovie", lambda img: movie.compute_visualisation_mask(img)
    except Exception as error:  # ImportError: matplotlib is not installed with donkeycar[pc]
        reason = (str(error).splitlines() or [type(error).__name__])[0]

    # The same steps as MakeMovie.init_salient / compute_visualisation_mask (donkeycar 5.3).
    for layer in model.layers:
        if "dropout" not in layer.name.lower() and "out" in layer.name.lower():
            layer.activation = tf.keras.activations.linear
    handle, path = tempfile.mkstemp(suffix=".h5")
    os.close(handle)
    try:
        model.save(path)
        sal_model = tf.keras.models.load_model(path, compile=False)
    finally:
        os.unlink(path)

    def compute_visualisation_mask(img):
        images = tf.Variable(img.reshape((1,) + img.shape), dtype=float)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(images)
            pred_list = sal_model(images, training=False)
        grads = 0
        for p in pred_list:
            grads += tf.math.square(tape.gradient(p, images))
        grads = np.sum(tf.math.sqrt(grads), axis=-1)
        return ((grads - grads.min()) / (grads.max() - grads.min() + 1e-7))[0]

    return "inlined copy (makemovie does not import here: %s)" % reason, compute_visualisation_mask


def time_makemovie(tub, model, frames):
    import cv2

    from donkey_saliency.tubs.read import open_tub

    paths = [e.images["cam/image_array"] for e in open_tub(tub).live_entries[:frames]]
    name, compute = makemovie_saliency(model)
    first = cv2.cvtColor(cv2.imread(paths[0]), cv2.COLOR_BGR2RGB)
    compute(first.astype(np.float32) / 255.0)  # trace once
    cpu, wall = time.process_time(), time.perf_counter()
    for path in paths:
        img = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        compute(img.astype(np.float32) / 255.0)  # makemovie's normalize_image
    return name, len(paths), time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.path.join(REALDATA, "mypilot.h5"))
    parser.add_argument("--tub", default=os.path.join(REALDATA, "tub"), help="frames to use (default: real v1 tub)")
    parser.add_argument("--repeat", type=int, default=4, help="copies of the tub's frames (default 4)")
    parser.add_argument("--runs", type=int, default=3, help="backfill runs per setting; the median is shown")
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="ONNX Runtime intra-op threads (0: backfill's default, all cores but one)")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--makemovie-frames", type=int, default=100)
    parser.add_argument("--scratch", help="directory for the bench tubs (default: the system temp dir); "
                                          "its file-creation cost is measured and printed")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not os.path.exists(args.model):
        sys.exit("no model at %s (pass --model)" % args.model)

    if args.scratch:
        os.makedirs(args.scratch, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="bench_backfill_", dir=args.scratch)
    try:
        tub = os.path.join(scratch, "tub")
        count = make_bench_tub(tub, args.tub, args.repeat)
        print("%d frames of %s, model %s, %d cores, load average %s" % (
            count, args.tub if os.path.isdir(args.tub) else "random pixels", os.path.basename(args.model),
            os.cpu_count(), " ".join("%.2f" % x for x in os.getloadavg())))
        print("scratch %s: creating a 4.5 kB file costs %.0f us CPU (backfill creates 3 per frame)"
              % (scratch, file_creation_us(scratch)))
        rows = []
        for batch in args.batch:
            for workers in args.workers:
                for threads in args.threads:
                    frames, wall, cpu = time_backfill(tub, args.model, args.runs, batch, workers, threads,
                                                      args.backend, scratch)
                    rows.append(("backfill batch=%d workers=%d ort_threads=%d" % (
                                     batch, workers, threads or default_threads()),
                                 frames, wall, cpu))
        name, frames, wall, cpu = time_makemovie(tub, args.model, args.makemovie_frames)
        rows.append(("makemovie saliency (mask only)", frames, wall, cpu))
        width = max(len(r[0]) for r in rows)
        print("%s  %7s  %9s  %9s  %11s" % ("method".ljust(width), "frames", "wall s", "frames/s", "frames/CPU-s"))
        for label, frames, wall, cpu in rows:
            print("%s  %7d  %9.2f  %9.0f  %11.0f" % (label.ljust(width), frames, wall, frames / wall, frames / cpu))
        best = max(rows[:-1], key=lambda r: r[1] / r[2])
        movie = rows[-1]
        print("makemovie's saliency: %s" % name)
        print("backfill (with JPEG decode, overlay, 2 encodes, writes) is %.0fx makemovie's saliency (mask only) "
              "in frames/s, %.0fx in frames/CPU-s" % ((best[1] / best[2]) / (movie[1] / movie[2]),
                                                     (best[1] / best[3]) / (movie[1] / movie[3])))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
