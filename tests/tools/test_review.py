"""Review tools, outputs read back with real decoders: the MP4 through OpenCV's VideoCapture (frame
count, size, pixels), the PNGs decoded; feature maps checked against Keras itself."""
import os

import cv2
import numpy as np
import pytest

from helpers import real_data_or_skip, run_cli, tiny_keras_pilot
from donkey_saliency import load
from donkey_saliency.tools.filters import filter_report
from donkey_saliency.tools.layers import layer_grid, write_layer_grid
from donkey_saliency.tools.render import compose_frame, render
from donkey_saliency.tools.backfill import backfill
from tub_helpers import make_v2_tub, read_tub, record_live_tub, rgb_image, synthetic_frame, tree_digest


def video_facts(path):
    """(frame count, (width, height), frames decoded one by one) as OpenCV reads the file."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return count, size, frames


@pytest.fixture(scope="module")
def tubs(tmp_path_factory, tiny_pilot_path):
    base = tmp_path_factory.mktemp("review")
    plain = make_v2_tub(base / "plain", count=25, deleted=(3, 4, 17))
    backfilled = backfill(plain, tiny_pilot_path, backend="onnxruntime", progress=False).path
    live = record_live_tub(base / "live", tiny_pilot_path, records=30)
    return dict(plain=plain, backfilled=backfilled, live=live, base=base)


# --------------------------------------------------------------------------------------------
# render

def test_render_backfilled_tub_uses_recorded_saliency(tubs, tmp_path):
    out = tmp_path / "review.mp4"
    result = render(tubs["backfilled"], str(out), start=2, end=20, fps=10, scale=2, progress=False)
    count, size, frames = video_facts(out)
    # records 2..19 minus the deleted 3, 4, 17
    assert result.frames == count == len(frames) == 15
    assert size == result.size == (640, 240 + 96)
    assert not result.computed
    # The right half of the picture is the recorded overlay, not the camera.
    frame = cv2.cvtColor(frames[0], cv2.COLOR_BGR2RGB)
    camera_half, overlay_half = frame[:240, :320].astype(int), frame[:240, 320:].astype(int)
    assert np.abs(camera_half - overlay_half).mean() > 10
    # It is record 2's own recorded overlay (scaled 2x), not the overlay of a record nearby.
    tub, records = read_tub(tubs["backfilled"])
    by_index = {r["_index"]: r for r in records}

    def recorded_overlay(index):
        image = rgb_image(tub, by_index[index], "saliency/image_array")
        return cv2.resize(image, (320, 240), interpolation=cv2.INTER_LINEAR).astype(int)

    own = np.abs(overlay_half - recorded_overlay(2)).mean()
    neighbour = np.abs(overlay_half - recorded_overlay(5)).mean()
    print("overlay half vs record 2's overlay %.1f, vs record 5's %.1f" % (own, neighbour))
    assert own < 8 and neighbour > 3 * own  # MPEG-4's loss only (measured: 3.9 and 31.6)
    assert [n for n in os.listdir(str(tmp_path)) if n != "review.mp4"] == []  # no temp files left


def test_render_live_recorded_tub(tubs, tmp_path):
    out = tmp_path / "live.mp4"
    result = render(tubs["live"], str(out), fps=20, progress=False)
    count, size, frames = video_facts(out)
    assert result.frames == count == len(frames) == 30
    assert size == (960, 360 + 96)


def test_render_computes_saliency_and_pilot_values_when_the_tub_has_none(tubs, tiny_pilot_path, tmp_path):
    out = tmp_path / "computed.mp4"
    result = render(tubs["plain"], str(out), model_path=tiny_pilot_path, backend="onnxruntime", end=10,
                    scale=1, progress=False)
    count, size, frames = video_facts(out)
    assert result.computed and result.frames == count == 8  # 0..9 minus 3, 4
    assert size == (320, 120 + 96)
    # The computed overlay matches the backfilled one for the same record (same model, same math).
    recorded = render(tubs["backfilled"], str(tmp_path / "recorded.mp4"), end=10, scale=1, progress=False)
    _, _, recorded_frames = video_facts(tmp_path / "recorded.mp4")
    assert recorded.frames == 8
    diff = np.abs(frames[5][:120, 160:].astype(int) - recorded_frames[5][:120, 160:].astype(int)).mean()
    # the recorded one went through JPEG once more, and two MPEG-4 encodes differ; the default gradient
    # mask has finer detail than VisualBackProp's, which those lossy steps blur more
    assert diff < 16


def test_compose_frame_draws_user_and_pilot_bars():
    camera = synthetic_frame(1)
    frame = compose_frame(camera, camera, 7, "user", (0.5, 0.3), (-0.5, 0.2), scale=1)
    assert frame.shape == (120 + 96, 320, 3)
    steering_row = frame[120 + 6 + 4:120 + 6 + 12]  # the user's (upper) bar of the steering track
    green = np.all(steering_row == (60, 200, 60), axis=2).any(axis=0)
    centre = 80 + (320 - 170 - 80) // 2
    assert green[centre + 5:centre + 15].all() and not green[80:centre - 2].any()  # +0.5: right of centre
    pilot_row = frame[120 + 6 + 14:120 + 6 + 22]
    blue = np.all(pilot_row == (70, 140, 255), axis=2).any(axis=0)
    assert blue[centre - 15:centre - 5].all() and not blue[centre + 2:240].any()  # -0.5: left of centre


def test_render_real_tub_with_real_pilot(tmp_path):
    pilot, real_tub = real_data_or_skip()
    out = tmp_path / "real.mp4"
    result = render(real_tub, str(out), model_path=pilot, backend="onnxruntime", start=100, end=140,
                    progress=False)
    count, size, frames = video_facts(out)
    assert result.computed and count == len(frames) == 40 and size == (960, 456)
    # The first frame's right half is record 100's overlay of the real pilot's mask (scaled 3x).
    from donkey_saliency.compute.overlay import overlay

    def expected_overlay(number):
        camera = cv2.cvtColor(cv2.imread(os.path.join(real_tub, "%d_cam-image_array_.jpg" % number)),
                              cv2.COLOR_BGR2RGB)
        with load(pilot, backend="onnxruntime") as saliency:
            picture = overlay(camera, saliency.mask(camera), 0.5, "jet")
        return cv2.resize(picture, (480, 360), interpolation=cv2.INTER_LINEAR).astype(int)

    shown = cv2.cvtColor(frames[0], cv2.COLOR_BGR2RGB)[:360, 480:].astype(int)
    own, later = np.abs(shown - expected_overlay(2100)).mean(), np.abs(shown - expected_overlay(2250)).mean()
    print("real render: record 100's overlay %.1f, record 250's %.1f" % (own, later))
    assert own < 8 and later > 2 * own  # MPEG-4's loss only


def test_render_bad_inputs_exit_2(tubs, tmp_path):
    existing = tmp_path / "exists.mp4"
    existing.write_bytes(b"keep me")
    digest = tree_digest(tubs["plain"])
    cases = {
        "no saliency, no model": (tubs["plain"], tmp_path / "a.mp4"),
        "output exists": (tubs["backfilled"], existing),
        "not a tub": (tmp_path, tmp_path / "b.mp4"),
        "not mp4": (tubs["backfilled"], tmp_path / "c.avi"),
    }
    for name, (tub, out) in cases.items():
        result = run_cli("render", tub, "--out", out)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (name, result.stderr)
    assert existing.read_bytes() == b"keep me"
    assert sorted(os.listdir(str(tmp_path))) == ["exists.mp4"]
    assert tree_digest(tubs["plain"]) == digest
    empty_range = run_cli("render", tubs["backfilled"], "--out", tmp_path / "d.mp4", "--start", "500")
    assert empty_range.returncode == 2 and "no live records" in empty_range.stderr


def test_render_cli(tubs, tmp_path):
    result = run_cli("render", tubs["backfilled"], "--out", tmp_path / "cli.mp4", "--end", "6", "--fps", "5")
    assert result.returncode == 0, result.stderr
    assert "4 frames, 960x456, 5 fps, saliency recorded" in result.stdout
    assert video_facts(tmp_path / "cli.mp4")[0] == 4


# --------------------------------------------------------------------------------------------
# layers

def test_layer_grid_matches_keras_feature_maps(tiny_pilot_path, tmp_path):
    from donkey_saliency.pilots import load_pilot, reference

    frame = synthetic_frame(3)
    keras_maps = reference.feature_maps(load_pilot(tiny_pilot_path), frame[None])
    with load(tiny_pilot_path, backend="onnxruntime", features=True) as saliency:
        grid = layer_grid(saliency, frame)
    assert [name for name, _ in grid.layers] == ["conv2d_1", "conv2d_2"]
    for (name, shape), maps in zip(grid.layers, keras_maps):
        assert shape == maps.shape[1:]  # (h, w, C)
        flat = [c for c in range(maps.shape[3]) if np.ptp(maps[0, :, :, c]) <= 1e-6]
        assert grid.flat[name] == flat

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    out = tmp_path / "grid.png"
    result = run_cli("layers", tiny_pilot_path, image, "--out", out, "--backend", "onnxruntime")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("conv2d_1  58x78x8")
    png = cv2.imread(str(out))
    assert png is not None and png.shape[1] == 1280 and png.shape[0] > 300
    # The command's picture is the grid of the same frame made here (the PNG is lossless).
    assert png.shape == grid.image.shape
    assert np.abs(cv2.cvtColor(png, cv2.COLOR_BGR2RGB).astype(int) - grid.image).max() <= 1


def test_layers_real_pilot(tmp_path):
    pilot, real_tub = real_data_or_skip()
    out = tmp_path / "real_grid.png"
    grid = write_layer_grid(pilot, os.path.join(real_tub, "2100_cam-image_array_.jpg"), str(out),
                            backend="onnxruntime")
    assert [s for _, s in grid.layers] == [(58, 78, 24), (27, 37, 32), (12, 17, 64), (10, 15, 64), (8, 13, 64)]
    png = cv2.imread(str(out))
    assert np.array_equal(cv2.cvtColor(png, cv2.COLOR_BGR2RGB), grid.image)


def test_layers_bad_inputs_exit_2(tiny_pilot_path, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    existing = tmp_path / "exists.png"
    existing.write_bytes(b"keep")
    for args in (["layers", tiny_pilot_path, tmp_path / "missing.jpg", "--out", tmp_path / "a.png"],
                 ["layers", tiny_pilot_path, text, "--out", tmp_path / "b.png"],
                 ["layers", tiny_pilot_path, text, "--out", existing],
                 ["layers", tmp_path / "nomodel.h5", text, "--out", tmp_path / "c.png"]):
        result = run_cli(*args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
    assert sorted(os.listdir(str(tmp_path))) == ["exists.png", "notes.jpg"]


# --------------------------------------------------------------------------------------------
# filters

@pytest.fixture(scope="module")
def pilot_with_dead_filters(tmp_path_factory):
    """conv2d_1 filters 2 and 5 have zero weights and a negative bias (ReLU keeps them at 0); the
    others have positive weights and bias, so they fire on every frame."""
    model = tiny_keras_pilot(lambda layers, x: layers.Dense(2, name="n_outputs0")(x))
    conv1 = model.get_layer("conv2d_1")
    kernel, bias = conv1.get_weights()
    kernel[..., [2, 5]] = 0.0
    bias[[2, 5]] = -1.0
    alive = [0, 1, 3, 4, 6, 7]
    kernel[..., alive] = np.abs(kernel[..., alive])  # positive weights on [0, 1] pixels: always fire
    bias[alive] = 0.1
    conv1.set_weights([kernel, bias])
    path = str(tmp_path_factory.mktemp("dead") / "dead.h5")
    model.save(path)
    return path


def test_filters_finds_the_dead_filters(tubs, pilot_with_dead_filters, tmp_path):
    out = tmp_path / "filters.png"
    report = filter_report(tubs["plain"], pilot_with_dead_filters, out_path=str(out), backend="onnxruntime",
                           batch=8, progress=False)
    assert report.frames == 22  # live records only
    first = report.layers[0]
    assert first.name == "conv2d_1" and first.dead == [2, 5] and first.shape == (58, 78, 8)
    assert first.rates[[0, 1, 3, 4, 6, 7]].min() == 1.0 and first.rates[[2, 5]].max() == 0.0
    row = [line for line in report.table.splitlines() if line.startswith("conv2d_1")][0]
    assert row.split() == ["conv2d_1", "58x78x8", "8", "2", "0", "2,", "5", "-"]
    png = cv2.imread(str(out))
    assert png is not None and png.shape[1] == 1280
    # Red bars (dead filters) are drawn: RGB (255, 60, 60) is BGR (60, 60, 255) in the file.
    assert np.all(png == (60, 60, 255), axis=2).sum() > 20

    result = run_cli("filters", tubs["plain"], "--model", pilot_with_dead_filters, "--backend", "onnxruntime")
    assert result.returncode == 0, result.stderr
    assert "2, 5" in result.stdout.splitlines()[1]


def test_filters_bad_inputs_exit_2(tubs, tiny_pilot_path, tmp_path):
    for args in (["filters", tmp_path, "--model", tiny_pilot_path],
                 ["filters", tubs["plain"], "--model", tmp_path / "none.h5"],
                 ["filters", tubs["plain"], "--model", tiny_pilot_path, "--rare", "3"]):
        result = run_cli(*args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)


def test_colorize_table_equals_opencv_applycolormap():
    """overlay.colorize uses a cached 256-entry table; it must give exactly applyColorMap's colours."""
    from donkey_saliency.compute.overlay import COLORMAPS, colorize

    mask = np.random.default_rng(1).random((120, 160), dtype=np.float32)
    mask[0, :3] = (0.0, 1.0, 0.5)
    levels = np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8)
    for name in COLORMAPS:
        if name == "gray":
            continue
        expected = cv2.cvtColor(cv2.applyColorMap(levels, getattr(cv2, "COLORMAP_" + name.upper())),
                                cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(colorize(mask, name), expected)
