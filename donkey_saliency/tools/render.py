"""The review video (``donkey-saliency render``): a video (.webm plays in browsers, .mp4 in players)
of camera | overlay side by side with user vs pilot steering and throttle, record index and mode
under them. Uses the overlay recorded in the tub, or computes it with the pilot when the tub has
none. (The layer grid is ``layers.py``'s, the dead-filter report ``filters.py``'s.)

Pictures are plain uint8 RGB arrays drawn with OpenCV; the file is written to a temp name and renamed.
"""
import collections
import contextlib
import os
import sys
import tempfile

import numpy as np

from ..api import Saliency, pilot_values_for
from ..compute.methods import DEFAULT_METHOD, DEFAULT_OUTPUT, describe
from ..config import DEFAULT_ALPHA, DEFAULT_COLORMAP, DRIVE_LOOP_HZ
from ..util.console import Progress
from ..errors import InputError
from ..util.fileio import default_file_mode
from ..util.images import read_rgb
from ..keys import (
    CAMERA_KEY, LAG_KEY, MODE_KEY, OVERLAY_KEY, PILOT_ANGLE_KEY, PILOT_KEYS, PILOT_THROTTLE_KEY, USER_ANGLE_KEY, USER_THROTTLE_KEY)
from ..util.opencv import import_cv2
from ..compute.overlay import check_style, overlay, side_by_side, to_rgb
from .pictures import DARK, GREY, PILOT_COLOR, USER_COLOR, check_output, put_text
from ..tubs.read import open_tub, require_field

# Review video containers: .webm (VP8) plays in browsers; .mp4 is MPEG-4 Part 2, since OpenCV's wheels
# carry no H.264 encoder: it plays in VLC and ffplay, not in Chromium or Firefox.
VIDEO_CODECS = {".webm": "VP80", ".mp4": "mp4v"}

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


def render(tub_path, out_path, model_path=None, start=None, end=None, fps=DRIVE_LOOP_HZ, scale=3, backend="auto",
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
    has_pilot = any(key in types for key in PILOT_KEYS)
    predictor = None
    try:
        if model_path and not has_pilot:
            predictor = pilot_values_for(model_path, backend)
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
                pilots = predictor.angle_and_throttle(cameras) if predictor is not None else [None] * len(chunk)
                for entry, camera, picture, pilot in zip(chunk, cameras, overlays, pilots):
                    record = entry.record
                    user = (_number(record, USER_ANGLE_KEY), _number(record, USER_THROTTLE_KEY))
                    if has_pilot:
                        pilot = (_number(record, PILOT_ANGLE_KEY), _number(record, PILOT_THROTTLE_KEY))
                    lag = _number(record, LAG_KEY) if recorded else None
                    frame = compose_frame(camera, picture, entry.index, record.get(MODE_KEY), user, pilot,
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
        for one in (saliency, predictor):
            if one is not None:
                one.close()
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
