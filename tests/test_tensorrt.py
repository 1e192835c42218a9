"""TensorRT backend: engine cache, backend choice, fallback, build-engine/selftest, comparison maths.

Everything up to the ``gpu`` section runs without a GPU (CI). The ``gpu`` tests need TensorRT, pycuda
and a CUDA device and skip elsewhere, saying which is missing. TensorRT is never faked: the only
stand-ins are injected faults (a backend whose activation raises).
"""
import hashlib
import logging
import os
import threading

import numpy as np
import pytest

from conftest import REAL_TUB, real_data_or_skip
from donkey_saliency import backends, cli, trt_cache, trt_tools
from donkey_saliency.backends import tensorrt as trt_backend
from donkey_saliency.backends import trt_api, trt_engine
from donkey_saliency.backends.onnxruntime import OnnxRuntimeBackend
from donkey_saliency.backends.tensorrt import GpuSession, TensorRTBackend
from donkey_saliency.backends.trt_api import TensorSpec
from donkey_saliency.errors import BackendUnavailable, InputError


def tensorrt_usable():
    return trt_backend.unavailable_reason() is None


needs_no_tensorrt = pytest.mark.skipif(tensorrt_usable(), reason="TensorRT is usable here; this checks its absence")


@pytest.fixture(scope="session")
def tiny_graph(tiny_pilot_path):
    """The fused graph of a tiny in-test conv net (exported without touching any cache)."""
    from donkey_saliency.graph import export
    from donkey_saliency.model import load_pilot

    return export(load_pilot(tiny_pilot_path))


def meta(**changes):
    base = dict(graph_digest="ab" * 32, tensorrt_version="8.2.1.8", gpu_name="NVIDIA Tegra X1",
                compute_capability=(5, 3), precision="fp16", input_shape=(1, 120, 160, 3))
    base.update(changes)
    return trt_cache.engine_meta(**base)


ENGINE = bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8))


# --- cache key and file format ----------------------------------------------------------------------
def test_cache_key_is_stable_and_changes_with_every_field():
    assert trt_cache.cache_key(meta()) == trt_cache.cache_key(meta())
    # one normal form: tuple or string compute capability, tuple or list shape
    assert trt_cache.cache_key(meta(compute_capability="5.3", input_shape=[1, 120, 160, 3])) == \
        trt_cache.cache_key(meta())
    variants = [meta(graph_digest="cd" * 32), meta(tensorrt_version="10.3.0"), meta(gpu_name="Orin"),
                meta(compute_capability=(8, 7)), meta(precision="fp32"), meta(input_shape=(1, 66, 200, 3))]
    keys = {trt_cache.cache_key(m) for m in variants} | {trt_cache.cache_key(meta())}
    assert len(keys) == len(variants) + 1
    assert all(len(k) == 24 and int(k, 16) >= 0 for k in keys)


def test_engine_path_lives_under_engines_in_the_cache_dir(tmp_path):
    directory = trt_cache.engine_dir(str(tmp_path))
    assert directory == os.path.join(str(tmp_path), "engines")
    path = trt_cache.engine_path(directory, meta())
    assert os.path.basename(path) == "engine-fp16-%s.trt" % trt_cache.cache_key(meta())
    # default: the graph cache's directory (conftest points XDG_CACHE_HOME at a temp dir)
    assert trt_cache.engine_dir(None) == os.path.join(os.environ["XDG_CACHE_HOME"], "donkey_saliency", "engines")


def test_pack_unpack_round_trip():
    data = trt_cache.pack(meta(), ENGINE)
    assert data.startswith(trt_cache.MAGIC)
    found, engine = trt_cache.unpack(data)
    assert engine == ENGINE
    assert {k: found[k] for k in trt_cache.KEY_FIELDS} == meta()
    assert found["engine_size"] == len(ENGINE)
    assert found["engine_sha256"] == hashlib.sha256(ENGINE).hexdigest()


def _flip(data, index):
    return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1:]


