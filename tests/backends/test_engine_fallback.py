"""``api.Saliency``, the one owner of a graph on a backend, and its fallback from a failing engine to
ONNX Runtime: in the tools (``load``, ``mask``), and under SALIENCY_SHARE_PILOT in a real donkeycar
``Vehicle`` whose TubWriter records the part's outputs (read back with donkeycar's ``Tub``).

TensorRT is absent here; where a test needs an engine that starts and then fails, the real
``TensorRTBackend`` class gets an injected fault (its availability, activation or inference) - the
only fakes. The NaN mask is injected by a wrapper around the real ONNX Runtime backend.
"""
import logging
import threading

import numpy as np
import pytest

from helpers import real_frames, wait_for
import donkey_saliency
from donkey_saliency import cli
from donkey_saliency.api import Saliency
from donkey_saliency.backends.onnxruntime import OnnxRuntimeBackend
from donkey_saliency.backends.tensorrt import TensorRTBackend
from donkey_saliency.keys import LAG_KEY, MASK_KEY, NO_MASK_LAG_MS, OUTPUTS, RECORD_KEYS, RECORD_TYPES


class _EngineFault(RuntimeError):
    pass


def _engine_that_fails_on_frames(monkeypatch):
    """TensorRT that activates, then fails on every frame (as an engine after a CUDA error does)."""
    calls = []

    def infer(self, frames, extra=None):
        calls.append(threading.current_thread().name)
        raise _EngineFault("CUDA error 700: an illegal memory access was encountered\nmore TensorRT log")

    monkeypatch.setattr(TensorRTBackend, "availability", classmethod(lambda cls: (True, "")))
    monkeypatch.setattr(TensorRTBackend, "_activate", lambda self: None)
    monkeypatch.setattr(TensorRTBackend, "_infer", infer)
    monkeypatch.setattr(TensorRTBackend, "_close", lambda self: None)
    return calls


def _fail(self, *args):
    raise _EngineFault("injected: onnxruntime cannot run either")


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# --- the owner, on its own ---------------------------------------------------------------------------
def test_an_engine_failing_on_a_frame_is_replaced_by_onnxruntime_once(tiny_pilot_path, monkeypatch, caplog):
    calls = _engine_that_fails_on_frames(monkeypatch)
    frames = real_frames(3)
    with donkey_saliency.load(tiny_pilot_path, backend="onnxruntime") as reference:
        expected = reference.masks(frames)
    saliency = Saliency.open(tiny_pilot_path, backend="tensorrt")
    with caplog.at_level(logging.WARNING):
        with saliency:
            assert saliency.backend.name == "tensorrt"
            masks = saliency.masks(frames)
            assert saliency.backend.name == "onnxruntime" and saliency.describe().startswith("onnxruntime")
            again = saliency.masks(frames)
    np.testing.assert_array_equal(masks, expected)
    np.testing.assert_array_equal(again, expected)
    assert len(calls) == 1  # the failed engine is not tried again
    [warning] = _warnings(caplog)
    assert warning == ("saliency backend tensorrt failed while running (CUDA error 700: an illegal memory access "
                       "was encountered); running the same graph on onnxruntime from now on")


def test_without_fallback_the_engine_failure_is_raised(tiny_pilot_path, monkeypatch):
    _engine_that_fails_on_frames(monkeypatch)
    saliency = Saliency.open(tiny_pilot_path, backend="tensorrt").activate(fallback=False)
    try:
        with pytest.raises(_EngineFault):
            saliency.masks(real_frames(1))
    finally:
        saliency.close()


def test_onnxruntime_failures_are_raised_not_retried(tiny_pilot_path, monkeypatch):
    monkeypatch.setattr(OnnxRuntimeBackend, "_infer", _fail)
    with donkey_saliency.load(tiny_pilot_path, backend="onnxruntime") as saliency:
        with pytest.raises(_EngineFault):
            saliency.mask(real_frames(1)[0])
        assert saliency.backend.name == "onnxruntime"


