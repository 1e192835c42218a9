"""``donkey-saliency bench``: runs end to end with tiny settings, prints every row, writes --json.

No timing assertions: figures depend on the machine. The bench itself is where timings live.
"""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from helpers import random_frames, tiny_keras_pilot
from donkey_saliency.tools import bench
from donkey_saliency import cli
from donkey_saliency.compute import methods

ROWS = [
    "ours: preprocess (api.prepare_frame)",
    "ours: infer (fused trunk + VisualBackProp graph)",
    "ours: overlay (to the",
    "ours: total",
    "ours: mask = preprocess + infer",
    "(a) makemovie --salient gradient saliency, mask",
    "(b) eager TensorFlow VisualBackProp, mask",
    "ratio (a) / ours mask",
    "ratio (b) / ours mask",
    "part run_threaded (PartProfiler)",
    "loop work without the part",
    "loop work with the part",
    "loop work added by the part",
    "mask median (preprocess + infer)",
    "(a) gradient / ours, mask",
    "part's run_threaded in the Vehicle loop",
    "Vehicle loop work added by the part",
    "peak RSS",
]


@pytest.fixture(scope="module")
def two_output_pilot_path(tmp_path_factory):
    """Tiny, random weights, shaped like donkey's linear pilot: outputs n_outputs0/1 (makemovie needs
    a list of outputs named with 'out')."""
    path = str(tmp_path_factory.mktemp("pilots") / "two_outputs.h5")
    tiny_keras_pilot(lambda layers, x: [layers.Dense(1, name="n_outputs%d" % i)(x) for i in range(2)]).save(path)
    return path


@pytest.fixture(scope="module")
def v2_tub(tmp_path_factory):
    """A real donkeycar v2 tub of 4 frames at 240x320 (bigger than the model: preprocess resizes)."""
    from donkeycar.parts.tub_v2 import Tub

    path = str(tmp_path_factory.mktemp("tubs") / "v2")
    tub = Tub(path, inputs=["cam/image_array", "user/angle"], types=["image_array", "float"])
    for frame in random_frames(4, (240, 320, 3), seed=3):
        tub.write_record({"cam/image_array": frame, "user/angle": 0.0})
    tub.close()
    return path


def write_v1_tub(folder, indexes):
    """A donkeycar 3 tub: meta.json, record_<n>.json naming <n>_cam-image_array_.jpg."""
    os.makedirs(folder)
    with open(os.path.join(folder, "meta.json"), "w") as handle:
        json.dump({"inputs": ["cam/image_array", "user/angle"], "types": ["image_array", "float"]}, handle)
    for index, frame in zip(indexes, random_frames(len(indexes), seed=5)):
        image = "%d_cam-image_array_.jpg" % index
        cv2.imwrite(os.path.join(folder, image), frame)
        with open(os.path.join(folder, "record_%d.json" % index), "w") as handle:
            json.dump({"cam/image_array": image, "user/angle": 0.0}, handle)


