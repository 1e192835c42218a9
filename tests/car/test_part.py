"""SaliencyPart in a real donkeycar Vehicle loop: good frames, faults, recovery, shutdown."""
import logging
import threading

import numpy as np
import pytest

from helpers import random_frames, wait_for
from donkey_saliency import backends, load
from donkey_saliency.keys import NO_MASK_LAG_MS, OUTPUTS
from donkey_saliency.compute.overlay import mask_to_uint8
from donkey_saliency.car.part import SaliencyPart

PHASE = 25  # loop iterations per phase


class FaultSwitch(object):
    """Fault injection: wraps the real backend and raises while ``on``."""

    def __init__(self):
        self.on = False

    def install(self, monkeypatch):
        real = backends.activate_with_fallback
        switch = self

        def activate(graph, name="auto", options=None):
            backend = real(graph, name, options)
            original = backend._infer

            def infer(frames):
                if switch.on:
                    raise RuntimeError("injected backend fault")
                return original(frames)

            backend._infer = infer
            return backend

        monkeypatch.setattr(backends, "activate_with_fallback", activate)


class ScriptedCamera(object):
    """Emits one phase's frame kind per PHASE iterations; switches the backend fault on in its phase."""

    PHASES = ["good", "none", "bad_shape", "good", "grayscale", "float", "big", "backend_fault", "good",
              "good"]

    def __init__(self, switch):
        self.switch = switch
        self.count = 0
        self.frames = random_frames(8)

    def phase(self):
        return self.PHASES[min(self.count // PHASE, len(self.PHASES) - 1)]

    def run(self):
        phase = self.phase()
        self.switch.on = phase == "backend_fault"
        frame = self.frames[self.count % len(self.frames)]
        self.count += 1
        return {
            "good": frame,
            "backend_fault": frame,
            "none": None,
            "bad_shape": np.zeros((120, 160, 7), np.uint8),
            "grayscale": frame[..., 0],
            "float": frame.astype(np.float32) / 255.0,
            "big": np.repeat(np.repeat(frame, 2, axis=0), 2, axis=1),  # 240x320: resized, not refused
        }[phase], phase


class PhaseRecorder(object):
    """Records the part's outputs; at the end of a phase waits (bounded) for the worker to catch up."""

    def __init__(self, part, camera):
        self.part, self.camera = part, camera
        self.rows = []
        self.processed_at_phase_end = {}
        self.workers = []  # (the part's worker thread, whether it was alive) at each phase's end
        self.faults_at_phase_end = []  # (errors, dropped)

    def run(self, phase, overlay, mask, latency_ms, lag_ms):
        self.rows.append((phase, overlay, mask, latency_ms, lag_ms))
        index = len(self.rows) - 1
        if index % PHASE == PHASE - 1:
            # Let the worker finish this phase's last frame so each phase's effect is observable.
            assert wait_for(lambda: not self.part.busy)
            stats = self.part.stats()
            self.processed_at_phase_end[index // PHASE] = stats["processed"]
            self.faults_at_phase_end.append((stats["errors"], stats["dropped"]))
            worker = self.part._worker
            self.workers.append((worker, worker is not None and worker.is_alive()))


@pytest.fixture
def vehicle_run(tiny_pilot_path, monkeypatch, caplog):
    from donkeycar.vehicle import Vehicle

    switch = FaultSwitch()
    switch.install(monkeypatch)
    camera = ScriptedCamera(switch)
    part = SaliencyPart(tiny_pilot_path, backend="onnxruntime")
    recorder = PhaseRecorder(part, camera)
    vehicle = Vehicle()
    vehicle.add(camera, outputs=["cam/image_array", "test/phase"])
    vehicle.add(part, inputs=["cam/image_array"], outputs=list(OUTPUTS), threaded=True)
    vehicle.add(recorder, inputs=["test/phase"] + list(OUTPUTS))
    caplog.set_level(logging.INFO, logger="donkey_saliency")
    loops = len(ScriptedCamera.PHASES) * PHASE
    result = vehicle.start(rate_hz=200, max_loop_count=loops)
    return dict(result=result, part=part, recorder=recorder, loops=loops, log=caplog, pilot=tiny_pilot_path)


def test_vehicle_loop_survives_every_fault_and_recovers(vehicle_run):
    loop_count, _ = vehicle_run["result"]
    part, recorder = vehicle_run["part"], vehicle_run["recorder"]
    assert loop_count == vehicle_run["loops"] >= 200
    done = recorder.processed_at_phase_end
    phases = ScriptedCamera.PHASES
    for index, phase in enumerate(phases[1:], start=1):
        grew = done[index] > done[index - 1]
        # Frames the part can use (resized, grayscale, float) produce masks; faults do not.
        assert grew == (phase in ("good", "grayscale", "float", "big")), (phase, done)
    # After the faults, good frames give masks again, with the documented output types.
    phase, overlay, mask, latency_ms, lag_ms = recorder.rows[-1]
    assert overlay.shape == (120, 160, 3) and overlay.dtype == np.uint8
    assert mask.shape == (120, 160) and mask.dtype == np.uint8 and mask.max() > 0
    assert latency_ms > 0 and lag_ms >= 0
    # ... and the mask the loop got is the pilot's mask of one of the camera's frames.
    with load(vehicle_run["pilot"], backend="onnxruntime") as saliency:
        expected = [mask_to_uint8(m) for m in saliency.masks(recorder.camera.frames)]
    assert min(np.abs(mask.astype(int) - m).max() for m in expected) <= 1
    # Every faulty frame is counted: None in the loop thread, each one; a frame the worker cannot use
    # as an error, unless a newer one replaced it first (dropped), however busy the machine is.
    counts = [(0, 0)] + recorder.faults_at_phase_end
    for index, phase in enumerate(phases):
        errors, dropped = (now - then for now, then in zip(counts[index + 1], counts[index]))
        if phase == "none":
            assert (errors, dropped) == (PHASE, 0), phase
        elif phase in ("bad_shape", "backend_fault"):
            assert errors >= 1 and errors + dropped == PHASE, (phase, errors, dropped)
        else:
            assert errors == 0, (phase, errors)
    # The worker was never killed: one and the same thread, alive at the end of every phase (faults
    # included), and it ends on shutdown (Vehicle.start ends with it): joined, backend closed.
    workers = [worker for worker, _ in recorder.workers]
    assert len(workers) == len(phases) and workers[0] is not None and set(workers) == {workers[0]}
    assert all(alive for _, alive in recorder.workers), recorder.workers
    assert not workers[0].is_alive() and part.backend is None


def test_each_fault_is_logged_once_per_cause(vehicle_run):
    records = [r for r in vehicle_run["log"].get_records("setup") if r.name.startswith("donkey_saliency.car.part")]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    bad_shape = [m for m in warnings if "shape (120, 160, 7)" in m]
    backend_fault = [m for m in warnings if "injected backend fault" in m]
    no_image = [m for m in warnings if "(None)" in m]
    assert len(bad_shape) == 1 and len(backend_fault) == 1 and len(no_image) == 1
    assert sum("recovered" in r.getMessage() for r in records) >= 2


def test_outputs_before_the_first_mask_have_values(tiny_pilot_path):
    part = SaliencyPart(tiny_pilot_path, backend="onnxruntime")  # worker not started
    frame = random_frames(1)[0]
    overlay, mask, latency_ms, lag_ms = part.run_threaded(frame)
    assert overlay.shape == frame.shape and mask.shape == (120, 160) and mask.max() == 0
    assert latency_ms == 0.0 and lag_ms == NO_MASK_LAG_MS
    part.shutdown()


def test_transformed_image_falls_back_to_camera_image(tiny_pilot_path):
    part = SaliencyPart(tiny_pilot_path, backend="onnxruntime")
    frame = random_frames(1)[0]
    overlay, mask, _, _ = part.run(None, frame)  # unthreaded: processes now
    assert mask.max() > 0 and overlay.shape == frame.shape
    part.shutdown()


def test_stale_frames_are_dropped_not_queued(tiny_pilot_path):
    part = SaliencyPart(tiny_pilot_path, backend="onnxruntime")
    for frame in random_frames(5):  # worker not running: every new frame replaces the pending one
        part.run_threaded(frame)
    assert part.stats()["dropped"] == 4
    worker = threading.Thread(target=part.update, daemon=True)
    worker.start()
    assert wait_for(lambda: part.stats()["processed"] == 1)
    part.shutdown()
    worker.join(5)
    assert not worker.is_alive() and part.backend is None


def test_missing_model_leaves_an_inert_part_not_a_stopped_car(tmp_path, caplog):
    from donkeycar.vehicle import Vehicle

    part = SaliencyPart(str(tmp_path / "missing.h5"))
    assert "not found" in part.stats()["status"]
    camera_frames = iter(random_frames(20))
    vehicle = Vehicle()
    vehicle.add(lambda_part(lambda: next(camera_frames)), outputs=["cam/image_array"])
    vehicle.add(part, inputs=["cam/image_array"], outputs=list(OUTPUTS), threaded=True)
    loops, _ = vehicle.start(rate_hz=200, max_loop_count=20)
    assert loops == 20
    # Still a value for every key, so tub records stay complete.
    overlay, mask, latency_ms, lag_ms = vehicle.mem.get(list(OUTPUTS))
    assert overlay.shape == (120, 160, 3) and mask.shape == (120, 160) and lag_ms == NO_MASK_LAG_MS


def test_float_frame_before_the_first_mask_gives_a_uint8_picture(tiny_pilot_path):
    part = SaliencyPart(tiny_pilot_path, backend="onnxruntime")
    frame = random_frames(1)[0]
    overlay, mask, _, _ = part.run_threaded(frame.astype(np.float32) / 255.0)
    assert overlay.dtype == np.uint8 and np.abs(overlay.astype(int) - frame).max() <= 1
    assert part.run_threaded(np.zeros((4, 4, 7)))[0] is None  # nothing sensible to show, nothing invented
    part.shutdown()


def test_listener_errors_do_not_stop_the_worker(tiny_pilot_path):
    part = SaliencyPart(tiny_pilot_path, backend="onnxruntime")
    seen = []

    def broken(result):
        raise ValueError("listener bug")

    part.add_listener(broken)
    part.add_listener(seen.append)
    for frame in random_frames(3):
        part.run(frame)
    assert [r.seq for r in seen] == [1, 2, 3]
    assert seen[-1].overlay.shape == (120, 160, 3) and len(seen[-1].means) == 2
    part.shutdown()


def lambda_part(function):
    class _Part(object):
        def run(self):
            return function()

    return _Part()


def test_a_listener_failing_every_frame_is_logged_once(tiny_pilot_path, caplog):
    """What the web stream's encoder did on Python 3.6 (time.thread_time is 3.7+): the warning must
    not repeat every frame, nor alternate with 'recovered'."""
    part = SaliencyPart(tiny_pilot_path, backend="onnxruntime")

    def broken(result):
        raise AttributeError("module 'time' has no attribute 'thread_time'")

    part.add_listener(broken)
    with caplog.at_level(logging.INFO, logger="donkey_saliency.car.part"):
        for frame in random_frames(5):
            part.run(frame)
    messages = [r.getMessage() for r in caplog.records if r.name == "donkey_saliency.car.part"]
    assert sum("listener failed" in m for m in messages) == 1, messages
    assert not any("recovered" in m for m in messages), messages
    assert part.stats()["processed"] == 5
    part.shutdown()