@pytest.mark.parametrize("damage, message", [
    (lambda d: b"", "no magic bytes"),
    (lambda d: b"\x7fELF" + d[4:], "no magic bytes"),
    (lambda d: d[:10], "truncated header"),
    (lambda d: d[:40], "truncated header"),
    (lambda d: d[:8] + b"\xff\xff\xff\x7f" + d[12:], "implausible"),
    (lambda d: d[:12] + b"}" + d[13:], "not readable JSON"),
    (lambda d: d[:-100], "truncated or appended"),
    (lambda d: d + b"extra", "truncated or appended"),
    (lambda d: _flip(d, len(d) - 7), "checksum"),
])
def test_unpack_names_what_is_wrong(damage, message):
    with pytest.raises(trt_cache.CacheFileError, match=message):
        trt_cache.unpack(damage(trt_cache.pack(meta(), ENGINE)))


def test_unpack_refuses_a_header_without_the_key_fields():
    import json
    import struct

    header = json.dumps(dict(format=trt_cache.HEADER_FORMAT, engine_size=0, engine_sha256="")).encode()
    with pytest.raises(trt_cache.CacheFileError, match="lacks graph_digest"):
        trt_cache.unpack(trt_cache.MAGIC + struct.pack("<I", len(header)) + header)


# --- the load/rebuild decision on real files ------------------------------------------------------------
def test_decide_loads_only_an_exact_match(tmp_path):
    path = trt_cache.engine_path(str(tmp_path), meta())
    assert trt_cache.decide(path, meta()) == ("rebuild", "no cached engine at %s" % path)
    trt_cache.store(path, meta(), ENGINE)
    assert trt_cache.decide(path, meta())[0] == "load"
    action, reason, engine = trt_cache.check(path, meta())
    assert (action, engine) == ("load", ENGINE)
    assert os.listdir(str(tmp_path)) == [os.path.basename(path)]  # no temp file left behind


@pytest.mark.parametrize("written, named", [
    (dict(tensorrt_version="8.0.1"), "tensorrt_version"),  # stale: TensorRT upgraded by a JetPack update
    (dict(gpu_name="Orin"), "gpu_name"),                   # foreign: copied from another Jetson
    (dict(compute_capability=(7, 2)), "compute_capability"),
    (dict(graph_digest="ff" * 32), "graph_digest"),        # the pilot was retrained
    (dict(precision="fp32"), "precision"),
    (dict(input_shape=(1, 66, 200, 3)), "input_shape"),
])
def test_decide_rebuilds_engines_made_for_something_else(tmp_path, written, named):
    path = trt_cache.engine_path(str(tmp_path), meta())
    trt_cache.store(path, meta(**written), ENGINE)  # a file at the expected name, built for something else
    action, reason = trt_cache.decide(path, meta())
    assert action == "rebuild"
    assert named in reason and "built for something else" in reason


