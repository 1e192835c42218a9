"""Two pilots on the review page (``donkey-saliency review TUB --model A --model B``): each pilot's
overlay, both pilots' steering for every record on the timeline, and the records where they disagree
most. Pilot values come from each pilot's whole graph (``api.PilotPass``: no TensorFlow).

``PilotPair`` computes the steering of both pilots for every record in a background thread (NaN until
done, shown as it arrives) and draws one pilot's overlay for one record on request (the review's own
executor thread); a lock keeps the two threads off a backend at once. Disagreement: |steering A −
steering B|, steering as ``pilots.decode.expected_steering`` gives it (a categorical pilot's expected
value), ranked largest first, records at least ``review_model.DISAGREEMENT_SPACING`` apart.
"""
import logging
import os
import threading

import numpy as np

from ..errors import InputError
from ..compute.frames import prepare_batch
from ..util.images import read_rgb

logger = logging.getLogger(__name__)

NAMES = ("A", "B")
ANGLE_KEYS = ("A/angle", "B/angle")  # the pilots' steering: timeline arrays and record fields
VIEWS = ("pilotA", "pilotB")  # review_model's picture views of each pilot's overlay
RANKED_BY = "|steering A - steering B|, largest first"
BATCH = 32


class PilotPair(object):
    """Two ``PilotPass``es over one tub's records: ``angles`` (2, N) float32, NaN until computed."""

    def __init__(self, passes, paths, index, image_key):
        self.passes = list(passes)
        self.paths = list(paths)
        self.index = index
        self.image_key = image_key
        self.angles = np.full((2, len(index)), np.nan, np.float32)
        self.done = 0
        self.finished = False
        self._lock = threading.Lock()  # one backend call at a time (the thread and the page's pictures)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="review-pair", daemon=True)

    @property
    def names(self):
        return ["%s: %s" % (name, os.path.basename(path)) for name, path in zip(NAMES, self.paths)]

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def close(self):
        self.stop()
        for one in self.passes:
            one.close()

    def state(self, count):
        return "computed" if self.finished else "computing %d/%d" % (self.done, count)

    def mask(self, which, frame):
        """Pilot ``which`` (0 or 1)'s mask for one RGB uint8 frame, at the pilot's input size."""
        one = self.passes[which]
        with self._lock:
            masks, _ = one.masks_and_steering(prepare_batch([frame], one.input_shape))
        return masks[0]

    def _run(self):
        count = self.angles.shape[1]
        try:
            for first in range(0, count, BATCH):
                if self._stop.is_set():
                    return
                wanted, frames = [], []
                for i in range(first, min(first + BATCH, count)):
                    try:
                        frames.append(read_rgb(self.index.images(i).get(self.image_key)))
                        wanted.append(i)
                    except (InputError, TypeError):
                        continue  # no camera image: no steering
                for which, one in enumerate(self.passes):
                    if frames:
                        x = prepare_batch(frames, one.input_shape)
                        with self._lock:
                            self.angles[which, wanted] = one.steering(x)
                self.done = min(first + BATCH, count)
        except Exception as error:  # a tool, not the car: say so once and show what there is
            logger.warning("review: predicting the two pilots' steering stopped: %s", error)
        finally:
            self.finished = True
