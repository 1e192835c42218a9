"""The review video (``donkey-saliency render``): a video (.webm plays in browsers, .mp4 in players)
of camera | overlay side by side with user vs pilot steering and throttle, record index and mode
under them. Uses the overlay recorded in the tub, or computes it with the pilot when the tub has
none. (The layer grid is ``layers.py``'s, the dead-filter report ``filters.py``'s.)

Pictures are plain uint8 RGB arrays drawn with OpenCV; the file is written to a temp name and renamed.
"""
import collections
import contextlib
import importlib
import logging
import os
import sys
import tempfile

import numpy as np

from ..api import Saliency
from ..compute.methods import DEFAULT_METHOD, DEFAULT_OUTPUT, describe
from ..config import DEFAULT_ALPHA, DEFAULT_COLORMAP
from ..util.console import Progress
from ..errors import InputError
from ..util.fileio import default_file_mode
from ..compute.frames import fit_to_model
from ..util.images import read_rgb
from ..keys import CAMERA_KEY, LAG_KEY, OVERLAY_KEY
from ..util.opencv import import_cv2
from ..compute.overlay import check_style, overlay, side_by_side, to_rgb
from ..pilots import check_pilot_file, KERAS_SUFFIXES
from .pictures import DARK, GREY, PILOT_COLOR, USER_COLOR, check_output, put_text
from ..tubs.read import open_tub, require_field