@pytest.mark.parametrize("damage, named", [
    (lambda d: d[: len(d) // 2], "truncated"),
    (lambda d: _flip(d, len(d) - 1), "checksum"),
    (lambda d: b"", "no magic bytes"),
    (lambda d: b"not an engine at all" * 10, "no magic bytes"),
])
def test_decide_rebuilds_corrupt_and_truncated_files(tmp_path, damage, named):
    path = trt_cache.engine_path(str(tmp_path), meta())
    trt_cache.store(path, meta(), ENGINE)
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(damage(data))
    action, reason = trt_cache.decide(path, meta())
    assert action == "rebuild" and named in reason


def test_store_is_atomic_when_the_write_fails(tmp_path, monkeypatch):
    path = trt_cache.engine_path(str(tmp_path), meta())
    trt_cache.store(path, meta(), ENGINE)

    def failing_replace(src, dst):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="injected"):
        trt_cache.store(path, meta(precision="fp16"), b"new engine that never lands")
    monkeypatch.undo()
    assert trt_cache.check(path, meta())[2] == ENGINE  # the old file is intact
    assert os.listdir(str(tmp_path)) == [os.path.basename(path)]


# --- pure pieces of the backend --------------------------------------------------------------------
def test_head_layers_are_recognised_by_name_or_output():
    assert trt_engine.is_head_layer("vbp/ReduceMax_12")
    assert trt_engine.is_head_layer("(Unnamed Layer* 57) [Shuffle]", ["vbp/scaled_14"])
    assert trt_engine.is_head_layer("(Unnamed Layer* 90) [Shuffle]", ["mask"], head_outputs={"mask", "mean_0"})
    assert not trt_engine.is_head_layer("StatefulPartitionedCall/model/conv2d_1/Conv2D", ["map_0"])


def test_every_head_node_of_the_real_graph_carries_the_prefix(tiny_graph):
    """pin_head_precision finds the head by the 'vbp/' prefix: every node downstream of the trunk's
    maps must have it, and no trunk node may (the trunk is what runs in fp16)."""
    import onnx

    proto = onnx.load_from_string(tiny_graph.onnx_bytes)
    producers = {out: node for node in proto.graph.node for out in node.output}
    trunk, todo = set(), ["map_%d" % i for i in range(len(tiny_graph.layer_names))]
    while todo:  # the trunk: every node the conv maps depend on
        node = producers.get(todo.pop())
        if node is not None and node.name not in trunk:
            trunk.add(node.name)
            todo.extend(node.input)
    head = [n.name for n in proto.graph.node if n.name not in trunk]
    assert len(head) > 10 and all(name.startswith("vbp/") for name in head)
    prologue = {"vbp/Cast", "vbp/Div255"}  # uint8 -> float, /255: part of the head's fp32 set, cheap
    assert {name for name in trunk if name.startswith("vbp/")} == prologue
    trunk_convs = [n for n in proto.graph.node if n.op_type == "Conv" and not n.name.startswith("vbp/")]
    assert len(trunk_convs) == len(tiny_graph.layer_names) and all(n.name in trunk for n in trunk_convs)


def test_effective_precision():
    assert trt_engine.effective_precision("fp16", True) == ("fp16", "asked for")
    assert trt_engine.effective_precision("fp16", False)[0] == "fp32"
    assert trt_engine.effective_precision("fp32", True) == ("fp32", "asked for")
    with pytest.raises(BackendUnavailable, match="fp8"):
        trt_engine.effective_precision("fp8", True)


def _specs_for(graph, input_dtype=np.uint8):
    shapes = trt_api.expected_shapes(graph)
    specs = [TensorSpec(graph.input_name, shapes[graph.input_name], input_dtype, True, 0)]
    for index, name in enumerate([graph.mask_name] + graph.mean_names, start=1):
        specs.append(TensorSpec(name, shapes[name], np.float32, False, index))
    return specs


def test_check_io_accepts_what_the_graph_promises(tiny_graph):
    frame, outputs = trt_api.check_io(_specs_for(tiny_graph), tiny_graph)
    assert frame.shape == (1, 120, 160, 3) and frame.nbytes == 120 * 160 * 3
    assert [o.name for o in outputs] == ["mask", "mean_0", "mean_1"]
    # TensorRT < 8.5 runs the float-input variant of the graph
    assert trt_api.check_io(_specs_for(tiny_graph, np.float32), tiny_graph)[0].dtype == np.float32


def test_check_io_refuses_an_engine_that_does_not_match(tiny_graph):
    specs = _specs_for(tiny_graph)
    with pytest.raises(BackendUnavailable, match="mean_1 missing"):
        trt_api.check_io(specs[:-1], tiny_graph)
    wrong = specs[:1] + [TensorSpec("mask", (1, 66, 200), np.float32, False, 1)] + specs[2:]
    with pytest.raises(BackendUnavailable, match=r"mask has shape \(1, 66, 200\)"):
        trt_api.check_io(wrong, tiny_graph)
    with pytest.raises(BackendUnavailable, match="expected uint8 or float32"):
        trt_api.check_io(_specs_for(tiny_graph, np.int32), tiny_graph)
    with pytest.raises(BackendUnavailable, match="inputs are"):
        trt_api.check_io([TensorSpec("image", (1, 120, 160, 3), np.float32, True, 0)] + specs[1:], tiny_graph)


def test_float_input_variant_gives_the_same_outputs(tiny_graph):
    """The graph TensorRT < 8.5 gets (no uint8 inputs there) computes exactly what the uint8 one does."""
    import onnx
    import onnxruntime as ort

    variant = trt_engine.with_float_input(tiny_graph.onnx_bytes)
    assert onnx.load_from_string(variant).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    frames = trt_tools.procedural_frames(3)
    original = ort.InferenceSession(tiny_graph.onnx_bytes, providers=["CPUExecutionProvider"])
    widened = ort.InferenceSession(variant, providers=["CPUExecutionProvider"])
    names = [o.name for o in original.get_outputs()]
    for a, b in zip(original.run(names, {"frame": frames}), widened.run(names, {"frame": frames.astype(np.float32)})):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="no input named"):
        trt_engine.with_float_input(tiny_graph.onnx_bytes, input_name="image")


