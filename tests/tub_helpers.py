"""Tubs written in a test, as donkeycar's writers leave them, and read back with donkeycar's ``Tub``."""
import os

import cv2
import numpy as np

from donkey_saliency.keys import OVERLAY_KEY
from donkey_saliency.tubs.read import recording_inputs


BASE_INPUTS = ["cam/image_array", "user/angle", "user/throttle", "user/mode"]


BASE_TYPES = ["image_array", "float", "float", "str"]


COUNT = 120


DELETED = (10, 11, 12, 13, 14)


INPUTS = ["cam/image_array", "user/angle", "user/throttle", "user/mode", "pilot/angle", "pilot/throttle",
          OVERLAY_KEY, "saliency/lag_ms"]


TYPES = ["image_array", "float", "float", "str", "float", "float", "image_array", "float"]


BUMPS = {77: 1.5, 30: 1.0, 12: 1.9}  # pilot minus user steering; 12 is deleted, so never listed


def synthetic_frame(i, shape=(120, 160)):
    """A smooth picture that changes with i (JPEG-friendly, unlike noise)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    frame = np.ascontiguousarray(np.stack([(x * 255 // w + 7 * i) % 256, (y * 255 // h) % 256,
                                           (x + y + 13 * i) % 256], axis=2).astype(np.uint8))
    cv2.circle(frame, (int(20 + 5 * i) % w, h // 2), 15, (255, 255, 255), -1)
    return frame


def tree_digest(path):
    """sha256 over every file name and content under path: 'the source is untouched'."""
    from donkey_saliency.util.fileio import file_digest

    return file_digest(path)


def make_v2_tub(path, count=25, deleted=(3, 4, 17), max_len=10):
    """A v2 tub written by donkeycar's own Tub, several catalogs, some records deleted."""
    from donkeycar.parts.tub_v2 import Tub

    tub = Tub(str(path), inputs=BASE_INPUTS + ["pilot/angle"], types=BASE_TYPES + ["float"],
              metadata=["location:test track"], max_catalog_len=max_len)
    for i in range(count):
        tub.write_record({"cam/image_array": synthetic_frame(i), "user/angle": round(np.sin(i / 4.0), 3),
                          "user/throttle": 0.3, "user/mode": "user" if i % 5 else "local",
                          "pilot/angle": round(np.cos(i / 4.0), 3)})
    tub.delete_records(list(deleted))
    tub.close()
    return str(path)


def read_tub(path):
    from donkeycar.parts.tub_v2 import Tub

    tub = Tub(str(path), read_only=True)
    records = list(tub)
    tub.close()  # the manifest's attributes stay readable
    return tub, records


def record_live_tub(path, pilot, records=40, frames=None, max_seconds=120):
    """Drive a real donkeycar Vehicle at 20 Hz, recording ``records`` records through TubWriter with
    the saliency keys added by ``recording_inputs``, from the first loop with a mask on. Returns the
    tub path."""
    from donkeycar.parts.tub_v2 import TubWriter
    from donkeycar.vehicle import Vehicle

    from donkey_saliency.keys import OUTPUTS
    from donkey_saliency.car.part import SaliencyPart

    frames = frames if frames is not None else [synthetic_frame(i) for i in range(10)]
    inputs, types, message = recording_inputs(str(path), list(BASE_INPUTS), list(BASE_TYPES), False)
    assert message is None
    vehicle = Vehicle()
    vehicle.add(FrameReplay(frames), outputs=["cam/image_array", "user/angle", "user/throttle", "user/mode"])
    vehicle.add(SaliencyPart(pilot, backend="onnxruntime"), inputs=["cam/image_array"], outputs=list(OUTPUTS),
                threaded=True)
    gate = RecordOnceMasked(vehicle, records)
    vehicle.add(gate, inputs=["saliency/lag_ms", "tub/num_records"], outputs=["recording"])
    writer = TubWriter(str(path), inputs=inputs, types=types)
    vehicle.add(writer, inputs=inputs, outputs=["tub/num_records"], run_condition="recording")
    loops, _ = vehicle.start(rate_hz=20, max_loop_count=20 * max_seconds)  # a bound, not a timing bet
    assert gate.open and loops < 20 * max_seconds, "no %d masked records within %d s" % (records, max_seconds)
    return str(path)


def rgb_image(tub, record, key="cam/image_array"):
    """A record's image as RGB, read from the tub's images folder."""
    return cv2.cvtColor(cv2.imread(os.path.join(tub.images_base_path, record[key])), cv2.COLOR_BGR2RGB)


def camera(i):
    """A gray picture that changes with i (colour can only come from the overlay)."""
    yy, xx = np.mgrid[0:120, 0:160]
    gray = ((xx * 1.2 + yy * 0.8 + i * 9) % 200 + 30).astype(np.uint8)
    gray[60:90, (10 + 3 * i) % 130:(10 + 3 * i) % 130 + 30] = 240
    return np.repeat(gray[..., None], 3, axis=2)


def write_tub(path, count=COUNT, deleted=DELETED):
    """A drive recorded by donkeycar's own Tub: user steering a slow sine, the pilot the same but for
    BUMPS, modes user / local_angle / local in thirds, ``deleted`` marked with delete_records."""
    from donkeycar.parts.tub_v2 import Tub

    tub = Tub(str(path), inputs=INPUTS, types=TYPES, max_catalog_len=50)
    for i in range(count):
        angle = 0.6 * np.sin(i / 9.0)
        tub.write_record({"cam/image_array": camera(i), "user/angle": angle, "user/throttle": 0.3,
                          "user/mode": ("user", "local_angle", "local")[3 * i // count],
                          "pilot/angle": angle + BUMPS.get(i, 0.0) * (-1 if angle > 0 else 1),
                          "pilot/throttle": 0.3, OVERLAY_KEY: recorded_overlay(i), "saliency/lag_ms": 4.0})
    tub.delete_records(list(deleted))
    tub.close()
    return str(path)


def donkey_deleted(path):
    """(deleted indexes, indexes donkeycar's iterator yields) as donkeycar itself reads the tub."""
    from donkeycar.parts.tub_v2 import Tub

    tub = Tub(path, read_only=True)
    try:
        return set(tub.manifest.deleted_indexes), [record["_index"] for record in tub]
    finally:
        tub.close()


def copy_tub(source, target):
    import shutil

    shutil.copytree(source, str(target))
    return str(target)


class FrameReplay(object):
    """A camera part that replays frames in a loop."""

    def __init__(self, frames):
        self.frames = frames
        self.count = 0

    def run(self):
        frame = self.frames[self.count % len(self.frames)]
        self.count += 1
        return frame, 0.1 * ((self.count % 7) - 3), 0.25, "user"


class RecordOnceMasked(object):
    """Opens (and keeps open) the tub's run condition from the first loop whose saliency output is a
    real mask (lag >= 0), and ends the drive once ``records`` records are written: on a loaded
    machine the first mask may take many loops, which must not cost records."""

    def __init__(self, vehicle, records):
        self.vehicle, self.records = vehicle, records
        self.open = False

    def run(self, lag_ms, num_records):
        self.open = self.open or lag_ms >= 0.0
        if (num_records or 0) >= self.records:
            self.vehicle.on = False  # the last loop: Vehicle.start then shuts every part down
            return False
        return self.open


def recorded_overlay(i):
    from donkey_saliency.compute.overlay import overlay

    yy, xx = np.mgrid[0:120, 0:160]
    mask = np.exp(-(((xx - (i * 3) % 160) / 30.0) ** 2 + ((yy - 80) / 20.0) ** 2)).astype(np.float32)
    return overlay(camera(i), mask)
