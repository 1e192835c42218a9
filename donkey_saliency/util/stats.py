"""Summary figures of timings: the median every report uses."""
import numpy as np


def median(values):
    """The median of numbers as a float; None when there are none."""
    values = np.asarray(list(values), dtype=np.float64)
    return float(np.median(values)) if values.size else None


def median_ms(seconds):
    """The median of durations in seconds, in milliseconds (None when there are none)."""
    middle = median(seconds)
    return None if middle is None else middle * 1000.0