# --- backend choice here (no TensorRT) --------------------------------------------------------------
@needs_no_tensorrt
def test_availability_names_what_is_missing_and_how_to_get_it():
    ok, reason = TensorRTBackend.availability()
    assert not ok
    assert "tensorrt" in reason and "JetPack" in reason and "pip install pycuda" in reason
    assert "\n" not in reason


@needs_no_tensorrt
def test_auto_picks_onnxruntime_and_logs_why(caplog):
    with caplog.at_level(logging.INFO, logger="donkey_saliency.backends"):
        cls, why = backends.choose("auto")
    assert cls is OnnxRuntimeBackend
    assert "tensorrt: TensorRT backend unavailable" in why
    assert any("saliency backend: onnxruntime" in r.getMessage() and "tensorrt" in r.getMessage()
               for r in caplog.records)


@needs_no_tensorrt
def test_asking_for_tensorrt_here_is_one_clear_error(tiny_graph):
    with pytest.raises(BackendUnavailable) as caught:
        backends.create(tiny_graph, "tensorrt")
    assert "tensorrt" in str(caught.value) and "\n" not in str(caught.value)


# --- run-time fallback ---------------------------------------------------------------------------------
def _warnings(caplog):
    return [r for r in caplog.records if r.levelno == logging.WARNING]


@needs_no_tensorrt
def test_fallback_when_tensorrt_is_missing(tiny_graph, caplog):
    frames = trt_tools.procedural_frames(2)
    with caplog.at_level(logging.WARNING):
        backend = backends.activate_with_fallback(tiny_graph, "tensorrt", dict(precision="fp16", threads=1))
    try:
        assert isinstance(backend, OnnxRuntimeBackend) and backend._active
        with OnnxRuntimeBackend(tiny_graph) as direct:
            np.testing.assert_array_equal(backend.infer(frames)["mask"], direct.infer(frames)["mask"])
    finally:
        backend.close()
    [warning] = _warnings(caplog)
    assert "tensorrt failed" in warning.getMessage() and "falling back to onnxruntime" in warning.getMessage()


class _InjectedFault(RuntimeError):
    pass


def _explode(self):
    raise _InjectedFault("injected: engine build failed\nsecond line of a long TensorRT log")


def test_fallback_when_tensorrt_activation_raises(tiny_graph, caplog, monkeypatch):
    """Fault injection: TensorRT claims to be available, then its activation fails (as a build that
    runs out of memory on a Nano would)."""
    monkeypatch.setattr(TensorRTBackend, "availability", classmethod(lambda cls: (True, "")))
    monkeypatch.setattr(TensorRTBackend, "_activate", _explode)
    with caplog.at_level(logging.WARNING):
        backend = backends.activate_with_fallback(tiny_graph, "auto")
    try:
        assert isinstance(backend, OnnxRuntimeBackend)
        assert backend.infer(trt_tools.procedural_frames(1))["mask"].shape == (1, 120, 160)
    finally:
        backend.close()
    [warning] = _warnings(caplog)
    assert warning.getMessage() == ("saliency backend tensorrt failed (injected: engine build failed); "
                                    "falling back to onnxruntime")


