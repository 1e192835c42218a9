"""`donkey-saliency evaluate` and the mask methods: the metrics on hand-made cases, the command on
a tiny pilot and a tiny tub written by donkeycar's own Tub, the JSON schema, bad input."""
import json
import os

import numpy as np
import pytest

from donkey_saliency.tools import evaluate as ev
from donkey_saliency.compute import methods
from helpers import tiny_keras_pilot


# --- pure functions -------------------------------------------------------------------------------
def textured_image(seed=0, hw=(40, 64)):
    """Smooth random texture: shifting it changes what each column holds."""
    import cv2

    noise = np.random.RandomState(seed).uniform(0, 255, hw + (3,)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 2.0) * 3 - 250, 0, 255).astype(np.uint8)


STRIP = slice(16, 56)  # the columns the hand-made pilot reads


def ramp_image(seed, hw=(40, 160)):
    """Texture over a left-to-right brightness ramp: a sideways shift changes what a column holds."""
    ramp = np.linspace(0, 120, hw[1])[None, :, None]
    return np.clip(textured_image(seed, hw) * 0.5 + ramp, 0, 255).astype(np.uint8)


def strip_pilot(frames):
    """A hand-made 'pilot': its steering is a weighted mean of columns 16..55 only (a sine window,
    so the strip's ends barely count)."""
    frames = np.asarray(frames, np.float64)
    weights = np.zeros(frames.shape[2])
    weights[STRIP] = np.sin(np.linspace(0, np.pi, STRIP.stop - STRIP.start))
    return {"steering": (frames * weights[None, None, :, None]).mean(axis=(1, 2, 3)) / 50.0}


def column_mask(hw, columns):
    mask = np.zeros(hw, np.float32)
    mask[:, columns] = 1.0
    return mask


def test_top_region_has_exactly_the_area_and_follows_the_mask():
    mask = np.zeros((40, 64), np.float32)
    mask[10:20, 5:25] = np.linspace(0.5, 1.0, 20)[None, :]
    region = ev.top_region(mask, 0.05)
    assert region.sum() == round(0.05 * mask.size)
    assert region[10:20, 5:25].sum() == region.sum()  # every chosen pixel is in the bright block


def test_shifts_replicate_the_edge_and_regions_do_not():
    image = np.arange(12, dtype=np.uint8).reshape(2, 6)
    assert ev.shift_image(image, 2).tolist()[0] == [0, 0, 0, 1, 2, 3]
    assert ev.shift_image(image, -2).tolist()[0] == [2, 3, 4, 5, 5, 5]
    region = np.zeros((2, 6), bool)
    region[:, 4:] = True
    assert ev.shift_region(region, 1)[0].tolist() == [False] * 5 + [True]
    assert ev.shift_region(region, -4)[0].tolist() == [True, True] + [False] * 4


def test_shift_variants_move_only_their_layer():
    image = textured_image()
    region = column_mask(image.shape[:2], slice(0, 32)) > 0
    background = ev.background_layer(image, region)
    salient, rest, whole = ev.shift_variants(image, region, background, 0)
    assert np.array_equal(salient, image) and np.array_equal(rest, image) and np.array_equal(whole, image)
    salient, rest, whole = ev.shift_variants(image, region, background, 5)
    assert np.array_equal(rest[region], image[region])  # the region stays where it was
    assert np.array_equal(salient[:, 40:], background[:, 40:])  # far right: only the background layer


def test_slopes_fit_a_line_through_zero():
    d = np.array(ev.SHIFTS, float)
    assert np.allclose(ev.slopes(np.stack([0.1 * d, -0.02 * d])), [0.1, -0.02])


def test_a_mask_on_what_the_pilot_reads_explains_its_steering():
    results = []
    for seed in range(6):
        frame = ramp_image(seed)
        # Both regions 56 columns (35 %): one around the strip the pilot reads, one far from it.
        masks = {"on": column_mask(frame.shape[:2], slice(8, 64)), "off": column_mask(frame.shape[:2], slice(96, 152))}
        results.append(ev.evaluate_frame(frame, masks, strip_pilot, area=0.35)[0])
    table = ev.summarize(results, ["on", "off"], "on", draws=200)["steering"]
    on, off = table["on"], table["off"]
    assert on["salient_over_whole"] == pytest.approx(1.0, abs=0.02) and on["background_over_whole"] < 0.02
    assert off["salient_over_whole"] < 0.02 and off["background_over_whole"] == pytest.approx(1.0, abs=0.02)
    assert on["deletion_auc"] > 2 * off["deletion_auc"]
    assert on["insertion_auc"] < off["insertion_auc"]
    low, high = off["minus_default_90"]["salient_over_whole"]
    assert low <= high < -0.9  # paired interval of (off - on): clearly below 0


