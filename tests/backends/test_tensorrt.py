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

from helpers import find_python, real_data_or_skip, REAL_TUB
from trt_helpers import RecordingConfig
from donkey_saliency import backends, cli
from donkey_saliency.backends import trt_cache
from donkey_saliency.backends import trt_compare, trt_tools
from donkey_saliency.backends import tensorrt as trt_backend
from donkey_saliency.backends import trt_api, trt_engine
from donkey_saliency.backends.onnxruntime import OnnxRuntimeBackend
from donkey_saliency.backends.tensorrt import GpuSession, TensorRTBackend
from donkey_saliency.backends.trt_api import TensorSpec
from donkey_saliency.errors import BackendUnavailable, InputError
from donkey_saliency.tubs.read import camera_image_paths, tub_frames


def tensorrt_usable():
    return trt_backend.unavailable_reason() is None


needs_no_tensorrt = pytest.mark.skipif(tensorrt_usable(), reason="TensorRT is usable here; this checks its absence")


@pytest.fixture(scope="session")
def tiny_graph(tiny_pilot_path):
    """The fused graph of a tiny in-test conv net (exported without touching any cache)."""
    from donkey_saliency.compute.graph import export
    from donkey_saliency.pilots import load_pilot

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


def test_an_unreadable_cache_entry_means_rebuild(tmp_path):
    path = trt_cache.engine_path(str(tmp_path), meta())
    os.makedirs(path)  # something at the engine's name that cannot be read as a file
    action, reason = trt_cache.decide(path, meta())
    assert action == "rebuild" and "cannot read" in reason


def test_storing_into_an_unwritable_cache_raises_and_leaves_nothing(tmp_path):
    """What EngineLoader.build_and_store catches (a cache it cannot write must not stop the car): the
    store fails with OSError and nothing is left half-written. (A regular file where the cache folder
    should be: unwritable even for root, unlike a chmod'ed folder.)"""
    blocked = tmp_path / "cache"
    blocked.write_bytes(b"a file, not a folder")
    path = trt_cache.engine_path(trt_cache.engine_dir(str(blocked)), meta())
    with pytest.raises(OSError):
        trt_cache.store(path, meta(), ENGINE)
    assert blocked.read_bytes() == b"a file, not a folder" and os.listdir(str(tmp_path)) == ["cache"]


# --- the loader's cache lookup (EngineLoader._cached reads nothing from TensorRT but its version:
# None here, so the files are keyed "unknown"; building and deserializing are in the gpu section) ----
GPU, CAPABILITY = "NVIDIA Tegra X1", (5, 3)


def lookup(graph, precision="fp16", **options):
    """(engine bytes or None, the loader) after one cache lookup for ``precision``."""
    loader = trt_engine.EngineLoader(graph, options)
    return loader._cached(None, GPU, CAPABILITY, precision), loader


def test_loader_loads_an_exact_match_and_builds_otherwise(tiny_graph, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="donkey_saliency.backends"):
        data, first = lookup(tiny_graph, cache_dir=str(tmp_path))
    assert data is None and first.engine_source is None
    assert "building - no cached engine" in caplog.text and not _warnings(caplog)
    assert first.meta == trt_cache.engine_meta(tiny_graph.digest, "unknown", GPU, CAPABILITY, "fp16",
                                               (1,) + tuple(tiny_graph.input_shape))
    assert first.engine_path == trt_cache.engine_path(trt_cache.engine_dir(str(tmp_path)), first.meta)
    trt_cache.store(first.engine_path, first.meta, ENGINE)
    data, second = lookup(tiny_graph, cache_dir=str(tmp_path))
    assert data == ENGINE and second.engine_source == "cache" and second.precision == "fp16"


def test_loader_says_when_it_refuses_a_cached_file(tiny_graph, tmp_path, caplog):
    _, loader = lookup(tiny_graph, cache_dir=str(tmp_path))
    trt_cache.store(loader.engine_path, dict(loader.meta, tensorrt_version="8.0.1"), ENGINE)  # stale
    with caplog.at_level(logging.INFO, logger="donkey_saliency.backends"):
        data, _ = lookup(tiny_graph, cache_dir=str(tmp_path))
    [warning] = _warnings(caplog)
    assert data is None and "rebuilding" in warning.getMessage() and "tensorrt_version" in warning.getMessage()


def test_rebuild_option_ignores_a_matching_cached_engine(tiny_graph, tmp_path):
    _, loader = lookup(tiny_graph, cache_dir=str(tmp_path))
    trt_cache.store(loader.engine_path, loader.meta, ENGINE)
    data, rebuilt = lookup(tiny_graph, cache_dir=str(tmp_path), rebuild=True)
    assert data is None and rebuilt.engine_source is None
    assert rebuilt.engine_path == loader.engine_path  # the new build replaces the file


def test_cache_dir_false_neither_reads_nor_names_a_file(tiny_graph):
    _, default = lookup(tiny_graph)  # cache_dir None: the default folder (a temp dir in tests)
    assert default.engine_path.startswith(trt_cache.engine_dir(None))
    trt_cache.store(default.engine_path, default.meta, ENGINE)
    data, uncached = lookup(tiny_graph, cache_dir=False)
    assert data is None and uncached.engine_path is None  # build_and_store then writes nothing
    assert lookup(tiny_graph)[0] == ENGINE  # (the same lookup with the cache on loads it)


