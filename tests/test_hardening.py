"""Issue 11: every defect found by probing the part, the web routes and the tools, each pinned by a
test that failed before its fix. Real parts throughout: a real SaliencyPart on a real ONNX Runtime
backend, donkeycar's real LocalWebController on 127.0.0.1 read over real sockets, real tubs, the
real console script, and headless Chromium for video playback. Fakes only inject a fault (a backend
wrapper that fails or returns bad maps, a frame whose conversion raises)."""
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc

import cv2
import numpy as np
import pytest

from helpers import assert_one_line_exit_2, run_cli, wait_for
from donkey_saliency.car.part import SaliencyPart
from tub_helpers import copy_tub, read_tub
from browser import DevTools, chromium_or_skip
from web_helpers import camera_frame, LiveServer, open_stream


class FaultyBackend(object):
    """Wraps a real backend; only the faults it injects are fake."""

    def __init__(self, backend, fail_every=0, nan=False, bad_means=False, slow_s=0.0):
        self.backend = backend
        self.fail_every, self.nan, self.bad_means, self.slow_s = fail_every, nan, bad_means, slow_s
        self.calls = 0
        self.closed_in = None

    def infer(self, frames):
        self.calls += 1
        if self.slow_s:
            time.sleep(self.slow_s)
        if self.fail_every and self.calls % self.fail_every == 0:
            raise RuntimeError("injected fault on call %d" % self.calls)
        outputs = dict(self.backend.infer(frames))
        if self.nan:
            mask = outputs["mask"].copy()
            mask[..., 0, 0] = np.nan
            outputs["mask"] = mask
        if self.bad_means:
            outputs["mean_0"] = np.zeros((1, 7), np.float32)  # 1-D per frame
            outputs["mean_1"] = np.zeros((1, 0, 0), np.float32)  # empty
        return outputs

    def describe(self):
        return "faulty " + self.backend.describe()

    def close(self):
        self.closed_in = threading.current_thread()
        self.backend.close()


def part_with(model_path, **faults):
    from donkey_saliency import backends

    part = SaliencyPart(model_path, backend="onnxruntime", method="vbp")  # faults injected in the graph's mask
    assert part.graph.mask_name == "mask" and part.graph.mean_names[:2] == ["mean_0", "mean_1"]
    part.backend = FaultyBackend(backends.activate_with_fallback(part.graph, "onnxruntime", {}), **faults)
    return part


def start_worker(part):
    thread = threading.Thread(target=part.update, daemon=True)
    thread.start()
    return thread


def saliency_records(caplog, level):
    return [r for r in caplog.records if r.name == "donkey_saliency.car.part" and r.levelno == level]


# --- the car: web routes ----------------------------------------------------------------------------

def raw_request(port, head, body=b"", read_timeout=10.0):
    """Sends ``head`` (and ``body``) on a fresh socket; the status line of the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(head + body)
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n", 1)[0].decode("latin-1")


def test_1_deeply_nested_body_is_refused_unparsed(live):
    """100,000 '[' used to reach json.loads on the IOLoop thread (recursion limit 100,000 after
    `import donkeycar`): a segfault of the car's process."""
    status, _, reply = live.request("/saliency/drive_view", "POST", b"[" * 100000)
    assert status == 413 and b"error" in reply
    # Small but nested: refused by the fixed pattern, not a parser.
    status, _, _ = live.request("/saliency/drive_view", "POST", b"[" * 900)
    assert status == 400
    status, _, reply = live.request("/saliency/drive_view", "POST", b'{"on": true}')
    assert status == 200 and json.loads(reply) == {"drive_view": True}
    assert live.stats()["drive_view"] is True


