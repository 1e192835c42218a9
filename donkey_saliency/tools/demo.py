"""``donkey-saliency demo``: a simulated car on donkeycar's real parts, with live saliency.

The vehicle is built the way donkeycar 5.3's ``complete.py`` builds one, minus the hardware:

    LocalWebController (port 8887)  ->  user/steering, user/throttle, user/mode, recording
    camera                          ->  cam/image_array   (the procedural track, seen from a car
                                        that the drive outputs move; or replayed image files)
    UserPilotCondition              ->  run_user, run_pilot, ui/image_array
    KerasLinear pilot               ->  pilot/angle, pilot/throttle   (run_condition run_pilot)
    add_saliency(V, cfg, ctr, inputs, types)   (the three manage.py lines: part, web routes, tub keys)
    DriveMode                       ->  steering, throttle
    TubWriter                       <-  camera, user and pilot values, saliency   (run_condition recording)

The web UI starts in pilot mode ("local"), with the overlay in /drive's video; the /saliency page
has the streams and figures. A status line is printed every few seconds.
"""
import glob
import logging
import math
import os
import re
import signal
import socket
import sys
import time
import types as pytypes

import numpy as np

from ..car.vehicle import add_saliency
from ..config import DONKEY_WEB_PORT, DRIVE_LOOP_HZ
from ..errors import InputError, ModelError, first_line
from ..compute.frames import fit_to_model
from ..util.images import read_rgb
from ..keys import (
    CAMERA_KEY, CAMERA_TRANS_KEY, MODE_KEY, PILOT_ANGLE_KEY, PILOT_KEYS, PILOT_THROTTLE_KEY, UI_IMAGE_KEY, USER_ANGLE_KEY, USER_THROTTLE_KEY)
from ..pilots import DEMO_PILOT
from ..compute.track import Track, TrackCar
from ..tubs.read import read_manifest_head

logger = logging.getLogger(__name__)

REPORT_EVERY_S = 3.0
MAX_REPLAY_FRAMES = 3000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

TUB_INPUTS = [CAMERA_KEY, USER_ANGLE_KEY, USER_THROTTLE_KEY, MODE_KEY, PILOT_ANGLE_KEY, PILOT_THROTTLE_KEY]
TUB_TYPES = ["image_array", "float", "float", "str", "float", "float"]


# --- the parts this demo adds (everything else is donkeycar's own) ------------------------------
class TrackCamera(object):
    """A camera on a simulated car: the drive loop's last steering/throttle move the car along
    the procedural track, and it returns what the camera sees there. Inputs: steering, throttle.
    Outputs: cam/image_array, sim/offset (metres right of the centre line)."""

    def __init__(self, seed=0, width=160, height=120, rate_hz=DRIVE_LOOP_HZ):
        self.car = TrackCar(Track(seed, width=width, height=height))
        self.dt = 1.0 / rate_hz  # simulated time per loop: the same drive gives the same frames

    def run(self, steering=None, throttle=None):
        self.car.step(steering, throttle, self.dt)
        return self.car.frame(), round(self.car.offset, 3)


class ReplayCamera(object):
    """A camera part that hands out frames (uint8 RGB) in turn, in a loop; its inputs (if any) are
    ignored. Output: cam/image_array. The demo replays a folder with it, the bench its frames."""

    def __init__(self, frames):
        self.frames = frames
        self.count = 0

    def run(self, *inputs):
        frame = self.frames[self.count % len(self.frames)]
        self.count += 1
        return frame


class StatusReporter(object):
    """Prints one line of figures every ``every_s`` seconds and stops the vehicle after
    ``seconds`` (None: run until Ctrl-C). Inputs: pilot/angle, sim/offset."""

    def __init__(self, vehicle, saliency_part, seconds=None, every_s=REPORT_EVERY_S, out=None):
        self.vehicle = vehicle
        self.part = saliency_part
        self.seconds = seconds
        self.every_s = every_s
        self.out = out or sys.stdout
        self.started = None
        self.last_report = None
        self.loops_since_report = 0
        self.loops = 0
        self.lines = 0

    def run(self, pilot_angle=None, offset=None):
        now = time.monotonic()
        if self.started is None:
            self.started = self.last_report = now
        self.loops += 1
        self.loops_since_report += 1
        if now - self.last_report >= self.every_s:
            self.report(now, pilot_angle, offset)
        if self.seconds is not None and now - self.started >= self.seconds:
            if self.lines == 0:
                self.report(now, pilot_angle, offset)  # a short run still shows its figures
            self.vehicle.on = False  # the loop ends after this pass; V.start then shuts the parts down

    def report(self, now, pilot_angle, offset):
        loop_fps = self.loops_since_report / max(now - self.last_report, 1e-6)
        stats = self.part.stats() if self.part is not None else {}
        latency = stats.get("latency_ms")
        line = "demo: loop %.1f fps | saliency %.1f fps | mask latency %s ms (median) | dropped %d | pilot angle %s" % (
            loop_fps, stats.get("fps") or 0.0, "%.1f" % latency if latency is not None else "-",
            stats.get("dropped", 0), "%+.3f" % pilot_angle if pilot_angle is not None else "-")
        if offset is not None:
            line += " | lane offset %+.2f m" % offset
        print(line, file=self.out)
        self.out.flush()
        self.lines += 1
        self.last_report = now
        self.loops_since_report = 0


