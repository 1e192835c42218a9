"""Saliency in tubs: the recording contract against real donkeycar tubs, a live-recorded tub from a
real Vehicle loop, and backfill of v2 (with deleted records) and v1 tubs, read back with donkeycar."""
import json
import os

import cv2
import numpy as np
import pytest

from helpers import real_data_or_skip, run_cli
from donkey_saliency import load
from donkey_saliency.tools.backfill import backfill, partial_path
from donkey_saliency.util.images import encode_jpeg
from donkey_saliency.keys import RECORD_KEYS, RECORD_TYPES
from donkey_saliency.compute.overlay import mask_to_uint8
from donkey_saliency.tubs.read import recording_inputs
from tub_helpers import (BASE_INPUTS, BASE_TYPES, make_v2_tub, read_tub, record_live_tub, rgb_image, synthetic_frame,
                         tree_digest)


# --------------------------------------------------------------------------------------------
# recording_inputs against real tubs

def test_recording_inputs_extends_lists_for_a_new_or_auto_created_tub(tmp_path):
    inputs, types, message = recording_inputs(str(tmp_path / "data"), BASE_INPUTS, BASE_TYPES, False)
    assert inputs == BASE_INPUTS + RECORD_KEYS and types == BASE_TYPES + RECORD_TYPES and message is None
    old = make_v2_tub(tmp_path / "old", count=2, deleted=())
    assert recording_inputs(old, BASE_INPUTS, BASE_TYPES, True)[:2] == (BASE_INPUTS + RECORD_KEYS,
                                                                       BASE_TYPES + RECORD_TYPES)
    assert recording_inputs(None, BASE_INPUTS, BASE_TYPES, False)[2] is None


def test_recording_inputs_on_a_tub_recorded_without_saliency_keeps_donkeycar_happy(tmp_path):
    from donkeycar.parts.tub_v2 import TubWriter

    path = str(tmp_path / "data")
    TubWriter(path, inputs=list(BASE_INPUTS), types=list(BASE_TYPES)).close()
    # Without the check donkeycar refuses the extended lists with an assertion.
    with pytest.raises(AssertionError):
        TubWriter(path, inputs=BASE_INPUTS + RECORD_KEYS, types=BASE_TYPES + RECORD_TYPES)
    inputs, types, message = recording_inputs(path, list(BASE_INPUTS), list(BASE_TYPES), False)
    assert (inputs, types) == (BASE_INPUTS, BASE_TYPES)
    assert "\n" not in message and "AUTO_CREATE_NEW_TUB = True" in message and "DATA_PATH" in message
    TubWriter(path, inputs=inputs, types=types).close()  # opens: no assertion


def test_recording_inputs_on_a_tub_with_saliency_or_other_inputs(tmp_path):
    from donkeycar.parts.tub_v2 import TubWriter

    with_saliency = str(tmp_path / "with")
    TubWriter(with_saliency, inputs=BASE_INPUTS + RECORD_KEYS, types=BASE_TYPES + RECORD_TYPES).close()
    assert recording_inputs(with_saliency, BASE_INPUTS, BASE_TYPES, False) == (
        BASE_INPUTS + RECORD_KEYS, BASE_TYPES + RECORD_TYPES, None)
    other = str(tmp_path / "other")
    TubWriter(other, inputs=["cam/image_array", "imu/acl_x"], types=["image_array", "float"]).close()
    inputs, types, message = recording_inputs(other, BASE_INPUTS, BASE_TYPES, False)
    assert (inputs, types) == (BASE_INPUTS, BASE_TYPES)
    assert "other inputs" in message and "AUTO_CREATE_NEW_TUB" in message


# --------------------------------------------------------------------------------------------
# A tub recorded live: real Vehicle, SaliencyPart, TubWriter


def test_live_recorded_tub_has_saliency_in_every_record(tiny_pilot_path, tmp_path):
    path = record_live_tub(tmp_path / "live", tiny_pilot_path, records=40)
    tub, records = read_tub(path)
    assert len(records) == 40
    assert tub.manifest.inputs == BASE_INPUTS + RECORD_KEYS
    for record in records:
        for key in RECORD_KEYS:
            assert record.get(key) is not None, (record["_index"], key)
        overlay = cv2.imread(os.path.join(tub.images_base_path, record["saliency/image_array"]))
        mask = cv2.imread(os.path.join(tub.images_base_path, record["saliency/mask"]), cv2.IMREAD_UNCHANGED)
        assert overlay.shape == (120, 160, 3) and mask.shape == (120, 160)
        # From the first mask on, every record carries one (lag -1 means "no mask yet").
        assert record["saliency/lag_ms"] >= 0.0, record["_index"]
        assert mask.max() > 100  # min-max normalised: a real mask, not the blank placeholder


