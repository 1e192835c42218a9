"""Issue 23, items 9-12: the tools on hostile files. Each CLI run is the real console script in a
subprocess: one line on stderr, exit 2, nothing half-written; where a file declares or holds
gigabytes, the subprocess's peak memory (getrusage) stays bounded. The hostile files are made
cheaply: truncated or random bytes, a zip whose 2 GiB member deflates to 2 MB, an HDF5 dataset that
declares a huge shape and stores nothing, sparse files."""
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from helpers import assert_one_line_exit_2, CLI, run_cli
from tub_helpers import copy_tub
from web_helpers import Served
from web_helpers import camera_frame

GIB = 1 << 30


def peak_rss_mb(*args):
    """(CompletedProcess, peak resident memory of the CLI in MB): the CLI runs in a child of a small
    wrapper, whose RUSAGE_CHILDREN is that child's alone."""
    wrapper = ("import resource, subprocess, sys\n"
               "result = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=300)\n"
               "sys.stderr.write(result.stderr)\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
               "sys.exit(result.returncode)\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", wrapper] + CLI + [str(a) for a in args], capture_output=True,
                            text=True, timeout=300, env=env)
    return result, int(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tflite_pilot(tmp_path_factory, tiny_pilot_path):
    from pilot_helpers import to_tflite

    h5 = str(tmp_path_factory.mktemp("tflite") / "tiny.h5")
    shutil.copyfile(tiny_pilot_path, h5)
    return to_tflite(h5)


@pytest.fixture
def frame_jpg(tmp_path):
    path = str(tmp_path / "frame.jpg")
    cv2.imwrite(path, camera_frame())
    return path


# --- 9: a damaged .tflite never reaches TensorFlow Lite ----------------------------------------------

@pytest.mark.slow
def test_9_truncated_or_random_tflite_is_one_line_before_tensorflow_lite(tool_tubs, tflite_pilot, frame_jpg,
                                                                          tmp_path):
    data = open(tflite_pilot, "rb").read()
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(data[:len(data) // 2])
    random_file = tmp_path / "random.tflite"  # a root offset and the TFL3 mark, then noise: TFLite segfaulted
    random_file.write_bytes(b"\x10\x00\x00\x00TFL3" + np.random.RandomState(0).bytes(4000))
    out = tmp_path / "out"
    os.makedirs(str(out))
    tub = tool_tubs["tub"]
    for pilot in (truncated, random_file):
        runs = {
            "evaluate": ("evaluate", tub, "--model", pilot, "--frames", "2", "--out", out / "eval"),
            "render": ("render", tub, "--model", pilot, "--out", out / "r.mp4"),
            "review": ("review", tub, "--model", pilot, "--port", "0"),
            "mask": ("mask", pilot, frame_jpg, "--out", out / "masks"),
            "backfill": ("backfill", tub, "--model", pilot, "--out", out / "copy"),
        }
        for command, args in runs.items():
            line = assert_one_line_exit_2(run_cli(*(args + ("--backend", "onnxruntime"))), command)
            assert "damaged or truncated TensorFlow Lite file" in line and str(pilot) in line, line
    assert os.listdir(str(out)) == []  # nothing half-written


def test_9_steering_and_review_predictor_validate_before_the_interpreter(tmp_path):
    from donkey_saliency.errors import ModelError
    from donkey_saliency.api import PilotPass

    path = tmp_path / "random.tflite"
    path.write_bytes(b"\x10\x00\x00\x00TFL3" + np.random.RandomState(0).bytes(4000))
    with pytest.raises(ModelError, match="damaged or truncated"):
        PilotPass(str(path), "onnxruntime")


# --- 10: a NUL byte in an image name -----------------------------------------------------------------

def name_image(tub, position, name):
    """Rewrite the image name of the record on line ``position`` of catalog_0; its index."""
    catalog = os.path.join(tub, "catalog_0.catalog")
    lines = open(catalog).read().splitlines()
    record = json.loads(lines[position])
    record["cam/image_array"] = name
    lines[position] = json.dumps(record)  # NUL as \u0000: valid JSON, as donkeycar's json.dumps writes it
    open(catalog, "w").write("\n".join(lines) + "\n")
    return record["_index"]


@pytest.mark.slow
def test_10_nul_byte_in_an_image_name_is_one_line_and_a_400(tool_tubs, tiny_pilot_path, tmp_path):
    from donkey_saliency.errors import InputError
    from donkey_saliency.tubs.read import open_tub

    tub = copy_tub(tool_tubs["tub"], tmp_path / "tub")
    index = name_image(tub, 1, "1_cam_image_array_.jpg\x00.png")
    with pytest.raises(InputError, match="NUL byte"):
        open_tub(tub)
    out = tmp_path / "out"
    os.makedirs(str(out))
    runs = {
        "evaluate": ("evaluate", tub, "--model", tiny_pilot_path, "--frames", "2",
                     "--out", out / "eval"),
        "backfill": ("backfill", tub, "--model", tiny_pilot_path, "--out", out / "copy"),
        "render": ("render", tub, "--model", tiny_pilot_path, "--out", out / "r.mp4"),
    }
    for command, args in runs.items():
        line = assert_one_line_exit_2(run_cli(*(args + ("--backend", "onnxruntime"))), command)
        assert "record %d's cam/image_array name" % index in line and "NUL byte" in line, line
    assert os.listdir(str(out)) == []

    served = Served(tub)  # the review server: that record's pictures are a 400 saying why, the rest serve
    try:
        status, _, body = served.request("/saliency/review/frame/%d/camera.jpg" % index)
        assert status == 400 and b"NUL byte" in body, (status, body)
        assert served.request("/saliency/review/frame/%d/camera.jpg" % (index + 1))[0] == 200
        assert served.request("/saliency/review/record/%d" % index)[0] == 200
        assert served.request("/saliency/review/timeline")[0] == 200
    finally:
        served.close()


# --- 11: evaluate on frames too small, and undefined figures -----------------------------------------

def constant_tub(path, shape, count=3):
    from donkeycar.parts.tub_v2 import Tub

    tub = Tub(str(path), inputs=["cam/image_array", "user/angle", "user/throttle", "user/mode"],
              types=["image_array", "float", "float", "str"])
    for _ in range(count):
        tub.write_record({"cam/image_array": np.full(shape, 90, np.uint8), "user/angle": 0.0, "user/throttle": 0.2,
                          "user/mode": "user"})
    tub.close()
    return str(path)


def strict_json(data):
    def refuse(token):
        raise ValueError("bare %s is not JSON" % token)

    return json.loads(data, parse_constant=refuse)


def test_11_json_bytes_writes_null_for_undefined_figures():
    from donkey_saliency.util.fileio import json_bytes

    report = {"a": float("nan"), "b": [1.5, float("inf"), {"c": -float("inf")}], "d": np.float64("nan"), "e": "x"}
    assert strict_json(json_bytes(report)) == {"a": None, "b": [1.5, None, {"c": None}], "d": None, "e": "x"}


@pytest.mark.slow
def test_11_evaluate_refuses_1x1_frames_and_writes_null_where_undefined(tiny_pilot_path, tmp_path):
    tiny = constant_tub(tmp_path / "tiny", (1, 1, 3))
    line = assert_one_line_exit_2(run_cli("evaluate", tiny, "--model", tiny_pilot_path, "--frames", "2",
                                          "--backend", "onnxruntime", "--out", tmp_path / "e1"),
                                  "evaluate")
    assert "1x1 pixels" in line and "at least 25x25" in line, line
    assert not os.path.exists(str(tmp_path / "e1"))
    # Full-size frames of one colour: shifting them changes nothing, the shift ratios are 0/0.
    flat = constant_tub(tmp_path / "flat", (120, 160, 3))
    result = run_cli("evaluate", flat, "--model", tiny_pilot_path, "--frames", "2", "--backend",
                     "onnxruntime", "--out", tmp_path / "e2")
    assert result.returncode == 0, result.stderr
    report = strict_json(open(str(tmp_path / "e2" / "evaluate.json")).read())
    assert report["methods"]["vbp"]["salient_over_whole"] is None
    assert report["methods"]["vbp"]["deletion_auc"] == 0.0


# --- 12: bounded reads of hostile files ----------------------------------------------------------------

def zip_bomb(path, inflated=2 * GIB, chunk=4 << 20):
    """A .keras zip: config.json, and model.weights.h5 that inflates to ``inflated`` zero bytes from
    about 2 MB. Written by hand: one deflate block after a full flush is self-contained, so it is
    repeated instead of compressing gigabytes."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(bytes(chunk)) + deflate.flush(zlib.Z_FULL_FLUSH)
    count = inflated // chunk
    crc = 0
    zeros = bytes(chunk)
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    members = [(b"config.json", 0, b"{}", 2, zlib.crc32(b"{}")),
               (b"model.weights.h5", 8, None, count * chunk, crc)]
    central, offset = b"", 0
    with open(str(path), "wb") as handle:
        for name, method, data, size, member_crc in members:
            tail = deflate.flush(zlib.Z_FINISH) if data is None else b""
            compressed = len(block) * count + len(tail) if data is None else len(data)
            fields = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0, member_crc, compressed, size, len(name), 0)
            handle.write(b"PK\x03\x04" + fields + name)
            if data is None:
                for _ in range(count):
                    handle.write(block)
                handle.write(tail)
            else:
                handle.write(data)
            central += b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, offset) + name
            offset = handle.tell()
        handle.write(central + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 2, 2, len(central), offset, 0))
    return str(path)


@pytest.mark.slow
def test_12_zip_bomb_keras_is_refused_from_its_declared_size(frame_jpg, tmp_path):
    import zipfile

    bomb = zip_bomb(tmp_path / "bomb.keras")
    assert os.path.getsize(bomb) < 4 << 20
    assert zipfile.ZipFile(bomb).getinfo("model.weights.h5").file_size == 2 * GIB  # a zip Python reads
    result, peak = peak_rss_mb("mask", bomb, frame_jpg, "--out", tmp_path / "masks", "--backend", "onnxruntime")
    line = assert_one_line_exit_2(result, "mask")
    assert "model.weights.h5 would take 2 GiB, over the 1 GiB a pilot may hold" in line, line
    assert peak < 600 and not os.path.exists(str(tmp_path / "masks")), peak


def test_12_hdf5_dataset_declaring_a_huge_shape_is_refused_unread(tiny_pilot_path, tmp_path):
    import h5py

    from donkey_saliency.errors import ModelError
    from donkey_saliency.pilots import load_pilot

    path = str(tmp_path / "huge.h5")
    shutil.copyfile(tiny_pilot_path, path)
    with h5py.File(path, "a") as handle:
        layer = handle["model_weights"]["conv2d_1"]
        # Chunked and compressed, never written: the file stays small, a read would fill 1.2 GB.
        layer.create_dataset("huge", shape=(300 << 20,), dtype="f4", chunks=(1 << 20,), compression="gzip")
        names = [n if isinstance(n, bytes) else n.encode() for n in layer.attrs["weight_names"]]
        layer.attrs["weight_names"] = np.array(names + [b"huge"])
    assert os.path.getsize(path) < 1 << 20
    with pytest.raises(ModelError, match="its weights would take 1.2 GiB, over the 1 GiB a pilot may hold"):
        load_pilot(path)


def append_sparse_line(catalog, size):
    """Append a catalog line of ``size`` bytes, nearly all a hole in the file (no disk, no time)."""
    with open(catalog, "r+b") as handle:
        handle.seek(0, os.SEEK_END)
        handle.write(b'{"cam/image_array": "')
        handle.truncate(handle.tell() + size)
        handle.seek(0, os.SEEK_END)
        handle.write(b'"}\n')


@pytest.mark.slow
def test_12_a_2_gb_catalog_line_is_refused_in_bounded_memory(tool_tubs, tmp_path):
    from donkey_saliency.errors import InputError
    from donkey_saliency.tubs.read import open_tub

    tub = copy_tub(tool_tubs["tub"], tmp_path / "tub")
    catalogs = sorted(n for n in os.listdir(tub) if n.endswith(".catalog"))
    append_sparse_line(os.path.join(tub, catalogs[-1]), 2 * GIB)
    with pytest.raises(InputError, match="over 1 MiB, more than a record can be"):
        open_tub(tub)
    result, peak = peak_rss_mb("review", tub, "--port", "0")
    line = assert_one_line_exit_2(result, "review")
    assert "the line at byte" in line and catalogs[-1] in line and "over 1 MiB" in line, line
    assert peak < 600, peak


def test_12_oversized_manifest_and_meta_are_refused_unread(tool_tubs, tmp_path):
    from donkey_saliency.errors import InputError
    from donkey_saliency.tubs.read import open_tub

    tub = copy_tub(tool_tubs["tub"], tmp_path / "tub")
    with open(os.path.join(tub, "manifest.json"), "r+b") as handle:
        handle.truncate(65 << 20)  # sparse: 65 MiB of NULs after the real manifest
    with pytest.raises(InputError, match="manifest.json: over 64 MiB, more than a tub's manifest.json can be"):
        open_tub(tub)
    v1 = str(tmp_path / "v1")
    os.makedirs(v1)
    with open(os.path.join(v1, "meta.json"), "wb") as handle:
        handle.truncate(2 << 20)
    with pytest.raises(InputError, match="meta.json: over 1 MiB"):
        open_tub(v1)


def test_12_oversized_tflite_is_refused_unread(tmp_path):
    from donkey_saliency.errors import ModelError
    from donkey_saliency.pilots import load_pilot

    path = str(tmp_path / "huge.tflite")
    with open(path, "wb") as handle:
        handle.write(b"\x10\x00\x00\x00TFL3")
        handle.truncate(GIB + 1)
    with pytest.raises(ModelError, match="over 1 GiB, more than a pilot can be"):
        load_pilot(path)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declared_png(path, side):
    """A 1-bit grayscale PNG of side x side black pixels: 0.5 MB on disk for 30000, 0.9 GB decoded."""
    row = bytes(1 + (side + 7) // 8)
    deflate = zlib.compressobj(1)
    body = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    with open(str(path), "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body)
                     + png_chunk(b"IEND", b""))
    return str(path)


@pytest.mark.slow
def test_12_images_declaring_or_holding_too_much_are_refused(tiny_pilot_path, tmp_path):
    huge = declared_png(tmp_path / "huge.png", 30000)  # OpenCV's own default limit lets it through: 1.8 GB
    result, peak = peak_rss_mb("mask", tiny_pilot_path, huge, "--out", tmp_path / "masks", "--backend", "onnxruntime")
    line = assert_one_line_exit_2(result, "mask")
    assert "huge.png: declares more than 67108864 pixels" in line, line
    assert peak < 600, peak
    big = str(tmp_path / "big.jpg")
    with open(big, "wb") as handle:
        handle.truncate(65 << 20)
    line = assert_one_line_exit_2(run_cli("mask", tiny_pilot_path, big, "--out", tmp_path / "masks"), "mask")
    assert "big.jpg: over 64 MiB, more than an image can be" in line, line
    assert sorted(os.listdir(str(tmp_path))) == ["big.jpg", "huge.png"]