def test_the_fp32_lookup_has_a_file_of_its_own(tiny_graph, tmp_path):
    """The second lookup of the fp16 -> fp32 fallback (a GPU without fast fp16) finds an fp32 engine,
    never the fp16 one, and the loader then says it runs fp32."""
    _, fp16 = lookup(tiny_graph, "fp16", cache_dir=str(tmp_path))
    trt_cache.store(fp16.engine_path, fp16.meta, b"fp16 engine")
    data, fp32 = lookup(tiny_graph, "fp32", cache_dir=str(tmp_path))
    assert data is None and fp32.engine_path != fp16.engine_path and fp32.precision == "fp32"
    trt_cache.store(fp32.engine_path, fp32.meta, b"fp32 engine")
    assert lookup(tiny_graph, "fp32", cache_dir=str(tmp_path))[0] == b"fp32 engine"
    assert lookup(tiny_graph, "fp16", cache_dir=str(tmp_path))[0] == b"fp16 engine"


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
    # uint8 -> float, /255, NHWC -> NCHW: part of the head's fp32 set, cheap
    prologue = {node.op_type for node in proto.graph.node if node.name in trunk and node.name.startswith("vbp/")}
    assert prologue == {"Cast", "Div", "Transpose"}
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


# --- teardown order (finding 1) and closing from another thread (finding 6) ---------------------------
# Plain objects that record what happens to them stand in for pycuda's context and TensorRT's
# objects: the order of release is pure logic of GpuSession and drop_frames.
TRT_LOCAL_NAMES = {"runtime", "engine", "context", "builder", "network", "parser", "config", "profile", "plan"}


class RecordingContext(object):
    """Records push/pop/detach, and the thread each happened in."""

    def __init__(self, events):
        self.events = events

    def _record(self, what):
        self.events.append((what, threading.current_thread().name))

    def push(self):
        self._record("push")

    def pop(self):
        self._record("pop")

    def detach(self):
        self._record("detach")


class Tracked(object):
    """Records its own destruction (CPython frees it the moment its last reference goes)."""

    def __init__(self, name, events):
        self.name, self.events = name, events

    def free(self):
        self.events.append(("free " + self.name, threading.current_thread().name))

    def __del__(self):
        self.events.append(("del " + self.name, threading.current_thread().name))


def _load_like_the_backend(events, fail=False):
    def load(session):
        session.keep("runtime", Tracked("runtime", events))
        session.keep("engine", Tracked("engine", events))
        builder = Tracked("builder", events)  # a local that holds a TensorRT object, as a build's do
        session.keep("context", Tracked("context", events))
        session.keep("device", {"mask": Tracked("buffer", events)}, free=lambda buffers: buffers["mask"].free())
        if fail:
            raise BackendUnavailable("engine does not match the graph: mean_0 missing")
        del builder

    return load


def _frames_holding_trt_names(traceback_):
    held = []
    while traceback_ is not None:
        held.extend(sorted(TRT_LOCAL_NAMES & set(traceback_.tb_frame.f_locals)))
        traceback_ = traceback_.tb_next
    return held


def test_failed_activation_drops_trt_objects_newest_first_before_the_context_goes():
    events = []
    with pytest.raises(BackendUnavailable) as caught:
        GpuSession(RecordingContext(events)).open(_load_like_the_backend(events, fail=True))
    order = [what for what, _ in events]
    # The builder local goes when the traceback's frames are cleared; the session's objects go in
    # reverse order of creation; all while the context is current; then the context is detached.
    assert order == ["push", "del builder", "free buffer", "del buffer", "del context", "del engine", "del runtime",
                     "detach"]
    assert _frames_holding_trt_names(caught.value.__traceback__) == []


def test_drop_frames_clears_every_finished_frame_of_chained_errors():
    events = []

    def deserialize():
        engine = Tracked("engine", events)  # noqa: F841 - held by this frame only
        raise ValueError("TensorRT could not deserialize")

    def load():
        runtime = Tracked("runtime", events)  # noqa: F841
        try:
            deserialize()
        except ValueError as error:
            raise BackendUnavailable("activation failed") from error

    try:
        load()
    except BackendUnavailable as error:
        assert _frames_holding_trt_names(error.__traceback__) == ["runtime"]
        assert _frames_holding_trt_names(error.__cause__.__traceback__) == ["runtime", "engine"]
        assert events == []  # still alive: the frames hold them
        trt_backend.drop_frames(error)
        assert _frames_holding_trt_names(error.__traceback__) == []
        assert _frames_holding_trt_names(error.__cause__.__traceback__) == []
        assert sorted(what for what, _ in events) == ["del engine", "del runtime"]


def test_a_successful_activation_leaves_the_context_popped():
    events = []
    session = GpuSession(RecordingContext(events)).open(_load_like_the_backend(events))
    assert [what for what, _ in events] == ["push", "del builder", "pop"] and session.is_open
    with session.current() as current:
        assert current.engine.name == "engine"
    assert [what for what, _ in events][-2:] == ["push", "pop"]