# --------------------------------------------------------------------------------------------
# Backfill

@pytest.fixture
def v2_tub(tmp_path):
    return make_v2_tub(tmp_path / "tub")


def test_backfill_v2_keeps_fields_indexes_and_deleted_records(v2_tub, tiny_pilot_path, tmp_path):
    before = tree_digest(v2_tub)
    result = backfill(v2_tub, tiny_pilot_path, backend="onnxruntime", batch=8, progress=False)
    assert tree_digest(v2_tub) == before
    assert result.path == v2_tub + "_saliency" and os.path.isdir(result.path)
    assert (result.records, result.deleted, result.masks) == (25, 3, 25)
    assert not os.path.exists(partial_path(result.path))

    source, source_records = read_tub(v2_tub)
    tub, records = read_tub(result.path)
    assert len(records) == len(source_records) == 22
    assert tub.manifest.inputs == source.manifest.inputs + RECORD_KEYS
    assert tub.manifest.types == source.manifest.types + RECORD_TYPES
    assert tub.manifest.deleted_indexes == {3, 4, 17}
    assert tub.manifest.catalog_paths == source.manifest.catalog_paths  # same max_len, same split
    assert tub.manifest.metadata["location"] == "test track"
    with load(tiny_pilot_path, backend="onnxruntime") as saliency:
        for old, new in zip(source_records, records):
            assert {k: v for k, v in new.items() if k not in RECORD_KEYS} == old  # every field, as it was
            camera = os.path.join(tub.images_base_path, new["cam/image_array"])
            with open(camera, "rb") as a, open(os.path.join(source.images_base_path, old["cam/image_array"]), "rb") as b:
                assert a.read() == b.read()  # the camera JPEG is copied, not re-encoded
            overlay = cv2.imread(os.path.join(tub.images_base_path, new["saliency/image_array"]))
            mask = cv2.imread(os.path.join(tub.images_base_path, new["saliency/mask"]), cv2.IMREAD_UNCHANGED)
            assert overlay.shape == (120, 160, 3) and mask.dtype == np.uint8 and mask.shape == (120, 160)
            assert new["saliency/lag_ms"] == 0.0
            rgb = cv2.cvtColor(cv2.imread(camera), cv2.COLOR_BGR2RGB)
            expected = saliency.mask(rgb) * 255.0
            assert np.abs(mask.astype(np.float32) - expected).mean() < 4.0  # JPEG's loss only


def test_backfilled_tub_accepts_new_records_from_donkeycar_and_restores_deleted(v2_tub, tiny_pilot_path):
    """The catalogs' line lengths and the manifest are what donkeycar writes: it can append and restore."""
    from donkeycar.parts.tub_v2 import Tub

    out = backfill(v2_tub, tiny_pilot_path, backend="onnxruntime", progress=False).path
    tub = Tub(out, inputs=BASE_INPUTS + ["pilot/angle"] + RECORD_KEYS, types=BASE_TYPES + ["float"] + RECORD_TYPES)
    tub.restore_records([3])
    tub.write_record({"cam/image_array": synthetic_frame(99), "user/angle": 0.5, "user/throttle": 0.2,
                      "user/mode": "user", "pilot/angle": 0.1, "saliency/image_array": synthetic_frame(1),
                      "saliency/mask": np.zeros((120, 160), np.uint8), "saliency/lag_ms": 12.5})
    tub.close()
    _, records = read_tub(out)
    by_index = {r["_index"]: r for r in records}
    assert len(records) == 24 and by_index[25]["saliency/lag_ms"] == 12.5
    assert all(by_index[3].get(k) is not None for k in RECORD_KEYS)  # deleted records got saliency too


