"""What the review page shows of one tub (``review.py`` serves it): the drive's timeline as compact
arrays (``TIMELINE_LAYOUT``, 6 bytes a record), record fields, pictures (recorded, or computed with
the pilot and kept in a bounded LRU), the top disagreements between pilot and user, and the delete
marks. ``Review`` keeps ~40 bytes a record (``tubs.index.TubIndex``); the pilot's values for a tub
that has none are predicted in a background thread (``PilotValues``).

Nothing here runs on the IOLoop: each source (``CarReview`` for the tub the car is writing,
``FixedReview`` for the CLI's) has one thread that every request's work runs on. Nothing from a
request reaches the filesystem: indices are bounds-checked against the index, and file names come
from the tub's own records and must lie inside the tub.
"""
import collections
import logging
import os

import numpy as np

from ..config import DEFAULT_ALPHA, DEFAULT_COLORMAP, DRIVE_LOOP_HZ
from ..errors import InputError
from ..util.images import encode_jpeg, read_rgb
from ..keys import (
    CAMERA_KEY, LAG_KEY, MASK_KEY, MODE_KEY, OVERLAY_KEY, PILOT_ANGLE_KEY, PILOT_KEYS, PILOT_THROTTLE_KEY, TIMELINE_KEYS)
from ..compute.methods import describe
from ..compute.overlay import layer_picture, mask_to_uint8, overlay
from .review_pair import ANGLE_KEYS, RANKED_BY
from .review_pair import VIEWS as PAIR_VIEWS
from ..tubs.read import require_field
from ..tubs.index import MODES, TubIndex, refuse_live_writer, set_deleted

logger = logging.getLogger(__name__)

TIMELINE_LAYOUT = TIMELINE_KEYS + ("mode", "deleted")
QUANT = 127  # values in [-1, 1] travel as round(v * 127); ABSENT where there is none
ABSENT = -128
TOP_DISAGREEMENTS = 20
DISAGREEMENT_SPACING = 10  # records: the top list names separate moments, not neighbours of one
CACHE_PICTURES = 256  # computed JPEGs kept (a few MB)
VIEWS = ("camera", "overlay", "mask")
LIVE_POLL_MS = 5000  # how often the page reads a tub being recorded again


class NotFound(Exception):
    """A request for something that is not there; the message is shown to the user."""


# --------------------------------------------------------------------------------------------
# Pure functions over the index's arrays

def quantise(values):
    """float values in [-1, 1] (NaN: absent) -> int8, ``ABSENT`` where NaN."""
    values = np.asarray(values, dtype=np.float32)
    out = np.round(np.clip(np.nan_to_num(values), -1.0, 1.0) * QUANT).astype(np.int8)
    out[np.isnan(values)] = ABSENT
    return out


def timeline_bytes(index, series=None):
    """The ``TIMELINE_LAYOUT`` arrays, each len(index) bytes, one after another; ``series``: the
    ``TIMELINE_KEYS`` arrays to send (default: the index's own)."""
    series = [index.array(key) for key in TIMELINE_KEYS] if series is None else series
    parts = [quantise(values) for values in series]
    parts.append(np.frombuffer(index.modes, dtype=np.uint8) if len(index) else np.zeros(0, np.uint8))
    parts.append(index.deleted().astype(np.uint8))
    return b"".join(np.ascontiguousarray(p).tobytes() for p in parts)


def recording_rate(timestamps_ms):
    """Records per second from the median gap between timestamps (DRIVE_LOOP_HZ without them)."""
    stamps = np.asarray(timestamps_ms, dtype=np.float64)
    gaps = np.diff(stamps[np.isfinite(stamps)])
    gaps = gaps[gaps > 0]
    if not len(gaps):
        return float(DRIVE_LOOP_HZ)
    return float(min(200.0, max(1.0, 1000.0 / float(np.median(gaps)))))


def top_disagreements(user_angle, user_throttle, pilot_angle, pilot_throttle, deleted, count=TOP_DISAGREEMENTS,
                      spacing=DISAGREEMENT_SPACING):
    """[(index, score)] of the live records where pilot and user differ most (|d angle| + |d throttle|,
    a missing throttle counting 0; above 0.01), largest first, at least ``spacing`` records apart."""
    angle = np.abs(np.asarray(pilot_angle, np.float64) - np.asarray(user_angle, np.float64))
    throttle = np.nan_to_num(np.abs(np.asarray(pilot_throttle, np.float64) - np.asarray(user_throttle, np.float64)))
    score = angle + throttle
    usable = np.isfinite(angle) & ~np.asarray(deleted, bool) & (score > 0.01)  # agreeing records: no moment
    chosen = []
    taken = np.zeros(len(score), dtype=bool)
    for i in np.argsort(-np.where(usable, score, -np.inf), kind="stable"):
        if not usable[i] or len(chosen) >= count:
            break
        if taken[i]:
            continue
        chosen.append((int(i), round(float(score[i]), 4)))
        taken[max(0, i - spacing + 1):i + spacing] = True
    return chosen


