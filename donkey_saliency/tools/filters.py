"""The dead-filter report (``donkey-saliency filters``): over a tub, how often each conv filter
fires; filters that never (or almost never) do are the "dead filters" of a pilot. A table, and a
chart with a bar per filter."""
import collections

import numpy as np

from ..api import Saliency
from ..util.console import Progress, table_lines
from ..errors import InputError, ModelError
from ..util.images import read_rgb, write_png
from ..keys import CAMERA_KEY
from ..util.opencv import import_cv2
from .pictures import DARK, GREY, ORANGE, RED, SHEET_WIDTH, USER_COLOR, WHITE, check_output, put_text
from ..tubs.read import open_tub, require_field


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


def filter_chart(layers, frames, threshold, rare, width=SHEET_WIDTH):
    """A bar per filter (height = share of frames it fires on): green, orange when rare, red when dead."""
    cv2 = import_cv2()

    blocks = [np.full((30, width, 3), DARK[0], dtype=np.uint8)]
    put_text(blocks[0], "filter activity over %d frames (fires: peak > %g; orange: < %g%% of frames; red: never)"
             % (frames, threshold, rare * 100.0), (6, 20), 0.5)
    chart_h = 70
    for layer in layers:
        n = len(layer.rates)
        step = max(3, min(24, (width - 60) // max(n, 1)))
        block = np.full((chart_h + 44, width, 3), DARK[0], dtype=np.uint8)
        title = "%s  %dx%dx%d  %d dead, %d rare" % ((layer.name,) + layer.shape + (len(layer.dead), len(layer.rare)))
        put_text(block, title, (6, 16), 0.45, RED if layer.dead else WHITE)
        base = 24 + chart_h
        cv2.line(block, (40, base), (40 + n * step, base), GREY, 1)
        cv2.line(block, (40, 24), (40 + n * step, 24), (70, 70, 70), 1)
        put_text(block, "1", (26, 30), 0.3, GREY)
        put_text(block, "0", (26, base + 3), 0.3, GREY)
        for c, rate in enumerate(layer.rates):
            x = 40 + c * step
            if c in layer.dead:
                cv2.rectangle(block, (x + 1, base - 6), (x + step - 2, base), RED, -1)
            else:
                color = ORANGE if c in layer.rare else USER_COLOR
                top = base - max(1, int(round(rate * chart_h)))
                cv2.rectangle(block, (x + 1, top), (x + step - 2, base), color, -1)
            if c % 8 == 0:
                put_text(block, str(c), (x, base + 14), 0.3, GREY)
        blocks.append(block)
    return np.concatenate(blocks, axis=0)


FilterReport = collections.namedtuple("FilterReport", "layers frames table path")


def filter_report(tub_path, model_path, out_path=None, threshold=0.0, rare=0.01, batch=32, backend="auto",
                  image_key=CAMERA_KEY, force=False, progress=True):
    if out_path:
        check_output(out_path, force, (".png",))
    if not 0.0 <= rare <= 1.0:
        raise InputError("--rare must be a fraction between 0 and 1")
    source = open_tub(tub_path)
    require_field(source, image_key)
    entries = source.live_entries
    if not entries:
        raise InputError("%s has no live records" % source.path)
    source.check_images([image_key])
    saliency = Saliency.open(model_path, backend=backend, features=True).activate()
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