def test_fallback_raises_when_onnxruntime_fails_too(tiny_graph, caplog, monkeypatch):
    monkeypatch.setattr(TensorRTBackend, "availability", classmethod(lambda cls: (True, "")))
    monkeypatch.setattr(TensorRTBackend, "_activate", _explode)
    monkeypatch.setattr(OnnxRuntimeBackend, "_activate", _explode)
    with caplog.at_level(logging.WARNING), pytest.raises(_InjectedFault):
        backends.activate_with_fallback(tiny_graph, "tensorrt")
    assert len(_warnings(caplog)) == 1  # the TensorRT failure; the ONNX Runtime one is raised


@pytest.mark.parametrize("name", ["onnxruntime", "auto"])
def test_no_fallback_from_onnxruntime_to_itself(tiny_graph, caplog, monkeypatch, name):
    monkeypatch.setattr(TensorRTBackend, "availability", classmethod(lambda cls: (False, "not here (test)")))
    calls = []

    def count_and_explode(self):
        calls.append(1)
        _explode(self)

    monkeypatch.setattr(OnnxRuntimeBackend, "_activate", count_and_explode)
    with caplog.at_level(logging.WARNING), pytest.raises(_InjectedFault):
        backends.activate_with_fallback(tiny_graph, name)
    assert calls == [1] and _warnings(caplog) == []


# --- build-engine and selftest without TensorRT -------------------------------------------------
@needs_no_tensorrt
@pytest.mark.parametrize("argv", [
    ["build-engine", "{model}"],
    ["build-engine", "{model}", "--precision", "fp32", "--cache-dir", "{tmp}"],
    ["selftest"],
    ["selftest", "{model}", "--tub", "{tmp}", "--frames", "5", "--cache-dir", "{tmp}"],
    ["build-engine", "{tmp}/no-such-pilot.h5"],  # TensorRT is checked before the pilot is read
])
def test_commands_without_tensorrt_exit_2_with_one_line(tiny_pilot_path, tmp_path, capsys, argv):
    argv = [a.format(model=tiny_pilot_path, tmp=str(tmp_path)) for a in argv]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("donkey-saliency %s: TensorRT backend unavailable - missing tensorrt" % argv[0])
    assert "JetPack" in lines[0] and "pip install pycuda" in lines[0]
    assert os.listdir(str(tmp_path)) == []  # nothing written, no cache dir made


@pytest.mark.parametrize("argv, message", [
    (["build-engine", "x.h5", "--precision", "int8"], "--precision must be one of fp16, fp32"),
    (["selftest", "--frames", "0"], "--frames must be at least 1"),
])
def test_bad_options_exit_2_with_one_line(capsys, argv, message):
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err


def test_commands_are_listed_in_help():
    parser = cli.build_parser()
    assert {"build-engine", "selftest"} <= set(parser._subparsers._group_actions[0].choices)


# --- comparison maths ------------------------------------------------------------------------------
def test_top_fraction_takes_the_most_salient_pixels():
    mask = np.arange(100, dtype=np.float32).reshape(10, 10) / 99.0
    chosen = trt_tools.top_fraction(mask, 0.10)
    assert chosen.sum() == 10 and chosen.ravel()[90:].all()
    tied = np.zeros((10, 10), np.float32)
    tied[0, :] = 1.0
    tied[1, :5] = 0.5
    tied[1, 5:] = 0.5  # 10 ones, then 10 ties at 0.5 straddling the 10 % line
    assert trt_tools.top_fraction(tied, 0.15).sum() == 20  # ties are all in
    assert trt_tools.top_fraction(np.zeros((10, 10)), 0.1).sum() == 0  # a blank mask has nothing salient
    spike = np.zeros((10, 10))
    spike[3, 4] = 1.0
    assert trt_tools.top_fraction(spike, 0.1).sum() == 1  # not the plateau of zeros