def test_bench_cli_prints_every_row_and_writes_json(two_output_pilot_path, v2_tub, tmp_path):
    out = str(tmp_path / "bench.json")
    result = subprocess.run(
        [sys.executable, "-m", "donkey_saliency.cli", "bench", two_output_pilot_path, "--frames", "5", "--tub", v2_tub,
         "--loops", "12", "--hz", "100", "--json", out],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for row in ROWS:
        assert row in result.stdout, row
    assert "Donkey Car" not in result.stdout  # donkeycar's import banner stays out of the table
    assert "5 frames from v2 tub" in result.stdout

    with open(out) as handle:
        report = json.load(handle)
    assert report["frames"] == 5 and report["frame_shape"] == [240, 320, 3] and report["input_shape"] == [120, 160, 3]
    for stage in ("preprocess", "infer", "overlay", "total", "mask"):
        stats = report["ours"][stage]
        assert stats["n"] == 5 and 0 < stats["median_ms"] <= stats["p90_ms"]
    gradient, eager = report["alternatives"]["a"], report["alternatives"]["b"]
    assert gradient["n"] == 5 and eager["n"] == 5
    assert "donkeycar's own MakeMovie" in gradient["method"]  # matplotlib is in the dev extra, so it imports
    # (b) is the same math in other code: it must give our mask.
    assert eager["max_abs_difference_from_ours"] < 1e-4
    assert report["ratios"]["gradient_over_ours"] > 0 and report["ratios"]["eager_vbp_over_ours"] > 0
    vehicle = report["vehicle"]
    assert vehicle["part_run_threaded"]["n"] == 10  # 12 loops less PartProfiler's first and last
    assert vehicle["part_frames_processed"] >= 1 and vehicle["part_errors"] == 0
    assert [t["status"] in ("met", "NOT MET") for t in report["targets"]] == [True] * 5
    timed = report["methods_ms"]  # every method beside the pilot's own inference, one run
    assert timed["pilot"] > 0 and set(timed["over_pilot"]) == set(methods.METHODS)
    assert timed["over_pilot"]["input-gradient"] > timed["over_pilot"]["vbp"] > 1.0
    assert report["memory"]["peak_rss_mb_end"] > 0


def test_v1_tub_frames_in_record_order_and_cycled(tmp_path):
    folder = str(tmp_path / "tub")
    write_v1_tub(folder, [10, 9, 100])
    paths, kind = bench.tub_image_paths(folder)
    assert kind == "v1 tub"
    assert [os.path.basename(p) for p in paths] == ["9_cam-image_array_.jpg", "10_cam-image_array_.jpg",
                                                     "100_cam-image_array_.jpg"]
    frames, source = bench.load_frames(5, (120, 160, 3), folder)
    assert len(frames) == 5 and frames[0].shape == (120, 160, 3) and frames[0].dtype == np.uint8
    assert np.array_equal(frames[0], frames[3])  # cycled
    assert "3 images cycled" in source


def test_random_frames_without_a_tub():
    frames, source = bench.load_frames(3, (66, 200, 3))
    assert [f.shape for f in frames] == [(66, 200, 3)] * 3 and "random" in source


def test_eager_visual_backprop_matches_the_numpy_reference(linear_pilot_path):
    """(b) in the bench is VisualBackProp, checked on donkey's linear architecture."""
    from donkey_saliency.compute import vbp
    from donkey_saliency.pilots import load_pilot
    from donkey_saliency.pilots import reference as framework

    pilot = load_pilot(linear_pilot_path)
    frames = random_frames(2, seed=7)
    eager = bench.EagerVisualBackProp(pilot, framework.keras_model(linear_pilot_path))
    expected_masks = vbp.mask_from_feature_maps(pilot.trunk.steps, framework.feature_maps(pilot, frames))
    for frame, expected in zip(frames, expected_masks):
        assert np.max(np.abs(eager.mask(frame) - expected)) < 1e-5


def test_fallback_gradient_equals_makemovies_own(two_output_pilot_path, tiny_pilot_path):
    """(a)'s fallback is makemovie's computation: same mask as its own code; one-output pilots use it."""
    import tensorflow as tf

    frame = random_frames(1, seed=11)[0].astype(np.float64) / 255.0
    own, description = bench.gradient_saliency(tf.keras.models.load_model(two_output_pilot_path, compile=False))
    assert "donkeycar's own MakeMovie" in description
    fallback = bench._GradientSaliency(tf.keras.models.load_model(two_output_pilot_path, compile=False), "linear")
    expected = own.compute_visualisation_mask(frame)
    assert expected.shape == (120, 160) and expected.max() > 0.99
    assert np.max(np.abs(fallback.compute_visualisation_mask(frame) - expected)) < 1e-5

    one_output, description = bench.gradient_saliency(tf.keras.models.load_model(tiny_pilot_path, compile=False))
    assert "identical GradientTape" in description
    assert one_output.compute_visualisation_mask(frame).shape == (120, 160)


@pytest.mark.parametrize("make_args, fragment", [
    (lambda pilot, tmp: [pilot, "--tub", str(tmp / "nowhere")], "tub not found"),
    (lambda pilot, tmp: [pilot, "--tub", str(tmp)], "is not a tub"),
    (lambda pilot, tmp: [pilot, "--frames", "0"], "--frames must be at least 1"),
    (lambda pilot, tmp: [str(tmp / "missing.h5")], "not found"),
])
def test_bad_input_exits_2_with_one_line_and_no_json(tiny_pilot_path, tmp_path, capsys, make_args, fragment):
    out = tmp_path / "bench.json"
    status = cli.main(["bench"] + make_args(tiny_pilot_path, tmp_path) + ["--json", str(out)])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2
    assert len(lines) == 1 and fragment in lines[0], captured.err
    assert not out.exists()