def test_backfill_real_v1_tub(tmp_path):
    pilot, real_tub = real_data_or_skip()
    before = tree_digest(real_tub)
    out = str(tmp_path / "real_saliency")
    result = backfill(real_tub, pilot, out_path=out, backend="onnxruntime", progress=False)
    assert tree_digest(real_tub) == before
    assert (result.source_version, result.records, result.deleted, result.masks) == (1, 300, 0, 300)
    tub, records = read_tub(out)
    assert len(records) == 300
    assert tub.manifest.inputs == ["cam/image_array", "user/angle", "user/throttle", "user/mode"] + RECORD_KEYS
    meta = json.load(open(os.path.join(real_tub, "meta.json")))
    for position, record in enumerate(records):
        number = 2000 + position
        original = json.load(open(os.path.join(real_tub, "record_%d.json" % number)))
        assert record["_index"] == position
        for key in ("user/angle", "user/throttle", "user/mode"):
            assert record[key] == original[key]
        assert record["_timestamp_ms"] == int(round(meta["start"] * 1000)) + original["milliseconds"]
        with open(os.path.join(tub.images_base_path, record["cam/image_array"]), "rb") as a, \
                open(os.path.join(real_tub, original["cam/image_array"]), "rb") as b:
            assert a.read() == b.read()
    # Each recorded mask is the pilot's mask of that record's own JPEG, as the tub stores it: uint8
    # levels through JPEG. Only the encoder's loss (and a level of float rounding) separates them;
    # the mask of a frame 25 records away differs by several levels on average.
    with load(pilot, backend="onnxruntime") as saliency:
        for record in records[::50]:
            recorded = cv2.imread(os.path.join(tub.images_base_path, record["saliency/mask"]), cv2.IMREAD_UNCHANGED)
            expected = mask_to_uint8(saliency.mask(rgb_image(tub, record)))
            as_stored = cv2.imdecode(np.frombuffer(encode_jpeg(expected), np.uint8), cv2.IMREAD_UNCHANGED)
            assert recorded.shape == expected.shape == (120, 160)
            assert np.abs(recorded.astype(int) - as_stored).max() <= 2, record["_index"]
            assert np.abs(recorded.astype(int) - expected).mean() < 2.0, record["_index"]  # JPEG's loss only
            other = mask_to_uint8(saliency.mask(rgb_image(tub, records[(record["_index"] + 25) % len(records)])))
            assert np.abs(recorded.astype(int) - other).mean() > 3.0  # a check that tells frames apart


def test_backfill_v1_tub_with_excluded_records(tiny_pilot_path, tmp_path):
    """A v1 tub written by donkeycar 3's Tub (still shipped as donkeycar.parts.datastore), with
    exclude.json: excluded records stay deleted in the copy."""
    from donkeycar.parts.datastore import Tub as TubV1

    path = str(tmp_path / "v1")
    tub = TubV1(path, inputs=list(BASE_INPUTS), types=list(BASE_TYPES))
    for i in range(12):
        tub.put_record({"cam/image_array": synthetic_frame(i), "user/angle": i / 20.0, "user/throttle": 0.4,
                        "user/mode": "user"})
    tub.exclude_index(5)
    tub.exclude_index(6)
    tub.write_exclude()
    result = backfill(path, tiny_pilot_path, backend="onnxruntime", progress=False)
    out, records = read_tub(result.path)
    assert result.source_version == 1 and len(records) == 10
    assert out.manifest.deleted_indexes == {4, 5}  # v1 numbers 1..12 become indexes 0..11
    assert [r["user/angle"] for r in records] == [i / 20.0 for i in range(12) if i not in (4, 5)]


class InterruptAfter(object):
    """A real Saliency that raises KeyboardInterrupt on its n-th batch: only the fault is fake."""

    def __init__(self, saliency, calls):
        self.saliency, self.graph, self.calls = saliency, saliency.graph, calls

    def masks(self, frames):
        self.calls -= 1
        if self.calls == 0:
            raise KeyboardInterrupt()
        return self.saliency.masks(frames)


def test_interrupted_backfill_leaves_no_tub_and_a_rerun_succeeds(v2_tub, tiny_pilot_path):
    out = v2_tub + "_saliency"
    with load(tiny_pilot_path, backend="onnxruntime") as saliency:
        with pytest.raises(KeyboardInterrupt):
            backfill(v2_tub, out_path=out, batch=5, saliency=InterruptAfter(saliency, 3), progress=False)
    assert not os.path.exists(out) and not os.path.exists(partial_path(out))
    # A run killed outright leaves its hidden partial directory; the next run clears it.
    os.makedirs(os.path.join(partial_path(out), "images"))
    open(os.path.join(partial_path(out), "manifest.json"), "w").write("garbage\n")
    result = backfill(v2_tub, tiny_pilot_path, out_path=out, backend="onnxruntime", progress=False)
    assert len(read_tub(result.path)[1]) == 22 and not os.path.exists(partial_path(out))