# --------------------------------------------------------------------------------------------
# One tub under review

class Review(object):
    """A tub under review: its index, the optional pilot (``saliency``, an open ``api.Saliency``),
    and a bounded LRU of computed pictures. Every method runs on one thread (its source's
    ``executor``), so the IOLoop never waits on a disk or a model and nothing here needs a lock.
    ``writable`` is refused for a tub being recorded (``tubs.index.live_writer``)."""

    def __init__(self, tub_path, saliency=None, writable=False, live=False, alpha=DEFAULT_ALPHA,
                 colormap=DEFAULT_COLORMAP, image_key=CAMERA_KEY):
        from concurrent.futures import ThreadPoolExecutor

        self.index = TubIndex(tub_path)
        if writable and self.index.version != 2:
            raise InputError("%s: --writable needs a v2 tub (donkeycar >= 4 marks deleted records in "
                             "manifest.json); this is a donkeycar 3 tub" % self.index.path)
        if writable:
            refuse_live_writer(self.index.path)
        require_field(self.index, image_key)
        self.saliency = saliency
        self.writable = bool(writable)
        self.live = bool(live)
        self.poll_ms = LIVE_POLL_MS
        self.alpha = alpha
        self.colormap = colormap
        self.image_key = image_key
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.pilot = None  # PilotValues computed with --model when the tub has no pilot keys
        self.pair = None  # review_pair.PilotPair with two --model: both pilots' overlays and steering
        self._pair_top = (None, None)  # (the pair's progress, its top disagreements)
        self._pictures = collections.OrderedDict()  # (index, view) -> JPEG bytes
        self._results = collections.OrderedDict()  # index -> (mask, means), computed
        self._top = None  # top_disagreements, computed when asked for after a change
        self._top_pilot = None  # the computed pilot values' progress it was computed with

    @property
    def recorded_saliency(self):
        return OVERLAY_KEY in self.index.inputs

    @property
    def layer_names(self):
        return list(self.saliency.layer_names) if self.saliency is not None else []

    @property
    def has_pilot_keys(self):
        return any(key in self.index.inputs for key in PILOT_KEYS)

    def compute_pilot(self, predictor):
        """Start predicting the pilot's steering and throttle for every record (a background thread)
        with ``predictor`` (``api.PilotPass``, closed with the review); the timeline shows them as they arrive."""
        self.pilot = PilotValues(self, predictor)
        self.pilot.start()

    def compare(self, pair):
        """Show two pilots (``review_pair.PilotPair``): their steering is computed in the background."""
        self.pair = pair.start()

    def layout(self):
        return list(TIMELINE_LAYOUT) + (list(ANGLE_KEYS) if self.pair is not None else [])

    def pair_meta(self):
        if self.pair is None:
            return None
        count = len(self.index)
        progress = (self.pair.done, self.pair.finished)
        if self._pair_top[0] != progress:
            angles = self.pair.angles[:, :count]
            none = np.full(count, np.nan)
            self._pair_top = (progress, top_disagreements(angles[0], none, angles[1], none, self.index.deleted()))
        return dict(names=self.pair.names, state=self.pair.state(count), ranked_by=RANKED_BY,
                    disagreements=[dict(index=i, score=s) for i, s in self._pair_top[1]])

    def series(self):
        """The ``TIMELINE_KEYS`` arrays, pilot values computed where the tub has none."""
        arrays = [self.index.array(key) for key in TIMELINE_KEYS]
        if self.pilot is not None:
            arrays[2:4] = self.pilot.angle[:len(self.index)], self.pilot.throttle[:len(self.index)]
        return arrays

    def meta(self):
        if self.live:
            self.refresh()
        index = self.index
        computing = self.pilot is not None and not self.pilot.finished
        pilot_state = (self.pilot.done, self.pilot.finished) if self.pilot is not None else None
        if self._top is None or self._top_pilot != pilot_state:
            self._top = top_disagreements(*self.series(), deleted=index.deleted())
            self._top_pilot = pilot_state
        return dict(
            tub=os.path.basename(index.path), version=index.version, count=len(index),
            rate_hz=round(recording_rate(np.frombuffer(index.timestamps, np.float64) if len(index) else []), 3),
            layout=self.layout(), quant=QUANT, absent=ABSENT, modes=list(MODES),
            has=dict((key, bool(np.isfinite(values).any())) for key, values in zip(TIMELINE_KEYS, self.series())),
            pilot=("recorded" if self.has_pilot_keys else "none" if self.pilot is None else
                   "computed" if not computing else "computing %d/%d" % (self.pilot.done, len(index))),
            overlay=("recorded" if self.recorded_saliency else "computed" if self.saliency is not None else None),
            explains=(describe(self.saliency.method, self.saliency.output) if self.saliency is not None
                      and not self.recorded_saliency else None),
            mask=(MASK_KEY in index.inputs) or self.saliency is not None,
            layers=self.layer_names, writable=self.writable, live=self.live, poll_ms=self.poll_ms,
            disagreements=[dict(index=i, score=s) for i, s in self._top], pair=self.pair_meta())

    def refresh(self):
        if self.index.refresh():
            self._top = None
        return len(self.index)

    def timeline(self):
        if self.live:
            self.refresh()
        data = timeline_bytes(self.index, self.series())
        if self.pair is not None:
            data += b"".join(quantise(a[:len(self.index)]).tobytes() for a in self.pair.angles)
        return data

    def _check(self, index):
        if not 0 <= index < len(self.index):
            raise NotFound("no record %d (the tub has %d)" % (index, len(self.index)))

    def record(self, index):
        self._check(index)
        record = self.index.record(index)
        fields = dict((key, _json_number(record.get(key))) for key in TIMELINE_KEYS)
        if self.pilot is not None:
            fields.update((key, _json_number(values[index])) for key, values in
                          ((PILOT_ANGLE_KEY, self.pilot.angle), (PILOT_THROTTLE_KEY, self.pilot.throttle)))
        if self.pair is not None:
            fields.update((key, _json_number(self.pair.angles[k, index])) for k, key in enumerate(ANGLE_KEYS))
        fields.update(index=index, timestamp_ms=_json_number(record.get("_timestamp_ms")),
                      mode=record.get(MODE_KEY) if isinstance(record.get(MODE_KEY), str) else None,
                      lag_ms=_json_number(record.get(LAG_KEY)), deleted=self.index.is_deleted(index),
                      session=record.get("_session_id") if isinstance(record.get("_session_id"), str) else None)
        return fields

    def picture(self, index, view):
        """JPEG bytes of one view of record ``index``; NotFound saying why there is none."""
        self._check(index)
        if view not in VIEWS + PAIR_VIEWS and not view.startswith("layer"):
            raise NotFound("no view %r" % view)
        record = self.index.record(index)
        images = self.index.images(index, record)
        recorded_key = dict(camera=self.image_key, overlay=OVERLAY_KEY, mask=MASK_KEY).get(view)
        if recorded_key in images:
            return _jpeg_file(images[recorded_key])
        if view == "camera":
            raise NotFound("record %d has no %s image" % (index, self.image_key))
        if view in PAIR_VIEWS and self.pair is None:
            raise NotFound("one pilot: start 'donkey-saliency review' with two --model to compare two")
        if view not in PAIR_VIEWS and self.saliency is None:
            raise NotFound("no saliency recorded for record %d; start 'donkey-saliency review' with --model "
                           "to compute it" % index)
        if self.image_key not in images:
            raise NotFound("record %d has no %s image to compute saliency from" % (index, self.image_key))
        draw = self._draw_pilot if view in PAIR_VIEWS else self._draw
        return self._cached((index, view), lambda: draw(index, view, images[self.image_key]))

    def _draw_pilot(self, index, view, camera_path):
        """One of the two pilots' overlays (``pilotA``/``pilotB``)."""
        frame = read_rgb(camera_path)
        return encode_jpeg(overlay(frame, self.pair.mask(PAIR_VIEWS.index(view), frame), self.alpha, self.colormap))

    def _cached(self, key, draw):
        """The JPEG of ``key`` from the LRU, ``draw()`` into it when absent."""
        if key not in self._pictures:
            self._pictures[key] = draw()
            while len(self._pictures) > CACHE_PICTURES:
                self._pictures.popitem(last=False)
        self._pictures.move_to_end(key)
        return self._pictures[key]

    def _draw(self, index, view, camera_path):
        frame = read_rgb(camera_path)
        mask, means = self._result(index, frame)
        if view == "overlay":
            return encode_jpeg(overlay(frame, mask, self.alpha, self.colormap))
        if view == "mask":
            return encode_jpeg(mask_to_uint8(mask))
        try:
            layer = int(view[len("layer"):])
        except ValueError:
            layer = -1
        if not 0 <= layer < len(means):
            raise NotFound("no layer %r (the pilot has %d conv layers)" % (view[len("layer"):], len(means)))
        return encode_jpeg(layer_picture(means[layer]))

    def _result(self, index, frame):
        if index not in self._results:
            outputs = self.saliency.infer([frame])
            self._results[index] = (self.saliency.method_masks_of(outputs)[0],
                                    [m[0] for m in self.saliency.means_of(outputs)])
            while len(self._results) > CACHE_PICTURES // 4:
                self._results.popitem(last=False)
        return self._results[index]

    def set_deleted(self, index, deleted):
        if not self.writable:
            raise PermissionError("read-only: start 'donkey-saliency review' with --writable to mark records deleted")
        self._check(index)
        set_deleted(self.index.path, [index], deleted)
        self.index.refresh()
        self._top = None
        self._pair_top = (None, None)
        return self.index.is_deleted(index)

    def close(self):
        if self.pilot is not None:
            self.pilot.stop()
        if self.pair is not None:
            self.pair.close()
        self.executor.shutdown(wait=True)
        if self.saliency is not None:
            self.saliency.close()


