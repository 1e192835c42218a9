"""The audit's arithmetic (audit.py) on arrays made by hand."""
import numpy as np
import pytest

from donkey_saliency.compute import attention as audit


def test_row_shares_sum_to_one_and_a_blank_mask_spreads_evenly():
    masks = np.random.RandomState(0).rand(3, 12, 16).astype(np.float32)
    masks[1] = 0.0
    shares = audit.row_share(masks)
    assert shares.shape == (3, 12)
    assert np.allclose(shares.sum(axis=1), 1.0)
    assert np.allclose(shares[1], 1.0 / 12)


def test_share_above_a_line():
    mask = np.zeros((10, 4), np.float32)
    mask[:2] = 1.0  # rows 0-1 hold a quarter of the mass
    mask[2:] = 1.0 / 3
    assert audit.mask_share_above(mask, 0) == 0.0
    assert audit.mask_share_above(mask, 2) == pytest.approx(8 / (8 + 32 / 3.0))
    assert audit.mask_share_above(mask, 10) == pytest.approx(1.0)
    shares = audit.row_share(np.stack([mask, mask]))
    assert np.allclose(audit.share_above(shares, 2), audit.mask_share_above(mask, 2))


def test_fill_top_replaces_exactly_the_top_rows():
    frames = np.full((2, 6, 5, 3), 9, np.uint8)
    fill = np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3)
    assert np.array_equal(audit.fill_top(frames, 0, fill), frames)
    filled = audit.fill_top(frames, 2, fill)
    assert np.array_equal(filled[:, :2], np.stack([fill[:2]] * 2)) and np.all(filled[:, 2:] == 9)
    assert np.all(frames == 9)  # a copy


def test_crop_candidates_and_upper_third():
    assert audit.crop_candidates(120) == [10, 20, 30, 40, 50, 60]
    assert audit.crop_candidates(66) == [10, 20, 30]
    assert audit.upper_third(120) == 40
    assert audit.watch_line(0, 120) == 40 and audit.watch_line(30, 120) == 30


def test_top_regions_and_their_overlap():
    masks = np.random.RandomState(1).rand(2, 20, 20).astype(np.float32)
    regions = audit.top_area_regions(masks, 0.15)
    assert regions.sum(axis=(1, 2)).tolist() == [60, 60]
    assert audit.iou(regions, regions).tolist() == [1.0, 1.0]
    flipped = audit.top_area_regions(-masks, 0.15)
    assert audit.iou(regions, flipped).tolist() == [0.0, 0.0]


def test_bootstrap_interval_of_a_constant_is_the_constant():
    indexes = audit.bootstrap_indexes(30, draws=200)
    assert audit.mean_interval(np.full(30, 0.25), indexes) == (0.25, [0.25, 0.25])
    mean, (low, high) = audit.mean_interval(np.random.RandomState(2).rand(30), indexes)
    assert low < mean < high


def test_shift_equivalent_reads_the_shift_curve():
    px, curve = [3, 6, 9, 12], [0.03, 0.06, 0.09, 0.12]
    assert audit.shift_equivalent(0.06, px, curve) == pytest.approx(6.0)
    assert audit.shift_equivalent(0.015, px, curve) == pytest.approx(1.5)
    assert audit.shift_equivalent(0.24, px, curve) == pytest.approx(24.0)  # past the curve: in proportion
    assert audit.shift_equivalent(0.1, px, [0, 0, 0, 0]) is None
    changes = np.full(20, 0.06)
    value, interval = audit.paired_shift_equivalent(changes, np.tile(curve, (20, 1)), px, audit.bootstrap_indexes(20))
    assert value == pytest.approx(6.0) and interval == pytest.approx([6.0, 6.0])


SHIFT_PX, SHIFT_CHANGE = [3, 6, 9, 12], [0.03, 0.06, 0.09, 0.12]


def _curve(values):
    return {k: (v, [v * 0.9, v * 1.1]) for k, v in values.items()}


def test_recommend_uses_when_the_top_rows_move_the_steering_like_a_real_reaction():
    shares = {10: 0.05, 20: 0.2, 30: 0.31, 40: 0.4, 50: 0.5, 60: 0.6}
    advice = audit.recommend(120, shares, _curve({10: 0.01, 20: 0.02, 30: 0.05, 40: 0.12, 50: 0.2, 60: 0.3}),
                             SHIFT_PX, SHIFT_CHANGE)
    assert advice["verdict"] == "uses" and advice["recommended_roi_crop_top"] == 30
    assert "rows 0-29 hold 31 %" in advice["advice"] and "ROI_CROP_TOP = 30" in advice["advice"]
    assert "as much as a 5 px shift" in advice["advice"]


def test_recommend_safe_is_the_largest_line_with_nothing_above_it():
    shares = {10: 0.01, 20: 0.02, 30: 0.05, 40: 0.1, 50: 0.2, 60: 0.3}
    advice = audit.recommend(120, shares, _curve({10: 0.0, 20: 0.001, 30: 0.005, 40: 0.02, 50: 0.001, 60: 0.3}),
                             SHIFT_PX, SHIFT_CHANGE)
    assert advice["verdict"] == "safe" and advice["recommended_roi_crop_top"] == 30  # 40 is not negligible
    assert "cropping them is safe" in advice["advice"]


def test_recommend_keeps_everything_when_the_top_rows_matter_a_little():
    shares = {10: 0.05, 20: 0.1, 30: 0.2, 40: 0.3, 50: 0.4, 60: 0.5}
    advice = audit.recommend(120, shares, _curve({10: 0.02, 20: 0.02, 30: 0.02, 40: 0.02, 50: 0.1, 60: 0.2}),
                             SHIFT_PX, SHIFT_CHANGE)
    assert advice == dict(recommended_roi_crop_top=0, verdict="keep", advice=advice["advice"])
    assert "no crop advised" in advice["advice"]


def test_recommend_on_a_pilot_that_ignores_shifts_uses_the_floor():
    advice = audit.recommend(120, {10: 0.0, 20: 0.0, 30: 0.0, 40: 0.0, 50: 0.0, 60: 0.0},
                             _curve({k: 0.0 for k in (10, 20, 30, 40, 50, 60)}), SHIFT_PX, [0, 0, 0, 0])
    assert advice["verdict"] == "safe" and advice["recommended_roi_crop_top"] == 60
