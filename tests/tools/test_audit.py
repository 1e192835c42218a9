"""``donkey-saliency audit`` on real tubs and real pilots: the JSON's fields and invariants, the
advice switching between a pilot trained to read the top rows and one that cannot see them, the
HTML page in headless Chromium, and bad input."""
import json
import os

import numpy as np
import pytest

from browser import ARTIFACTS, DevTools, chromium_or_skip
from helpers import pi_data_or_skip, PI_PILOTS, PI_TUB, real_data_or_skip, wait_for
from donkey_saliency.cli import main
from donkey_saliency.compute.methods import DEFAULT_METHOD
from donkey_saliency.tubs.read import open_tub


def check_pilot_fields(pilot, tub):
    """The invariants every pilot's section holds."""
    height = pilot["input_shape"][0]
    assert len(pilot["row_share"]) == height and sum(pilot["row_share"]) == pytest.approx(1.0, abs=1e-4)
    dependence = pilot["crop_dependence"]
    assert [row["k"] for row in dependence] == list(range(0, height // 2 + 1, 10))
    assert dependence[0]["mean_abs_change"] == 0.0 and dependence[0]["interval_90"] == [0.0, 0.0]
    assert dependence[0]["share_above"] == 0.0
    shares = [row["share_above"] for row in dependence]
    assert shares == sorted(shares)
    for row in dependence:
        assert row["interval_90"][0] <= row["mean_abs_change"] <= row["interval_90"][1]
        assert row["share_above"] == pytest.approx(sum(pilot["row_share"][:row["k"]]), abs=1e-3)
    assert [r["px"] for r in pilot["shift_reference"]] == [3, 6, 9, 12]
    k = pilot["recommended_roi_crop_top"]
    assert k in [0] + [row["k"] for row in dependence][1:] and pilot["advice"]
    assert pilot["verdict"] in ("uses", "safe", "keep") and (k == 0) == (pilot["verdict"] == "keep")
    live = set(entry.index for entry in open_tub(tub).live_entries)
    records = pilot["off_track_records"]
    assert all(r["index"] in live and r["share_above"] > 0 for r in records)
    assert [r["share_above"] for r in records] == sorted((r["share_above"] for r in records), reverse=True)


@pytest.mark.slow
def test_audit_two_real_tflite_pilots_on_the_real_pi_tub(tmp_path, capsys):
    pi_data_or_skip()
    out = str(tmp_path / "audit")
    assert main(["audit", PI_TUB, "--model", PI_PILOTS[0], "--model", PI_PILOTS[1], "--frames", "60",
                 "--dependence-frames", "30", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "ROI_CROP_TOP" in printed and printed.strip().endswith("audit.html")
    report = json.load(open(os.path.join(out, "audit.json")))
    assert report["frames"] == 60 and report["method"] == DEFAULT_METHOD and len(report["pilots"]) == 2
    for number, pilot in enumerate(report["pilots"]):
        assert pilot["dependence_frames"] == 30 and pilot["off_track_records"]
        check_pilot_fields(pilot, PI_TUB)
        assert os.path.isfile(os.path.join(out, "attention_%d.png" % number))
        for record in pilot["off_track_records"]:
            assert os.path.isfile(os.path.join(out, "record_%d_%d.png" % (number, record["index"])))
    comparison = report["comparison"]
    assert 0.0 <= comparison["top_area_iou"] <= 1.0
    assert comparison["top_area_iou_90"][0] <= comparison["top_area_iou"] <= comparison["top_area_iou_90"][1]
    differences = [d["difference"] for d in comparison["disagreements"]]
    assert differences == sorted(differences, reverse=True) and differences[0] > 0
    assert all(abs(abs(d["steering"][0] - d["steering"][1]) - d["difference"]) < 1e-3
               for d in comparison["disagreements"])
    page = open(os.path.join(out, "audit.html")).read()
    first = comparison["disagreements"][0]["index"]
    assert "/saliency/review#record=%d" % first in page and "http" not in page.replace(report["review_url"], "")


def test_audit_the_real_keras_pilot_on_the_real_v1_tub(tmp_path):
    pilot_path, tub = real_data_or_skip()
    out = str(tmp_path / "audit")
    assert main(["audit", tub, "--model", pilot_path, "--frames", "40", "--dependence-frames", "20",
                 "--out", out]) == 0
    report = json.load(open(os.path.join(out, "audit.json")))
    assert report["frames"] == 40 and "comparison" not in report
    check_pilot_fields(report["pilots"][0], tub)


# --- the advice switches: a pilot that reads the top rows, and one that cannot see them ----------------
BAND = 10          # the steering is drawn as a white block in rows 0..BAND-1 and in the rows below BOTTOM
BOTTOM = 100
BLOCK = 20


def draw_blocks(frame, top_angle, bottom_angle):
    """``frame`` with a white block whose column encodes an angle, in the top band and the bottom band."""
    frame = frame.copy()
    width = frame.shape[1]
    for rows, angle in ((slice(0, BAND), top_angle), (slice(BOTTOM, BOTTOM + BAND), bottom_angle)):
        left = int(round((angle + 1) / 2 * (width - BLOCK)))
        frame[rows] = 40
        frame[rows, left:left + BLOCK] = 255
    return frame


def train_band_pilot(path, backgrounds, reads_top, rng):
    """A small Keras pilot trained to steer by the block in the top band (the bottom one random), or
    one that crops the top 60 rows away first and steers by the bottom block (the top one random)."""
    import tensorflow as tf

    layers = tf.keras.layers
    angles, others = rng.uniform(-1, 1, 1200), rng.uniform(-1, 1, 1200)
    frames = np.stack([draw_blocks(backgrounds[i % len(backgrounds)], a, o) if reads_top else
                       draw_blocks(backgrounds[i % len(backgrounds)], o, a) for i, (a, o) in enumerate(zip(angles, others))])
    tf.keras.utils.set_random_seed(0)
    inp = layers.Input((120, 160, 3), name="img_in")
    x = inp if reads_top else layers.Cropping2D(((60, 0), (0, 0)), name="crop")(inp)
    x = layers.Conv2D(8, 5, strides=2, activation="relu", name="conv2d_1")(x)
    x = layers.Conv2D(16, 5, strides=2, activation="relu", name="conv2d_2")(x)
    x = layers.Conv2D(16, 3, strides=2, activation="relu", name="conv2d_3")(x)
    x = layers.Flatten(name="flattened")(x)
    x = layers.Dense(32, activation="relu", name="dense_1")(x)
    model = tf.keras.Model(inp, layers.Dense(1, name="n_outputs0")(x))
    model.compile(optimizer=tf.keras.optimizers.Adam(2e-3), loss="mse")
    model.fit(frames.astype(np.float32) / 255.0, angles, epochs=12, batch_size=32, verbose=0)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def band_drive(tmp_path_factory):
    """A track tub (donkeycar's own Tub) whose frames carry the user's steering in both bands, and the
    two pilots."""
    from donkeycar.parts.tub_v2 import Tub

    from donkey_saliency.compute.track import track_frames

    root = tmp_path_factory.mktemp("band")
    rng = np.random.RandomState(0)
    samples = list(track_frames(60, step=1.0, offset_spread=0.5, heading_spread=0.2))
    backgrounds = [s.frame for s in samples]
    tub_path = str(root / "tub")
    tub = Tub(tub_path, inputs=["cam/image_array", "user/angle"], types=["image_array", "float"])
    for frame, angle in zip(backgrounds, rng.uniform(-0.9, 0.9, len(backgrounds))):
        tub.write_record({"cam/image_array": draw_blocks(frame, angle, angle), "user/angle": float(angle)})
    tub.close()
    top = train_band_pilot(str(root / "top.h5"), backgrounds, True, rng)
    blind = train_band_pilot(str(root / "blind.h5"), backgrounds, False, rng)
    return tub_path, top, blind


@pytest.mark.slow
def test_the_advice_switches_between_a_pilot_reading_the_top_rows_and_one_blind_to_them(band_drive, tmp_path):
    tub, top, blind = band_drive
    out = str(tmp_path / "audit")
    assert main(["audit", tub, "--model", top, "--model", blind, "--dependence-frames", "60", "--out", out]) == 0
    report = json.load(open(os.path.join(out, "audit.json")))
    reads, sees_nothing = report["pilots"]
    for pilot in report["pilots"]:
        check_pilot_fields(pilot, tub)
    assert reads["verdict"] == "uses" and reads["recommended_roi_crop_top"] == BAND, reads["advice"]
    assert "try ROI_CROP_TOP = 10 and retrain" in reads["advice"]
    ten = reads["crop_dependence"][1]
    assert ten["interval_90"][0] > 0.1  # replacing the band moves the steering a lot
    assert sees_nothing["verdict"] == "safe" and sees_nothing["recommended_roi_crop_top"] == 60, sees_nothing["advice"]
    assert all(row["mean_abs_change"] < 1e-6 for row in sees_nothing["crop_dependence"])
    # the cropping layer's rows get no attention but the one row the 3x3 de-gridding spreads over the line
    assert sees_nothing["share_above"]["60"] < 0.01
    assert reads["off_track_records"] and not sees_nothing["off_track_records"]
    assert reads["share_above"]["10"] > 0.05
    assert report["comparison"]["steering_correlation"] > 0.5  # both read the same steering, each its own band


# --- the page ----------------------------------------------------------------------------------------
PAGE_STATE = """JSON.stringify((function () {
  var images = Array.prototype.slice.call(document.images);
  return { images: images.length, loaded: images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
           advice: Array.prototype.map.call(document.querySelectorAll(".advice"), function (e) { return e.textContent; }),
           charts: document.querySelectorAll("svg polyline").length, comparison: !!document.getElementById("comparison"),
           links: Array.prototype.map.call(document.querySelectorAll(".thumbs a"), function (a) { return a.getAttribute("href"); }),
           pageWidth: document.documentElement.scrollWidth, viewportWidth: window.innerWidth };
})())"""


@pytest.mark.browser
@pytest.mark.slow
def test_the_audit_page_in_headless_chromium(band_drive, tmp_path):
    chromium_or_skip()
    tub, top, blind = band_drive
    out = str(tmp_path / "audit")
    assert main(["audit", tub, "--model", top, "--model", blind, "--dependence-frames", "20", "--out", out]) == 0
    report = json.load(open(os.path.join(out, "audit.json")))
    browser = DevTools(str(tmp_path / "profile"), str(tmp_path / "chromium.log"), 1280, 1600)
    try:
        browser.open("file://" + os.path.abspath(os.path.join(out, "audit.html")), 1280, 1600, mobile=False)
        state = {}

        def ready():
            state.update(json.loads(browser.evaluate(PAGE_STATE) or "{}"))
            return state.get("images") and state["loaded"] == state["images"]
        assert wait_for(ready, timeout=30), state
        os.makedirs(ARTIFACTS, exist_ok=True)
        browser.screenshot(os.path.join(ARTIFACTS, "audit_page.png"))
    finally:
        browser.close()
    assert state["advice"] == [p["advice"] for p in report["pilots"]]
    assert state["charts"] == 2 and state["comparison"]
    expected = ["http://127.0.0.1:8890/saliency/review#record=%d" % r["index"]
                for r in report["pilots"][0]["off_track_records"]]
    assert state["links"][:len(expected)] == expected
    assert state["pageWidth"] <= state["viewportWidth"]


# --- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_args,words", [
    (lambda tub, model, tmp: [str(tmp / "nowhere"), "--model", model], "tub not found"),
    (lambda tub, model, tmp: [tub, "--model", str(tmp / "missing.h5")], "model file not found"),
    (lambda tub, model, tmp: [tub, "--model", model, "--model", model, "--model", model], "one or two --model"),
    (lambda tub, model, tmp: [tub, "--model", model, "--frames", "0"], "--frames must be at least 1"),
    (lambda tub, model, tmp: [tub, "--model", model, "--dependence-frames", "1"], "at least 2"),
    (lambda tub, model, tmp: [tub, "--model", model, "--out", tub + "/manifest.json"], "not a directory"),
    (lambda tub, model, tmp: [tub, "--model", model, "--image-key", "cam/nothing"], "has no cam/nothing field"),
])
def test_audit_bad_input_is_one_line_and_exit_2(make_args, words, tiny_pilot_path, tmp_path, capsys):
    from donkeycar.parts.tub_v2 import Tub

    tub_path = str(tmp_path / "tub")
    tub = Tub(tub_path, inputs=["cam/image_array"], types=["image_array"])
    tub.write_record({"cam/image_array": np.zeros((120, 160, 3), np.uint8)})
    tub.close()
    # a later --out (the "not a directory" case) replaces the first
    assert main(["audit", "--out", str(tmp_path / "o")] + make_args(tub_path, tiny_pilot_path, tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not os.path.exists(str(tmp_path / "o"))


def test_audit_refuses_an_exported_graph_in_one_line(tiny_pilot_path, tmp_path, capsys):
    graph = str(tmp_path / "tiny.onnx")
    assert main(["export", tiny_pilot_path, "--out", graph, "--output", "none"]) == 0  # VisualBackProp only
    capsys.readouterr()
    from donkeycar.parts.tub_v2 import Tub

    tub = Tub(str(tmp_path / "tub"), inputs=["cam/image_array"], types=["image_array"])
    tub.write_record({"cam/image_array": np.zeros((120, 160, 3), np.uint8)})
    tub.close()
    assert main(["audit", str(tmp_path / "tub"), "--model", graph, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("without the pilot's outputs" in err[0] or "needs the pilot file" in err[0])


def test_audit_a_tub_with_a_missing_image_fails_before_any_pilot_runs(tiny_pilot_path, tmp_path, capsys):
    from donkeycar.parts.tub_v2 import Tub

    tub = Tub(str(tmp_path / "tub"), inputs=["cam/image_array"], types=["image_array"])
    for _ in range(3):
        tub.write_record({"cam/image_array": np.zeros((120, 160, 3), np.uint8)})
    tub.close()
    images = tmp_path / "tub" / "images"
    os.unlink(str(images / sorted(os.listdir(str(images)))[1]))
    assert main(["audit", str(tmp_path / "tub"), "--model", tiny_pilot_path, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is missing" in err[0], err


def test_the_steering_of_categorical_and_linear_outputs():
    from donkey_saliency.pilots.decode import expected_steering

    bins = np.zeros((3, 15), np.float32)
    bins[0, 14] = 1.0  # all on the rightmost bin
    bins[1, 7] = 1.0   # the middle one
    bins[2] = 1.0 / 15
    assert np.allclose(expected_steering(bins), [1.0, 0.0, 0.0], atol=1e-6)
    assert np.allclose(expected_steering(np.array([[0.25, 0.5], [-0.5, 0.1]])), [0.25, -0.5])