class PilotValues(object):
    """The pilot's steering and throttle for every record of a tub that has none recorded, predicted
    in a background thread in record order (batches of ``batch``); NaN until computed."""

    def __init__(self, review, predictor, batch=64):
        import threading

        count = len(review.index)
        self.review = review
        self.predictor = predictor
        self.batch = batch
        self.angle = np.full(count, np.nan, np.float32)
        self.throttle = np.full(count, np.nan, np.float32)
        self.done = 0
        self.finished = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="review-pilot", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(30)
        self.predictor.close()

    def _run(self):
        index, key = self.review.index, self.review.image_key
        try:
            for first in range(0, len(self.angle), self.batch):
                if self._stop.is_set():
                    return
                wanted, frames = [], []
                for i in range(first, min(first + self.batch, len(self.angle))):
                    path = index.images(i).get(key)
                    try:
                        frames.append(read_rgb(path))
                        wanted.append(i)
                    except (InputError, TypeError):
                        continue  # no camera image: no pilot value
                for i, values in zip(wanted, self.predictor.angle_and_throttle(frames) if frames else []):
                    if values is not None:
                        self.angle[i], self.throttle[i] = values
                self.done = min(first + self.batch, len(self.angle))
        except Exception as error:  # a tool, not the car: say so once and show what there is
            logger.warning("review: predicting the pilot's values stopped: %s", error)
        finally:
            self.finished = True


