"""What tests/platforms/test_platforms.py runs *inside* a car-like virtualenv (tests/car_envs.py), with that
env's interpreter: Python 3.6 on the Nano-like env, so this file stays valid Python 3.6. It prints
one JSON object of facts; the test asserts on them.

    python car_checks.py drive PILOT TUB_DIR [--loops 200] [--jpegs 10]
        complete.py's wiring on a real donkeycar Vehicle: camera, LocalWebController (served on
        127.0.0.1), ExplodeDict, UserPilotCondition, add_saliency, TubWriter. Reads /saliency/video
        and donkeycar's own /video over HTTP while it drives, then the tub with donkeycar's Tub.
    python car_checks.py donkeycar54 OUT_DIR
        donkeycar 5.4's own .tflite (no signature) and model.export() SavedModel, made there.
    python car_checks.py masks PILOT [--car-pilot FILE.tflite]
        masks from donkey_saliency.load and the part; with --car-pilot, the car's own pilot on
        its own TFLite runtime afterwards (installing the project must not break it).
"""
import argparse
import http.client
import importlib.util
import json
import os
import sys
import threading
import time

import numpy as np

HEIGHT, WIDTH = 120, 160


def road_frame():
    """A camera-like frame: grey road, two bright lane lines, textured sky."""
    rng = np.random.RandomState(0)
    frame = np.full((HEIGHT, WIDTH, 3), 90, dtype=np.uint8)
    frame[:40] = rng.randint(120, 200, (40, WIDTH, 3))
    for row in range(40, HEIGHT):
        spread = (row - 40) * 0.8
        for centre in (WIDTH // 2 - 10 - spread, WIDTH // 2 + 10 + spread):
            column = int(centre)
            if 0 <= column < WIDTH - 3:
                frame[row, column:column + 3] = 240
    return frame


def mean_abs_diff(a, b):
    return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))))


def decode_jpeg(data):
    from donkey_saliency.util.opencv import import_cv2

    cv2 = import_cv2()
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def read_stream(port, path, count, timeout):
    """Up to ``count`` frames of an MJPEG stream, as (headers, body) pairs, within ``timeout`` s."""
    from donkey_saliency.testing import read_mjpeg_part

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    frames = []
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        deadline = time.monotonic() + timeout
        while len(frames) < count and time.monotonic() < deadline:
            frames.append(read_mjpeg_part(response))
    finally:
        connection.close()
    return frames


class Camera(object):
    def __init__(self, frame):
        self.frame = frame

    def run(self):
        return self.frame.copy()


def drive(args):
    from types import SimpleNamespace

    import donkeycar
    from donkeycar.parts.explode import ExplodeDict
    from donkeycar.parts.tub_v2 import Tub, TubWriter
    from donkeycar.parts.web_controller.web import LocalWebController
    from donkeycar.templates.complete import UserPilotCondition
    from donkeycar.vehicle import Vehicle

    from donkey_saliency import add_saliency
    from donkey_saliency.testing import ServerThread

    frame = road_frame()
    cfg = SimpleNamespace(DATA_PATH=args.tub, SALIENCY_BACKEND="onnxruntime", SALIENCY_DRIVE_VIEW=True)
    inputs = ["cam/image_array", "user/steering", "user/throttle", "user/mode"]
    types = ["image_array", "float", "float", "str"]

    vehicle = Vehicle()
    vehicle.add(Camera(frame), outputs=["cam/image_array"])
    ctr = LocalWebController(port=0)
    vehicle.add(ctr, inputs=["ui/image_array", "tub/num_records", "user/mode", "recording"],
                outputs=["user/steering", "user/throttle", "user/mode", "recording", "web/buttons"])
    vehicle.add(ExplodeDict(vehicle.mem, "web/"), inputs=["web/buttons"])
    vehicle.add(UserPilotCondition(), inputs=["user/mode", "cam/image_array", "cam/image_array_trans"],
                outputs=["run_user", "run_pilot", "ui/image_array"])
    part = add_saliency(vehicle, cfg, ctr=ctr, inputs=inputs, types=types, model_path=args.pilot)
    vehicle.add(TubWriter(args.tub, inputs=inputs, types=types), inputs=inputs, outputs=["tub/num_records"])

    server = ServerThread(ctr).start()  # ctr.update() would listen on every interface
    result = {}
    driver = threading.Thread(target=lambda: result.update(loops=vehicle.start(rate_hz=20,
                                                                              max_loop_count=args.loops)[0]))
    driver.daemon = True
    started = time.monotonic()
    driver.start()
    facts = dict(python=sys.version.split()[0], donkeycar=donkeycar.__version__, numpy=np.__version__)
    try:
        deadline = time.monotonic() + 60
        while part.latest is None and time.monotonic() < deadline and driver.is_alive():
            time.sleep(0.01)
        frames = read_stream(server.port, "/saliency/video", args.jpegs, timeout=30) if part.latest else []
        facts["jpeg_seqs"] = [int(headers["x-saliency-seq"]) for headers, _ in frames]
        facts["jpeg_shapes"] = sorted(set(str(decode_jpeg(body).shape) for _, body in frames))
        if part.latest is not None:  # donkeycar's own /video, with SALIENCY_DRIVE_VIEW on
            try:
                shown = decode_jpeg(read_stream(server.port, "/video", 1, timeout=30)[0][1])
            except Exception as error:  # donkeycar 5.4.0's wheel lacks static/: its /video answers 500
                facts["video_error"] = "%s: %s" % (type(error).__name__, error)
            else:
                facts["video_vs_overlay"] = mean_abs_diff(shown, part.latest.overlay)
                facts["video_vs_camera"] = mean_abs_diff(shown, frame)
            facts["overlay_vs_camera"] = mean_abs_diff(part.latest.overlay, frame)
        driver.join(args.loops / 20.0 * 3 + 30)
    finally:
        vehicle.on = False
        driver.join(10)
        server.stop()
    facts.update(loops=result.get("loops"), seconds=round(time.monotonic() - started, 1),
                 stats=part.stats(), tub_inputs=inputs)
    records = list(Tub(args.tub, read_only=True))
    facts["records"] = len(records)
    recorded = [k for k in inputs if k.startswith("saliency/")]
    facts["records_missing_saliency"] = sum(any(r.get(k) is None for k in recorded) for r in records)
    facts["saliency_images_missing"] = sum(
        not os.path.isfile(os.path.join(args.tub, "images", r[k]))
        for r in records for k in ("saliency/image_array", "saliency/mask"))
    return facts


