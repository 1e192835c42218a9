"""A pilot's outputs -> steering and throttle, as donkeycar decodes them (NumPy only: the car may use it).

Linear pilots give the values as they are; a categorical pilot gives a softmax over 15 steering bins
and 20 throttle bins, which donkeycar's ``utils.linear_unbin`` turns into the value of the largest bin.
"""
import numpy as np

ANGLE_BINS = 15  # KerasCategorical's steering softmax
THROTTLE_BINS = 20  # KerasCategorical's throttle softmax
CATEGORICAL_THROTTLE_RANGE = 0.5  # donkeycar's KerasCategorical default (cfg.MODEL_CATEGORICAL_MAX_THROTTLE_RANGE)


def linear_unbin(arr, N=ANGLE_BINS, offset=-1, R=2.0):
    """donkeycar's ``utils.linear_unbin``, to the letter: a one-hot (or softmax) array -> the value of
    its largest bin. KerasCategorical decodes steering with the defaults and throttle with
    ``N=20, offset=0, R=throttle_range`` (0.5 by default)."""
    return float(np.argmax(arr) * (R / (N + offset)) + offset)


def expected_steering(angle):
    """The pilot's steering from its angle output (N, k): a categorical pilot's 15 bins give the
    expected value in donkeycar's scale (smooth, unlike the arg-max it drives by); else column 0."""
    angle = np.asarray(angle, np.float64).reshape(len(angle), -1)
    if angle.shape[1] == ANGLE_BINS:
        return angle @ np.linspace(-1.0, 1.0, ANGLE_BINS)
    return angle[:, 0]


def decode_pilot_outputs(values):
    """A pilot's outputs for one frame -> (angle, throttle), or None for layouts we cannot read:
    linear (two scalars, or one pair) and categorical (15 steering bins, 20 throttle bins)."""
    flat = [np.ravel(v) for v in values]
    if len(flat) == 1 and flat[0].size == 2:
        return float(flat[0][0]), float(flat[0][1])
    if len(flat) >= 2 and flat[0].size == 1 and flat[1].size == 1:
        return float(flat[0][0]), float(flat[1][0])
    if len(flat) >= 2 and flat[0].size == ANGLE_BINS and flat[1].size == THROTTLE_BINS:
        return (linear_unbin(flat[0]),
                linear_unbin(flat[1], N=THROTTLE_BINS, offset=0.0, R=CATEGORICAL_THROTTLE_RANGE))
    return None