def _json_number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and not isinstance(value, bool) else None


def _jpeg_file(path):
    """A recorded image as JPEG bytes: the file itself when it is one, else re-encoded."""

    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (IOError, OSError):
        raise NotFound("image missing: %s" % os.path.basename(path))
    if data[:3] == b"\xff\xd8\xff":
        return data
    try:
        return encode_jpeg(read_rgb(path))
    except InputError as error:
        raise NotFound(str(error))


class CarReview(object):
    """The car's read-only review of the tub being written: ``tub`` is a path or a callable giving
    one (None until the TubWriter exists); a new tub path opens a new Review. Everything, opening
    (the whole index of a long drive: seconds) included, runs on ``executor``, never on the car's
    IOLoop; later requests read only what the writer added since."""

    def __init__(self, tub):
        from concurrent.futures import ThreadPoolExecutor

        self.tub = tub
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="saliency-review")
        self._review = None

    def get(self):
        path = self.tub() if callable(self.tub) else self.tub
        if path is None:
            raise NotFound("no tub is being recorded")
        path = os.path.abspath(os.fspath(path))
        if self._review is None or self._review.index.path != path.rstrip(os.sep):
            try:
                review = Review(path, live=True)
            except InputError as error:
                raise NotFound(str(error))
            self._review = review
        return self._review


class FixedReview(object):
    """The CLI's one Review."""

    def __init__(self, review):
        self.review = review
        self.executor = review.executor

    def get(self):
        return self.review
