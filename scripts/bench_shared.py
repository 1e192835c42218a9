#!/usr/bin/env python
"""What SALIENCY_SHARE_PILOT saves: per frame, (a) the car today - donkeycar's pilot as it runs it
(KerasInterpreter for .h5, TfLite for .tflite) plus the part's own separate mask pass - against (b) the
shared pass - donkeycar's same pilot class on the SaliencyInterpreter, one graph giving the pilot's
outputs and the mask.

    .venv/bin/python scripts/bench_shared.py                      # real pilot + real frames, .h5 and .tflite
    .venv/bin/python scripts/bench_shared.py --model P.h5 --type linear --tub TUB --frames 300

Saliency's added cost is measured on the project's backend alone: the whole graph against the same graph
pruned to the pilot's outputs (what the pilot costs there without the mask). Medians of per-frame times,
every method timed in one run on the same frames; ONNX Runtime on SALIENCY_THREADS (1) thread.
"""
import argparse
import contextlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

REALDATA = os.path.join(HERE, "..", "..", "shared", "realdata", "tub_v1_linear")
WARMUP = 10


def per_frame_ms(function, frames):
    for frame in frames[:WARMUP]:
        function(frame)
    times = []
    for frame in frames:
        started = time.perf_counter()
        function(frame)
        times.append((time.perf_counter() - started) * 1000.0)
    return float(np.median(times))


def pilot_only(graph):
    """The whole-pilot graph pruned to the pilot's outputs: what the pilot alone costs on our backend."""
    import onnx

    from donkey_saliency.compute.graph import SaliencyGraph

    proto = onnx.load_from_string(graph.onnx_bytes)
    keep = set(graph.pilot["outputs"])
    outputs = [o for o in proto.graph.output if o.name in keep]
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)
    needed, nodes = set(keep), []
    for node in reversed(list(proto.graph.node)):
        if needed.intersection(node.output):
            nodes.append(node)
            needed.update(node.input)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(nodes))
    pruned = SaliencyGraph(proto.SerializeToString(), graph.input_shape, [], [], graph.source, graph.pilot)
    return pruned


def bench(model_path, model_type, frames, threads):
    import donkey_saliency
    from donkey_saliency import backends
    from donkey_saliency.compute.frames import prepare_frame
    from donkeycar.utils import get_model_by_type

    import donkeycar as dk

    cfg = dk.load_config(config_path=os.path.join(os.path.dirname(dk.__file__), "templates", "cfg_complete.py"))
    options = dict(threads=threads)
    donkey_type = ("tflite_" if model_path.endswith(".tflite") else "") + model_type
    stock = get_model_by_type(donkey_type, cfg)
    stock.load(model_path)
    separate = donkey_saliency.load(model_path, backend="onnxruntime", **options)
    shared = donkey_saliency.shared_pilot(model_path, donkey_type, cfg=cfg, backend="onnxruntime",
                                          backend_options=options)
    frames = [prepare_frame(f, separate.input_shape) for f in frames]
    row = dict(model=os.path.basename(model_path), interpreter=type(stock.interpreter).__name__)
    row["pilot_stock_ms"] = per_frame_ms(stock.run, frames)
    row["mask_separate_ms"] = per_frame_ms(separate.mask, frames)
    row["a_today_ms"] = per_frame_ms(lambda f: (stock.run(f), separate.mask(f)), frames)
    row["b_shared_ms"] = per_frame_ms(shared.run, frames)
    # On our backend alone: the whole graph vs the pilot part of it (float input, as the interpreter feeds it).
    graph = shared.interpreter.graph
    extra = {name: np.zeros([1] + list(shape), np.float32) for name, shape in graph.pilot["inputs"]}
    whole = backends.create(graph, "onnxruntime", **options)
    alone = backends.create(pilot_only(graph), "onnxruntime", **options)
    floats = [f[None].astype(np.float32) / np.float32(255.0) for f in frames]
    row["graph_whole_ms"] = per_frame_ms(lambda x: whole.infer(x, extra), floats)
    row["graph_pilot_only_ms"] = per_frame_ms(lambda x: alone.infer(x, extra), floats)
    row["saliency_added_pct"] = 100.0 * (row["graph_whole_ms"] - row["graph_pilot_only_ms"]) / \
        row["graph_pilot_only_ms"]
    row["separate_mask_pct_of_stock_pilot"] = 100.0 * row["mask_separate_ms"] / row["pilot_stock_ms"]
    row["ratio_a_over_b"] = row["a_today_ms"] / row["b_shared_ms"]
    return row


def read_frames(tub, count):
    from donkey_saliency.util.images import read_rgb
    from donkey_saliency.tubs.read import camera_image_paths

    paths = camera_image_paths(tub)
    return [read_rgb(paths[i % len(paths)]) for i in range(count)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="pilot file (.h5/.tflite); repeat for several. "
                        "Default: the real pilot as .h5 and converted to .tflite")
    parser.add_argument("--type", default="linear", help="donkey model type (without tflite_)")
    parser.add_argument("--tub", default=os.path.join(REALDATA, "tub"))
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (SALIENCY_THREADS)")
    args = parser.parse_args(argv)
    models = args.model
    if not models:
        real = os.path.join(REALDATA, "mypilot.h5")
        tflite = os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_shared_mypilot.tflite")
        if not os.path.exists(tflite):
            from donkeycar.parts.interpreter import keras_model_to_tflite

            with contextlib.redirect_stdout(sys.stderr):
                keras_model_to_tflite(real, tflite)
        models = [real, tflite]
    frames = read_frames(args.tub, args.frames)
    rows = []
    with contextlib.redirect_stdout(sys.stderr):  # donkeycar's banner and logs
        for model in models:
            rows.append(bench(model, args.type, frames, args.threads))
    print("per frame, medians of %d real frames; ONNX Runtime on %d thread(s)" % (len(frames), args.threads))
    for row in rows:
        print("\n%s (donkeycar's %s today)" % (row["model"], row["interpreter"]))
        print("  donkeycar pilot, as it runs today      %8.3f ms" % row["pilot_stock_ms"])
        print("  separate mask pass (the part today)    %8.3f ms  (%.0f %% of the pilot)"
              % (row["mask_separate_ms"], row["separate_mask_pct_of_stock_pilot"]))
        print("  (a) pilot + separate mask              %8.3f ms" % row["a_today_ms"])
        print("  (b) shared pass: pilot.run + mask      %8.3f ms" % row["b_shared_ms"])
        print("  ratio a/b                              %8.2f x" % row["ratio_a_over_b"])
        print("  our graph: pilot alone                 %8.3f ms" % row["graph_pilot_only_ms"])
        print("  our graph: pilot + mask                %8.3f ms" % row["graph_whole_ms"])
        print("  saliency's added cost                  %8.1f %% of the pilot's inference (target <= 10 %%)"
              % row["saliency_added_pct"])
    return rows


if __name__ == "__main__":
    main()