def test_backfill_cli_bad_inputs_exit_2_with_one_line(v2_tub, tiny_pilot_path, tmp_path):
    # The good run first: it also caches the exported graph for the subprocesses below.
    good = run_cli("backfill", v2_tub, "--model", tiny_pilot_path, "--backend", "onnxruntime",
                   "--out", tmp_path / "good")
    assert good.returncode == 0, good.stderr
    assert "25 records (3 deleted, copied still marked deleted), 25 masks" in good.stdout
    assert len(read_tub(tmp_path / "good")[1]) == 22

    not_a_tub = tmp_path / "empty"
    not_a_tub.mkdir()
    broken = make_v2_tub(tmp_path / "broken", count=6, deleted=(2,))
    _, records = read_tub(broken)
    os.unlink(os.path.join(broken, "images", records[3]["cam/image_array"]))
    bad_model = tmp_path / "bad.h5"
    bad_model.write_text("not a model")
    cases = {
        "not a tub": (not_a_tub, tiny_pilot_path, tmp_path / "o1"),
        "missing image": (broken, tiny_pilot_path, tmp_path / "o2"),
        "output exists": (v2_tub, tiny_pilot_path, tmp_path / "good"),
        "bad model": (v2_tub, bad_model, tmp_path / "o3"),
        "missing tub": (tmp_path / "nowhere", tiny_pilot_path, tmp_path / "o4"),
    }
    digests = {str(p): tree_digest(p) for p in (v2_tub, broken, tmp_path / "good")}
    for name, (tub, model, out) in cases.items():
        result = run_cli("backfill", tub, "--model", model, "--out", out, "--backend", "onnxruntime")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (name, result.stderr)
        assert lines[0].startswith("donkey-saliency backfill: "), name
        if name != "output exists":
            assert not os.path.exists(str(out)) and not os.path.exists(partial_path(str(out))), name
    assert "missing" in run_cli("backfill", broken, "--model", tiny_pilot_path, "--out", tmp_path / "o5").stderr
    assert {str(p): tree_digest(p) for p in (v2_tub, broken, tmp_path / "good")} == digests


# --------------------------------------------------------------------------------------------
# Reading tubs: what is wrong is said, and nothing is written

def make_v1_tub(path, count=3):
    """A donkeycar 3 tub written by donkeycar's own (v1) Tub."""
    from donkeycar.parts.datastore import Tub as TubV1

    tub = TubV1(str(path), inputs=list(BASE_INPUTS), types=list(BASE_TYPES))
    for i in range(count):
        tub.put_record({"cam/image_array": synthetic_frame(i), "user/angle": 0.1, "user/throttle": 0.2,
                        "user/mode": "user"})
    return str(path)


def rewrite_json(path, change):
    """Rewrite the JSON file (or JSON-lines manifest) at ``path``: ``change(lines) -> lines``."""
    with open(path) as handle:
        lines = handle.read().splitlines()
    with open(path, "w") as handle:
        handle.write("\n".join(change(lines)) + "\n")


def v1_meta(change):
    def rewrite(lines):
        meta = json.loads("\n".join(lines))
        change(meta)
        return [json.dumps(meta)]
    return rewrite


def manifest_line(index, change):
    def rewrite(lines):
        lines[index] = json.dumps(change(json.loads(lines[index])))
        return lines
    return rewrite


TUB_DAMAGE = {
    "exclude.json not JSON": (1, "exclude.json", lambda lines: ["[1, 2"], "exclude.json is not a list of record numbers"),
    "exclude.json not numbers": (1, "exclude.json", lambda lines: ['["a"]'], "exclude.json is not a list"),
    "meta.json not JSON": (1, "meta.json", lambda lines: ["{"], "meta.json is not a donkeycar 3 tub's meta.json"),
    "meta.json without types": (1, "meta.json", v1_meta(lambda meta: meta.pop("types")), "is not a donkeycar 3"),
    "meta.json inputs and types differ": (1, "meta.json", v1_meta(lambda meta: meta["types"].pop()),
                                          "meta.json lists 4 inputs but 3 types"),
    "manifest inputs and types differ": (2, "manifest.json", manifest_line(1, lambda types: types[:-1]),
                                         "manifest.json lists 5 inputs but 4 types"),
    "manifest not a manifest": (2, "manifest.json", manifest_line(4, lambda catalogs: []),
                                "manifest.json is not a donkeycar tub manifest"),
    "catalog missing": (2, "catalog_1.catalog", None, "catalog catalog_1.catalog listed in manifest.json is missing"),
}


@pytest.mark.parametrize("case", sorted(TUB_DAMAGE))
def test_a_damaged_tub_is_an_input_error_naming_the_file_and_nothing_is_written(case, tiny_pilot_path, tmp_path):
    from donkey_saliency.errors import InputError
    from donkey_saliency.tubs.read import open_tub

    version, name, change, message = TUB_DAMAGE[case]
    tub = make_v1_tub(tmp_path / "tub") if version == 1 else make_v2_tub(tmp_path / "tub", count=12, deleted=())
    if name == "exclude.json":
        open(os.path.join(tub, name), "w").close()
    if change is None:
        os.unlink(os.path.join(tub, name))
    else:
        rewrite_json(os.path.join(tub, name), change)
    with pytest.raises(InputError) as raised:
        open_tub(tub)
    assert message in str(raised.value) and tub in str(raised.value)
    with pytest.raises(InputError):
        backfill(tub, tiny_pilot_path, out_path=str(tmp_path / "out"), backend="onnxruntime", progress=False)
    assert sorted(os.listdir(str(tmp_path))) == ["tub"]  # no copy, no partial copy, no lock