def test_the_tools_fall_back_when_tensorrt_cannot_start(tiny_pilot_path, tmp_path, monkeypatch, caplog):
    """``load`` (behind mask, backfill, review, evaluate) activates with the fallback: asking for
    TensorRT where it cannot start gives ONNX Runtime's mask and one warning, not an error."""
    monkeypatch.setattr(TensorRTBackend, "availability", classmethod(lambda cls: (True, "")))
    monkeypatch.setattr(TensorRTBackend, "_activate", _fail)
    frame = real_frames(1)[0]
    with caplog.at_level(logging.WARNING):
        mask = donkey_saliency.load(tiny_pilot_path, backend="tensorrt").mask(frame)
    np.testing.assert_array_equal(mask, donkey_saliency.load(tiny_pilot_path, backend="onnxruntime").mask(frame))
    [warning] = _warnings(caplog)
    assert "tensorrt failed (injected: onnxruntime cannot run either); falling back to onnxruntime" in warning


def test_mask_command_with_tensorrt_asked_for_falls_back(tiny_pilot_path, tmp_path, capsys):
    """Here TensorRT does not import: ``mask --backend tensorrt`` still writes ONNX Runtime's mask."""
    import cv2

    frame = real_frames(1)[0]
    image = str(tmp_path / "frame.png")
    cv2.imwrite(image, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    if TensorRTBackend.availability()[0]:
        pytest.skip("TensorRT is usable here; this checks the fallback where it is not")
    assert cli.main(["mask", tiny_pilot_path, image, "--out", str(tmp_path / "out"), "--backend", "tensorrt"]) == 0
    expected = donkey_saliency.load(tiny_pilot_path, backend="onnxruntime").mask(frame)
    np.testing.assert_array_equal(np.load(str(tmp_path / "out" / "frame.npy")), expected)


# --- SALIENCY_SHARE_PILOT in a real Vehicle ----------------------------------------------------------------
class _Camera(object):
    def __init__(self, frames):
        self.frames, self.index = frames, 0

    def run(self):
        frame = self.frames[self.index % len(self.frames)]
        self.index += 1
        return frame.copy()


class _NanMasks(object):
    """Wraps the interpreter's real ONNX Runtime backend; only the NaN in every mask is injected."""

    def __init__(self, backend):
        self.backend = backend

    def infer(self, frames, extra=None):
        outputs = dict(self.backend.infer(frames, extra))
        outputs["mask"] = np.full_like(outputs["mask"], np.nan)
        return outputs

    def describe(self):
        return "nan " + self.backend.describe()

    def close(self):
        self.backend.close()


def _shared_car(model_path, tub_path, backend, loops):
    """camera -> donkeycar's KerasLinear (its interpreter replaced by SALIENCY_SHARE_PILOT's wiring) ->
    SaliencyPart -> TubWriter, as complete.py orders them. Returns (vehicle, pilot, part)."""
    from donkeycar.parts.interpreter import KerasInterpreter
    from donkeycar.parts.keras import KerasLinear
    from donkeycar.parts.tub_v2 import TubWriter
    from donkeycar.vehicle import Vehicle

    from donkey_saliency.car.vehicle import share_pilot_pass

    vehicle = Vehicle()
    vehicle.add(_Camera(real_frames(4)), outputs=["cam/image_array"])
    pilot = KerasLinear(interpreter=KerasInterpreter())
    vehicle.add(pilot, inputs=["cam/image_array"], outputs=["pilot/angle", "pilot/throttle"])
    # vbp: the mask comes from the pilot's own pass (a gradient method computes it in the worker instead)
    part = donkey_saliency.SaliencyPart(model_path, backend="onnxruntime", method="vbp")
    assert share_pilot_pass(vehicle, part, model_path, backend, {}) is not None
    vehicle.add(part, inputs=["cam/image_array"], outputs=list(OUTPUTS), threaded=True)
    inputs = ["cam/image_array", "pilot/angle", "pilot/throttle"] + RECORD_KEYS
    types = ["image_array", "float", "float"] + RECORD_TYPES
    vehicle.add(TubWriter(str(tub_path), inputs=inputs, types=types), inputs=inputs, outputs=["tub/num_records"])
    return vehicle, pilot, part


def _records(tub_path):
    """The tub's records as donkeycar's Tub reads them, with MASK_KEY's JPEG decoded."""
    import os

    import cv2
    from donkeycar.parts.tub_v2 import Tub

    tub = Tub(str(tub_path), read_only=True)
    records = list(tub)
    tub.close()
    for record in records:
        record[MASK_KEY] = cv2.imread(os.path.join(tub.images_base_path, record[MASK_KEY]), cv2.IMREAD_GRAYSCALE)
    return records


def test_shared_pilot_keeps_driving_when_its_engine_fails(linear_pilot_path, tmp_path, monkeypatch, caplog):
    """The engine fails on the first frame: one warning, the same graph on ONNX Runtime gives the pilot
    its outputs (equal to donkeycar's own interpreter's), every loop runs, every record has its mask."""
    _engine_that_fails_on_frames(monkeypatch)
    vehicle, pilot, part = _shared_car(linear_pilot_path, tmp_path / "tub", "tensorrt", 12)
    with caplog.at_level(logging.WARNING):
        assert vehicle.start(rate_hz=50, max_loop_count=12)[0] == 12
    records = _records(tmp_path / "tub")
    assert len(records) == 12 and pilot.interpreter.saliency.backend.name == "onnxruntime"
    from donkeycar.parts.interpreter import KerasInterpreter
    from donkeycar.parts.keras import KerasLinear

    stock = KerasLinear(interpreter=KerasInterpreter())
    stock.load(linear_pilot_path)
    frames = real_frames(4)
    for index, record in enumerate(records):
        angle, throttle = stock.run(frames[index % 4])
        assert abs(record["pilot/angle"] - angle) < 1e-4 and abs(record["pilot/throttle"] - throttle) < 1e-4
        assert record[LAG_KEY] == 0.0 and record[MASK_KEY].any()
    warnings = [w for w in _warnings(caplog) if "saliency backend" in w]
    assert len(warnings) == 1 and "failed while running" in warnings[0]


def test_shared_pilot_stops_the_car_when_onnxruntime_fails_too(linear_pilot_path, tmp_path, monkeypatch):
    """What the README says happens when even the fallback fails: the pilot raises, and donkeycar's
    Vehicle stops its loop, exactly as with a failing stock interpreter (no outputs to drive on)."""
    _engine_that_fails_on_frames(monkeypatch)
    monkeypatch.setattr(OnnxRuntimeBackend, "_infer", _fail)
    vehicle, _, _ = _shared_car(linear_pilot_path, tmp_path / "tub", "tensorrt", 12)
    camera = vehicle.parts[0]["part"]
    # donkeycar's Vehicle prints the traceback, stops every part and returns None instead of its loop count
    assert vehicle.start(rate_hz=50, max_loop_count=12) is None
    assert camera.index == 1  # the loop ended at the first frame's pilot, before the TubWriter


def test_shared_pilot_records_no_mask_for_a_nan_mask(linear_pilot_path, tmp_path, caplog):
    """A NaN mask from the pilot's pass is counted and recorded as no mask (lag NO_MASK_LAG_MS, zero
    mask), never as an all-zero mask with lag 0."""
    vehicle, pilot, part = _shared_car(linear_pilot_path, tmp_path / "tub", "onnxruntime", 8)
    pilot.interpreter.saliency.activate()
    pilot.interpreter.saliency.backend = _NanMasks(pilot.interpreter.saliency.backend)
    with caplog.at_level(logging.WARNING):
        assert vehicle.start(rate_hz=50, max_loop_count=8)[0] == 8
    records = _records(tmp_path / "tub")
    assert len(records) == 8
    assert all(record[LAG_KEY] == NO_MASK_LAG_MS for record in records)
    assert all(not np.asarray(record[MASK_KEY]).any() for record in records)
    assert part.stats()["errors"] >= 1
    assert any("NaN" in w for w in _warnings(caplog))


def test_the_part_runs_on_onnxruntime_after_its_engine_fails(tiny_pilot_path, monkeypatch, caplog):
    """The part holds an api.Saliency too: its worker's engine fails on the first frame, the frame is
    run again on ONNX Runtime, and /saliency/stats names the backend that really runs."""
    _engine_that_fails_on_frames(monkeypatch)
    part = donkey_saliency.SaliencyPart(tiny_pilot_path, backend="tensorrt")
    worker = threading.Thread(target=part.update, daemon=True)
    worker.start()
    try:
        with caplog.at_level(logging.WARNING):
            for frame in real_frames(3):
                part.run_threaded(frame)
                assert wait_for(lambda: not part.busy)
        stats = part.stats()
        assert stats["processed"] == 3 and stats["errors"] == 0
        assert stats["backend"].startswith("onnxruntime")
        assert len([w for w in _warnings(caplog) if "failed while running" in w]) == 1
    finally:
        part.shutdown()
        worker.join(10)
