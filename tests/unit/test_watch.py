"""The live share of attention above the watch line: its rolling mean and its checked setting."""
import logging

import numpy as np
import pytest

from donkey_saliency.car.watch import AttentionWatch, checked_line


def mask_with_top_share(share, height=12, width=4, line=4):
    """A mask whose mass above ``line`` is ``share`` of the whole."""
    mask = np.zeros((height, width), np.float32)
    mask[:line] = share / (line * width)
    mask[line:] = (1.0 - share) / ((height - line) * width)
    return mask


def test_rolling_share_is_the_mean_of_the_last_window_masks():
    watch = AttentionWatch(line=4, window=3)
    assert watch.figures()["share_above"] is None and watch.figures()["watch_line"] is None
    for share in (0.9, 0.1, 0.2, 0.3):
        watch.add(mask_with_top_share(share))
    figures = watch.figures()
    assert figures["watch_line"] == 4 and figures["share_above_window"] == 3
    assert figures["share_above"] == pytest.approx(0.2, abs=1e-4)  # 0.9 left the window
    assert figures["share_above_latest"] == pytest.approx(0.3, abs=1e-4)


def test_line_zero_watches_the_upper_third():
    watch = AttentionWatch(line=0)
    watch.add(np.ones((120, 160), np.float32))
    assert watch.figures()["watch_line"] == 40
    assert watch.figures()["share_above"] == pytest.approx(1.0 / 3, abs=1e-4)


@pytest.mark.parametrize("bad", [-5, "forty", 12.5, [40]])
def test_a_bad_setting_warns_and_watches_the_upper_third(bad, caplog):
    with caplog.at_level(logging.WARNING):
        assert checked_line(bad) == 0
    assert "SALIENCY_WATCH_LINE" in caplog.text


def test_a_line_below_the_image_warns_and_watches_the_upper_third(caplog):
    watch = AttentionWatch(line=500)
    with caplog.at_level(logging.WARNING):
        watch.add(np.ones((120, 160), np.float32))
    assert watch.figures()["watch_line"] == 40 and "not above the 120-row image" in caplog.text