def test_close_from_another_thread_releases_everything_there():
    events = []
    session = GpuSession(RecordingContext(events)).open(_load_like_the_backend(events))
    del events[:]
    closer = threading.Thread(target=session.close, name="closer")
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive()
    assert events == [(what, "closer") for what in ("push", "free buffer", "del buffer", "del context", "del engine",
                                                     "del runtime", "detach")]
    assert not session.is_open
    with pytest.raises(RuntimeError, match="closed"):
        with session.current():
            pass
    session.close()  # twice is fine
    assert [what for what, _ in events].count("detach") == 1


def test_close_from_another_thread_waits_for_the_inference_in_flight():
    events = []
    session = GpuSession(RecordingContext(events)).open(_load_like_the_backend(events))
    closer = threading.Thread(target=session.close, name="closer")
    with session.current():
        closer.start()
        closer.join(timeout=0.2)  # it must be blocked on the session's lock, however long we wait
        assert closer.is_alive() and ("detach", "closer") not in events
    closer.join(timeout=10)
    assert not closer.is_alive() and events[-1] == ("detach", "closer")


def test_backend_close_from_another_thread_closes_its_session(tiny_graph):
    events = []
    backend = TensorRTBackend(tiny_graph)
    backend._session = GpuSession(RecordingContext(events)).open(_load_like_the_backend(events))
    backend._active = True
    closer = threading.Thread(target=backend.close, name="closer")
    closer.start()
    closer.join(timeout=10)
    assert events[-1] == ("detach", "closer") and backend._session is None and not backend._active


# --- builder flags per TensorRT version (findings 3, 5) and precision pinning (finding 4) --------------
def _builder_flags(*names):
    """A BuilderFlag namespace with the members a TensorRT version has (values: their names)."""
    return type("BuilderFlag", (), {name: name for name in names})


COMMON_FLAGS = ("FP16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS")
TRT_8_0 = _builder_flags(*(COMMON_FLAGS + ("STRICT_TYPES",)))  # 8.0.1 / 8.1
TRT_8_2 = _builder_flags(*(COMMON_FLAGS + ("STRICT_TYPES", "OBEY_PRECISION_CONSTRAINTS",
                                           "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO")))  # 8.2 - 8.6
