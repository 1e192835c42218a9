"""A pilot's outputs read as steering and throttle, the way donkeycar reads them (numpy only).

A categorical pilot's angle is a 15-bin softmax and its throttle a 20-bin one; donkeycar drives by the
arg-max (``linear_unbin``). The tools also read the angle as the expected value over the bins: smooth
where the arg-max jumps, so a small change of the frame shows as a small change of the steering.
"""
import numpy as np

ANGLE_BINS = 15
THROTTLE_BINS = 20
CATEGORICAL_THROTTLE_RANGE = 0.5  # donkeycar's KerasCategorical default (cfg.MODEL_CATEGORICAL_MAX_THROTTLE_RANGE)


def linear_unbin(arr, N=15, offset=-1, R=2.0):  # noqa: N803 - donkeycar's signature
    """donkeycar's ``utils.linear_unbin``, to the letter: a one-hot (or softmax) array -> the value of
    its largest bin. KerasCategorical decodes steering with the defaults and throttle with
    ``N=20, offset=0, R=throttle_range``."""
    return float(np.argmax(arr) * (R / (N + offset)) + offset)


def expected_steering(angle):
    """(N,) steering from the angle output (N, k): the expected value over a categorical pilot's 15
    bins in donkeycar's scale; else column 0."""
    angle = np.asarray(angle, np.float64).reshape(len(angle), -1)
    if angle.shape[1] == ANGLE_BINS:
        return angle @ np.linspace(-1.0, 1.0, ANGLE_BINS)
    return angle[:, 0]


def steering_decodings(angle):
    """{decoding: (N,) steering} of an angle output (N, k), the primary one first: a categorical
    pilot's expected value and donkeycar's arg-max; else {'steering': column 0}."""
    angle = np.asarray(angle, np.float64).reshape(len(angle), -1)
    if angle.shape[1] != ANGLE_BINS:
        return {"steering": angle[:, 0]}
    return {"expected": expected_steering(angle),
            "linear_unbin": np.array([linear_unbin(row) for row in angle], np.float64)}


def angle_and_throttle(values):
    """One frame's pilot outputs (in donkeycar's order) -> (angle, throttle) as donkeycar drives them,
    or None for layouts it cannot read: linear (two scalars, or one pair) and categorical (15
    steering bins, 20 throttle bins)."""
    flat = [np.ravel(v) for v in values]
    if len(flat) == 1 and flat[0].size == 2:
        return float(flat[0][0]), float(flat[0][1])
    if len(flat) >= 2 and flat[0].size == 1 and flat[1].size == 1:
        return float(flat[0][0]), float(flat[1][0])
    if len(flat) >= 2 and flat[0].size == ANGLE_BINS and flat[1].size == THROTTLE_BINS:
        return (linear_unbin(flat[0]),
                linear_unbin(flat[1], N=THROTTLE_BINS, offset=0.0, R=CATEGORICAL_THROTTLE_RANGE))
    return None
