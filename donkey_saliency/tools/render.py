"""Looking back at a drive: the review video, the layer grid and the dead-filter report.

- ``render``: a video (.webm plays in browsers, .mp4 in players) of camera | overlay side by side
  with user vs pilot steering and throttle, record index and mode under them. Uses the overlay
  recorded in the tub, or computes it with the pilot when the tub has none.
- ``layer_grid``: every conv layer's feature maps for one image, labelled (layer, output size,
  filter index), with each layer's averaged map and the final mask - what ``donkey
  cnnactivations`` shows, and the VisualBackProp steps on top.
- ``filter_activity``: over a tub, how often each conv filter fires; filters that never (or almost
  never) do are the "dead filters" of a pilot.

Pictures are plain uint8 RGB arrays drawn with OpenCV; files are written to a temp name and renamed.
"""
import collections
import contextlib
import os
import sys
import tempfile

import numpy as np

from ..compute.methods import DEFAULT_METHOD, DEFAULT_OUTPUT, describe
from ..api import Saliency, pilot_values_for
from ..config import DEFAULT_ALPHA, DEFAULT_COLORMAP, DRIVE_LOOP_HZ
from ..util.console import Progress, table_lines
from ..errors import InputError, ModelError
from ..util.fileio import default_file_mode
from ..compute.frames import fit_to_model
from ..util.images import read_rgb, write_png
from ..keys import (CAMERA_KEY, LAG_KEY, MODE_KEY, OVERLAY_KEY, PILOT_ANGLE_KEY, PILOT_KEYS, PILOT_THROTTLE_KEY,
                    USER_ANGLE_KEY, USER_THROTTLE_KEY)
from ..util.opencv import import_cv2
from ..compute.overlay import check_style, colorize, mask_to_uint8, overlay, side_by_side, stretch, to_rgb
from ..tubs.read import open_tub, require_field

FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX
WHITE, GREY, DARK = (255, 255, 255), (150, 150, 150), (30, 30, 30)
USER_COLOR, PILOT_COLOR = (60, 200, 60), (70, 140, 255)  # green / blue, as makemovie draws them
RED, ORANGE, YELLOW = (255, 60, 60), (255, 165, 0), (255, 230, 120)
# Review video containers: .webm (VP8) plays in browsers; .mp4 is MPEG-4 Part 2, since OpenCV's wheels
# carry no H.264 encoder: it plays in VLC and ffplay, not in Chromium or Firefox.
VIDEO_CODECS = {".webm": "VP80", ".mp4": "mp4v"}


def _text(image, text, org, scale=0.45, color=WHITE, thickness=1):
    cv2 = import_cv2()

    cv2.putText(image, text, (int(org[0]), int(org[1])), FONT, scale, color, thickness, cv2.LINE_AA)


def _label(image, text, x, y, scale=0.3, color=WHITE):
    """Small text on a dark box, readable on any tile; (x, y) is the box's top-left corner."""
    cv2 = import_cv2()

    (w, h), base = cv2.getTextSize(text, FONT, scale, 1)
    cv2.rectangle(image, (x, y), (x + w + 3, y + h + base + 2), (0, 0, 0), -1)
    _text(image, text, (x + 1, y + h + 1), scale, color)


