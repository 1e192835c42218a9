"""``SaliencyPart``: a threaded Donkey vehicle part.

The drive loop calls ``run_threaded(image)`` at 20 Hz: it hands the frame to the worker and
returns the newest finished result at once - it never waits and never raises (an exception there
stops the car). The worker (``update``) always takes the newest frame, so stale frames are dropped
(and counted), never queued. Listeners (the web stream) are called from the worker the moment an
overlay is ready, not one loop later.
"""
import collections
import logging
import os
import threading
import time

import numpy as np

from ..api import Saliency
from ..config import DEFAULT_ALPHA, DEFAULT_COLORMAP
from ..errors import InputError, SaliencyError
from ..compute.frames import as_uint8_image, fit_to_model
from ..keys import NO_MASK_LAG_MS
from ..compute.methods import DEFAULT_METHOD, DEFAULT_OUTPUT, VBP, MethodMasks, degrid, describe
from ..compute.overlay import check_style, mask_to_uint8, overlay, to_rgb
from ..util.stats import median
from .watch import AttentionWatch

logger = logging.getLogger(__name__)


SaliencyResult = collections.namedtuple(
    "SaliencyResult", "seq frame overlay mask means frame_time done_time latency_ms infer_ms")
SaliencyResult.__doc__ = """One processed frame, as listeners receive it.

frame     uint8 RGB the overlay is drawn on (as it came from the car)
overlay   uint8 RGB, the frame's size
mask      float32 (H, W) in [0, 1], the model's input size
means     per conv layer, float32 (h, w) channel-averaged map (shallow to deep)
frame_time, done_time  time.monotonic() when the frame arrived / the overlay was ready
"""


class _Faults(object):
    """Fault counting and logging that cannot flood the log, whatever the pattern of faults.

    Each cause is logged at most once per ``repeat_s`` seconds (the line after a quiet spell says how
    many more happened meanwhile); the rest are only counted. A logged fault is declared over - one
    INFO line - after ``recover_after`` consecutive good frames, so faults on every frame, or on every
    third, give one WARNING, not one per frame."""

    recover_after = 20
    repeat_s = 60.0

    def __init__(self):
        self.total = 0
        self._lock = threading.Lock()  # the loop thread and the worker both report
        self._logged_at = {}  # cause -> when its last WARNING was written
        self._unlogged = collections.Counter()  # cause -> faults counted since that WARNING
        self._active = set()  # causes WARNed about and not yet declared over
        self._good = 0  # consecutive good frames

    def report(self, cause, message, *args):
        now = time.monotonic()
        with self._lock:
            self.total += 1
            self._good = 0
            last = self._logged_at.get(cause)
            if last is not None and now - last < self.repeat_s:
                self._unlogged[cause] += 1
                return
            more = self._unlogged.pop(cause, 0)
            self._logged_at[cause] = now
            self._active.add(cause)
        suffix = " (%d more since the last report)" % more if more else ""
        logger.warning("saliency: " + message + " (counted in /saliency/stats; repeats logged at most once a "
                       "minute)" + suffix, *args)

    def good_frame(self):
        with self._lock:
            if not self._active:
                return
            self._good += 1
            if self._good < self.recover_after:
                return
            causes = sorted(self._active)
            self._active.clear()
        logger.info("saliency: recovered (%s)", ", ".join(causes))