# --- inputs --------------------------------------------------------------------------------------
def _natural_key(path):
    name = os.path.basename(path)
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def find_images(directory):
    """Image files in a directory, or in a tub (its images/ folder), in recording order."""
    if not os.path.isdir(directory):
        raise InputError("--frames: not a directory: %s" % directory)
    for folder in (os.path.join(directory, "images"), directory):
        paths = [p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith(IMAGE_EXTENSIONS)]
        if paths:
            return sorted(paths, key=_natural_key)
    raise InputError("--frames: no image files (%s) in %s" % (" ".join(IMAGE_EXTENSIONS), directory))


def load_frames(paths, shape, limit=MAX_REPLAY_FRAMES):
    """uint8 RGB frames from image files, at the pilot's input size (height, width, channels)."""
    frames = []
    for path in paths[:limit]:
        try:
            image = read_rgb(path)
        except InputError:
            raise InputError("--frames: not an image file: %s" % path)
        frames.append(fit_to_model(image, tuple(shape[:2]) + (3,)))
    return frames


def load_pilot(model_path):
    """donkeycar's KerasLinear with the pilot loaded, and the (height, width, channels) it takes."""
    if not os.path.exists(model_path):
        raise ModelError("pilot not found: %s" % model_path)
    from donkeycar.parts.interpreter import KerasInterpreter, TfLite
    from donkeycar.parts.keras import KerasLinear

    # A fresh interpreter each time: KerasLinear's default argument is one shared instance.
    interpreter = TfLite() if model_path.lower().endswith(".tflite") else KerasInterpreter()
    pilot = KerasLinear(interpreter=interpreter)
    try:
        pilot.load(model_path)
        shape = tuple(int(d) for d in interpreter.get_input_shape(interpreter.input_keys[0])[1:])
        angle, throttle = pilot.run(np.zeros(shape, np.uint8))
        angle, throttle = float(angle), float(throttle)
    except Exception as error:  # a file Keras cannot read, or a pilot that is not linear
        raise ModelError("the demo drives with a linear pilot (image in, angle and throttle out); "
                         "%s does not work as one: %s" % (model_path, first_line(error, None)))
    if len(shape) != 3 or not (math.isfinite(angle) and math.isfinite(throttle)):
        raise ModelError("the demo drives with a linear pilot; %s takes input %s" % (model_path, shape))
    return pilot, shape