def test_paired_interval_of_a_method_against_itself_is_zero():
    rng = np.random.RandomState(0)
    per_frame = dict(salient=rng.rand(30), background=rng.rand(30), whole=rng.rand(30) + 1,
                     deletion=rng.rand(30), insertion=rng.rand(30))
    for low, high in ev.paired_intervals(per_frame, per_frame, draws=100).values():
        assert low == high == 0.0


def test_back_project_from_the_means_is_visual_backprop(tiny_pilot_path):
    from donkey_saliency import load
    from donkey_saliency.pilots import load_pilot

    frames = textured_image(1, (120, 160))[None].repeat(2, 0)
    with load(tiny_pilot_path, backend="onnxruntime", method="vbp") as saliency:
        outputs = saliency.infer(frames)
        means, mask = saliency.means_of(outputs), saliency.mask_of(outputs)
    steps = load_pilot(tiny_pilot_path).trunk.steps
    assert np.allclose(methods.back_project(steps, means), mask, atol=1e-5)


def test_smooth_random_and_mean_masks():
    masks = methods.smooth_random_masks(3, (30, 40), seed=1)
    assert masks.shape == (3, 30, 40) and masks.min() == 0.0 and masks.max() == 1.0
    assert np.abs(np.diff(masks, axis=2)).max() < 0.2  # smooth: no pixel noise
    fixed = methods.mean_masks(masks)
    assert np.array_equal(fixed[0], fixed[2])


def test_box_blur_keeps_a_constant_and_spreads_a_point():
    flat = np.full((1, 9, 9), 3.0, np.float32)
    assert np.allclose(methods.box_blur(flat, 2), 3.0)
    point = np.zeros((1, 9, 9), np.float32)
    point[0, 4, 4] = 25.0
    blurred = methods.box_blur(point, 2)
    assert np.allclose(blurred[0, 2:7, 2:7], 1.0) and blurred.sum() == pytest.approx(25.0)


# --- the command on a tiny pilot and a tiny tub ------------------------------------------------------
@pytest.fixture(scope="module")
def track_tub(tmp_path_factory):
    """A v2 tub written by donkeycar's own Tub, frames from the procedural track."""
    from donkeycar.parts.tub_v2 import Tub

    from donkey_saliency.compute.track import track_frames

    path = str(tmp_path_factory.mktemp("tubs") / "track")
    tub = Tub(path, inputs=["cam/image_array", "user/angle"], types=["image_array", "float"])
    for sample in track_frames(8, step=3.0, offset_spread=0.5, heading_spread=0.2):
        tub.write_record({"cam/image_array": sample.frame, "user/angle": float(sample.angle)})
    tub.close()
    return path


@pytest.fixture(scope="module")
def categorical_tflite(tmp_path_factory):
    """A tiny pilot with donkeycar's categorical outputs (15 + 20 softmax bins), as .tflite."""
    import tensorflow as tf

    model = tiny_keras_pilot(lambda layers, x: [layers.Dense(15, activation="softmax", name="angle_out")(x),
                                                layers.Dense(20, activation="softmax", name="throttle_out")(x)])
    path = str(tmp_path_factory.mktemp("pilots") / "categorical.tflite")
    with open(path, "wb") as handle:
        handle.write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


@pytest.mark.slow
def test_evaluate_writes_the_table_json_and_pictures(tiny_pilot_path, track_tub, tmp_path, capsys):
    from donkey_saliency.cli import main
    from donkey_saliency.util.images import read_rgb

    out = str(tmp_path / "eval")
    assert main(["evaluate", track_tub, "--model", tiny_pilot_path, "--frames", "5", "--out", out]) == 0
    printed = capsys.readouterr()
    assert "salient/whole" in printed.out and "evaluate" in printed.err  # table on stdout, progress on stderr
    with open(os.path.join(out, "evaluate.json")) as handle:
        report = json.load(handle)
    assert report["frames"] == 5 and report["default_method"] == methods.DEFAULT_METHOD
    names = list(report["methods"])
    assert names[0] == methods.DEFAULT_METHOD and any("random" in n for n in names) and any("mean" in n for n in names)
    assert set(methods.METHODS) <= set(names)  # a Keras pilot: the gradient methods too
    for name, figures in report["methods"].items():
        for metric in ev.METRICS:
            assert np.isfinite(figures[metric]), (name, metric)
        if name != methods.DEFAULT_METHOD:
            low, high = figures["minus_default_90"]["salient_over_whole"]
            assert low <= high
    for picture in ["curves.png"] + ["example_%d.png" % i for i in range(3)]:
        assert read_rgb(os.path.join(out, picture)).ndim == 3