def test_overlap():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert trt_tools.overlap(a, a) == 1.0
    assert trt_tools.overlap(a, b) == pytest.approx(4 / 12)
    assert trt_tools.overlap(a, ~a) == 0.0
    assert trt_tools.overlap(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0


def test_compare_masks_and_verdict():
    rng = np.random.default_rng(3)
    reference = rng.random((6, 12, 16)).astype(np.float32)
    same = trt_tools.compare_masks(reference, reference)
    assert same["max_abs"] == 0.0 and same["min_overlap"] == 1.0 and same["blank_frames"] == 0
    assert trt_tools.verdict(same, trt_tools.TOLERANCES["fp32"]) == (True, [])

    nudged = trt_tools.compare_masks(reference, reference + 1e-4)  # ranks unchanged
    assert nudged["max_abs"] == pytest.approx(1e-4, rel=1e-2) and nudged["min_overlap"] == 1.0
    assert trt_tools.verdict(nudged, trt_tools.TOLERANCES["fp32"])[0]

    shifted = np.roll(reference, 3, axis=2)  # the salient pixels moved: what a broken engine looks like
    moved = trt_tools.compare_masks(reference, shifted)
    assert moved["min_overlap"] < 0.5
    passed, failures = trt_tools.verdict(moved, trt_tools.TOLERANCES["fp16"])
    assert not passed and any("max mask difference" in f for f in failures) and any("overlap" in f for f in failures)

    blank = trt_tools.compare_masks(np.zeros((2, 5, 5)), np.zeros((2, 5, 5)))
    passed, failures = trt_tools.verdict(blank, trt_tools.TOLERANCES["fp16"])
    assert blank["blank_frames"] == 2 and not passed and "blank" in failures[0]
    with pytest.raises(ValueError, match="differ in shape"):
        trt_tools.compare_masks(reference, reference[:, :, :8])


def test_report_lines_state_the_numbers_and_the_verdict():
    comparison = trt_tools.compare_masks(np.eye(8)[None], np.eye(8)[None])
    report = dict(engine="engine: x", precision="fp16", comparison=comparison, tolerance=trt_tools.TOLERANCES["fp16"],
                  trt_ms=2.0, ort_ms=30.0, passed=True, failures=[])
    lines = trt_tools.report_lines(report)
    assert lines[-1] == "PASS"
    text = "\n".join(lines)
    assert "max mask difference       0.00000" in text and "tolerance <= 0.05" in text
    assert "tensorrt 2.00, onnxruntime 30.00 (15.0x)" in text
    assert "top-10% overlap (IoU)" in text


# --- frames ---------------------------------------------------------------------------------------
def test_procedural_frames_are_deterministic_varied_scenes():
    frames = trt_tools.procedural_frames(6, (120, 160, 3))
    assert frames.shape == (6, 120, 160, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, trt_tools.procedural_frames(6, (120, 160, 3)))
    assert np.abs(frames[0].astype(int) - frames[3]).mean() > 5  # the road moves between frames
    assert frames.std() > 30  # structure, not a flat colour
    assert trt_tools.procedural_frames(2, (66, 200, 1)).shape == (2, 66, 200, 1)


def test_frames_from_the_real_v1_tub():
    real_data_or_skip()
    paths = trt_tools.tub_image_paths(REAL_TUB)
    assert len(paths) == 300 and os.path.basename(paths[0]) == "2000_cam-image_array_.jpg"
    assert os.path.basename(paths[-1]) == "2299_cam-image_array_.jpg"
    frames = trt_tools.tub_frames(REAL_TUB, 4)
    assert len(frames) == 4 and frames[0].shape == (120, 160, 3) and frames[0].dtype == np.uint8


def test_frames_from_a_v2_tub_written_by_donkeycar(tmp_path):
    from donkeycar.parts.tub_v2 import Tub

    written = trt_tools.procedural_frames(5)
    tub = Tub(str(tmp_path / "tub"), inputs=["cam/image_array", "user/angle"], types=["image_array", "float"])
    for i, frame in enumerate(written):
        tub.write_record({"cam/image_array": frame, "user/angle": 0.1 * i})
    tub.close()
    frames = trt_tools.tub_frames(str(tmp_path / "tub"), 3)
    assert len(frames) == 3
    # spread evenly, in record order: each frame read back is nearest the one written there (JPEG is lossy)
    nearest = [int(np.argmin([np.abs(got.astype(int) - w).mean() for w in written])) for got in frames]
    assert nearest == [0, 2, 4]


def test_bad_tubs_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="tub not found"):
        trt_tools.tub_frames(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="is not a tub"):
        trt_tools.tub_frames(str(tmp_path))


