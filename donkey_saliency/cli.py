"""``donkey-saliency`` sub-commands.

Each command is a ``cmd_<name>(args)`` function plus one ``_add_<name>(sub, shared)`` that declares
its own arguments; the options several commands take (``--backend``, ``--alpha``/``--colormap``,
``--image-key``, ``--force``, ``--method``) are declared once, in ``SharedOptions``, and joined in as
argparse parents. ``COMMANDS`` is the table of them. Bad input ends with one line on stderr and exit
status 2; nothing is half-written. The car/laptop boundary is the folder: a command whose work is done
in tools/ (Python 3.8+, may use TensorFlow) reaches it through ``laptop_tool``, when it runs, and
refuses in one line on an older Python (a Jetson Nano's 3.6); every other command runs on the car.
"""
import argparse
import importlib
import io
import logging
import os
import sys

import numpy as np

from .api import PilotPass, Saliency, pilot_values_for
from .backends import trt_tools
from .config import (
    AUDIT_DEPENDENCE_FRAMES, DEFAULT_ALPHA, DEFAULT_COLORMAP, DONKEY_WEB_PORT, DRIVE_LOOP_HZ, EVALUATE_AREA, EVALUATE_FRAMES)
from .util.console import table_lines
from .errors import first_line, InputError, SaliencyError
from .util.fileio import atomic_write
from .compute.graph import export, graph_for
from .util.images import read_image, write_png
from .keys import CAMERA_KEY
from .compute.methods import DEFAULT_METHOD, DEFAULT_OUTPUT, METHODS, OUTPUTS
from .compute.overlay import check_style, overlay
from .pilots import DEMO_PILOT, load_pilot, require_model_file
from .tubs.read import tub_frames
from .web.review import DEFAULT_PORT, serve
from .web.review_model import Review
from .web.review_pair import PilotPair

EXIT_BAD_INPUT = 2
LAPTOP_PYTHON = (3, 8)  # what tools/ needs; a Jetson Nano's JetPack 4.6 has Python 3.6


def laptop_tool(name):
    """The module ``tools/<name>.py``, imported when its command runs; InputError (one line) on a
    Python older than tools/ needs, before anything else is done."""
    if sys.version_info < LAPTOP_PYTHON:
        raise InputError("needs Python %d.%d or newer (this is %d.%d); run it on a laptop"
                         % (LAPTOP_PYTHON + tuple(sys.version_info[:2])))
    return importlib.import_module(".tools." + name, __package__)


class SharedOptions(object):
    """The options several commands take, each declared once as a parent parser."""

    def __init__(self):
        self.backend = self._parent()
        self.backend.add_argument("--backend", default="auto", help="auto (default), tensorrt or onnxruntime")
        self.style = self._parent()
        self.style.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                                help="the heat map's weight over the frame (default %g)" % DEFAULT_ALPHA)
        self.style.add_argument("--colormap", default=DEFAULT_COLORMAP, help="default %s" % DEFAULT_COLORMAP)
        self.colormap = self._parent()
        self.colormap.add_argument("--colormap", default=DEFAULT_COLORMAP, help="default %s" % DEFAULT_COLORMAP)
        self.image_key = self._parent()
        self.image_key.add_argument("--image-key", default=CAMERA_KEY,
                                    help="the camera field (default %s)" % CAMERA_KEY)
        self.force = self._parent()
        self.force.add_argument("--force", action="store_true", help="replace --out if it exists")
        self.method = self._parent()
        self.method.add_argument("--method", default=DEFAULT_METHOD, choices=sorted(METHODS),
                                 help="saliency method (default %s; all computed in the graph, see README "
                                      "'Saliency methods')" % DEFAULT_METHOD)
        self.method.add_argument("--output", default=DEFAULT_OUTPUT, choices=OUTPUTS,
                                 help="the decision a gradient method explains (default %s)" % DEFAULT_OUTPUT)
        self.method.add_argument("--level", type=int, default=None,
                                 help="grad-cam's conv level (0 = shallowest; default the deepest)")

    @staticmethod
    def _parent():
        return argparse.ArgumentParser(add_help=False)


def method_choice(args):
    """load()'s method, output and level from the shared --method/--output/--level."""
    return dict(method=args.method, output=args.output, level=args.level)


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # OpenCV's own warnings (e.g. FFmpeg's on a full disk) would break the CLI's one-line errors
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _os_error_line(error):
    """'cannot write /x/y: No space left on device' from an OSError (its class name without strerror)."""
    reason = error.strerror or first_line(error)
    return "%s: %s" % (error.filename, reason) if error.filename else reason