TRT_10 = _builder_flags(*(COMMON_FLAGS + ("OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "BF16")))


@pytest.mark.parametrize("builder_flag, precision, attempts, final", [
    (TRT_8_0, "fp16", ["STRICT_TYPES"], {"FP16", "STRICT_TYPES"}),
    (TRT_8_2, "fp16", ["OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"],
     {"FP16", "OBEY_PRECISION_CONSTRAINTS"}),
    (TRT_10, "fp16", ["OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"],
     {"FP16", "OBEY_PRECISION_CONSTRAINTS"}),
    (TRT_8_0, "fp32", [None], set()),
    (TRT_8_2, "fp32", [None], set()),
    (TRT_10, "fp32", [None], set()),
])
def test_flags_per_tensorrt_version(builder_flag, precision, attempts, final):
    assert trt_engine.constraint_attempts(builder_flag, precision) == attempts
    config = RecordingConfig()
    trt_engine.set_precision_flags(config, builder_flag, precision, attempts[0])
    assert config.flags() == final
    assert config.calls[0] == ("clear", "TF32")  # every build, fp16 and fp32: no TF32 on Orin
    assert not any(flag not in vars(builder_flag) for _, flag in config.calls)  # only flags this version has


def test_obey_failure_is_retried_once_with_prefer_and_said_once(caplog):
    config, plans = RecordingConfig(), [None, b"plan"]
    with caplog.at_level(logging.WARNING, logger="donkey_saliency.backends"):
        data, used = trt_engine.build_with_constraints(lambda: plans.pop(0), config, TRT_10, "fp16")
    assert (data, used) == (b"plan", "PREFER_PRECISION_CONSTRAINTS")
    assert config.flags() == {"FP16", "PREFER_PRECISION_CONSTRAINTS"}  # OBEY cleared for the retry
    [warning] = _warnings(caplog)
    assert "OBEY_PRECISION_CONSTRAINTS failed" in warning.getMessage() and "PREFER" in warning.getMessage()


@pytest.mark.parametrize("builder_flag, precision, results, expected, builds", [
    (TRT_8_2, "fp16", [b"plan"], (b"plan", "OBEY_PRECISION_CONSTRAINTS"), 1),  # no retry when OBEY builds
    (TRT_8_2, "fp16", [None, None], (b"", "PREFER_PRECISION_CONSTRAINTS"), 2),  # both fail: the caller raises
    (TRT_8_0, "fp16", [None], (b"", "STRICT_TYPES"), 1),  # 8.0/8.1: STRICT_TYPES falls back by itself
    (TRT_10, "fp32", [None], (b"", None), 1),  # nothing pinned, nothing to retry
])
def test_retry_decision(builder_flag, precision, results, expected, builds, caplog):
    calls = []

    def build():
        calls.append(1)
        return results[len(calls) - 1]

    with caplog.at_level(logging.WARNING, logger="donkey_saliency.backends"):
        assert trt_engine.build_with_constraints(build, RecordingConfig(), builder_flag, precision) == expected
    assert len(calls) == builds and len(_warnings(caplog)) == builds - 1


class Tensor(object):
    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype


class Layer(object):
    """A parsed layer as TensorRT's Python API shows it: inputs, outputs, precision, output types."""

    def __init__(self, name, inputs, outputs):
        self.name, self._inputs, self._outputs = name, inputs, outputs
        self.precision = None
        self.output_types = {}

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, index):
        return self._inputs[index] if index < len(self._inputs) else None

    def get_output(self, index):
        return self._outputs[index]

    def set_output_type(self, index, dtype):
        self.output_types[index] = dtype


class Network(object):
    def __init__(self, layers, outputs):
        self._layers, self._outputs = layers, outputs

    num_layers = property(lambda self: len(self._layers))
    num_outputs = property(lambda self: len(self._outputs))

    def get_layer(self, index):
        return self._layers[index]

    def get_output(self, index):
        return self._outputs[index]


def test_pinning_covers_every_head_layer_whose_data_input_is_float():
    f32, f16, i32, u8 = "float32", "float16", "int32", "uint8"
    up = Tensor("vbp/up_conv2d_4_pre", f32)
    layers = {
        "cast": Layer("vbp/Cast", [Tensor("frame", u8)], [Tensor("vbp/frame_float", f32)]),
        "trunk": Layer("model/conv2d_1/Conv2D", [Tensor("image", f32)], [Tensor("map_0", f32)]),
        "deconv": Layer("vbp/ConvTranspose_31", [Tensor("vbp/scaled_30", f32)], [up]),
        # The Slice the ONNX parser adds for output_padding: float data, int32 start/size inputs,
        # unnamed by graph.py; found by its output tensor.
        "slice": Layer("(Unnamed Layer* 88) [Slice]", [up, Tensor("start", i32), Tensor("size", i32)],
                       [Tensor("vbp/up_conv2d_4", f32)]),
        "shape": Layer("vbp/Shape_12", [up], [Tensor("vbp/shape", i32)]),
        "constant": Layer("vbp/tiny", [], [Tensor("vbp/tiny", f32)]),
        "squeeze": Layer("(Unnamed Layer* 99) [Shuffle]", [Tensor("vbp/normalised", f16)], [Tensor("mask", f32)]),
    }
    network = Network(list(layers.values()), [Tensor("mask", f32)])
    assert trt_engine.pin_head_precision(network, f32, (f32, f16)) == 5
    pinned = {key for key, layer in layers.items() if layer.precision == f32}
    assert pinned == {"deconv", "slice", "constant", "squeeze"}
    assert layers["cast"].output_types == {0: f32}  # uint8 in: only its output type
    assert layers["trunk"].precision is None and layers["trunk"].output_types == {}  # the trunk stays fp16
    assert layers["shape"].precision is None and layers["shape"].output_types == {}  # int arithmetic
    assert all(layers[key].output_types == {0: f32} for key in pinned)


# --- TensorFlow in the same process (finding 2) and JetPack 4.6's Python 3.6 (finding 7) -------------
def test_a_savedmodel_export_keeps_tensorflow_off_the_gpu(tiny_pilot_path, tmp_path, monkeypatch):
    """Only SavedModel pilots bring TensorFlow into the process (.h5/.keras/.tflite are read without
    it); when they do, TensorFlow must not take the GPU that TensorRT needs."""
    import tensorflow as tf

    saved = str(tmp_path / "pilot_savedmodel")
    tf.keras.models.save_model(tf.keras.models.load_model(tiny_pilot_path, compile=False), saved, save_format="tf")
    calls = []  # recorded, not faked away: the call is what is under test
    monkeypatch.setattr(tf.config, "set_visible_devices",
                        lambda devices, kind=None: calls.append((list(devices), kind)))
    monkeypatch.setenv("TF_FORCE_GPU_ALLOW_GROWTH", "unset by the test")
    monkeypatch.delenv("TF_FORCE_GPU_ALLOW_GROWTH")
    assert cli.main(["export", tiny_pilot_path, "--out", str(tmp_path / "h5.onnx")]) == 0
    assert calls == []
    assert cli.main(["export", saved, "--out", str(tmp_path / "savedmodel.onnx")]) == 0
    assert calls == [([], "GPU")]
    assert os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"  # should TensorFlow touch the GPU anyway


# What runs on a Jetson Nano's Python 3.6 with TensorRT 8.0/8.2: the backend, its builder and
# version shims, the engine cache and the selftest's tools.
TRT_PATH_FILES = ["backends/__init__.py", "backends/base.py", "backends/onnxruntime.py", "backends/tensorrt.py",
                  "backends/trt_api.py", "backends/trt_engine.py", "backends/trt_fp16.py", "api.py",
                  "backends/trt_cache.py", "backends/trt_compare.py", "backends/trt_tools.py", "errors.py",
                  "pilots/__init__.py", "pilots/keras.py", "pilots/trunk.py", "compute/onnx_proto.py"]
PY36_CHECK = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from donkey_saliency.backends import trt_cache
from donkey_saliency.backends import tensorrt, trt_engine
reason = tensorrt.unavailable_reason()
assert reason.startswith("TensorRT backend unavailable - missing tensorrt"), reason
flags = type("BuilderFlag", (), dict(FP16="FP16", STRICT_TYPES="STRICT_TYPES", TF32="TF32"))
assert trt_engine.constraint_attempts(flags, "fp16") == ["STRICT_TYPES"]
meta = trt_cache.engine_meta("ab" * 32, "8.2.1.8", "NVIDIA Tegra X1", (5, 3), "fp16", (1, 120, 160, 3))
assert trt_cache.unpack(trt_cache.pack(meta, b"engine"))[1] == b"engine"
events = []
class Context(object):
    def push(self): events.append("push")
    def pop(self): events.append("pop")
    def detach(self): events.append("detach")
session = tensorrt.GpuSession(Context()).open(lambda s: s.keep("engine", object()))
session.close()
assert events == ["push", "pop", "push", "detach"], events
# TensorRT < 8.5's float-input graph and the outputs the backend binds: read and written without onnx
from donkey_saliency.backends import trt_api
from donkey_saliency.compute import onnx_proto as p
graph = p.make_graph([p.make_node("Cast", ["frame"], ["x"], name="vbp/Cast", to=p.TensorProto.FLOAT)], "g",
                     [p.make_tensor_value_info("frame", p.TensorProto.UINT8, ["N", 2, 2, 3])],
                     [p.make_tensor_value_info("input_gradient", p.TensorProto.FLOAT, ["N", 2, 2])])
data = p.make_model(graph, [p.make_opsetid("", 13)]).SerializeToString()
widened = trt_engine.with_float_input(data)
assert widened != data and p.with_input_type(widened, "frame", p.TensorProto.UINT8) == data
assert trt_api.declared_outputs(widened) == [("input_gradient", [None, 2, 2])]
assert "onnx" not in sys.modules
print("python %d.%d: ok" % sys.version_info[:2])
"""


@pytest.mark.slow
def test_tensorrt_path_parses_and_imports_on_python_3_6(tmp_path):
    import subprocess

    python36 = find_python("3.6", "3.6.15")
    if python36 is None:
        pytest.skip("no python3.6 interpreter on this machine (JetPack 4.6's Python; pyenv install 3.6.15)")
    package = os.path.join(os.path.dirname(__file__), "..", "..", "donkey_saliency")
    env = dict(os.environ, PYENV_VERSION="3.6.15", PYTHONDONTWRITEBYTECODE="1")
    compile_code = ("import py_compile, sys\nfor i, path in enumerate(sys.argv[2:]):\n"
                    "    py_compile.compile(path, cfile='%s/%d.pyc' % (sys.argv[1], i), doraise=True)")
    compiled = subprocess.run([python36, "-c", compile_code, str(tmp_path)] +
                              [os.path.join(package, name) for name in TRT_PATH_FILES],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, env=env)
    assert compiled.returncode == 0, compiled.stdout[-2000:]
    venv = tmp_path / "py36"
    subprocess.run([python36, "-m", "venv", str(venv)], check=True, env=env, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "numpy"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True, timeout=300, env=env)
    if pip.returncode != 0:
        pytest.skip("could not install numpy for python3.6: " + (pip.stdout.strip().splitlines() or ["?"])[-1])
    modules = ["donkey_saliency." + name[:-3].replace("/", ".").replace(".__init__", "") for name in TRT_PATH_FILES]
    result = subprocess.run([str(venv / "bin" / "python"), "-c", PY36_CHECK] + modules, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True, cwd=os.path.dirname(package),
                            env=env, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "python 3.6: ok"


# --- backend choice here (no TensorRT) --------------------------------------------------------------
def _unusable_reason():
    """Why the TensorRT backend is unusable here, as it says it: follows what really imports (the
    compiled bindings may import without pycuda, or both without a CUDA device)."""
    return trt_backend.unavailable_reason()


@needs_no_tensorrt
def test_availability_names_what_is_missing_and_how_to_get_it():
    ok, reason = TensorRTBackend.availability()
    assert not ok and reason == _unusable_reason()
    missing = trt_backend.missing_libraries()
    if missing:
        assert "JetPack" in reason and "pip install pycuda" in reason
        assert all(entry in reason for entry in missing)
    assert "\n" not in reason


@pytest.mark.parametrize("missing", [["tensorrt (No module named 'tensorrt')"],
                                     ["pycuda (No module named 'pycuda')"],
                                     ["tensorrt (libnvinfer.so.10: cannot open shared object file)",
                                      "pycuda (No module named 'pycuda')"]])
def test_the_reason_names_exactly_what_does_not_import(monkeypatch, missing):
    """The compiled bindings alone (pip install tensorrt) import without pycuda: the reason must say
    pycuda, not tensorrt."""
    monkeypatch.setattr(trt_backend, "missing_libraries", lambda: list(missing))
    reason = trt_backend.unavailable_reason()
    assert reason.startswith("TensorRT backend unavailable - missing " + "; ".join(missing) + ". ")
    assert ("missing tensorrt" in reason) == missing[0].startswith("tensorrt")


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


@needs_no_tensorrt
def test_selftest_without_tensorrt_fails_every_engine_check_and_still_reports(tiny_graph):
    """The selftest's own machinery, run for real where TensorRT is absent: each engine activation
    (in the worker thread) falls back to ONNX Runtime, which must read as FAIL, never as a pass."""
    report = trt_tools.selftest(tiny_graph, trt_tools.procedural_frames(3))
    assert not report["passed"]
    assert [(c.name, c.passed) for c in report["checks"]] == [
        ("fp32 engine in a worker thread", False), ("fp16 engine in a worker thread", False),
        (trt_tools.FALLBACK_CHECK, False)]
    assert all(run.thread != threading.current_thread().name for run in report["runs"].values())
    assert all(run.backend_name == "onnxruntime" for run in report["runs"].values())
    assert report["checks"][-1].detail.startswith("BackendUnavailable: " + _unusable_reason()[:60])
    lines = trt_tools.report_lines(report)
    assert lines[-1] == "FAIL" and "donkey-saliency selftest: FAIL, 0 of 3 checks passed" in lines
    assert "fp32: no engine (fell back to onnxruntime (CPU))" in lines


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
    assert lines[0] == "donkey-saliency %s: %s" % (argv[0], _unusable_reason())
    assert os.listdir(str(tmp_path)) == []  # nothing written, no cache dir made


@pytest.mark.parametrize("argv, message", [
    (["build-engine", "x.h5", "--precision", "int8"], "--precision must be one of fp16, fp32"),
    (["selftest", "--frames", "0"], "--frames must be at least 1"),
    (["selftest", "--precision", "int8"], "--precision must be one of fp16, fp32, both"),
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
    chosen = trt_compare.top_fraction(mask, 0.10)
    assert chosen.sum() == 10 and chosen.ravel()[90:].all()
    tied = np.zeros((10, 10), np.float32)
    tied[0, :] = 1.0
    tied[1, :5] = 0.5
    tied[1, 5:] = 0.5  # 10 ones, then 10 ties at 0.5 straddling the 10 % line
    assert trt_compare.top_fraction(tied, 0.15).sum() == 20  # ties are all in
    assert trt_compare.top_fraction(np.zeros((10, 10)), 0.1).sum() == 0  # a blank mask has nothing salient
    spike = np.zeros((10, 10))
    spike[3, 4] = 1.0
    assert trt_compare.top_fraction(spike, 0.1).sum() == 1  # not the plateau of zeros


def test_overlap():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert trt_compare.overlap(a, a) == 1.0
    assert trt_compare.overlap(a, b) == pytest.approx(4 / 12)
    assert trt_compare.overlap(a, ~a) == 0.0
    assert trt_compare.overlap(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0


def test_compare_masks_and_verdict():
    rng = np.random.default_rng(3)
    reference = rng.random((6, 12, 16)).astype(np.float32)
    same = trt_compare.compare_masks(reference, reference)
    assert same["max_abs"] == 0.0 and same["min_overlap"] == 1.0 and same["blank_frames"] == 0
    assert trt_compare.verdict(same, trt_compare.TOLERANCES["fp32"]) == (True, [])

    nudged = trt_compare.compare_masks(reference, reference + 1e-4)  # ranks unchanged
    assert nudged["max_abs"] == pytest.approx(1e-4, rel=1e-2) and nudged["min_overlap"] == 1.0
    assert trt_compare.verdict(nudged, trt_compare.TOLERANCES["fp32"])[0]

    shifted = np.roll(reference, 3, axis=2)  # the salient pixels moved: what a broken engine looks like
    moved = trt_compare.compare_masks(reference, shifted)
    assert moved["min_overlap"] < 0.5
    passed, failures = trt_compare.verdict(moved, trt_compare.TOLERANCES["fp16"])
    assert not passed and any("max mask difference" in f for f in failures) and any("overlap" in f for f in failures)

    blank = trt_compare.compare_masks(np.zeros((2, 5, 5)), np.zeros((2, 5, 5)))
    passed, failures = trt_compare.verdict(blank, trt_compare.TOLERANCES["fp16"])
    assert blank["blank_frames"] == 2 and not passed and "blank" in failures[0]
    with pytest.raises(ValueError, match="differ in shape"):
        trt_compare.compare_masks(reference, reference[:, :, :8])


def _run(precision, ms, build_seconds=None, stages=((0.2, 1.0, 0.3),)):
    run = trt_tools.EngineRun(precision)
    run.backend_name, run.description = "tensorrt", "tensorrt (%s, built)" % precision
    run.engine_line = "engine: /c/engine-%s-x.trt (built in 9.0 s) - TensorRT 8.2.1.8, Orin (compute 8.7), %s" % (
        precision, precision)
    run.build_seconds, run.seconds, run.stages = build_seconds, [ms / 1000.0] * 3, list(stages)
    return run


def test_report_lines_one_line_per_check_timings_and_a_paste_block(tiny_graph):
    checks = [trt_tools.Check("fp32 engine in a worker thread", True, "engine: ..."),
              trt_tools.Check("fp16 engine vs onnxruntime: mask", False, "max diff 0.2 - too far"),
              trt_tools.Check(trt_tools.FALLBACK_CHECK, True, "mismatched engine file -> onnxruntime")]
    runs = {"fp32": _run("fp32", 4.0, 12.5), "fp16": _run("fp16", 2.0)}
    report = dict(graph=tiny_graph, frames=10, checks=checks, runs=runs, ort_ms=30.0, passed=False)
    lines = trt_tools.report_lines(report)
    assert lines[:3] == [c.line() for c in checks]
    assert lines[0].startswith("PASS  fp32 engine") and lines[1].startswith("FAIL  fp16 engine vs onnxruntime")
    text = "\n".join(lines)
    assert "fp32: 4.00 ms/frame (7.5x onnxruntime), engine built in 12.5 s, host->device->host copies 33 % of GPU " \
           "time" in text
    assert "fp16: 2.00 ms/frame (15.0x onnxruntime), engine from cache (--rebuild to time it)" in text
    paste = lines[lines.index("--- paste into an issue ---"):]
    assert paste[1] == "donkey-saliency selftest: FAIL, 2 of 3 checks passed"
    assert "Python " in paste[2] and "numpy " in paste[2] and "tensorrt " in paste[2]
    assert any(line.startswith("failed: fp16 engine vs onnxruntime: mask") for line in paste)
    assert lines[-2:] == ["---", "FAIL"]


def test_fallback_run_is_reported_without_timings():
    run = trt_tools.EngineRun("fp16")
    run.backend_name, run.description = "onnxruntime", "onnxruntime (CPU)"
    assert trt_tools.timing_line(run, 30.0) == "fp16: no engine (fell back to onnxruntime (CPU))"


def test_copy_share_is_the_median_share_of_gpu_time_spent_copying():
    assert trt_tools.copy_share([]) is None
    assert trt_tools.copy_share([(1.0, 2.0, 1.0)]) == pytest.approx(0.5)
    assert trt_tools.copy_share([(0.1, 0.8, 0.1), (1.0, 2.0, 1.0), (0.0, 1.0, 0.0)]) == pytest.approx(0.2)


def test_compare_outputs_covers_the_mask_and_every_mean_on_its_own_scale(tiny_graph):
    frames = trt_tools.procedural_frames(3)
    with OnnxRuntimeBackend(tiny_graph) as backend:
        reference = backend.infer(frames)
    nudged = {name: value.copy() for name, value in reference.items()}
    name = tiny_graph.mean_names[-1]
    nudged[name] = nudged[name] * 1.01  # 1 % of each value: at most 1 % of the peak
    summaries = trt_compare.compare_outputs(reference, nudged, tiny_graph)
    assert sorted(summaries) == sorted([tiny_graph.mask_name] + tiny_graph.mean_names)
    assert summaries["mask"]["max_abs"] == 0.0
    assert 0.005 < summaries[name]["max_abs"] <= 0.0100001 and summaries[name]["min_overlap"] == 1.0
    checks = trt_tools.comparison_checks("fp32 engine vs onnxruntime:", summaries, trt_compare.TOLERANCES["fp32"])
    failed = [c.name for c in checks if not c.passed]
    assert len(checks) == 1 + len(tiny_graph.mean_names) and failed == ["fp32 engine vs onnxruntime: " + name]


def test_the_decoy_engine_graph_cannot_serve_the_real_graph(tiny_graph):
    """The forced-failure activation of the selftest: the decoy's engine has the right input and a
    'mask', but no mean_i, so activation refuses it after TensorRT has deserialized it."""
    import onnxruntime as ort

    decoy = trt_tools.decoy_graph(tiny_graph)
    session = ort.InferenceSession(decoy.onnx_bytes, providers=["CPUExecutionProvider"])
    frames = trt_tools.procedural_frames(1)
    [mask] = session.run(["mask"], {"frame": frames})
    assert mask.shape == (1, 120, 160) and decoy.digest != tiny_graph.digest
    specs = [TensorSpec("frame", frames.shape, np.uint8, True, 0), TensorSpec("mask", mask.shape, np.float32, False, 1)]
    with pytest.raises(BackendUnavailable, match="mean_0 missing"):
        trt_api.check_io(specs, tiny_graph)


def test_selftest_runs_both_precisions_by_default():
    assert trt_tools.selftest_precisions("both") == ("fp32", "fp16")
    assert trt_tools.selftest_precisions("fp16") == ("fp16",)
    with pytest.raises(InputError, match="one of fp16, fp32, both"):
        trt_tools.selftest_precisions("int8")


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
    paths = camera_image_paths(REAL_TUB)
    assert len(paths) == 300 and os.path.basename(paths[0]) == "2000_cam-image_array_.jpg"
    assert os.path.basename(paths[-1]) == "2299_cam-image_array_.jpg"
    frames = tub_frames(REAL_TUB, 4)
    assert len(frames) == 4 and frames[0].shape == (120, 160, 3) and frames[0].dtype == np.uint8


def test_frames_from_a_v2_tub_written_by_donkeycar(tmp_path):
    from donkeycar.parts.tub_v2 import Tub

    written = trt_tools.procedural_frames(5)
    tub = Tub(str(tmp_path / "tub"), inputs=["cam/image_array", "user/angle"], types=["image_array", "float"])
    for i, frame in enumerate(written):
        tub.write_record({"cam/image_array": frame, "user/angle": 0.1 * i})
    tub.close()
    frames = tub_frames(str(tmp_path / "tub"), 3)
    assert len(frames) == 3
    # spread evenly, in record order: each frame read back is nearest the one written there (JPEG is lossy)
    nearest = [int(np.argmin([np.abs(got.astype(int) - w).mean() for w in written])) for got in frames]
    assert nearest == [0, 2, 4]


def test_bad_tubs_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="tub not found"):
        tub_frames(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="is not a tub"):
        tub_frames(str(tmp_path))


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
        pytest.skip("the TensorRT backend's libraries do not import: %s" % "; ".join(missing))
    reason = trt_backend.unavailable_reason()
    if reason:
        pytest.skip(reason)


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
    comparison = trt_compare.compare_masks(expected["mask"], got["mask"])
    assert trt_compare.verdict(comparison, trt_compare.TOLERANCES[first.precision]) == (True, [])
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
def test_a_cached_engine_tensorrt_cannot_load_is_rebuilt_once(gpu, tiny_graph, tmp_path, caplog):
    """A file whose header matches this graph, TensorRT and GPU, holding bytes TensorRT refuses."""
    with TensorRTBackend(tiny_graph, precision="fp32", cache_dir=str(tmp_path)) as backend:
        path, engine_meta = backend.engine_path, backend.meta
    trt_cache.store(path, engine_meta, b"not a serialized engine")
    with caplog.at_level(logging.WARNING, logger="donkey_saliency.backends"):
        with TensorRTBackend(tiny_graph, precision="fp32", cache_dir=str(tmp_path)) as backend:
            assert backend.engine_source == "built"
            assert backend.infer(trt_tools.procedural_frames(1))["mask"].shape == (1, 120, 160)
    assert "could not deserialize the cached engine" in caplog.text
    assert trt_cache.check(path, engine_meta)[0] == "load"  # the rebuilt engine replaced it


@pytest.mark.gpu
def test_rebuild_and_no_cache_build_and_an_unwritable_cache_still_runs(gpu, tiny_graph, tmp_path, caplog):
    with TensorRTBackend(tiny_graph, precision="fp32", cache_dir=str(tmp_path)) as backend:
        path = backend.engine_path
    with TensorRTBackend(tiny_graph, precision="fp32", cache_dir=str(tmp_path), rebuild=True) as backend:
        assert backend.engine_source == "built" and backend.engine_path == path
    with TensorRTBackend(tiny_graph, precision="fp32", cache_dir=False) as backend:
        assert backend.engine_source == "built" and backend.engine_path is None
    blocked = tmp_path / "blocked"
    blocked.write_bytes(b"a file, not a folder")
    with caplog.at_level(logging.WARNING, logger="donkey_saliency.backends"):
        with TensorRTBackend(tiny_graph, precision="fp32", cache_dir=str(blocked)) as backend:
            assert backend.engine_source == "built"
            assert backend.infer(trt_tools.procedural_frames(1))["mask"].shape == (1, 120, 160)
    assert "could not cache the engine" in caplog.text


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
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "PASS"
    checks = [line for line in lines if line.startswith(("PASS  ", "FAIL  "))]
    assert all(line.startswith("PASS  ") for line in checks)
    for precision in ("fp32", "fp16"):
        assert any(line.startswith("PASS  %s engine in a worker thread" % precision) for line in checks)
        assert any(line.startswith("PASS  %s engine vs onnxruntime: mean_1" % precision) for line in checks)
    assert any(line.startswith("PASS  fp16 engine vs fp32 engine: mask") for line in checks)
    assert any(line.startswith("PASS  " + trt_tools.FALLBACK_CHECK) for line in checks)


@pytest.mark.gpu
def test_a_failed_activation_falls_back_in_a_worker_thread_and_the_process_lives(gpu, tiny_graph):
    frames = trt_tools.procedural_frames(2)
    with OnnxRuntimeBackend(tiny_graph) as reference:
        expected = reference.infer(frames)["mask"]
    checks, errors = [], []

    def worker():
        try:
            checks.append(trt_tools.forced_fallback(tiny_graph, frames, expected))
        except Exception as error:  # reported to the main thread below
            errors.append(error)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=600)
    assert not thread.is_alive() and errors == []
    assert checks[0].passed, checks[0].line()
    # The GPU is still usable after that teardown: a real engine activates and runs.
    with TensorRTBackend(tiny_graph, precision="fp32", cache_dir=False) as backend:
        assert backend.infer(frames[:1])["mask"].shape == (1, 120, 160)


@pytest.mark.gpu
def test_close_from_another_thread_then_activate_again(gpu, tiny_graph, tmp_path):
    opened = []
    thread = threading.Thread(target=lambda: opened.append(
        TensorRTBackend(tiny_graph, precision="fp32", cache_dir=str(tmp_path)).activate()))
    thread.start()
    thread.join(timeout=600)
    [backend] = opened
    first = backend.infer(trt_tools.procedural_frames(1))["mask"]  # from the main thread: pushed here
    backend.close()  # from the main thread, not the one that activated it
    assert backend._session is None
    with TensorRTBackend(tiny_graph, precision="fp32", cache_dir=str(tmp_path)) as again:
        assert again.engine_source == "cache"
        np.testing.assert_array_equal(again.infer(trt_tools.procedural_frames(1))["mask"], first)
