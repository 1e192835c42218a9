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

from .errors import InputError, SaliencyError
from .overlay import mask_to_uint8, overlay, to_rgb

logger = logging.getLogger(__name__)

OUTPUTS = ["saliency/image_array", "saliency/mask", "saliency/latency_ms", "saliency/lag_ms"]
NO_MASK_LAG_MS = -1.0  # lag reported until the first mask exists: a value, so no record lacks one

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
    """Logs each distinct fault once, and once more when good frames return."""

    def __init__(self):
        self.active = set()
        self.total = 0

    def report(self, cause, message, *args):
        self.total += 1
        if cause not in self.active:
            self.active.add(cause)
            logger.warning("saliency: " + message + " (logged once until it recovers)", *args)

    def recovered(self):
        if self.active:
            logger.info("saliency: recovered (%s)", ", ".join(sorted(self.active)))
            self.active.clear()


class SaliencyPart(object):
    """Threaded part. Inputs: the pilot's image (and optionally a fallback image key).
    Outputs: see ``OUTPUTS``. Options: alpha, colormap, max_fps, cache_dir, backend_options."""

    def __init__(self, model_path, backend="auto", alpha=0.5, colormap="jet", max_fps=0, cache_dir=None,
                 backend_options=None, sync_ms=0):
        self.model_path = model_path
        self.backend_name = backend
        self.backend_options = dict(backend_options or {})
        self.alpha = float(alpha)
        self.colormap = colormap
        self.min_period = 1.0 / max_fps if max_fps else 0.0
        # How long run_threaded may wait for the current frame's mask (then recorded with lag 0); 0: never.
        self.sync_s = max(float(sync_ms or 0), 0.0) / 1000.0
        self.graph = None
        self.backend = None
        self.backend_description = backend  # what stats() shows; the running backend once active
        self.error = None  # why the part is inert, if it is
        self._listeners = []
        self._faults = _Faults()
        self._wake = threading.Condition()
        self._pending = None  # (frame, arrival time) not yet taken by the worker
        self._shared = None  # a mask from outside (accept_mask) not yet taken by the worker
        self._shared_this_loop = None  # the one accepted since the last run_threaded
        self._in_flight = False  # the worker is processing a frame it took
        self._latest = None  # SaliencyResult
        self._outputs = (None, None, 0.0, NO_MASK_LAG_MS)
        self._running = True
        self._dropped = 0
        self._processed = 0
        self._received = 0
        self._timings = collections.deque(maxlen=100)  # (done_time, latency_ms, infer_ms)
        try:
            from .graph import graph_for

            self.graph = graph_for(model_path, cache_dir=cache_dir)
        except (SaliencyError, OSError) as error:
            # Fail loudly in tools, never in the car: log, stay inert, keep driving.
            self.error = str(error)
            logger.error("saliency disabled: %s", error)

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
        return self._latest

    @property
    def layer_names(self):
        return self.graph.layer_names if self.graph else []

    def stats(self):
        timings = list(self._timings)
        fps = 0.0
        if len(timings) >= 2 and timings[-1][0] > timings[0][0]:
            fps = (len(timings) - 1) / (timings[-1][0] - timings[0][0])
        return dict(
            fps=round(fps, 2),
            latency_ms=round(float(np.median([t[1] for t in timings])), 2) if timings else None,
            infer_ms=round(float(np.median([t[2] for t in timings])), 2) if timings else None,
            received=self._received, processed=self._processed, dropped=self._dropped,
            errors=self._faults.total,
            backend=self.backend_description,
            model=os.path.basename(str(self.model_path).rstrip("/")),
            layers=self.layer_names,
            status="disabled: " + self.error if self.error else ("running" if self._latest else "starting"),
        )

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
        """Never raises, and waits at most ``sync_ms`` (never, by default). ``fallback`` is used when
        ``image`` is None (e.g. the transformed image does not exist in user mode)."""
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
                    self._pending = (np.array(frame, copy=True), now)
                    self._received += 1
                    self._wake.notify()
                if self.sync_s:
                    self._wait_for_result(now, self.sync_s)
            elif frame is None:
                self._faults.report("none", "no image from the camera (None)")
            return self._outputs_for(frame, now)
        except Exception as error:  # pragma: no cover - the car must keep going whatever happens
            self._faults.report("run_threaded", "run_threaded failed: %s", error)
            return self._outputs

    def _outputs_for(self, frame, now):
        latest = self._latest
        if latest is None:
            return self._placeholder(frame)
        overlay_image, mask_u8, latency_ms, _ = self._outputs
        lag_ms = round((now - latest.frame_time) * 1000.0, 2)
        return overlay_image, mask_u8, latency_ms, lag_ms

    def _wait_for_result(self, frame_time, timeout):
        """Wait (bounded) until the worker's newest result is the one for the frame of ``frame_time``."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._latest is None or self._latest.frame_time < frame_time:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(left)
        return True

    def _shared_outputs(self, shared):
        """Outputs for this loop's frame from an accepted mask: the worker's, when it has drawn it within
        ``sync_ms``; else drawn here, so the record always holds the mask of its own frame (lag 0)."""
        frame, mask, _, _, arrived = shared
        if self._wait_for_result(arrived, self.sync_s):
            overlay_image, mask_u8, latency_ms, _ = self._outputs
            return overlay_image, mask_u8, latency_ms, 0.0
        picture = overlay(_frame_uint8(frame), mask, self.alpha, self.colormap)
        return picture, mask_to_uint8(mask), round((time.monotonic() - arrived) * 1000.0, 2), 0.0

    def _placeholder(self, frame):
        """Before the first mask (or with no model): the picture itself and an empty mask, so every
        tub record has a value for every key (donkey's tools drop records with missing ones)."""
        from .api import as_uint8_image

        try:
            picture = to_rgb(as_uint8_image(frame))
        except InputError:
            return self._outputs
        mask_hw = self.graph.input_hw if self.graph is not None else picture.shape[:2]
        return picture, np.zeros(mask_hw, dtype=np.uint8), 0.0, NO_MASK_LAG_MS

    def run(self, image=None, fallback=None):
        """Unthreaded use (``V.add(part, threaded=False)``): process this frame now."""
        frame = image if image is not None else fallback
        if frame is not None and self.graph is not None:
            self._received += 1
            self._process(np.asarray(frame), time.monotonic())
        return self._outputs_for(frame, time.monotonic())

    # --- the worker's side --------------------------------------------------------------------
    def update(self):
        """Worker thread body. Catches everything: an exception here would silently kill the thread."""
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
                    self._publish_shared(shared)
                else:
                    self._process(frame, arrived)
                if self.min_period:
                    time.sleep(max(0.0, self.min_period - (time.monotonic() - started)))
        finally:
            self._close_backend()

    def _ensure_backend(self):
        if self.backend is not None:
            return True
        from . import backends

        try:
            self.backend = backends.activate_with_fallback(self.graph, self.backend_name, self.backend_options)
            self.backend_description = self.backend.describe()
            return True
        except Exception as error:
            self._faults.report("backend", "no backend could start: %s", error)
            time.sleep(0.5)  # do not spin on a backend that cannot start
            return False

    def _process(self, frame, arrived):
        if not self._ensure_backend():
            return
        from .api import as_uint8_image, fit_to_model

        try:
            picture_base = as_uint8_image(frame)
            model_frame = fit_to_model(picture_base, self.graph.input_shape)
        except InputError as error:
            self._faults.report("input:%s" % error, "bad frame: %s", error)
            return
        try:
            started = time.monotonic()
            outputs = self.backend.infer(model_frame[None])
            infer_ms = (time.monotonic() - started) * 1000.0
            mask = outputs[self.graph.mask_name][0]
            means = [outputs[name][0] for name in self.graph.mean_names]
        except Exception as error:
            self._faults.report("infer:%s" % type(error).__name__, "inference failed: %s", error)
            return
        self._publish(picture_base, mask, means, arrived, infer_ms)

    def _publish_shared(self, shared):
        frame, mask, means, infer_ms, arrived = shared
        try:
            picture_base = _frame_uint8(frame)
        except InputError as error:
            self._faults.report("input:%s" % error, "bad frame: %s", error)
            return
        self._publish(picture_base, mask, means, arrived, infer_ms)

    def _publish(self, picture_base, mask, means, arrived, infer_ms):
        """Overlay, newest result and outputs, then the listeners (the stream)."""
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
        with self._wake:
            self._latest = result
            self._outputs = (picture, mask_to_uint8(mask), round(result.latency_ms, 2), 0.0)
            self._wake.notify_all()  # a run_threaded waiting for this frame (sync_ms)
        self._faults.recovered()
        for callback in list(self._listeners):
            try:
                callback(result)
            except Exception as error:
                self._faults.report("listener:%s" % getattr(callback, "__name__", callback),
                                    "a saliency listener failed: %s", error)

    def _close_backend(self):
        if self.backend is not None:
            try:
                self.backend.close()
            except Exception as error:
                logger.warning("saliency: closing the backend failed: %s", error)
            self.backend = None

    def shutdown(self):
        """Ends the worker (which closes the backend in its own thread: CUDA contexts are per thread)."""
        self._running = False
        with self._wake:
            self._wake.notify_all()


def _frame_uint8(frame):
    """uint8 picture of a frame that is uint8 already or the pilot's normalized float image (x / 255)."""
    from .api import as_uint8_image

    array = np.asarray(frame)
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    return as_uint8_image(array)