def write_npy(path, array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write(path, buffer.getvalue())


# --- mask ---------------------------------------------------------------------------------------
def _add_mask(sub, shared):
    p = sub.add_parser("mask", help="saliency masks for image files: DIR/<stem>.npy and DIR/<stem>.png",
                       parents=[shared.backend, shared.style, shared.method])
    p.add_argument("model", help="pilot file (.h5 .keras .tflite, SavedModel dir, or an exported .onnx)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output directory")


def cmd_mask(args):
    check_style(args.alpha, args.colormap)  # before anything is computed or written
    require_model_file(args.model)
    # Read every image first: a bad one fails before anything is written.
    images = [(path, read_image(path)) for path in args.images]
    with Saliency.open(args.model, backend=args.backend, **method_choice(args)) as saliency:
        results = [(path, image, saliency.mask(image)) for path, image in images]
    for path, image, mask in results:
        stem = os.path.splitext(os.path.basename(path))[0]
        write_npy(os.path.join(args.out, stem + ".npy"), mask.astype("float32"))
        write_png(os.path.join(args.out, stem + ".png"), overlay(image, mask, args.alpha, args.colormap))
        print(os.path.join(args.out, stem + ".npy"))
    return 0


# --- summary ------------------------------------------------------------------------------------
def _add_summary(sub, shared):
    p = sub.add_parser("summary", help="the conv trunk: kernel, stride, padding, sizes, receptive field")
    p.add_argument("model")


def cmd_summary(args):
    trunk = load_pilot(args.model).trunk
    height, width, channels = trunk.input_shape
    print("%s  (model type: %s)  input %dx%dx%d, frames scaled by 1/255" % (
        args.model, trunk.model_type, height, width, channels))
    header = ("layer", "kind", "kernel", "stride", "padding", "output", "receptive field", "jump", "then")
    rows = [header]
    for r in trunk.table():
        rows.append((r["layer"], r["kind"], "%dx%d" % r["kernel"], "%dx%d" % r["stride"], str(r["padding"]),
                     r["output"], "%dx%d" % r["receptive_field"], "%dx%d" % r["jump"], r["activation"]))
    for line in table_lines(rows):
        print(line)
    return 0


# --- export -------------------------------------------------------------------------------------
def _add_export(sub, shared):
    p = sub.add_parser("export", help="write the fused saliency graph (frame -> mask) as ONNX")
    p.add_argument("model")
    p.add_argument("--out", required=True, help="FILE.onnx")
    p.add_argument("--features", action="store_true", help="also output every conv layer's feature maps")
    p.add_argument("--output", choices=OUTPUTS + ("none",), default=DEFAULT_OUTPUT,
                   help="the pilot output whose backward pass the graph carries, what every method but vbp "
                        "reads (default %s; none: VisualBackProp only)" % DEFAULT_OUTPUT)


def cmd_export(args):
    if not args.out.lower().endswith(".onnx"):
        raise InputError("--out must name a .onnx file")
    output = None if args.output == "none" else args.output
    graph = export(load_pilot(args.model, whole=bool(output)), features=args.features, output=output)
    graph.save(args.out)
    print("%s: %d conv layers, input %s, sha256 %s" % (args.out, len(graph.layer_names),
                                                      "x".join(map(str, graph.input_shape)), graph.digest[:16]))
    return 0


# --- bench --------------------------------------------------------------------------------------
def _add_bench(sub, shared):
    p = sub.add_parser("bench", help="time the pipeline per stage, against gradient saliency and eager "
                                     "TensorFlow, and in a real Vehicle loop", parents=[shared.backend])
    p.add_argument("model", nargs="?", help="pilot file (default: the shipped demo pilot)")
    p.add_argument("--frames", type=int, default=100, help="frames timed, the same for every method (default 100)")
    p.add_argument("--tub", help="take the frames from this tub (v2, or v1 *_cam-image_array_.jpg); "
                                 "default: random frames")
    p.add_argument("--loops", type=int, default=200, help="Vehicle loop iterations per run (default 200)")
    p.add_argument("--hz", type=int, default=DRIVE_LOOP_HZ,
                   help="Vehicle loop rate (default %d, donkey's DRIVE_LOOP_HZ)" % DRIVE_LOOP_HZ)
    p.add_argument("--json", help="also write every figure to this JSON file")


def cmd_bench(args):
    import json

    bench = laptop_tool("bench")
    model = args.model
    if model is None:
        if not os.path.exists(DEMO_PILOT):
            raise InputError("no MODEL given and the demo pilot %s is absent; name a pilot file" % DEMO_PILOT)
        model = DEMO_PILOT
    if args.loops < 3 or args.hz < 1:
        raise InputError("--loops must be at least 3 and --hz at least 1")

    def progress(message):
        print("bench: " + message, file=sys.stderr, flush=True)

    report = bench.run_bench(model, frames=args.frames, tub=args.tub, backend=args.backend, loops=args.loops,
                             hz=args.hz, progress=progress)
    print(bench.format_report(report))
    if args.json:
        atomic_write(args.json, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    return 0


# --- build-engine / selftest (TensorRT) ---------------------------------------------------------
def _add_build_engine(sub, shared):
    p = sub.add_parser("build-engine", help="build (or find in the cache) the TensorRT engine for a pilot's "
                                              "saliency graph: the method's, as the part runs it",
                       parents=[shared.method])
    p.add_argument("model", help="pilot file (.h5 .keras .tflite, SavedModel dir, or an exported .onnx)")
    p.add_argument("--precision", default=None,
                   help="fp16 or fp32 (default fp16, fp32 for a gradient method's graph; fp32 where the GPU lacks fast fp16)")
    p.add_argument("--cache-dir", default=None,
                   help="cache directory; engines go to DIR/engines (default ~/.cache/donkey_saliency)")
    p.add_argument("--workspace-mb", type=int, default=None, help="TensorRT builder workspace in MB (default 256)")
    p.add_argument("--rebuild", action="store_true", help="build even when a matching engine is cached")


def cmd_build_engine(args):
    if args.precision is not None:
        trt_tools.check_precision(args.precision)
    trt_tools.require_tensorrt()  # before the pilot is loaded: one line saying what to install
    # the graph the part will run (SALIENCY_METHOD/OUTPUT/LEVEL), so its first drive finds the engine cached
    graph = Saliency.open(args.model, "tensorrt", cache_dir=args.cache_dir, **method_choice(args)).graph
    engine = trt_tools.open_engine(graph, args.precision, args.cache_dir, args.rebuild, args.workspace_mb)
    try:
        print(trt_tools.engine_line(engine))
    finally:
        engine.close()
    return 0


def _add_selftest(sub, shared):
    p = sub.add_parser("selftest", help="the TensorRT engine against ONNX Runtime on the same frames: "
                                        "mask difference, overlap of the salient pixels, speed; PASS/FAIL")
    p.add_argument("model", nargs="?", help="pilot file (default: donkey's linear architecture, fixed random weights)")
    p.add_argument("--tub", help="donkeycar tub (v2 or v1) to take frames from (default: procedural road scenes)")
    p.add_argument("--frames", type=int, default=trt_tools.DEFAULT_FRAMES,
                   help="how many frames (spread over the tub); default %d" % trt_tools.DEFAULT_FRAMES)
    p.add_argument("--precision", default="both", help="both (default: an fp32 and an fp16 engine, compared), "
                                                         "fp16 or fp32")
    p.add_argument("--cache-dir", default=None, help="cache directory (as for build-engine)")
    p.add_argument("--rebuild", action="store_true", help="build the engine even when one is cached")


def cmd_selftest(args):
    precisions = trt_tools.selftest_precisions(args.precision)
    if args.frames < 1:
        raise InputError("--frames must be at least 1")
    trt_tools.require_tensorrt()
    frames = tub_frames(args.tub, args.frames) if args.tub else None  # a bad tub fails first
    graph = graph_for(args.model, args.cache_dir) if args.model else trt_tools.default_pilot_graph()
    if frames is None:
        frames = trt_tools.procedural_frames(args.frames, graph.input_shape)
    print("selftest: %s, %d frames from %s" % (args.model or "stand-in linear pilot (fixed random weights)",
                                               len(frames), args.tub or "procedural road scenes"))
    report = trt_tools.selftest(graph, frames, precisions, cache_dir=args.cache_dir, rebuild=args.rebuild)
    for line in trt_tools.report_lines(report):
        print(line)
    return 0 if report["passed"] else 1


# --- demo ---------------------------------------------------------------------------------------
def _add_demo(sub, shared):
    p = sub.add_parser("demo", help="a simulated car on donkeycar's parts: pilot, live saliency, web UI, tub",
                       parents=[shared.backend])
    p.add_argument("--port", type=int, default=DONKEY_WEB_PORT,
                   help="web UI port (default %d: http://localhost:%d/drive)" % (DONKEY_WEB_PORT, DONKEY_WEB_PORT))
    p.add_argument("--seconds", type=float, help="stop after this long (default: run until Ctrl-C)")
    p.add_argument("--model", help="linear pilot that drives (default: the shipped demo pilot)")
    p.add_argument("--out-tub", help="tub to record into (default: a new directory under ./demo-tub)")
    p.add_argument("--frames", help="replay the images in this directory or tub instead of the track")
    p.add_argument("--seed", type=int, default=0, help="procedural track seed")


def cmd_demo(args):
    demo_module = laptop_tool("demo")
    if args.seconds is not None and args.seconds <= 0:
        raise InputError("--seconds must be positive")
    if not 0 < args.port < 65536:
        raise InputError("--port must be between 1 and 65535")
    demo = demo_module.Demo(port=args.port, seconds=args.seconds, model_path=args.model, tub_path=args.out_tub,
                frames_dir=args.frames, seed=args.seed, backend=args.backend)
    demo.build()
    return demo.run()


# --- backfill / render / layers / filters (tools/backfill.py, render.py, layers.py, filters.py) ----------
def _add_backfill(sub, shared):
    p = sub.add_parser("backfill", help="copy a tub recorded without saliency, adding the saliency keys",
                       parents=[shared.backend, shared.image_key, shared.style, shared.method])
    p.add_argument("tub", help="tub directory (v2: manifest.json; or a donkeycar 3 v1 tub: meta.json)")
    p.add_argument("--model", required=True, help="pilot file (or an exported .onnx graph)")
    p.add_argument("--out", help="new tub directory (default: TUB_saliency); must not exist")
    p.add_argument("--batch", type=int, default=64, help="frames per inference batch (default 64)")
    p.add_argument("--workers", type=int, default=2, help="threads decoding and encoding JPEGs (default 2)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default 0: all cores but one)")


def cmd_backfill(args):
    result = laptop_tool("backfill").backfill(args.tub, args.model, out_path=args.out, batch=args.batch, backend=args.backend,
                      image_key=args.image_key, alpha=args.alpha, colormap=args.colormap, workers=args.workers,
                      threads=args.threads, **method_choice(args))
    print("%s: %d records (%d deleted, copied still marked deleted), %d masks, %.1f s (%.0f frames/s), "
          "from a v%d tub" % (result.path, result.records, result.deleted, result.masks, result.seconds,
                              result.records / max(result.seconds, 1e-9), result.source_version))
    return 0


def _add_render(sub, shared):
    p = sub.add_parser("render", help="review video: camera | saliency, user vs pilot steering and throttle",
                       parents=[shared.backend, shared.image_key, shared.style, shared.force, shared.method])
    p.add_argument("tub")
    p.add_argument("--out", required=True, help="FILE.webm (VP8: plays in browsers) or FILE.mp4 (MPEG-4 Part 2: "
                                                "plays in VLC/ffplay, not in browsers)")
    p.add_argument("--model", help="pilot file: computes saliency when the tub has none, and the pilot's "
                                   "steering/throttle when the tub has no pilot/angle")
    p.add_argument("--start", type=int, help="first record index (default: the first)")
    p.add_argument("--end", type=int, help="record index to stop before (default: after the last)")
    p.add_argument("--fps", type=float, default=float(DRIVE_LOOP_HZ),
                   help="frames per second (default %d, DRIVE_LOOP_HZ)" % DRIVE_LOOP_HZ)
    p.add_argument("--scale", type=int, default=3, help="image magnification (default 3)")
    p.add_argument("--recompute", action="store_true", help="compute saliency with --model even if recorded")


def cmd_render(args):
    result = laptop_tool("render").render(args.tub, args.out, model_path=args.model, start=args.start, end=args.end, fps=args.fps,
                    scale=args.scale, backend=args.backend, alpha=args.alpha, colormap=args.colormap,
                    image_key=args.image_key, recompute=args.recompute, force=args.force, **method_choice(args))
    print("%s: %d frames, %dx%d, %g fps, saliency %s" % (result.path, result.frames, result.size[0], result.size[1],
                                                        result.fps, "computed" if result.computed else "recorded"))
    return 0


def _add_layers(sub, shared):
    p = sub.add_parser("layers", help="every conv layer's feature maps for one image, as a labelled grid PNG",
                       parents=[shared.backend, shared.colormap, shared.force])
    p.add_argument("model")
    p.add_argument("image")
    p.add_argument("--out", required=True, help="FILE.png")


def cmd_layers(args):
    grid = laptop_tool("layers").write_layer_grid(args.model, args.image, args.out, backend=args.backend, colormap=args.colormap,
                            force=args.force)
    for name, (h, w, c) in grid.layers:
        flat = grid.flat[name]
        print("%s  %dx%dx%d  flat maps: %s" % (name, h, w, c, ", ".join(map(str, flat)) if flat else "none"))
    print(args.out)
    return 0


def _add_filters(sub, shared):
    p = sub.add_parser("filters", help="over a tub, which conv filters never (or almost never) activate",
                       parents=[shared.backend, shared.image_key, shared.force])
    p.add_argument("tub")
    p.add_argument("--model", required=True)
    p.add_argument("--out", help="also draw the chart into this PNG")
    p.add_argument("--threshold", type=float, default=0.0,
                   help="a filter fires on a frame when its peak activation exceeds this (default 0)")
    p.add_argument("--rare", type=float, default=0.01, help="'rare': fires on fewer than this share of frames "
                                                             "(default 0.01)")
    p.add_argument("--batch", type=int, default=32)


def cmd_filters(args):
    report = laptop_tool("filters").filter_report(args.tub, args.model, out_path=args.out, threshold=args.threshold, rare=args.rare,
                           batch=args.batch, backend=args.backend, image_key=args.image_key, force=args.force)
    print(report.table)
    if report.path:
        print(report.path)
    return 0


# --- review (web/review.py) ------------------------------------------------------------------------
def _add_review(sub, shared):
    p = sub.add_parser("review", help="a page to scrub a tub in the browser: camera | saliency, the drive's "
                                      "steering and throttle, where pilot and user disagree",
                       parents=[shared.backend, shared.image_key, shared.style, shared.method])
    p.add_argument("tub", help="tub directory (v2, or a donkeycar 3 v1 tub)")
    p.add_argument("--model", action="append", default=[],
                   help="pilot file: computes the overlay and layer maps when the tub has none; twice "
                        "(--model A --model B): camera | A | B, both pilots' steering, where they disagree most")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %d; 0 picks a free one)" % DEFAULT_PORT)
    p.add_argument("--writable", action="store_true",
                   help="let the d key mark records deleted/restored (in manifest.json, as donkeycar does); "
                        "refused for a tub being recorded")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests sent to this host name (repeatable; localhost, this machine's "
                        "names and addresses are always answered; '.lan' allows its subdomains)")


def cmd_review(args):
    if not 0 <= args.port < 65536:
        raise InputError("--port must be between 0 and 65535")
    check_style(args.alpha, args.colormap)
    review = Review(args.tub, writable=args.writable, alpha=args.alpha, colormap=args.colormap,
                    image_key=args.image_key)  # a bad tub fails before the model loads
    try:
        if len(args.model) > 2:
            raise InputError("review compares at most two pilots (--model given %d times)" % len(args.model))
        for model in args.model:
            require_model_file(model)
        if len(args.model) == 2:
            passes = []
            try:
                for model in args.model:
                    passes.append(PilotPass(model, args.backend, masks=True, **method_choice(args)))
            except BaseException:
                for one in passes:
                    one.close()
                raise
            review.compare(PilotPair(passes, args.model, review.index, review.image_key))
        elif args.model:
            model = args.model[0]
            review.saliency = Saliency.open(model, backend=args.backend, **method_choice(args)).activate()
            if not review.has_pilot_keys:
                predictor = pilot_values_for(model, args.backend)  # None (logged) for a graph without them
                if predictor is not None:
                    review.compute_pilot(predictor)  # the pilot's values, for the timeline

        def ready(url):
            print("review of %s (%d records): %s" % (review.index.path, len(review.index), url), flush=True)

        serve(review, host=args.host, port=args.port, ready=ready, allowed_hosts=args.allow_host)
    finally:
        review.close()
    return 0


# --- evaluate (evaluate.py) -------------------------------------------------------------------------
def _add_evaluate(sub, shared):
    p = sub.add_parser("evaluate", help="how much of the pilot's steering the mask explains: shift test, "
                                        "deletion/insertion, against baselines, with paired bootstrap intervals",
                       parents=[shared.backend, shared.method])
    p.add_argument("tub", help="tub directory (v2, or a donkeycar 3 v1 tub)")
    p.add_argument("--model", required=True, help="pilot file (.h5 .keras .tflite)")
    p.add_argument("--frames", type=int, default=EVALUATE_FRAMES,
                   help="frames spread evenly over the tub (default %d)" % EVALUATE_FRAMES)
    p.add_argument("--area", type=float, default=EVALUATE_AREA,
                   help="salient region: this top fraction of the mask (default %g)" % EVALUATE_AREA)
    p.add_argument("--out", help="directory for evaluate.json, curves.png and example_*.png")


def cmd_evaluate(args):
    evaluate = laptop_tool("evaluate")
    report = evaluate.run_evaluate(args.tub, args.model, frames=args.frames, area=args.area, out_dir=args.out,
                          backend=args.backend, method=args.method, output=args.output, level=args.level)
    print(evaluate.format_table(report))
    if args.out:
        print(os.path.join(args.out, "evaluate.json"))
    return 0


# --- audit (audit_run.py, audit.py, audit_report.py) --------------------------------------------------
def _add_audit(sub, shared):
    p = sub.add_parser("audit", help="where one or two pilots look over a drive, how much their steering "
                                     "depends on the top rows, and whether to set ROI_CROP_TOP",
                       parents=[shared.backend, shared.image_key, shared.method])
    p.add_argument("tub", help="tub directory (v2, or a donkeycar 3 v1 tub)")
    p.add_argument("--model", action="append", required=True,
                   help="pilot file (.h5 .keras .tflite); give it twice to compare two pilots")
    p.add_argument("--frames", type=int, help="frames spread evenly over the tub's live records (default: all)")
    p.add_argument("--dependence-frames", type=int, default=AUDIT_DEPENDENCE_FRAMES,
                   help="of those, the frames the crop and shift test runs on (default %d)" % AUDIT_DEPENDENCE_FRAMES)
    p.add_argument("--out", default="audit", help="output directory for audit.json, audit.html and PNGs "
                                                  "(default ./audit)")
    p.add_argument("--review-url", help="the review page the record links open (default: `donkey-saliency "
                                        "review TUB` on this machine)")


def cmd_audit(args):
    report = laptop_tool("audit").run_audit(args.tub, args.model, frames=args.frames, out_dir=args.out, backend=args.backend,
                       method=args.method, dependence_frames=args.dependence_frames, image_key=args.image_key,
                       review_url=args.review_url)
    for pilot in report["pilots"]:
        print("%s: ROI_CROP_TOP %d - %s" % (pilot["path"], pilot["recommended_roi_crop_top"], pilot["advice"]))
    if "comparison" in report:
        comparison = report["comparison"]
        print("steering mean |difference| %.3f, top-area IoU %.2f" % (comparison["steering_mean_abs_difference"],
                                                                      comparison["top_area_iou"]))
    print(os.path.join(args.out, "audit.html"))
    return 0


# Sub-commands in the order `--help` lists them: (name, declares its arguments, runs it).
COMMANDS = (
    ("mask", _add_mask, cmd_mask),
    ("summary", _add_summary, cmd_summary),
    ("export", _add_export, cmd_export),
    ("bench", _add_bench, cmd_bench),
    ("build-engine", _add_build_engine, cmd_build_engine),
    ("selftest", _add_selftest, cmd_selftest),
    ("demo", _add_demo, cmd_demo),
    ("backfill", _add_backfill, cmd_backfill),
    ("render", _add_render, cmd_render),
    ("layers", _add_layers, cmd_layers),
    ("filters", _add_filters, cmd_filters),
    ("review", _add_review, cmd_review),
    ("evaluate", _add_evaluate, cmd_evaluate),
    ("audit", _add_audit, cmd_audit),
)
HANDLERS = dict((name, run) for name, _, run in COMMANDS)


def build_parser():
    parser = argparse.ArgumentParser(prog="donkey-saliency",
                                     description="What your Donkeycar pilot looks at, live and in review.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    shared = SharedOptions()
    for _, declare, _ in COMMANDS:
        declare(sub, shared)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    _quiet_tensorflow()
    handler = HANDLERS[args.command]
    try:
        return handler(args) or 0
    except SaliencyError as error:
        print("donkey-saliency %s: %s" % (args.command, error), file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:  # a read-only or full filesystem, a missing permission: the outputs are cleaned up
        print("donkey-saliency %s: %s" % (args.command, _os_error_line(error)), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("donkey-saliency %s: interrupted" % args.command, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