def test_evaluate_a_categorical_tflite_pilot_reports_both_decodings(categorical_tflite, track_tub, tmp_path, capsys):
    from donkey_saliency.cli import main

    out = str(tmp_path / "eval")
    assert main(["evaluate", track_tub, "--model", categorical_tflite, "--frames", "3", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("3 frames, categorical pilot")  # nothing else on stdout (donkeycar's banner)
    assert "steering: expected" in printed and "steering: linear_unbin" in printed
    with open(os.path.join(out, "evaluate.json")) as handle:
        report = json.load(handle)
    assert report["pilot"]["kind"] == "categorical" and report["pilot"]["decoding"] == "expected"
    assert set(report["by_decoding"]) == {"linear_unbin"}
    # The gradient methods come from the graph's backward pass: a .tflite pilot has them all.
    assert set(methods.METHODS) | {"random-smooth", "tub-mean"} == set(report["methods"])
    for name in methods.METHODS:
        rho = report["methods"][name]["randomized_head_spearman"]
        assert -1 <= rho <= 1 and len(report["methods"][name]["cascade_spearman"]) == 2
    assert report["methods"]["vbp"]["randomized_head_spearman"] == 1.0  # VisualBackProp never reads the head
    assert report["methods"]["input-gradient"]["randomized_head_spearman"] < 0.9


@pytest.mark.parametrize("make_args, words", [
    (lambda tub, pilot, tmp: [str(tmp / "nowhere"), "--model", pilot], "tub not found"),
    (lambda tub, pilot, tmp: [tub, "--model", str(tmp / "none.h5")], "model file not found"),
    (lambda tub, pilot, tmp: [tub, "--model", pilot, "--frames", "0"], "--frames"),
    (lambda tub, pilot, tmp: [tub, "--model", pilot, "--area", "0.9"], "--area"),
    (lambda tub, pilot, tmp: [str(tmp), "--model", pilot], "is not a tub"),
])
def test_evaluate_bad_input_is_one_line_and_exit_2(make_args, words, tiny_pilot_path, track_tub, tmp_path, capsys):
    from donkey_saliency.cli import main

    assert main(["evaluate"] + make_args(track_tub, tiny_pilot_path, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_mask_command_takes_a_method(tiny_pilot_path, tmp_path):
    from donkey_saliency.cli import main
    from donkey_saliency.util.images import write_png

    image = str(tmp_path / "frame.png")
    write_png(image, textured_image(2, (120, 160)))
    for method in ("vbp", "vbp-gxa-mid"):
        out = str(tmp_path / method)
        assert main(["mask", tiny_pilot_path, image, "--out", out, "--method", method]) == 0
        mask = np.load(os.path.join(out, "frame.npy"))
        assert mask.shape == (120, 160) and mask.dtype == np.float32 and 0 <= mask.min() and mask.max() <= 1
    assert not np.allclose(np.load(str(tmp_path / "vbp" / "frame.npy")),
                           np.load(str(tmp_path / "vbp-gxa-mid" / "frame.npy")))


def test_unknown_method_is_refused(tiny_pilot_path):
    from donkey_saliency import load
    from donkey_saliency.errors import InputError

    with pytest.raises(InputError, match="unknown saliency method"):
        load(tiny_pilot_path, method="nonsense")


def test_part_computes_the_configured_method(tiny_pilot_path):
    from donkey_saliency import load
    from donkey_saliency.car.part import SaliencyPart

    frame = textured_image(3, (120, 160))
    part = SaliencyPart(tiny_pilot_path, backend="onnxruntime", method="vbp-gxa-mid")
    _, mask, _, _ = part.run(frame)  # unthreaded: processes now
    part.shutdown()
    with load(tiny_pilot_path, backend="onnxruntime", method="vbp-gxa-mid") as saliency:
        expected = saliency.mask(frame)
    assert np.abs(mask.astype(int) - np.round(expected * 255)).max() <= 1  # the part records uint8


def test_part_falls_back_to_vbp_where_a_method_cannot_run(tiny_pilot_path, tmp_path, caplog):
    """An exported .onnx graph has no gradients: the part logs why and shows VisualBackProp."""
    from donkey_saliency import load
    from donkey_saliency.cli import main
    from donkey_saliency.car.part import SaliencyPart

    exported = str(tmp_path / "pilot.onnx")
    assert main(["export", tiny_pilot_path, "--out", exported, "--output", "none"]) == 0
    frame = textured_image(4, (120, 160))
    part = SaliencyPart(exported, backend="onnxruntime", method="input-gradient")
    _, mask, _, _ = part.run(frame)
    part.shutdown()
    assert "input-gradient failed" in caplog.text and "using vbp" in caplog.text
    with load(exported, backend="onnxruntime", method="vbp") as saliency:
        expected = saliency.mask(frame)
    assert np.abs(mask.astype(int) - np.round(expected * 255)).max() <= 1