def masks(args):
    import donkey_saliency
    from donkey_saliency.car.part import SaliencyPart

    facts = dict(python=sys.version.split()[0], numpy=np.__version__,
                 tensorflow_importable=importlib.util.find_spec("tensorflow") is not None)
    frame = road_frame()
    with donkey_saliency.load(args.pilot, backend="onnxruntime") as saliency:
        mask = saliency.mask(frame)
        facts["backend"] = saliency.backend.describe()
    facts["mask"] = dict(shape=list(mask.shape), dtype=str(mask.dtype), min=float(mask.min()),
                         max=float(mask.max()), finite=bool(np.isfinite(mask).all()))
    part = SaliencyPart(args.pilot, backend="onnxruntime")
    picture, mask_u8, _, lag = part.run(frame)
    facts["part"] = dict(error=part.error, processed=part.stats()["processed"], lag_ms=lag,
                         overlay_shape=list(picture.shape), mask_shape=list(mask_u8.shape),
                         mask_max=int(mask_u8.max()))
    import cv2

    facts["cv2"] = dict(version=cv2.__version__, where=os.path.dirname(cv2.__file__))
    if facts["tensorflow_importable"]:  # the car's TensorFlow still imports (its protobuf, its numpy)
        import tensorflow as tf

        facts["tensorflow"] = tf.__version__
    if args.car_pilot:  # the car's pilot on the car's runtime, after the project was installed
        interpreter = car_interpreter(args.car_pilot)
        facts["car_runtime"] = type(interpreter).__module__.split(".")[0]
        interpreter.allocate_tensors()
        entry = interpreter.get_input_details()[0]
        interpreter.set_tensor(entry["index"], (frame[None] / 255.0).astype(np.float32))
        interpreter.invoke()
        facts["car_pilot_outputs"] = [interpreter.get_tensor(o["index"]).tolist()
                                      for o in interpreter.get_output_details()]
    return facts


def donkeycar54(args):
    """donkeycar 5.4's own files, made by donkeycar 5.4 on Keras 3: the .tflite its keras_to_tflite
    writes (no signature) read as its TfLite reads it, and the SavedModel model.export() writes."""
    from donkeycar.parts.interpreter import TfLite, keras_to_tflite
    from donkeycar.parts.keras import KerasLinear

    from donkey_saliency import shared_pilot
    from donkey_saliency.errors import ModelError
    from donkey_saliency.pilots import load_pilot
    from donkey_saliency.api import PilotPass

    keras_pilot = KerasLinear()
    model = keras_pilot.interpreter.model
    path = os.path.join(args.out, "pilot.tflite")
    keras_to_tflite(model, path)
    interpreter = car_interpreter(path)
    facts = dict(signatures=interpreter.get_signature_list(), keras_layers=[l.name for l in model.layers],
                 keras_model=model.name)
    pilot = load_pilot(path, whole=True)
    facts.update(layers=pilot.trunk.layer_names, model_type=pilot.trunk.model_type,
                 outputs=pilot.network.output_names)
    theirs = KerasLinear(interpreter=TfLite())
    theirs.load(path)
    ours = shared_pilot(path, backend="onnxruntime")
    frame = road_frame()
    facts["theirs"] = [float(v) for v in theirs.run(frame)]
    facts["ours"] = [float(v) for v in ours.run(frame)]
    facts["mask_shape"] = list(ours.interpreter.latest_mask.shape)
    with PilotPass(path, "onnxruntime") as review:
        facts["review"] = [float(v[0, 0]) for v in review.outputs(frame[None])]
    exported = os.path.join(args.out, "exported")
    model.export(exported)
    try:
        load_pilot(exported)
    except ModelError as error:
        facts["exported_refusal"] = str(error)
    return facts


def car_interpreter(path):
    """The car's own TFLite interpreter: tflite-runtime (Bookworm), ai-edge-litert (donkeycar 5.4),
    else its TensorFlow's (Bullseye, JetPack 5, a laptop)."""
    for module in ("tflite_runtime.interpreter", "ai_edge_litert.interpreter"):
        if importlib.util.find_spec(module.split(".")[0]) is not None:
            return importlib.import_module(module).Interpreter(model_path=path)
    import tensorflow as tf

    return tf.lite.Interpreter(model_path=path)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("drive")
    p.add_argument("pilot")
    p.add_argument("tub")
    p.add_argument("--loops", type=int, default=200)
    p.add_argument("--jpegs", type=int, default=10)
    p = sub.add_parser("masks")
    p.add_argument("pilot")
    p.add_argument("--car-pilot")
    p = sub.add_parser("donkeycar54")
    p.add_argument("out")
    args = parser.parse_args()
    facts = dict(drive=drive, masks=masks, donkeycar54=donkeycar54)[args.command](args)
    print(json.dumps(facts, sort_keys=True))


if __name__ == "__main__":
    main()