def _check_output(path, force, suffixes):
    if not path.lower().endswith(suffixes):
        raise InputError("--out must name a %s file" % " or ".join(suffixes))
    if os.path.lexists(path) and not force:
        raise InputError("output %s already exists (pass --force to replace it)" % path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError("output directory %s does not exist" % parent)


def _open_saliency(model, backend, features=False, **choice):
    """An active Saliency; ``choice``: method, output, level (api.Saliency.open)."""
    return Saliency.open(model, backend=backend, features=features, **choice).activate()


# --------------------------------------------------------------------------------------------
# The review video

PANEL_HEIGHT = 96


def _bar_row(canvas, top, label, user, pilot, width, value_range):
    """One labelled track with the user's value (upper bar) and the pilot's (lower bar)."""
    cv2 = import_cv2()

    left, right = 80, width - 170
    low, high = value_range
    zero = left + (right - left) * (0.0 - low) / (high - low)
    _text(canvas, label, (8, top + 16))
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
        _text(canvas, "%s %s" % (name, shown), (text_x, top + 16), 0.42, color)
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
    _text(frame, "camera", (6, 16), 0.5)
    _text(frame, "saliency" if note is None else note, (top.shape[1] // 2 + 6, 16), 0.5)
    y = top.shape[0] + 6
    user_angle, user_throttle = user if user is not None else (None, None)
    pilot_angle, pilot_throttle = pilot if pilot is not None else (None, None)
    _bar_row(frame, y, "steering", user_angle, pilot_angle, width, (-1.0, 1.0))
    _bar_row(frame, y + 30, "throttle", user_throttle, pilot_throttle, width, (-1.0, 1.0))
    status = "record %d   mode %s" % (index, mode or "?")
    if lag_ms is not None:
        status += "   mask lag %s" % ("none yet" if lag_ms < 0 else "%.0f ms" % lag_ms)
    _text(frame, status, (8, y + 80), 0.45, GREY)
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

    _check_output(out_path, force, tuple(VIDEO_CODECS))
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

    saliency = _open_saliency(model_path, backend, method=method, output=output, level=level) if not recorded else None
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


# --------------------------------------------------------------------------------------------
# The layer grid

GRID_WIDTH = 1280
TILE_TARGET_HEIGHT = 56
GAP = 4


def _normalise(array):
    """min-max to uint8; a constant map gives zeros (and is reported as flat)."""
    stretched, flat = stretch(array)
    return mask_to_uint8(stretched), flat


def _tile_scale(hw):
    return max(1, int(round(TILE_TARGET_HEIGHT / float(hw[0]))))


def _grid_section(title, tiles, width):
    """A titled block: tiles (list of (rgb, label, label color)) wrapped into rows."""
    tile_h = max(t[0].shape[0] for t in tiles)
    tile_w = max(t[0].shape[1] for t in tiles)
    width = max(width, tile_w + 2 * GAP)
    columns = max(1, (width - GAP) // (tile_w + GAP))
    rows = -(-len(tiles) // columns)
    header = 24
    block = np.full((header + rows * (tile_h + GAP) + GAP, width, 3), DARK[0], dtype=np.uint8)
    _text(block, title, (GAP, 17), 0.5)
    for n, (tile, label, color) in enumerate(tiles):
        r, c = divmod(n, columns)
        y, x = header + r * (tile_h + GAP), GAP + c * (tile_w + GAP)
        block[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
        if label:
            _label(block, label, x, y, 0.3, color)
    return block


def _stack(blocks):
    """Blocks one under the other, padded on the right to the widest."""
    width = max(b.shape[1] for b in blocks)
    padded = [np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0)), constant_values=DARK[0]) for b in blocks]
    return np.concatenate(padded, axis=0)


def _scaled(image, factor):
    cv2 = import_cv2()

    return cv2.resize(image, (image.shape[1] * factor, image.shape[0] * factor), interpolation=cv2.INTER_NEAREST)


LayerGrid = collections.namedtuple("LayerGrid", "image layers flat")


def layer_grid(saliency, rgb, colormap=DEFAULT_COLORMAP, width=GRID_WIDTH):
    """The labelled grid (uint8 RGB) for one frame, from a Saliency opened with ``features=True``.
    Returns LayerGrid(image, [(name, (h, w, C))], {name: [indexes of flat maps]})."""
    outputs = saliency.infer([rgb])
    names = saliency.layer_names
    if "features_0" not in outputs:
        raise ModelError("the saliency graph has no feature outputs; export it with --features, or pass the pilot file")
    frame = fit_to_model(rgb, saliency.input_shape)
    mask = saliency.method_masks_of(outputs)[0]
    big = max(1, int(round(2 * TILE_TARGET_HEIGHT * 2 / float(frame.shape[0]))))
    summary = [(_scaled(to_rgb(frame), big), "input %dx%d" % frame.shape[:2], WHITE),
               (_scaled(colorize(mask, colormap), big), "mask", WHITE),
               (_scaled(overlay(frame, mask, DEFAULT_ALPHA, colormap), big), "overlay", WHITE)]
    what = describe(saliency.method, saliency.output)
    blocks = [_grid_section("%s: input, %s mask, overlay" % (os.path.basename(str(saliency.source)), what)
                            if saliency.source else "input, %s mask, overlay" % what, summary, width)]
    layers, flat = [], {}
    for i, name in enumerate(names):
        features = outputs["features_%d" % i][0]  # (C, h, w)
        channels, h, w = features.shape
        layers.append((name, (h, w, channels)))
        factor = _tile_scale((h, w))
        mean_tile, _ = _normalise(outputs["mean_%d" % i][0])
        tiles = [(_scaled(colorize(mean_tile / 255.0, colormap), factor), "mean", WHITE)]
        flat[name] = []
        for c in range(channels):
            tile, is_flat = _normalise(features[c])
            if is_flat:
                flat[name].append(c)
            tiles.append((_scaled(np.repeat(tile[..., None], 3, axis=2), factor), str(c), RED if is_flat else YELLOW))
        title = "%s  output %dx%dx%d  (tile 'mean' = averaged map; red index = flat map)" % (name, h, w, channels)
        blocks.append(_grid_section(title, tiles, width))
    return LayerGrid(_stack(blocks), layers, flat)


def write_layer_grid(model_path, image_path, out_path, backend="auto", colormap=DEFAULT_COLORMAP, force=False):
    _check_output(out_path, force, (".png",))
    check_style(DEFAULT_ALPHA, colormap)
    rgb = read_rgb(image_path)
    saliency = _open_saliency(model_path, backend, features=True)
    try:
        grid = layer_grid(saliency, rgb, colormap)
    finally:
        saliency.close()
    write_png(out_path, grid.image)
    return grid


# --------------------------------------------------------------------------------------------
# Dead filters

FilterLayer = collections.namedtuple("FilterLayer", "name shape rates mean_peaks dead rare")
FilterLayer.__doc__ = """How one conv layer's filters behaved over a tub.

rates       per filter, the share of frames on which its peak activation exceeded the threshold
mean_peaks  per filter, the mean over frames of its peak activation
dead        filter indexes that never fired; rare: fired on fewer than ``rare`` of the frames
"""


def filter_activity(saliency, frames_iter, threshold=0.0, rare=0.01):
    """[FilterLayer] over batches of frames (an iterable of lists/arrays of RGB frames)."""
    names = saliency.layer_names
    fired = None
    peaks_sum = None
    count = 0
    for frames in frames_iter:
        outputs = saliency.infer(frames)
        if "features_0" not in outputs:
            raise ModelError("the saliency graph has no feature outputs; pass the pilot file, or an .onnx "
                             "exported with --features")
        peaks = [outputs["features_%d" % i].max(axis=(2, 3)) for i in range(len(names))]  # (N, C) each
        if fired is None:
            fired = [np.zeros(p.shape[1], dtype=np.int64) for p in peaks]
            peaks_sum = [np.zeros(p.shape[1], dtype=np.float64) for p in peaks]
            shapes = [outputs["features_%d" % i].shape[1:] for i in range(len(names))]
        for i, p in enumerate(peaks):
            fired[i] += (p > threshold).sum(axis=0)
            peaks_sum[i] += p.sum(axis=0)
        count += len(peaks[0])
    if not count:
        raise InputError("no frames to measure")
    layers = []
    for i, name in enumerate(names):
        rates = fired[i] / float(count)
        dead = [int(c) for c in np.flatnonzero(fired[i] == 0)]
        rare_ones = [int(c) for c in np.flatnonzero((fired[i] > 0) & (rates < rare))]
        channels, h, w = shapes[i]
        layers.append(FilterLayer(name, (int(h), int(w), int(channels)), rates, peaks_sum[i] / count, dead, rare_ones))
    return layers, count


def _ranges(indexes):
    """[1, 2, 3, 7] -> '1-3, 7'."""
    if not indexes:
        return "-"
    parts, begin = [], indexes[0]
    for a, b in zip(indexes, indexes[1:] + [None]):
        if b != a + 1:
            parts.append(str(begin) if begin == a else "%d-%d" % (begin, a))
            begin = b
    return ", ".join(parts)


def filter_table(layers, frames, threshold, rare):
    header = ("layer", "output", "filters", "dead", "rare", "dead filters", "rare filters")
    rows = [header]
    for layer in layers:
        rows.append((layer.name, "%dx%dx%d" % layer.shape, str(len(layer.rates)), str(len(layer.dead)),
                     str(len(layer.rare)), _ranges(layer.dead), _ranges(layer.rare)))
    lines = table_lines(rows)
    lines.append("%d frames; a filter fires on a frame when its peak activation is > %g; dead: never fires; "
                 "rare: fires on < %g%% of frames" % (frames, threshold, rare * 100.0))
    return "\n".join(lines)


def filter_chart(layers, frames, threshold, rare, width=GRID_WIDTH):
    """A bar per filter (height = share of frames it fires on): green, orange when rare, red when dead."""
    cv2 = import_cv2()

    blocks = [np.full((30, width, 3), DARK[0], dtype=np.uint8)]
    _text(blocks[0], "filter activity over %d frames (fires: peak > %g; orange: < %g%% of frames; red: never)"
          % (frames, threshold, rare * 100.0), (6, 20), 0.5)
    chart_h = 70
    for layer in layers:
        n = len(layer.rates)
        step = max(3, min(24, (width - 60) // max(n, 1)))
        block = np.full((chart_h + 44, width, 3), DARK[0], dtype=np.uint8)
        _text(block, "%s  %dx%dx%d  %d dead, %d rare" % ((layer.name,) + layer.shape + (len(layer.dead), len(layer.rare))),
              (6, 16), 0.45, RED if layer.dead else WHITE)
        base = 24 + chart_h
        cv2.line(block, (40, base), (40 + n * step, base), GREY, 1)
        cv2.line(block, (40, 24), (40 + n * step, 24), (70, 70, 70), 1)
        _text(block, "1", (26, 30), 0.3, GREY)
        _text(block, "0", (26, base + 3), 0.3, GREY)
        for c, rate in enumerate(layer.rates):
            x = 40 + c * step
            if c in layer.dead:
                cv2.rectangle(block, (x + 1, base - 6), (x + step - 2, base), RED, -1)
            else:
                color = ORANGE if c in layer.rare else USER_COLOR
                cv2.rectangle(block, (x + 1, base - max(1, int(round(rate * chart_h)))), (x + step - 2, base), color, -1)
            if c % 8 == 0:
                _text(block, str(c), (x, base + 14), 0.3, GREY)
        blocks.append(block)
    return np.concatenate(blocks, axis=0)


FilterReport = collections.namedtuple("FilterReport", "layers frames table path")


def filter_report(tub_path, model_path, out_path=None, threshold=0.0, rare=0.01, batch=32, backend="auto",
                  image_key=CAMERA_KEY, force=False, progress=True):
    if out_path:
        _check_output(out_path, force, (".png",))
    if not 0.0 <= rare <= 1.0:
        raise InputError("--rare must be a fraction between 0 and 1")
    source = open_tub(tub_path)
    require_field(source, image_key)
    entries = source.live_entries
    if not entries:
        raise InputError("%s has no live records" % source.path)
    source.check_images([image_key])
    saliency = _open_saliency(model_path, backend, features=True)
    bar = Progress(len(entries), "filters", enabled=bool(progress),
                   stream=progress if hasattr(progress, "write") else None)

    def batches():
        for first in range(0, len(entries), batch):
            chunk = entries[first:first + batch]
            frames = [read_rgb(e.images[image_key]) for e in chunk]
            yield frames if len(set(f.shape for f in frames)) > 1 else np.stack(frames)
            bar.update(len(chunk))

    try:
        layers, frames = filter_activity(saliency, batches(), threshold, rare)
    finally:
        saliency.close()
    bar.close()
    if out_path:
        write_png(out_path, filter_chart(layers, frames, threshold, rare))
    return FilterReport(layers, frames, filter_table(layers, frames, threshold, rare), out_path)
