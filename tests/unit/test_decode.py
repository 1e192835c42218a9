"""pilots/decode.py: a pilot's outputs read as steering and throttle (donkeycar's ``linear_unbin`` is
checked against donkeycar itself in test_hardening)."""
import numpy as np
import pytest

from donkey_saliency.pilots.decode import angle_and_throttle, expected_steering, linear_unbin, steering_decodings


def softmax_at(bins, position, mass=1.0):
    row = np.full(bins, (1.0 - mass) / (bins - 1), np.float32)
    row[position] = mass
    return row


def test_a_categorical_angle_decodes_two_ways_the_expected_value_first():
    angle = np.stack([softmax_at(15, 14), softmax_at(15, 7), 0.5 * softmax_at(15, 0) + 0.5 * softmax_at(15, 2)])
    decoded = steering_decodings(angle)
    assert list(decoded) == ["expected", "linear_unbin"]
    np.testing.assert_allclose(decoded["expected"], [1.0, 0.0, -1.0 + 2.0 / 14], atol=1e-6)
    np.testing.assert_allclose(decoded["linear_unbin"], [1.0, 0.0, -1.0], atol=1e-12)  # arg-max: the first of a tie
    np.testing.assert_allclose(expected_steering(angle), decoded["expected"])


def test_a_linear_angle_is_its_value():
    decoded = steering_decodings(np.array([[0.25], [-0.5]], np.float32))
    assert list(decoded) == ["steering"]
    np.testing.assert_allclose(decoded["steering"], [0.25, -0.5])


@pytest.mark.parametrize("values, expected", [
    ([np.array([0.3, 0.6])], (0.3, 0.6)),                            # one (angle, throttle) pair
    ([np.array([-0.2]), np.array([0.4])], (-0.2, 0.4)),               # two scalars (linear, memory)
    ([softmax_at(15, 0), softmax_at(20, 19)], (-1.0, 19 * 0.5 / 20)),  # categorical: donkeycar's bins
    ([np.zeros(3)], None),                                            # a layout donkeycar does not drive
])
def test_angle_and_throttle_as_donkeycar_drives_them(values, expected):
    got = angle_and_throttle(values)
    assert got == (pytest.approx(expected) if expected else None)


def test_linear_unbin_takes_the_largest_bin():
    assert linear_unbin(softmax_at(15, 7)) == pytest.approx(0.0)
    assert linear_unbin(softmax_at(20, 4), N=20, offset=0.0, R=0.5) == pytest.approx(0.1)