def test_2_large_body_refused_before_it_is_read(live):
    """A 50 MB body used to be read and parsed (4.1 s stall). Now the reply comes while the client
    has sent only the headers and 1 KB: the server never waited for the rest."""
    head = (b"POST /saliency/drive_view HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n" % live.port)
    assert raw_request(live.port, head, b" " * 1024, read_timeout=10).split(" ")[1] == "413"
    # Chunked (no Content-Length): cut off at the same limit, never 200.
    chunk = b" " * 4000
    head = (b"POST /saliency/drive_view HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nTransfer-Encoding: chunked\r\n\r\n"
            % live.port)
    status = raw_request(live.port, head, b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk))
    assert not status.split(" ")[1:2] == ["200"], status
    assert live.web.drive_view.on is False and live.stats()["status"] in ("starting", "running")


def test_3_cross_origin_writes_are_refused(live):
    import http.client

    def post(headers):
        connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
        try:
            connection.request("POST", "/saliency/drive_view", body=b'{"on": true}',
                               headers=dict({"Content-Type": "text/plain"}, **headers))
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    own = "http://127.0.0.1:%d" % live.port
    for foreign in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": "http://127.0.0.1:%d" % (live.port + 1)},
                    {"Referer": "http://evil.example/page.html"}):
        status, reply = post(foreign)
        assert status == 403 and "error" in reply, foreign
        assert live.web.drive_view.on is False
    assert post({"Origin": own}) == (200, {"drive_view": True})
    assert post({"Referer": own + "/saliency"}) == (200, {"drive_view": True})
    assert post({}) == (200, {"drive_view": True})  # curl, scripts: no Origin, no Referer (documented)


