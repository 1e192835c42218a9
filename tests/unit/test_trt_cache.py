"""trt_cache.py: the engine cache file (header + engine bytes) and when a cached engine is reused."""
import pytest

from donkey_saliency.backends import trt_cache


def meta(**changes):
    fields = dict(graph_digest="ab" * 32, tensorrt_version="8.2.1", gpu_name="NVIDIA Tegra X1",
                  compute_capability=(5, 3), precision="fp16", input_shape=(1, 120, 160, 3))
    fields.update(changes)
    return trt_cache.engine_meta(**fields)


def test_a_packed_engine_unpacks_to_the_same_bytes():
    found, engine = trt_cache.unpack(trt_cache.pack(meta(), b"engine"))
    assert engine == b"engine" and found["compute_capability"] == "5.3" and found["input_shape"] == [1, 120, 160, 3]


def test_each_key_field_changes_the_file_name():
    names = {trt_cache.engine_path("/c", m) for m in
             (meta(), meta(precision="fp32"), meta(gpu_name="Orin"), meta(tensorrt_version="8.5"))}
    assert len(names) == 4 and trt_cache.cache_key(meta()) == trt_cache.cache_key(meta())


@pytest.mark.parametrize("damage, words", [
    (lambda data: b"junk" + data, "no magic bytes"),
    (lambda data: data[:12], "truncated header"),
    (lambda data: data[:-1], "truncated or appended"),
    (lambda data: data[:-1] + b"X", "checksum"),
])
def test_a_damaged_file_says_what_is_wrong(damage, words):
    with pytest.raises(trt_cache.CacheFileError, match=words):
        trt_cache.unpack(damage(trt_cache.pack(meta(), b"engine")))


def test_an_engine_is_loaded_only_for_exactly_its_metadata(tmp_path):
    path = str(tmp_path / "engines" / "e.trt")
    assert trt_cache.decide(path, meta())[0] == "rebuild"  # none yet
    trt_cache.store(path, meta(), b"engine")
    assert trt_cache.check(path, meta()) == ("load", "cached engine %s matches" % path, b"engine")
    action, reason = trt_cache.decide(path, meta(precision="fp32"))
    assert action == "rebuild" and "precision 'fp16', need 'fp32'" in reason
    (tmp_path / "engines" / "e.trt").write_bytes(b"garbage")
    assert trt_cache.decide(path, meta())[0] == "rebuild"
