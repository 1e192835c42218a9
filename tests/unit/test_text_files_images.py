"""The leaf modules: console.py (tables), stats.py (medians), fileio.py (atomic writes), images.py (codec)."""
import hashlib
import os
import stat

import numpy as np
import pytest

from donkey_saliency.util.console import Progress, table_lines
from donkey_saliency.errors import InputError
from donkey_saliency.util.fileio import atomic_write, file_digest
from donkey_saliency.util.images import decode_image, encode_jpeg, read_image, write_png
from donkey_saliency.util.stats import median, median_ms


def test_table_lines_align_columns_and_right_align_numbers():
    rows = [("what", "ms"), ("mask", "1.5"), ("overlay total", "12.25")]
    assert table_lines(rows) == ["what           ms", "mask           1.5", "overlay total  12.25"]
    assert table_lines(rows, right_from=1) == ["what              ms", "mask             1.5",
                                               "overlay total  12.25"]


def test_progress_writes_one_plain_line_when_closed(tmp_path):
    out = open(str(tmp_path / "log"), "w+")
    bar = Progress(4, "backfill", stream=out)
    bar.update(4)
    bar.close()
    out.seek(0)
    line = out.read()
    assert line.startswith("backfill  4/4 frames  100%") and line.endswith("\n") and line.count("\n") == 1


def test_median_of_none_is_none():
    assert median([]) is None and median_ms([]) is None
    assert median([3, 1, 2]) == 2.0 and median(iter([1, 2])) == 1.5 and median_ms([0.001, 0.003]) == 2.0


def test_atomic_write_leaves_only_the_file_with_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "sub" / "out.bin"
        atomic_write(str(path), b"data")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"data" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(str(path.parent)) == ["out.bin"]
    assert file_digest(str(path)) == hashlib.sha256(b"data").hexdigest()


def test_png_round_trips_and_jpeg_stays_close(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red: a swapped channel order would show
    write_png(str(tmp_path / "a.png"), rgb)
    assert (read_image(str(tmp_path / "a.png")) == rgb).all()
    decoded = decode_image(encode_jpeg(rgb, quality=95), "memory")
    assert np.abs(decoded.astype(int) - rgb).max() <= 8
    assert decode_image(encode_jpeg(np.zeros((8, 8, 1), np.uint8)), "memory").shape == (8, 8)


def test_what_is_not_an_image_file_is_an_input_error(tmp_path):
    (tmp_path / "notes.png").write_bytes(b"hello")
    with pytest.raises(InputError, match="image not found"):
        read_image(str(tmp_path / "absent.png"))
    with pytest.raises(InputError, match="not an image file"):
        read_image(str(tmp_path / "notes.png"))
    with pytest.raises(InputError, match="not a readable image: empty"):
        decode_image(b"", "empty")