class SaliencyPart(object):
    """Threaded part. Inputs: the pilot's image (and optionally a fallback image key).
    Outputs: see ``keys.OUTPUTS``. Options: alpha, colormap, max_fps, cache_dir, backend_options, method
    (``methods.METHODS``), output (steering | throttle: what a gradient method explains), level (Grad-CAM's)."""

    shutdown_join_s = 5.0  # how long shutdown() waits for the worker to finish its frame and close the backend

    def __init__(self, model_path, backend="auto", alpha=DEFAULT_ALPHA, colormap=DEFAULT_COLORMAP, max_fps=0,
                 cache_dir=None, backend_options=None, method=DEFAULT_METHOD, sync_ms=0, output=DEFAULT_OUTPUT,
                 level=None, watch_line=0):
        self.model_path = model_path
        self.backend_name = backend
        self.backend_options = dict(backend_options or {})
        self.alpha, self.colormap = _style_or_default(alpha, colormap)
        self.min_period = 1.0 / max_fps if max_fps else 0.0
        # How long run_threaded may wait for the current frame's mask (then recorded with lag 0); 0: never.
        self.sync_s = max(float(sync_ms or 0), 0.0) / 1000.0
        self.saliency = None  # the graph on its backend (api.Saliency), activated in the worker
        self.error = None  # why the part is inert, if it is
        self._listeners = []
        self._faults = _Faults()
        self._wake = threading.Condition()
        self._pending = None  # (frame, arrival time) not yet taken by the worker
        self._shared = None  # a mask from outside (accept_mask) not yet taken by the worker
        self._shared_this_loop = None  # the one accepted since the last run_threaded
        self._in_flight = False  # the worker is processing a frame it took
        # (SaliencyResult, outputs): one tuple, replaced whole by the worker, so a reader never pairs a
        # new result with an old overlay.
        self._state = (None, (None, None, 0.0, NO_MASK_LAG_MS))
        self._running = True
        self._worker = None  # the thread running update(), once it runs
        self._dropped = 0
        self._processed = 0
        self._received = 0
        self._timings = collections.deque(maxlen=100)  # (done_time, latency_ms, infer_ms)
        self.watch = AttentionWatch(watch_line)  # the live page's share of attention above the line
        self.method_masks = None
        try:
            self.saliency = Saliency.open(model_path, backend, cache_dir=cache_dir, method=method, output=output,
                                          level=level, strict=False, backend_options=self.backend_options)
            self.method_masks = self.saliency.method_masks
        except (SaliencyError, OSError) as error:
            # Fail loudly in tools, never in the car: log, stay inert, keep driving.
            self.error = str(error)
            logger.error("saliency disabled: %s", error)

    @property
    def graph(self):
        return self.saliency.graph if self.saliency is not None else None

    @property
    def backend(self):
        """The running backend (None until the worker activates it, and after shutdown)."""
        return self.saliency.backend if self.saliency is not None else None

    @backend.setter
    def backend(self, backend):
        self.saliency.backend = backend

    @property
    def backend_description(self):
        """What stats() shows: the running backend once active (after a fallback: ONNX Runtime)."""
        return self.saliency.describe() if self.saliency is not None else self.backend_name

    # --- listeners and figures ----------------------------------------------------------------
    def add_listener(self, callback):
        """``callback(result)`` runs in the worker thread after each frame; exceptions are logged."""
        self._listeners.append(callback)

    @property
    def busy(self):
        """Whether a frame is waiting for the worker or being processed by it."""
        with self._wake:
            return self._pending is not None or self._shared is not None or self._in_flight

    @property
    def latest(self):
        return self._state[0]

    @property
    def layer_names(self):
        return self.graph.layer_names if self.graph else []

    def stats(self):
        timings = list(self._timings)
        fps = 0.0
        if len(timings) >= 2 and timings[-1][0] > timings[0][0]:
            fps = (len(timings) - 1) / (timings[-1][0] - timings[0][0])
        figures = dict(
            fps=round(fps, 2),
            latency_ms=_rounded(median(t[1] for t in timings)),
            infer_ms=_rounded(median(t[2] for t in timings)),
            received=self._received, processed=self._processed, dropped=self._dropped,
            errors=self._faults.total,
            backend=self.backend_description,
            model=os.path.basename(str(self.model_path).rstrip("/")),
            layers=self.layer_names,
            method=self.method_masks.method if self.method_masks else None,
            output=self.graph.output if self.graph else None,
            explains=describe(self.method_masks.method, self.graph.output) if self.method_masks and self.graph
            else None,
            status="disabled: " + self.error if self.error else ("running" if self.latest else "starting"),
        )
        figures.update(self.watch.figures())
        return figures

    # --- the drive loop's side ----------------------------------------------------------------
    def accept_mask(self, frame, mask, means=(), infer_ms=0.0):
        """A mask computed outside the part for ``frame`` (the pilot's own forward pass, see
        interpreter.py; ``frame`` uint8, or the pilot's float image in [0, 1]). The worker draws, streams
        and records it like its own, and the next ``run_threaded`` takes it for its frame (lag 0)
        instead of queueing a pass of its own. Called in the drive loop: never blocks, never raises."""
        try:
            item = (frame, np.asarray(mask, dtype=np.float32), list(means), float(infer_ms), time.monotonic())
            with self._wake:
                if self._shared is not None:
                    self._dropped += 1
                self._shared = self._shared_this_loop = item
                self._received += 1
                self._wake.notify()
        except Exception as error:  # pragma: no cover - the car must keep going whatever happens
            self._faults.report("accept_mask", "accept_mask failed: %s", error)

    def run_threaded(self, image=None, fallback=None):
        """Never raises, does O(1) work whatever the frame's size (it hands the frame's reference to
        the worker, which copies and resizes it) and waits at most ``sync_ms`` (never, by default) for
        the frame's own mask. ``fallback`` is used when ``image`` is None (e.g. the transformed image
        does not exist in user mode)."""
        try:
            frame = image if image is not None else fallback
            now = time.monotonic()
            with self._wake:
                shared, self._shared_this_loop = self._shared_this_loop, None
            if shared is not None:
                return self._shared_outputs(shared)
            if frame is not None and self.graph is not None:
                with self._wake:
                    if self._pending is not None:
                        self._dropped += 1
                    self._pending = (frame, now)
                    self._received += 1
                    self._wake.notify()
                if self.sync_s:
                    self._wait_for_result(now, self.sync_s)
            elif frame is None:
                self._faults.report("none", "no image from the camera (None)")
            return self._outputs_for(frame, now)
        except Exception as error:  # pragma: no cover - the car must keep going whatever happens
            self._faults.report("run_threaded", "run_threaded failed: %s", error)
            return self._state[1]

    def _outputs_for(self, frame, now):
        latest, outputs = self._state
        if latest is None:
            return self._placeholder(frame)
        overlay_image, mask_u8, latency_ms, _ = outputs
        lag_ms = round((now - latest.frame_time) * 1000.0, 2)
        return overlay_image, mask_u8, latency_ms, lag_ms

    def _wait_for_result(self, frame_time, timeout):
        """Wait (bounded) until the worker's newest result is the one for the frame of ``frame_time``."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._state[0] is None or self._state[0].frame_time < frame_time:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(left)
        return True

    def _shared_outputs(self, shared):
        """Outputs for this loop's frame from an accepted mask: the worker's, when it has drawn it within
        ``sync_ms``; else drawn here, so the record always holds the mask of its own frame (lag 0). A mask
        with NaN or infinite values gives the no-mask outputs (the frame, a zero mask, lag NO_MASK_LAG_MS)."""
        frame, mask, _, _, arrived = shared
        if not np.all(np.isfinite(mask)):  # counted by the worker; recorded as no mask, never as a blank one
            return self._placeholder(_frame_uint8(frame))
        if self._wait_for_result(arrived, self.sync_s):
            overlay_image, mask_u8, latency_ms, _ = self._state[1]
            return overlay_image, mask_u8, latency_ms, 0.0
        mask = degrid(mask[None])[0]
        picture = overlay(_frame_uint8(frame), mask, self.alpha, self.colormap)
        return picture, mask_to_uint8(mask), round((time.monotonic() - arrived) * 1000.0, 2), 0.0

    def _placeholder(self, frame):
        """Before the first mask (or with no model): the picture itself and an empty mask, so every
        tub record has a value for every key (donkey's tools drop records with missing ones)."""
        try:
            picture = to_rgb(as_uint8_image(frame))
        except Exception:  # a bad frame: the worker counts and logs it once, not the loop thread too
            return self._state[1]
        mask_hw = self.graph.input_hw if self.graph is not None else picture.shape[:2]
        return picture, np.zeros(mask_hw, dtype=np.uint8), 0.0, NO_MASK_LAG_MS

    def run(self, image=None, fallback=None):
        """Unthreaded use (``V.add(part, threaded=False)``): process this frame now."""
        frame = image if image is not None else fallback
        if frame is not None and self.graph is not None:
            self._received += 1
            self._guarded(self._process, frame, time.monotonic())
        return self._outputs_for(frame, time.monotonic())

    # --- the worker's side --------------------------------------------------------------------
    def update(self):
        """Worker thread body. Nothing may end it but shutdown(): each frame is processed under a
        catch-all, and should the loop itself fail, stats() says the part is disabled and why."""
        self._worker = threading.current_thread()
        try:
            while self._running:
                with self._wake:
                    self._in_flight = False
                    while self._running and self._pending is None and self._shared is None:
                        self._wake.wait(0.5)
                    if not self._running:
                        break
                    shared, self._shared = self._shared, None
                    if shared is None:
                        frame, arrived = self._pending
                        self._pending = None
                    self._in_flight = True
                started = time.monotonic()
                if shared is not None:
                    self._guarded(self._publish_shared, shared)
                else:
                    self._guarded(self._process, frame, arrived)
                if self.min_period:
                    time.sleep(max(0.0, self.min_period - (time.monotonic() - started)))
        except BaseException as error:  # pragma: no cover - only a bug here; say so instead of "running"
            self.error = "the saliency worker stopped: %s" % (error,)
            logger.error("saliency: %s", self.error)
            raise
        finally:
            with self._wake:
                self._in_flight = False
            self._close_backend()

    def _guarded(self, work, *args):
        """One frame's work under a catch-all: nothing a frame does may end the worker."""
        try:
            work(*args)
        except Exception as error:
            self._faults.report("worker:%s" % type(error).__name__, "processing a frame failed: %s", error)

    def _ensure_backend(self):
        if self.saliency.backend is not None:
            return True
        try:
            self.saliency.activate(fallback=True)
            return True
        except Exception as error:
            self._faults.report("backend", "no backend could start: %s", error)
            time.sleep(0.5)  # do not spin on a backend that cannot start
            return False

    def _mask(self, model_frame, outputs):
        """The configured method's mask; on a method that cannot run here, VisualBackProp, logged once."""
        try:
            return self.saliency.method_masks_of(outputs, self.method_masks)[0]
        except Exception as error:
            logger.error("saliency method %s failed (%s); using vbp", self.method_masks.method, error)
            self.method_masks = MethodMasks(VBP)
            return self.saliency.method_masks_of(outputs, self.method_masks)[0]

    def _process(self, frame, arrived):
        if not self._ensure_backend():
            return
        try:
            # Our own copy: the car's frame is only borrowed (run_threaded passed its reference).
            picture_base = np.array(as_uint8_image(frame), copy=True)
            model_frame = fit_to_model(picture_base, self.graph.input_shape)
        except InputError as error:
            self._faults.report("input", "bad frame: %s", error)
            return
        try:
            started = time.monotonic()
            outputs = self.saliency.infer(model_frame[None])
            infer_ms = (time.monotonic() - started) * 1000.0
            mask = self._mask(model_frame, outputs)
            means = [level_map[0] for level_map in self.saliency.means_of(outputs)]
        except Exception as error:
            self._faults.report("infer:%s" % type(error).__name__, "inference failed: %s", error)
            return
        self._publish(picture_base, mask, means, arrived, infer_ms)

    def _publish_shared(self, shared):
        frame, mask, means, infer_ms, arrived = shared
        try:
            picture_base = _frame_uint8(frame)
        except InputError as error:
            self._faults.report("input", "bad frame: %s", error)
            return
        self._publish(picture_base, degrid(mask[None])[0], means, arrived, infer_ms)

    def _publish(self, picture_base, mask, means, arrived, infer_ms):
        """Overlay, newest result and outputs, then the listeners (the stream)."""
        if not np.all(np.isfinite(mask)):
            self._faults.report("nan", "the mask holds NaN or infinite values; frame skipped")
            return
        means = self._checked_means(means)
        try:
            picture = overlay(picture_base, mask, self.alpha, self.colormap)
        except Exception as error:
            self._faults.report("overlay:%s" % type(error).__name__, "drawing the overlay failed: %s", error)
            return
        done = time.monotonic()
        self._processed += 1
        result = SaliencyResult(self._processed, to_rgb(picture_base), picture, mask, means, arrived, done,
                                (done - arrived) * 1000.0, infer_ms)
        self._timings.append((done, result.latency_ms, infer_ms))
        self.watch.add(mask)
        with self._wake:
            self._state = (result, (picture, mask_to_uint8(mask), round(result.latency_ms, 2), 0.0))
            self._wake.notify_all()  # a run_threaded waiting for this frame (sync_ms)
        good = True
        for callback in list(self._listeners):
            try:
                callback(result)
            except Exception as error:
                good = False
                self._faults.report("listener:%s" % getattr(callback, "__name__", callback),
                                    "a saliency listener failed: %s", error)
        if good:
            self._faults.good_frame()

    def _checked_means(self, means):
        """Each layer's averaged map, or None (counted as a fault) where it is not a non-empty 2-D map."""
        checked = []
        for index, level_map in enumerate(means):
            level_map = np.asarray(level_map)
            if level_map.ndim != 2 or level_map.size == 0:
                self._faults.report("layer:%d" % index, "layer %d's averaged map has shape %s, not (h, w)",
                                    index, level_map.shape)
                level_map = None
            checked.append(level_map)
        return checked

    def _close_backend(self):
        if self.saliency is not None:
            try:
                self.saliency.close()
            except Exception as error:
                logger.warning("saliency: closing the backend failed: %s", error)

    def shutdown(self):
        """Ends the worker and waits (bounded) for it: the worker closes the backend in its own thread
        (CUDA contexts are per thread). Without a worker (unthreaded use) the backend is closed here."""
        self._running = False
        with self._wake:
            self._wake.notify_all()
        worker = self._worker
        if worker is None:
            self._close_backend()
        elif worker is not threading.current_thread():
            worker.join(self.shutdown_join_s)
            if worker.is_alive():
                logger.warning("saliency: the worker did not stop within %.0f s; leaving it (a daemon thread)",
                               self.shutdown_join_s)


def _rounded(ms):
    return None if ms is None else round(ms, 2)


def _style_or_default(alpha, colormap):
    """A bad SALIENCY_ALPHA / SALIENCY_COLORMAP is logged and replaced by the default: never a stopped car."""
    try:
        return check_style(alpha, colormap)
    except InputError as error:
        logger.error("saliency: %s; using alpha %s and colormap %s", error, DEFAULT_ALPHA, DEFAULT_COLORMAP)
        return check_style(DEFAULT_ALPHA, DEFAULT_COLORMAP)


def _frame_uint8(frame):
    """uint8 picture of a frame that is uint8 already or the pilot's normalized float image (x / 255)."""
    array = np.asarray(frame)
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    return as_uint8_image(array)
