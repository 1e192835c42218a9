"""The live page's "is the pilot looking away?" figure: the share of each mask's attention above a
line (``audit.watch_line``: the audit's recommended ROI_CROP_TOP, or the upper third), averaged over
the last ``WATCH_WINDOW`` masks. Fed by the part's worker, one mask at a time; the running sum keeps
each step O(rows x columns) for the share and O(1) for the average. NumPy only, Python 3.6.

Not recorded in the tub: the tub already holds every frame's mask, and the share is a pure function
of the mask and a line, which ``donkey-saliency audit`` computes afterwards for any line.
"""
import collections
import logging
import threading

from ..compute.attention import mask_share_above, watch_line

logger = logging.getLogger(__name__)

WATCH_WINDOW = 20  # masks in the rolling share: about a second of driving at 20 Hz


def checked_line(value):
    """SALIENCY_WATCH_LINE as a row count >= 0 (0: the upper third); a bad value: 0, with a warning."""
    try:
        line = int(value or 0)
        if line < 0 or line != float(value or 0):
            raise ValueError(value)
        return line
    except (TypeError, ValueError):
        logger.warning("saliency: SALIENCY_WATCH_LINE=%r is not a row count >= 0; using the upper third", value)
        return 0


class AttentionWatch(object):
    """The rolling share of attention above the watch line. ``add`` from the worker, ``figures`` from
    any thread (the web's stats)."""

    def __init__(self, line=0, window=WATCH_WINDOW):
        self.configured = checked_line(line)
        self.line = None  # rows, resolved against the first mask's height
        self._shares = collections.deque(maxlen=window)
        self._sum = 0.0
        self._lock = threading.Lock()

    def add(self, mask):
        """One (H, W) mask, finite, in [0, 1]: its share above the line joins the rolling window."""
        height = mask.shape[0]
        if self.line is None:
            if self.configured >= height:
                logger.warning("saliency: SALIENCY_WATCH_LINE=%d is not above the %d-row image; using the "
                               "upper third", self.configured, height)
                self.configured = 0
            self.line = watch_line(self.configured, height)
        share = mask_share_above(mask, self.line)
        with self._lock:
            if len(self._shares) == self._shares.maxlen:
                self._sum -= self._shares[0]
            self._shares.append(share)
            self._sum += share

    def figures(self):
        with self._lock:
            count = len(self._shares)
            latest = self._shares[-1] if count else None
            rolling = self._sum / count if count else None
        return dict(watch_line=self.line, share_above=_rounded(rolling), share_above_latest=_rounded(latest),
                    share_above_window=self._shares.maxlen)


def _rounded(share):
    return round(min(max(share, 0.0), 1.0), 4) if share is not None else None