def check_port(port):
    """Fail before anything starts when the web port is taken (the web thread would die quietly)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind(("", port))
    except OSError as error:
        raise InputError("port %d is not free (%s); choose another with --port" % (port, error.strerror or error))
    finally:
        probe.close()


def fresh_tub_path(root="demo-tub"):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(root, stamp)
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(root, "%s-%d" % (stamp, n))
    return path


def demo_config(model_path, tub_path, backend="auto", cache_dir=None):
    """A cfg with the donkey settings the demo uses and SALIENCY_* for add_saliency."""
    return pytypes.SimpleNamespace(
        DRIVE_LOOP_HZ=DRIVE_LOOP_HZ, DATA_PATH=tub_path, AUTO_CREATE_NEW_TUB=False,
        SALIENCY_MODEL_PATH=model_path, SALIENCY_BACKEND=backend, SALIENCY_CACHE_DIR=cache_dir,
        SALIENCY_DRIVE_VIEW=True,  # the point of the demo: the overlay in /drive from the start
    )


# --- the vehicle -----------------------------------------------------------------------------------
class Demo(object):
    """Builds the vehicle (``build``), runs it (``run``); one lifecycle."""

    def __init__(self, port=DONKEY_WEB_PORT, seconds=None, model_path=None, tub_path=None, frames_dir=None, seed=0,
                 backend="auto", cache_dir=None, out=None):
        self.port = port
        self.seconds = seconds
        self.model_path = model_path or DEMO_PILOT
        self.tub_path = tub_path or fresh_tub_path()
        self.frames_dir = frames_dir
        self.seed = seed
        self.backend = backend
        self.cache_dir = cache_dir
        self.out = out or sys.stdout
        self.vehicle = None
        self.camera = None
        self.saliency = None
        self.reporter = None
        self.tub_writer = None

    def say(self, message):
        print(message, file=self.out)
        self.out.flush()

    def build(self):
        import donkeycar as dk
        from donkeycar.parts.explode import ExplodeDict
        from donkeycar.parts.pipe import Pipe
        from donkeycar.parts.tub_v2 import TubWriter
        from donkeycar.parts.web_controller.web import LocalWebController
        from donkeycar.templates.complete import DriveMode, ToggleRecording, UserPilotCondition

        # Cheap checks first: bad input fails before TensorFlow spends seconds loading.
        check_port(self.port)
        image_paths = find_images(self.frames_dir) if self.frames_dir else None
        started = time.monotonic()
        pilot, shape = load_pilot(self.model_path)
        if self.frames_dir:
            frames = load_frames(image_paths, shape)
            self.camera = ReplayCamera(frames)
            source = "%d frames from %s" % (len(frames), self.frames_dir)
        else:
            self.camera = TrackCamera(self.seed, width=shape[1], height=shape[0])
            source = "the procedural track (seed %d), steered by the drive loop" % self.seed

        V = dk.vehicle.Vehicle()
        self.vehicle = V
        # The web UI, as complete.py's add_user_controller adds it; the demo starts in pilot mode.
        ctr = LocalWebController(port=self.port, mode="local")
        ctr.recording = True
        V.add(ctr, inputs=[UI_IMAGE_KEY, "tub/num_records", MODE_KEY, "recording"],
              outputs=["user/steering", USER_THROTTLE_KEY, MODE_KEY, "recording", "web/buttons"], threaded=True)
        V.add(Pipe(), inputs=["user/steering"], outputs=[USER_ANGLE_KEY])
        V.add(ExplodeDict(V.mem, "web/"), inputs=["web/buttons"])
        # The camera reads last loop's drive outputs: the pilot's steering moves the simulated car.
        V.add(self.camera, inputs=["steering", "throttle"],
              outputs=[CAMERA_KEY] if isinstance(self.camera, ReplayCamera) else [CAMERA_KEY, "sim/offset"])
        V.add(UserPilotCondition(show_pilot_image=False),
              inputs=[MODE_KEY, CAMERA_KEY, CAMERA_TRANS_KEY],
              outputs=["run_user", "run_pilot", UI_IMAGE_KEY])
        V.add(pilot, inputs=[CAMERA_KEY], outputs=[PILOT_ANGLE_KEY, PILOT_THROTTLE_KEY], run_condition="run_pilot")

        # The manage.py lines: after the pilot, before the TubWriter is created.
        cfg = demo_config(self.model_path, self.tub_path, self.backend, self.cache_dir)
        inputs, types = list(TUB_INPUTS), list(TUB_TYPES)
        self.saliency = add_saliency(V, cfg, ctr, inputs, types)

        V.add(DriveMode(1.0), inputs=[MODE_KEY, USER_ANGLE_KEY, USER_THROTTLE_KEY] + list(PILOT_KEYS),
              outputs=["steering", "throttle"])
        V.add(ToggleRecording(False, True), inputs=[MODE_KEY, "recording"], outputs=["recording"])
        stored = read_manifest_head(self.tub_path)
        if stored is not None and stored != (inputs, types):
            self.shutdown_parts()
            raise InputError("--out-tub %s holds a tub with other inputs; choose a new directory" % self.tub_path)
        self.tub_writer = TubWriter(self.tub_path, inputs=inputs, types=types,
                                    metadata=["source:donkey-saliency demo"])
        V.add(self.tub_writer, inputs=inputs, outputs=["tub/num_records"], run_condition="recording")
        self.reporter = StatusReporter(V, self.saliency, self.seconds, out=self.out)
        V.add(self.reporter, inputs=[PILOT_ANGLE_KEY, "sim/offset"])

        self.say("demo: pilot %s, camera: %s" % (self.model_path, source))
        self.say("demo: recording to %s" % os.path.abspath(self.tub_path))
        self.say("demo: open http://localhost:%d/drive (overlay in the video) or http://localhost:%d/saliency"
                 % (self.port, self.port))
        self.say("demo: ready in %.1f s; Ctrl-C stops" % (time.monotonic() - started))
        return V

    def shutdown_parts(self):
        for entry in self.vehicle.parts if self.vehicle else []:
            try:
                entry["part"].shutdown()
            except Exception:  # parts without shutdown, or already stopped
                pass

    def run(self):
        """Runs until --seconds or Ctrl-C (either ends the loop cleanly; V.start shuts the parts
        down). Returns the exit status."""
        V = self.vehicle or self.build()
        previous = {}

        def stop(signum, frame):
            V.on = False  # finish this loop, then shut down; a second Ctrl-C interrupts outright
            signal.signal(signum, previous.get(signum, signal.SIG_DFL))

        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[signum] = signal.signal(signum, stop)
            except ValueError:  # not the main thread: leave signals alone
                pass
        try:
            result = V.start(rate_hz=DRIVE_LOOP_HZ)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if result is None:  # V.start prints the traceback of what stopped the loop, and returns None
            self.say("demo: the drive loop stopped on an error (above)")
            return 1
        loops, elapsed = result
        records = self.tub_writer.tub.manifest.current_index if self.tub_writer else 0
        stats = self.saliency.stats() if self.saliency is not None else {}
        summary = "demo: done: %d loops in %.1f s (%.1f fps), %s masks, %s dropped, %d records in %s" % (
            loops, elapsed, loops / max(elapsed, 1e-6), stats.get("processed", 0), stats.get("dropped", 0),
            records, self.tub_path)
        if isinstance(self.camera, TrackCamera):
            summary += ", %d off-road resets" % self.camera.car.resets
        self.say(summary)
        return 0