def test_stand_in_pilot_for_selftest_gives_informative_masks():
    graph = trt_tools.default_pilot_graph()
    assert len(graph.layer_names) == 5 and graph.input_shape == (120, 160, 3)
    with OnnxRuntimeBackend(graph) as backend:
        masks = backend.infer(trt_tools.procedural_frames(4))["mask"]
    assert all(np.ptp(m) > 0.5 for m in masks)  # something to compare, not blank maps


# --- gpu: real TensorRT, pycuda and a CUDA device -------------------------------------------------------
@pytest.fixture
def gpu():
    missing = trt_backend.missing_libraries()
    if missing:
        pytest.skip("TensorRT not installed: %s" % "; ".join(missing))
    reason = trt_backend.unavailable_reason()
    if reason:
        pytest.skip("no usable CUDA device: %s" % reason)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_onnxruntime_and_is_cached(gpu, tiny_graph, tmp_path, precision):
    frames = trt_tools.procedural_frames(8)
    with OnnxRuntimeBackend(tiny_graph) as reference:
        expected = reference.infer(frames)
    first = TensorRTBackend(tiny_graph, precision=precision, cache_dir=str(tmp_path)).activate()
    try:
        got = first.infer(frames)  # N > 1: one frame at a time inside
    finally:
        first.close()
    assert first.engine_source == "built" and os.path.exists(first.engine_path)
    assert sorted(got) == sorted(expected)
    comparison = trt_tools.compare_masks(expected["mask"], got["mask"])
    assert trt_tools.verdict(comparison, trt_tools.TOLERANCES[first.precision]) == (True, [])
    for name in tiny_graph.mean_names:
        np.testing.assert_allclose(got[name], expected[name], rtol=0.02, atol=0.02)
    second = TensorRTBackend(tiny_graph, precision=precision, cache_dir=str(tmp_path)).activate()
    try:
        assert second.engine_source == "cache"
        np.testing.assert_array_equal(second.infer(frames[:1])["mask"], got["mask"][:1])
    finally:
        second.close()


@pytest.mark.gpu
def test_corrupt_cached_engine_is_rebuilt(gpu, tiny_graph, tmp_path):
    with TensorRTBackend(tiny_graph, precision="fp32", cache_dir=str(tmp_path)) as backend:
        path = backend.engine_path
    with open(path, "r+b") as handle:
        handle.seek(-10, os.SEEK_END)
        handle.write(b"\0" * 10)
    with TensorRTBackend(tiny_graph, precision="fp32", cache_dir=str(tmp_path)) as backend:
        assert backend.engine_source == "built"
        assert backend.infer(trt_tools.procedural_frames(1))["mask"].shape == (1, 120, 160)


@pytest.mark.gpu
def test_engine_runs_in_a_worker_thread_and_closes_there(gpu, tiny_graph, tmp_path):
    results, errors = [], []

    def worker():
        try:
            with TensorRTBackend(tiny_graph, precision="fp16", cache_dir=str(tmp_path)) as backend:
                results.append(backend.infer(trt_tools.procedural_frames(2))["mask"])
        except Exception as error:  # reported to the main thread below
            errors.append(error)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=600)
    assert not thread.is_alive() and errors == []
    assert results[0].shape == (2, 120, 160)


@pytest.mark.gpu
def test_selftest_command_passes_on_a_tiny_pilot(gpu, tiny_pilot_path, tmp_path, capsys):
    assert cli.main(["selftest", tiny_pilot_path, "--frames", "10", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "PASS"