def test_9_viewer_cap_and_clients_that_never_read(tiny_pilot_path):
    live = LiveServer(tiny_pilot_path, max_viewers=2, stall_s=1.0)
    stop = threading.Event()
    big = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)  # ~300 KB JPEGs

    def feed():
        while not stop.is_set():
            live.part.run_threaded(big)
            time.sleep(1.0 / 30)

    feeder = threading.Thread(target=feed, daemon=True)
    connections = []
    try:
        feeder.start()
        assert wait_for(lambda: live.part.latest is not None, timeout=20)
        connections = [open_stream(live.port, "/saliency/video")[0], open_stream(live.port, "/saliency/camera")[0]]
        assert wait_for(lambda: live.web.clients == 2)
        status, _, _ = live.request("/saliency/video")
        assert status == 503 and live.stats()["refused"] == 1
        for connection in connections:
            connection.close()
        assert wait_for(lambda: live.web.clients == 0)
        # A client that never reads: a tiny receive buffer, and it never calls recv.
        sleeper = socket.socket()
        sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sleeper.connect(("127.0.0.1", live.port))
        sleeper.sendall(b"GET /saliency/video HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        connections = [sleeper]
        assert wait_for(lambda: live.web.clients == 1)
        assert wait_for(lambda: live.web.clients == 0 and live.web.stalled == 1, timeout=30), live.web.stats()
        assert live.request("/saliency/stats")[0] == 200
    finally:
        stop.set()
        for connection in connections:
            connection.close()
        feeder.join(5)
        live.close()


# --- the car: the part ------------------------------------------------------------------------------

def test_4_run_threaded_does_constant_work_for_a_huge_frame(tiny_pilot_path):
    """A 4000x3000 frame used to be copied in the drive loop's thread (540 ms, +36 MB a call)."""
    part = SaliencyPart(tiny_pilot_path, backend="onnxruntime")
    worker = start_worker(part)
    try:
        part.run_threaded(camera_frame())
        assert wait_for(lambda: part.latest is not None, timeout=20)
        huge = np.full((3000, 4000, 3), 90, np.uint8)
        assert wait_for(lambda: not part.busy)
        tracemalloc.start()
        try:
            for _ in range(3):
                outputs = part.run_threaded(huge)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, "run_threaded allocated %d bytes for a %d-byte frame" % (peak, huge.nbytes)
        assert len(outputs) == 4
        # The worker made its own full-size copy and overlay.
        assert wait_for(lambda: part.latest.frame.shape == (3000, 4000, 3), timeout=30)
        assert not np.shares_memory(part.latest.frame, huge)
    finally:
        part.shutdown()
        worker.join(10)


def test_5_alternating_faults_cannot_flood_the_log(tiny_pilot_path, caplog):
    """A listener failing on every frame and a backend failing on every 3rd call used to log a
    WARNING and an INFO per frame; now one WARNING per cause, the rest counted."""
    part = part_with(tiny_pilot_path, fail_every=3)

    def failing_listener(result):
        raise ValueError("listener broke")

    part.add_listener(failing_listener)
    caplog.set_level(logging.INFO, logger="donkey_saliency.car.part")
    for i in range(300):
        part.run(camera_frame(i))
    warnings, infos = saliency_records(caplog, logging.WARNING), saliency_records(caplog, logging.INFO)
    assert len(warnings) == 2 and infos == [], [r.getMessage() for r in warnings + infos]
    assert part.stats()["errors"] == 100 + 200  # every fault counted: 100 inference, 200 listener
    assert part.stats()["processed"] == 200
    # Faults over: one INFO after a run of good frames, and nothing more.
    part.backend.fail_every = 0
    part._listeners.remove(failing_listener)
    for i in range(40):
        part.run(camera_frame(i))
    infos = saliency_records(caplog, logging.INFO)
    assert len(infos) == 1 and "recovered" in infos[0].getMessage()
    assert len(saliency_records(caplog, logging.WARNING)) == 2


def test_6_nan_masks_are_counted_and_never_recorded(tiny_pilot_path, caplog):
    part = part_with(tiny_pilot_path, nan=True)
    caplog.set_level(logging.INFO, logger="donkey_saliency.car.part")
    for i in range(5):
        overlay_image, mask, _, lag = part.run(camera_frame(i))
    assert part.latest is None and part.stats()["errors"] == 5 and part.stats()["processed"] == 0
    assert lag == -1.0 and not mask.any()  # the "no mask yet" placeholder, not a NaN mask turned to zeros
    assert len(saliency_records(caplog, logging.WARNING)) == 1
    assert "NaN" in saliency_records(caplog, logging.WARNING)[0].getMessage()


def test_7_malformed_layer_maps_are_404_and_counted(tiny_pilot_path):
    from donkey_saliency.compute.overlay import layer_picture

    live = LiveServer(tiny_pilot_path)
    try:
        live.part.backend = part_with(tiny_pilot_path, bad_means=True).backend
        live.feeding.set()
        assert wait_for(lambda: live.part.latest is not None, timeout=20)
        for index in (0, 1):
            status, _, _ = live.request("/saliency/layer/%d.jpg" % index)
            assert status == 404
        figures = live.stats()
        assert figures["errors"] >= 2 and figures["layer_shapes"] == [None, None]
    finally:
        live.close()
    for bad in (np.zeros(5), np.zeros((0, 3))):
        with pytest.raises(ValueError):
            layer_picture(bad)


def test_8_worker_survives_unexpected_errors_and_shutdown_joins_it(tiny_pilot_path):
    class Unconvertible(object):
        def __array__(self, *args, **kwargs):
            raise RuntimeError("a frame numpy cannot read")

    part = part_with(tiny_pilot_path, slow_s=0.3)
    worker = start_worker(part)
    part.run_threaded(Unconvertible())  # never raises in the loop thread
    assert wait_for(lambda: part.stats()["errors"] == 1 and not part.busy)
    assert worker.is_alive()
    part.run_threaded(camera_frame())
    assert wait_for(lambda: part.latest is not None, timeout=20)
    assert part.stats()["status"] == "running"
    # Outputs and result come from one state: the overlay handed to the loop is the latest's.
    # This call also queues a frame the (slow) backend takes 0.3 s over: shutdown() below happens
    # with it pending or in flight, and returns only once the worker has ended and closed the
    # backend in the worker's own thread.
    assert part.run_threaded(camera_frame(1))[0] is part.latest.overlay
    assert part.busy
    backend = part.backend
    part.shutdown()
    assert not worker.is_alive() and backend.closed_in is worker and part.backend is None


def test_17_bad_alpha_and_colormap_in_the_part_are_logged_and_replaced(tiny_pilot_path, caplog):
    from donkey_saliency.errors import InputError
    from donkey_saliency.compute.overlay import check_style

    caplog.set_level(logging.ERROR, logger="donkey_saliency.car.part")
    part = SaliencyPart(tiny_pilot_path, alpha=5, colormap="nosuch")
    assert (part.alpha, part.colormap) == (0.5, "jet")
    assert "alpha must be between 0 and 1" in caplog.text
    assert check_style("0.25", "magma") == (0.25, "magma")
    for alpha, colormap in ((5, "jet"), (-1, "jet"), (float("nan"), "jet"), ("x", "jet"), (0.5, "nosuch")):
        with pytest.raises(InputError):
            check_style(alpha, colormap)


# --- the tools --------------------------------------------------------------------------------------


def image_of(tub, index):
    _, records = read_tub(tub)
    record = [r for r in records if r["_index"] == index][0]
    return os.path.join(tub, "images", record["cam/image_array"])


def test_10_zero_byte_jpeg_is_one_line_and_exit_2(tool_tubs, tiny_pilot_path, tmp_path):
    from donkey_saliency.errors import InputError
    from donkey_saliency.util.images import decode_image

    with pytest.raises(InputError):
        decode_image(b"", "empty.jpg")
    tub = copy_tub(tool_tubs["tub"], tmp_path / "tub")
    open(image_of(tub, 5), "wb").close()
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    runs = {
        "backfill": ("backfill", tub, "--model", tiny_pilot_path, "--out", tmp_path / "copy"),
        "render": ("render", tub, "--model", tiny_pilot_path, "--out", tmp_path / "r.mp4", "--recompute"),
        "filters": ("filters", tub, "--model", tiny_pilot_path),
        "mask": ("mask", tiny_pilot_path, empty, "--out", tmp_path / "masks"),
    }
    for command, args in runs.items():
        line = assert_one_line_exit_2(run_cli(*(args + ("--backend", "onnxruntime"))), command)
        assert "readable image" in line or "not an image" in line, line
    assert sorted(os.listdir(str(tmp_path))) == ["empty.jpg", "tub"]  # nothing half-written


def test_11_catalog_line_that_is_not_an_object_is_a_deleted_stub(tool_tubs, tiny_pilot_path, tmp_path):
    from donkey_saliency.tubs.read import open_tub

    tub = copy_tub(tool_tubs["tub"], tmp_path / "tub")
    with open(os.path.join(tub, "catalog_2.catalog"), "a") as handle:
        handle.write("[1, 2]\n42\n")
    source = open_tub(tub)
    assert len(source.entries) == 14 and [e.index for e in source.entries if e.deleted] == [3, 12, 13]
    result = run_cli("render", tub, "--model", tiny_pilot_path, "--backend", "onnxruntime", "--out",
                     tmp_path / "r.mp4", "--scale", "1")
    assert result.returncode == 0 and "11 frames" in result.stdout, result.stderr


def rewrite_manifest(tub, change):
    path = os.path.join(tub, "manifest.json")
    lines = open(path).read().splitlines()
    catalogs = json.loads(lines[4])
    change(catalogs)
    lines[4] = json.dumps(catalogs)
    open(path, "w").write("\n".join(lines) + "\n")


def test_12_max_len_zero_is_one_line_and_exit_2(tool_tubs, tiny_pilot_path, tmp_path):
    tub = copy_tub(tool_tubs["tub"], tmp_path / "tub")
    rewrite_manifest(tub, lambda catalogs: catalogs.update(max_len=0))
    line = assert_one_line_exit_2(run_cli("backfill", tub, "--model", tiny_pilot_path, "--backend", "onnxruntime",
                                          "--out", tmp_path / "copy"), "backfill")
    assert "max_len" in line and not os.path.exists(str(tmp_path / "copy"))


def test_16_paths_leading_out_of_the_tub_are_refused(tool_tubs, tiny_pilot_path, tmp_path):
    from donkey_saliency.errors import InputError
    from donkey_saliency.tubs.read import open_tub

    tub = copy_tub(tool_tubs["tub"], tmp_path / "tub")
    rewrite_manifest(tub, lambda catalogs: catalogs["paths"].append("../../../../../../etc/passwd"))
    with pytest.raises(InputError, match="outside the tub"):
        open_tub(tub)
    line = assert_one_line_exit_2(run_cli("backfill", tub, "--model", tiny_pilot_path, "--out", tmp_path / "c"),
                                  "backfill")
    assert "outside the tub" in line

    tub = copy_tub(tool_tubs["tub"], tmp_path / "tub2")
    catalog = os.path.join(tub, "catalog_0.catalog")
    lines = open(catalog).read().splitlines()
    record = json.loads(lines[1])
    record["cam/image_array"] = "../../../../../../etc/hostname"
    lines[1] = json.dumps(record)
    open(catalog, "w").write("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="outside the tub"):
        open_tub(tub)
    os.symlink("/etc", os.path.join(tub, "images", "elsewhere"))  # a link out is refused too
    lines[1] = json.dumps(dict(record, **{"cam/image_array": "elsewhere/hostname"}))
    open(catalog, "w").write("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="outside the tub"):
        open_tub(tub)


def test_15_two_backfills_to_one_output_cannot_collide(tool_tubs, tiny_pilot_path, tmp_path):
    from donkey_saliency.tools.backfill import OutputLock, partial_path

    out = str(tmp_path / "copy")
    first = OutputLock(out).acquire()  # the first run, holding its lock, with its partial copy
    os.makedirs(os.path.join(partial_path(out), "images"))
    marker = os.path.join(partial_path(out), "images", "0_cam_image_array_.jpg")
    open(marker, "wb").write(b"first run's work")
    try:
        line = assert_one_line_exit_2(run_cli("backfill", tool_tubs["tub"], "--model", tiny_pilot_path,
                                              "--backend", "onnxruntime", "--out", out), "backfill")
        assert "another run (pid %d)" % os.getpid() in line
        assert open(marker, "rb").read() == b"first run's work" and not os.path.exists(out)
    finally:
        first.release()
    # A lock left by a process that is gone is taken over.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    open(first.path, "w").write("%d\n" % gone.pid)
    result = run_cli("backfill", tool_tubs["tub"], "--model", tiny_pilot_path, "--backend", "onnxruntime", "--out", out)
    assert result.returncode == 0, result.stderr
    assert len(read_tub(out)[1]) == 11 and not os.path.exists(first.path)


def test_17_cli_validates_alpha_and_colormap_before_writing(tool_tubs, tiny_pilot_path, tmp_path):
    image = tmp_path / "frame.jpg"
    cv2.imwrite(str(image), camera_frame())
    bad = [("--colormap", "nosuch"), ("--alpha", "5"), ("--alpha", "-1")]
    for option in bad:
        runs = {
            "mask": ("mask", tiny_pilot_path, image, "--out", tmp_path / "masks"),
            "backfill": ("backfill", tool_tubs["tub"], "--model", tiny_pilot_path, "--out", tmp_path / "copy"),
            "render": ("render", tool_tubs["tub"], "--model", tiny_pilot_path, "--out", tmp_path / "r.mp4"),
        }
        if option[0] == "--colormap":
            runs["layers"] = ("layers", tiny_pilot_path, image, "--out", tmp_path / "grid.png")
        for command, args in runs.items():
            line = assert_one_line_exit_2(run_cli(*(args + option)), command)
            assert ("colormap" in line) if option[0] == "--colormap" else ("alpha" in line), line
    assert sorted(os.listdir(str(tmp_path))) == ["frame.jpg"]  # no .npy left behind, nothing at all


def test_19_categorical_decoding_is_donkeycars_linear_unbin():
    from donkeycar.utils import linear_unbin as donkey_unbin

    from donkey_saliency.pilots.decode import angle_and_throttle, linear_unbin

    for b in range(20):
        throttle = np.zeros(20, np.float32)
        throttle[b] = 1.0
        angle = np.zeros(15, np.float32)
        angle[b % 15] = 1.0
        expected = (donkey_unbin(angle), donkey_unbin(throttle, N=20, offset=0.0, R=0.5))
        assert angle_and_throttle([angle, throttle]) == pytest.approx(expected, abs=1e-12)
        assert linear_unbin(throttle, N=20, offset=0.0, R=0.5) == pytest.approx(b * 0.025)
    assert angle_and_throttle([np.zeros(3)]) is None


def test_18_tflite_pilot_predictions_equal_the_keras_pilot(linear_pilot_path, tmp_path):
    from pilot_helpers import to_tflite

    from donkey_saliency.api import PilotPass
    from donkey_saliency.compute.frames import fit_to_model
    from donkey_saliency.pilots.reference import keras_model

    import shutil

    h5 = str(tmp_path / "pilot.h5")
    shutil.copyfile(linear_pilot_path, h5)
    tflite = to_tflite(h5)
    frames = [camera_frame(i) for i in range(4)] + [np.full((90, 120, 3), 200, np.uint8)]
    with PilotPass(tflite, "onnxruntime") as pilot:
        from_tflite = pilot.angle_and_throttle(frames)
    model = keras_model(h5)  # the oracle: Keras itself
    x = np.stack([fit_to_model(f, model.inputs[0].shape[1:]) for f in frames]).astype(np.float32) / 255.0
    from_keras = [(float(a), float(t)) for a, t in zip(*[np.ravel(o) for o in model(x, training=False)])]
    assert all(p is not None for p in from_tflite)
    np.testing.assert_allclose(np.array(from_tflite), np.array(from_keras), atol=1e-4)
    # render draws them: a tub without pilot/angle, the .tflite pilot.
    tub = str(tmp_path / "tub")
    from donkeycar.parts.tub_v2 import Tub

    writer = Tub(tub, inputs=["cam/image_array", "user/angle", "user/throttle", "user/mode"],
                 types=["image_array", "float", "float", "str"])
    for i in range(3):
        writer.write_record({"cam/image_array": camera_frame(i), "user/angle": 0.0, "user/throttle": 0.2,
                             "user/mode": "user"})
    writer.close()
    from donkey_saliency.tools.render import compose_frame, render

    result = render(tub, str(tmp_path / "r.mp4"), model_path=tflite, backend="onnxruntime", scale=1, progress=False)
    assert result.frames == 3
    ok, first = cv2.VideoCapture(str(tmp_path / "r.mp4")).read()
    camera = camera_frame(0)
    with_bars = compose_frame(camera, camera, 0, "user", (0.0, 0.2), from_tflite[0], scale=1)
    without = compose_frame(camera, camera, 0, "user", (0.0, 0.2), None, scale=1)
    panel = slice(with_bars.shape[0] - 96, with_bars.shape[0])
    shown = cv2.cvtColor(first, cv2.COLOR_BGR2RGB)[panel].astype(np.int16)
    assert np.mean(np.abs(shown - with_bars[panel])) < np.mean(np.abs(shown - without[panel]))


@pytest.fixture
def small_fs(tmp_path):
    """mount(kind, free=0) -> a directory on a fresh 1 MB tmpfs: 'ro' read-only, 'full' with ``free``
    bytes left."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for a read-only / full filesystem needs root (mount -t tmpfs)")
    mounted = []

    def mount(kind, free=0):
        point = tmp_path / ("fs_%s" % kind)
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip("cannot mount a tmpfs here: %s" % result.stderr.strip())
        mounted.append(point)
        if kind == "ro":
            subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        else:
            with open(str(point / "filler"), "wb", buffering=0) as handle:
                try:
                    while True:
                        handle.write(b"\0" * 4096)
                except OSError:
                    pass
                handle.truncate(max(0, handle.tell() - free))
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


@pytest.mark.parametrize("kind", ["ro", "full"])
def test_13_read_only_or_full_filesystem_is_one_line_and_nothing_left(small_fs, kind, tool_tubs,
                                                                        tiny_pilot_path, tmp_path):
    """Every writing command on a read-only or full filesystem: exit 2, one line, no partial output."""
    fs = small_fs(kind)
    before = sorted(os.listdir(str(fs)))
    image = tmp_path / "frame.jpg"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    runs = {
        "backfill": ("backfill", tool_tubs["tub"], "--model", tiny_pilot_path, "--out", fs / "copy"),
        # .mp4: before the fix a full disk gave exit 0 and a truncated file (the VideoWriter reports nothing)
        "render": ("render", tool_tubs["tub"], "--model", tiny_pilot_path, "--out", fs / "review.mp4",
                   "--scale", "2"),
        "mask": ("mask", tiny_pilot_path, image, "--out", fs),
    }
    for command, args in runs.items():
        line = assert_one_line_exit_2(run_cli(*(args + ("--backend", "onnxruntime"))), command)
        assert any(word in line for word in ("Read-only", "No space", "disk full")), line
        assert sorted(os.listdir(str(fs))) == before, command
    line = assert_one_line_exit_2(run_cli("export", tiny_pilot_path, "--out", fs / "graph.onnx"), "export")
    assert sorted(os.listdir(str(fs))) == before


def test_14_render_that_fills_the_disk_midway_is_one_line_and_nothing_left(small_fs, tool_tubs, tiny_pilot_path):
    """Room for the video's first frames only: the VideoWriter opens, then fails silently; render used
    to exit 0 with a truncated .mp4."""
    fs = small_fs("full", free=64 * 1024)
    before = sorted(os.listdir(str(fs)))
    line = assert_one_line_exit_2(run_cli("render", tool_tubs["tub"], "--model", tiny_pilot_path, "--backend",
                                          "onnxruntime", "--out", fs / "review.mp4", "--scale", "4"), "render")
    assert "disk full" in line and sorted(os.listdir(str(fs))) == before


VIDEO_STATE = """JSON.stringify((function () {
  var v = document.getElementById("v");
  var q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : {};
  return { readyState: v.readyState, duration: v.duration, width: v.videoWidth, height: v.videoHeight,
           ended: v.ended, error: v.error ? v.error.code : null, decoded: q.totalVideoFrames || 0 };
})())"""


@pytest.mark.browser
def test_20_review_video_plays_in_headless_chromium(tool_tubs, tiny_pilot_path, tmp_path):
    """The .webm (VP8) review video plays in Chromium to its end; the .mp4 (MPEG-4 Part 2, all that
    OpenCV's wheels can write as MP4) does not - which is why .webm exists."""
    chromium_or_skip()
    from donkey_saliency.tools.render import render

    results = {}
    for suffix in (".webm", ".mp4"):
        results[suffix] = render(tool_tubs["tub"], str(tmp_path / ("review" + suffix)), model_path=tiny_pilot_path,
                                 backend="onnxruntime", fps=10, scale=1, progress=False)
    webm = results[".webm"]
    assert webm.frames == 11
    browser = DevTools(str(tmp_path / "profile"), str(tmp_path / "chromium.log"), 800, 600)
    states = {}
    try:
        for suffix in (".webm", ".mp4"):
            page = tmp_path / ("play%s.html" % suffix.replace(".", "_"))
            page.write_text('<!doctype html><video id="v" src="review%s" muted autoplay playsinline></video>' % suffix)
            browser.open("file://" + str(page), 800, 600, mobile=False)
            state = {}

            def settled():
                state.update(json.loads(browser.evaluate(VIDEO_STATE) or "{}"))
                return state.get("ended") or state.get("error") is not None

            wait_for(settled, timeout=30)
            states[suffix] = dict(state)
    finally:
        browser.close()
    played = states[".webm"]
    assert played["error"] is None and played["ended"] and played["readyState"] >= 2, played
    assert played["duration"] == pytest.approx(webm.frames / 10.0, abs=0.15)
    assert (played["width"], played["height"]) == webm.size
    assert played["decoded"] >= webm.frames - 1, played
    assert states[".mp4"]["error"] == 4, states[".mp4"]  # MEDIA_ERR_SRC_NOT_SUPPORTED: the defect .webm fixes