# Review video containers: .webm (VP8) plays in browsers; .mp4 is MPEG-4 Part 2, since OpenCV's wheels
# carry no H.264 encoder: it plays in VLC and ffplay, not in Chromium or Firefox.
VIDEO_CODECS = {".webm": "VP80", ".mp4": "mp4v"}

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Pilot predictions (for the video's "pilot" bars when the tub has no pilot/angle)

def linear_unbin(arr, N=15, offset=-1, R=2.0):
    """donkeycar's ``utils.linear_unbin``, to the letter: a one-hot (or softmax) array -> the value of
    its largest bin. KerasCategorical decodes steering with the defaults and throttle with
    ``N=20, offset=0, R=throttle_range`` (0.5 by default)."""
    return float(np.argmax(arr) * (R / (N + offset)) + offset)


CATEGORICAL_THROTTLE_RANGE = 0.5  # donkeycar's KerasCategorical default (cfg.MODEL_CATEGORICAL_MAX_THROTTLE_RANGE)


def decode_pilot_outputs(values):
    """A pilot's outputs for one frame -> (angle, throttle), or None for layouts we cannot read:
    linear (two scalars, or one pair) and categorical (15 steering bins, 20 throttle bins)."""
    flat = [np.ravel(v) for v in values]
    if len(flat) == 1 and flat[0].size == 2:
        return float(flat[0][0]), float(flat[0][1])
    if len(flat) >= 2 and flat[0].size == 1 and flat[1].size == 1:
        return float(flat[0][0]), float(flat[1][0])
    if len(flat) >= 2 and flat[0].size == 15 and flat[1].size == 20:
        return (linear_unbin(flat[0]),
                linear_unbin(flat[1], N=20, offset=0.0, R=CATEGORICAL_THROTTLE_RANGE))
    return None


class KerasPilotPredictor(object):
    """The pilot's steering and throttle for frames, from a Keras file (.h5 / .keras)."""

    def __init__(self, model_path):
        from ..pilots.reference import keras_model

        self.model = keras_model(model_path)
        self.input_shape = tuple(int(d) for d in self.model.inputs[0].shape[1:])
        self.usable = len(self.model.inputs) == 1

    def outputs(self, x):
        outputs = self.model(x, training=False)
        outputs = [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]
        return [[o[i] for o in outputs] for i in range(len(x))]


def tflite_interpreter_class():
    """The TFLite Interpreter the car has: tflite_runtime's (donkeycar 5.3 on a Pi), ai_edge_litert's
    (donkeycar 5.4), else TensorFlow's; None without any."""
    for module in ("tflite_runtime.interpreter", "ai_edge_litert.interpreter"):
        try:
            return importlib.import_module(module).Interpreter
        except ImportError:
            pass
    try:
        import tensorflow as tf
        return tf.lite.Interpreter
    except ImportError:
        return None


class TflitePilotPredictor(object):
    """The same from a .tflite file, run the way donkeycar's ``TfLite`` interpreter runs it: the
    ``serving_default`` signature, outputs in the signature's order; in a file without a signature
    (donkeycar 5.4 writes them) inputs by tensor name and outputs in tensor index order, as 5.4 does."""

    def __init__(self, model_path, interpreter_class):
        self.interpreter = interpreter_class(model_path=model_path)
        signature = self.interpreter.get_signature_list().get("serving_default")
        details = self.interpreter.get_input_details()
        self.usable = len(details) == 1
        self.input_shape = tuple(int(d) for d in details[0]["shape"][1:])
        if signature:
            self.runner = self.interpreter.get_signature_runner()
            self.input_keys = list(signature["inputs"])
            self.output_keys = list(signature["outputs"])
        else:
            self.runner = None
            self.interpreter.allocate_tensors()
            self.input_index = details[0]["index"]
            self.output_indices = sorted(d["index"] for d in self.interpreter.get_output_details())

    def outputs(self, x):
        results = []
        for frame in x:
            feed = frame[None].astype(np.float32)
            if self.runner is not None:
                out = self.runner(**{self.input_keys[0]: feed})
                results.append([np.asarray(out[k][0]) for k in self.output_keys])
            else:
                self.interpreter.set_tensor(self.input_index, feed)
                self.interpreter.invoke()
                results.append([np.array(self.interpreter.get_tensor(i)[0]) for i in self.output_indices])
        return results


class PilotPredictor(object):
    """The pilot's (angle, throttle) for frames (uint8 RGB, any size), from any pilot file whose
    outputs the review can read: Keras (.h5/.keras) or .tflite. ``for_model`` returns None (and logs
    one line) where it cannot run the file; the video then says "pilot n/a"."""

    def __init__(self, runner):
        self.runner = runner

    @classmethod
    def for_model(cls, model_path):
        check_pilot_file(model_path)  # before TensorFlow (Lite) sees it: ModelError for a damaged file
        path = str(model_path).lower().rstrip("/")
        if path.endswith(KERAS_SUFFIXES):
            return cls(KerasPilotPredictor(model_path))
        if path.endswith(".tflite"):
            interpreter_class = tflite_interpreter_class()
            if interpreter_class is None:
                logger.warning("pilot bars n/a: running %s needs ai-edge-litert, tflite-runtime or tensorflow",
                               model_path)
                return None
            return cls(TflitePilotPredictor(model_path, interpreter_class))
        logger.warning("pilot bars n/a: the review runs Keras and .tflite pilots, not %s", model_path)
        return None

    def predict(self, frames):
        """[(angle, throttle)] or [None] per frame."""
        if not self.runner.usable or not len(frames):
            return [None] * len(frames)
        x = np.stack([fit_to_model(f, self.runner.input_shape) for f in frames]).astype(np.float32) / 255.0
        return [decode_pilot_outputs(values) for values in self.runner.outputs(x)]


# --------------------------------------------------------------------------------------------
# The review video

PANEL_HEIGHT = 96


def _bar_row(canvas, top, label, user, pilot, width, value_range):
    """One labelled track with the user's value (upper bar) and the pilot's (lower bar)."""
    cv2 = import_cv2()

    left, right = 80, width - 170
    low, high = value_range
    zero = left + (right - left) * (0.0 - low) / (high - low)
    put_text(canvas, label, (8, top + 16))
    cv2.rectangle(canvas, (left, top + 2), (right, top + 24), (60, 60, 60), 1)
    cv2.line(canvas, (int(zero), top), (int(zero), top + 26), GREY, 1)
    for value, color, y in ((user, USER_COLOR, top + 4), (pilot, PILOT_COLOR, top + 14)):
        if value is None:
            continue
        clipped = min(max(float(value), low), high)
        x = left + (right - left) * (clipped - low) / (high - low)
        cv2.rectangle(canvas, (int(min(zero, x)), y), (int(max(zero, x)), y + 8), color, -1)
    text_x = right + 10
    for value, color, name in ((user, USER_COLOR, "user"), (pilot, PILOT_COLOR, "pilot")):
        shown = "%+.2f" % value if value is not None else "n/a"
        put_text(canvas, "%s %s" % (name, shown), (text_x, top + 16), 0.42, color)
        text_x += 80


def compose_frame(camera, overlay_image, index, mode, user, pilot, scale=3, lag_ms=None, note=None):
    """One video frame: camera | overlay (scaled), and under them steering and throttle bars
    (user green, pilot blue), the record index, the drive mode and the mask's lag."""
    cv2 = import_cv2()

    camera = to_rgb(camera)
    if overlay_image is None:
        overlay_image = np.zeros_like(camera)
    top = side_by_side(camera, overlay_image)
    top = cv2.resize(top, (top.shape[1] * scale, top.shape[0] * scale), interpolation=cv2.INTER_LINEAR)
    width = top.shape[1] + top.shape[1] % 2
    height = top.shape[0] + PANEL_HEIGHT
    height += height % 2  # even sizes: what every MP4 encoder accepts
    frame = np.full((height, width, 3), DARK[0], dtype=np.uint8)
    frame[:top.shape[0], :top.shape[1]] = top
    put_text(frame, "camera", (6, 16), 0.5)
    put_text(frame, "saliency" if note is None else note, (top.shape[1] // 2 + 6, 16), 0.5)
    y = top.shape[0] + 6
    user_angle, user_throttle = user if user is not None else (None, None)
    pilot_angle, pilot_throttle = pilot if pilot is not None else (None, None)
    _bar_row(frame, y, "steering", user_angle, pilot_angle, width, (-1.0, 1.0))
    _bar_row(frame, y + 30, "throttle", user_throttle, pilot_throttle, width, (-1.0, 1.0))
    status = "record %d   mode %s" % (index, mode or "?")
    if lag_ms is not None:
        status += "   mask lag %s" % ("none yet" if lag_ms < 0 else "%.0f ms" % lag_ms)
    put_text(frame, status, (8, y + 80), 0.45, GREY)
    return frame


def _number(record, key):
    value = record.get(key)
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


RenderResult = collections.namedtuple("RenderResult", "path frames size fps computed")


def render(tub_path, out_path, model_path=None, start=None, end=None, fps=20, scale=3, backend="auto",
           batch=32, alpha=DEFAULT_ALPHA, colormap=DEFAULT_COLORMAP, image_key=CAMERA_KEY, recompute=False, force=False,
           progress=True, method=DEFAULT_METHOD, output=DEFAULT_OUTPUT, level=None):
    """Write the review video of records ``start <= index < end`` (live records only); computed
    saliency uses ``method`` (``methods.METHODS``) explaining ``output``."""
    cv2 = import_cv2()

    check_output(out_path, force, tuple(VIDEO_CODECS))
    alpha, colormap = check_style(alpha, colormap)
    if fps <= 0:
        raise InputError("--fps must be positive")
    if scale < 1:
        raise InputError("--scale must be at least 1")
    source = open_tub(tub_path)
    require_field(source, image_key)
    types = source.input_types
    recorded = OVERLAY_KEY in types and not recompute
    if not recorded and not model_path:
        raise InputError("%s has no saliency recorded; pass --model to compute it" % source.path)
    entries = [e for e in source.live_entries if (start is None or e.index >= start) and (end is None or e.index < end)]
    if not entries:
        raise InputError("%s: no live records in the range %s..%s" % (source.path, start, end))
    source_keys = [image_key] + ([OVERLAY_KEY] if recorded else [])
    wanted = set(e.index for e in entries)
    missing = [(i, p) for i, p in source.missing_images(source_keys) if i in wanted]
    if missing:
        raise InputError("%s: record %d's image %s is missing (%d missing in the range)"
                         % (source.path, missing[0][0], os.path.relpath(missing[0][1], source.path), len(missing)))
    for entry in entries:
        if recorded and OVERLAY_KEY not in entry.images:
            raise InputError("%s: record %d has no %s; pass --model --recompute to compute it"
                             % (source.path, entry.index, OVERLAY_KEY))

    saliency = (Saliency.open(model_path, backend=backend, method=method, output=output, level=level).activate()
                if not recorded else None)
    has_pilot = "pilot/angle" in types or "pilot/throttle" in types
    predictor = None
    try:
        if model_path and not has_pilot:
            predictor = PilotPredictor.for_model(model_path)
        suffix = os.path.splitext(out_path)[1].lower()
        tmp = _temp_beside(out_path, suffix)
        writer = None
        written, size = 0, None
        bar = Progress(len(entries), "render", enabled=bool(progress),
                       stream=progress if hasattr(progress, "write") else None)
        try:
            for first in range(0, len(entries), batch):
                chunk = entries[first:first + batch]
                cameras = [read_rgb(e.images[image_key]) for e in chunk]
                if recorded:
                    overlays = [read_rgb(e.images[OVERLAY_KEY]) for e in chunk]
                else:
                    masks = saliency.masks(cameras if len(set(c.shape for c in cameras)) > 1 else np.stack(cameras))
                    overlays = [overlay(c, m, alpha, colormap) for c, m in zip(cameras, masks)]
                pilots = predictor.predict(cameras) if predictor is not None else [None] * len(chunk)
                for entry, camera, picture, pilot in zip(chunk, cameras, overlays, pilots):
                    record = entry.record
                    user = (_number(record, "user/angle"), _number(record, "user/throttle"))
                    if has_pilot:
                        pilot = (_number(record, "pilot/angle"), _number(record, "pilot/throttle"))
                    lag = _number(record, LAG_KEY) if recorded else None
                    frame = compose_frame(camera, picture, entry.index, record.get("user/mode"), user, pilot,
                                          scale=scale, lag_ms=lag,
                                          note="saliency (recorded)" if recorded else
                                          "saliency: " + describe(saliency.method, saliency.output))
                    if writer is None:
                        size = (frame.shape[1], frame.shape[0])
                        with _quiet_stderr():  # FFmpeg's note that WebM has no codec tags: noise to a user
                            writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*VIDEO_CODECS[suffix]),
                                                     float(fps), size)
                        if not writer.isOpened():
                            raise InputError("OpenCV could not start writing %s (%s video): is the disk full?"
                                             % (out_path, VIDEO_CODECS[suffix]))
                    if (frame.shape[1], frame.shape[0]) != size:
                        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
                    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                    written += 1
                bar.update(len(chunk))
            writer.release()
            writer = None
            _check_video(tmp, written, out_path)
            bar.close()
            os.replace(tmp, out_path)
        except BaseException:
            if writer is not None:
                writer.release()
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    finally:
        if saliency is not None:
            saliency.close()
    return RenderResult(out_path, written, size, fps, not recorded)


@contextlib.contextmanager
def _quiet_stderr():
    """Silences what OpenCV and FFmpeg print straight to file descriptor 2 (no logging switch reaches it)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _check_video(path, frames, out_path):
    """InputError unless the file at ``path`` decodes to ``frames`` frames: OpenCV's VideoWriter
    reports no write errors, so a full disk would otherwise give a truncated, unplayable file."""
    cv2 = import_cv2()

    decoded = 0
    with _quiet_stderr():  # FFmpeg's own complaints about a broken file: our one line says it
        capture = cv2.VideoCapture(path)
        try:
            while decoded < frames and capture.grab():
                decoded += 1
        finally:
            capture.release()
    if decoded != frames:
        raise InputError("writing %s failed: %d of %d frames could be read back (is the disk full?)"
                         % (out_path, decoded, frames))


def _temp_beside(path, suffix):
    """A temp file beside ``path`` (renamed over it when complete), with a new file's usual mode."""
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % name, suffix=".partial" + suffix)
    os.close(fd)
    os.chmod(tmp, default_file_mode())
    return tmp
